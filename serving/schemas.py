"""Request and response bodies of the scoring API (``/v1``).

Transactions and events reuse the data contract's pydantic models (``features/contract.py``), so the API accepts
exactly what batch validation keeps: refunds (negative amounts) are valid; unparseable dates, non-finite numbers,
missing fields and unknown fields are a 400 naming the field.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, field_validator

from features.contract import Customer, CustomerId, Event, EventFields, Timestamp, Transaction, TransactionFields
from model.churn_model import ModelCard
from model.scorecard import SCORECARD

MAX_CUSTOMERS_PER_REQUEST = 1000
MAX_ROWS_PER_CUSTOMER = 100_000
MAX_ROWS_PER_EVENTS_REQUEST = 10_000  # per table, in one POST /v1/events


class CustomerHistory(BaseModel):
    """One customer's raw history; only rows before ``as_of`` are used."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c1",
                    "transactions": [
                        {"timestamp": "2024-03-02T10:00:00", "amount": 60.0, "order_id": "o1"},
                        {"timestamp": "2024-05-01T10:00:00", "amount": 42.5, "order_id": "o2"},
                        {"timestamp": "2024-05-04T09:00:00", "amount": -12.5, "order_id": "o2"},
                    ],
                    "events": [{"timestamp": "2024-05-20T18:00:00", "event_type": "email_open"}],
                }
            ]
        },
    )

    customer_id: CustomerId = Field(description="Your id for the customer.", examples=["c1"])
    transactions: list[TransactionFields] = Field(
        default_factory=list,
        max_length=MAX_ROWS_PER_CUSTOMER,
        description="Purchases and refunds (negative amounts). A customer with none before as_of is not scored.",
    )
    events: list[EventFields] = Field(
        default_factory=list,
        max_length=MAX_ROWS_PER_CUSTOMER,
        description="Engagement events (sessions, e-mail opens and clicks, ...).",
    )
    signup_date: Timestamp | None = Field(None, description="Sign-up date, if known.")
    churn_date: Timestamp | None = Field(None, description="Cancel date (subscriptions), if any.")


Customers = Annotated[
    list[CustomerHistory],
    Field(min_length=1, max_length=MAX_CUSTOMERS_PER_REQUEST, description="1 to 1,000 customers."),
]


def unique_ids(items: list, field: str) -> None:
    """Each customer once per request: a 400 naming the second occurrence."""
    from serving.problems import Problem, field_error

    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.customer_id in seen:
            raise Problem(
                400,
                f"customer {item.customer_id!r} appears more than once",
                errors=[field_error((field, i, "customer_id"), f"{item.customer_id!r} appears more than once")],
            )
        seen.add(item.customer_id)


class FeatureRow(BaseModel):
    """A precomputed feature row (from `churn features` or your own copy of the feature table)."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    as_of: Timestamp | date = Field(description="The date the features were computed at.")
    features: dict[str, float | None] = Field(
        description="Every feature the model uses (GET /model lists them); null where undefined.",
        examples=[{"recency_days": 31.0, "frequency": 4.0}],
    )

    @field_validator("features")
    @classmethod
    def _finite(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        import math

        for name, x in v.items():
            if x is not None and not math.isfinite(x):
                raise ValueError(f"feature {name!r} must be a finite number or null")
        return v


FeatureRows = Annotated[
    list[FeatureRow], Field(min_length=1, max_length=MAX_CUSTOMERS_PER_REQUEST, description="1 to 1,000 rows.")
]
AsOf = Timestamp | None  # a date ("2024-10-01") is midnight; one type, so an error names just the field


class ScoreRequest(BaseModel):
    """``POST /v1/score``: customers with their raw history."""

    model_config = ConfigDict(extra="forbid")

    customers: Customers
    as_of: AsOf = Field(None, description="Features use rows strictly before this time; default: now (UTC).")
    reasons: bool = Field(True, description="Compute top_reasons (about 1 ms per customer).")


class FeatureScoreRequest(BaseModel):
    """``POST /v1/score_features``: precomputed feature rows."""

    model_config = ConfigDict(extra="forbid")

    rows: FeatureRows
    reasons: bool = Field(True, description="Compute top_reasons (about 1 ms per customer).")


# The scorecard's fields, types and descriptions come from its one definition (model/scorecard.py).
Scorecard = create_model(
    "Scorecard",
    __doc__="One customer's scorecard: the same fields, in the same order, as batch scoring writes.",
    **{f.name: (f.type, Field(description=f.description)) for f in SCORECARD},
)


class Rejected(BaseModel):
    customer_id: str
    reason: str


class ScoreResponse(BaseModel):
    model_version: str
    as_of: datetime
    scores: list[Scorecard]  # type: ignore[valid-type]
    rejected: list[Rejected] = Field(description="Customers that could not be scored, with the reason.")
    warnings: list[str] = Field(default_factory=list)


# The model card's fields come from its one definition (model/churn_model.py::ModelCard), plus what is serving it.
# Types resolved in ModelCard's own module (its annotations are strings there).
_CardFields = create_model(
    "_CardFields", **{n: (t, ...) for n, t in get_type_hints(ModelCard).items() if n != "holdout_metrics"}
)


class ModelInfo(_CardFields):  # type: ignore[valid-type, misc]
    """The model being served: its card, where it came from and when this worker loaded it."""

    holdout_metrics: dict[str, float] = Field(default_factory=dict)
    source: str = Field(description="The registry alias the service follows, or the bento the model came in.")
    loaded_at: datetime = Field(description="When this worker loaded the model (UTC).")
    reload_error: str | None = Field(None, description="Why the last check for a newer model failed, if it did.")


class Readiness(BaseModel):
    status: str = Field(description="ready, or not_ready (with a 503).")
    detail: str | None = Field(None, description="Why the service is not ready (e.g. the store cannot be reached).")
    store: str | None = Field(None, description="Where the customer store is (a URL without its password).")
    model_version: str | None = None
    source: str | None = None
    loaded_at: datetime | None = None
    last_check: datetime | None = None
    reload_error: str | None = None
    pending_evaluations: int | None = Field(
        None,
        description="Customers waiting for a live trigger evaluation (serving.live_triggers; null when it is off "
        "or the store cannot be reached).",
    )
    live_triggers_error: str | None = Field(None, description="Why the live trigger worker is paused, if it is.")


# ------------------------------------------------------------------------------------------------ the store routes


class CustomersScoreRequest(BaseModel):
    """``POST /v1/customers/score``: stored customers by id."""

    model_config = ConfigDict(extra="forbid")

    customer_ids: list[CustomerId] = Field(
        min_length=1,
        max_length=MAX_CUSTOMERS_PER_REQUEST,
        description="1 to 1,000 customer ids, each once.",
        examples=[["c1", "c2"]],
    )
    as_of: AsOf = Field(None, description="Features use stored rows strictly before this time; default: now (UTC).")
    reasons: bool = Field(True, description="Compute top_reasons (about 1 ms per customer).")


class CustomersScoreResponse(ScoreResponse):
    not_found: list[str] = Field(
        default_factory=list, description="Requested ids with no row in the store (no transaction, event or record)."
    )


def _rows(model: type[BaseModel], what: str) -> Any:
    """A list of raw rows, checked one by one by the route (a bad row is rejected, not the request); documented
    with the contract model's schema, so a client generator types them."""
    schema = {
        "type": "array",
        "items": model.model_json_schema(mode="validation"),
        "maxItems": MAX_ROWS_PER_EVENTS_REQUEST,
        "description": what,
    }
    return Annotated[list[Any], Field(max_length=MAX_ROWS_PER_EVENTS_REQUEST, description=what), WithJsonSchema(schema)]


class EventsRequest(BaseModel):
    """``POST /v1/events``: new rows for the store, each carrying its ``customer_id``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "transactions": [
                        {"customer_id": "c1", "timestamp": "2024-06-02T10:00:00", "amount": 35.0, "order_id": "o9"}
                    ],
                    "events": [{"customer_id": "c1", "timestamp": "2024-06-02T09:55:00", "event_type": "session"}],
                }
            ]
        },
    )

    transactions: _rows(Transaction, "Purchases and refunds (negative amounts), up to 10,000.") = Field(  # type: ignore[valid-type]
        default_factory=list
    )
    events: _rows(Event, "Engagement events, up to 10,000.") = Field(default_factory=list)  # type: ignore[valid-type]
    customers: _rows(Customer, "Customer records (sign-up, cancel date); the latest write wins.") = Field(  # type: ignore[valid-type]
        default_factory=list
    )


class TableCounts(BaseModel):
    transactions: int
    events: int
    customers: int


class RejectedRow(BaseModel):
    table: str = Field(description="transactions, events or customers.")
    index: int = Field(description="Position of the row in its list in the request (from 0).")
    field: str = Field(
        description="Path of the field at fault, e.g. transactions[3].amount (the row itself when "
        "the whole row is at fault, e.g. an exact duplicate)."
    )
    reason: str = Field(description="Why, in the words batch validation uses for files (e.g. unparseable timestamp).")
    detail: str = Field(description="More about it.")
    customer_id: str | None = None


class EventsResponse(BaseModel):
    added: TableCounts = Field(description="Rows stored by this request.")
    present: TableCounts = Field(description="Rows already stored (a retried request adds nothing).")
    updated_customers: int = Field(0, description="Customer records replaced by a changed version.")
    rejected: list[RejectedRow] = Field(description="Rows not stored, each with its index, field and reason.")


class OutboxItem(BaseModel):
    """A fired trigger (``features/store/outbox.py`` defines the columns): control items are for the record only."""

    seq: int = Field(description="Position in the outbox (commit order): pass the page's next_after as ?after=.")
    id: str = Field(description="Idempotency key: one firing per rule, customer and as_of date.")
    customer_id: str
    rule: str = Field(description="The trigger rule that fired (serving/triggers.yaml).")
    action: str = Field(description="What to do: an action of the retention policy.")
    fired_at: str = Field(description="When the evaluation ran (UTC, ISO 8601).")
    as_of: str = Field(description="The date the customer was evaluated at (UTC, ISO 8601).")
    fields: dict[str, Any] = Field(description="The scorecard and history fields that made the rule fire.")
    control: bool = Field(description="True: held out at random as control; record it, contact nobody.")
    state: str = Field(description="Push delivery state: pending, delivered, dead or control.")
    attempts: int
    next_attempt_at: str | None = None
    last_error: str | None = None


class OutboxPage(BaseModel):
    items: list[OutboxItem]
    next_after: int = Field(description="The cursor for the next page (the last item's seq, or ?after= if none).")
    has_more: bool
