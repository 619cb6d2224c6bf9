"""Request and response bodies of the scoring API (``/v1``).

Transactions and events reuse the data contract's pydantic models (``features/contract.py``), so the API accepts
exactly what batch validation keeps: refunds (negative amounts) are valid; unparseable dates, non-finite numbers,
missing fields and unknown fields are a 400 naming the field.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from features.contract import CustomerId, EventFields, Timestamp, TransactionFields
from model.churn_model import ModelCard
from model.scorecard import SCORECARD

MAX_CUSTOMERS_PER_REQUEST = 1000
MAX_ROWS_PER_CUSTOMER = 100_000


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
AsOf = Timestamp | date | None


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
    model_version: str | None = None
    source: str | None = None
    loaded_at: datetime | None = None
    last_check: datetime | None = None
    reload_error: str | None = None
