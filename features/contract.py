"""The data contract: what churnguard reads, declared once.

Each input table is a pydantic model. The same models type the API's request bodies (``serving/schemas.py``),
and batch validation (``features/validate.py``) derives its SQL checks and the clean Arrow schema from them, so
the API and the batch reader cannot disagree on what a valid transaction is.

Time stamps are naive UTC, kept to the second (finer parts are dropped: churn is measured in days, and every
feature engine then sees identical values); the cut happens where tables are built (batch validation's SQL and
``Dataset``), so parsed request rows keep their raw value and duplicate detection compares what was sent.
Amounts are in the business's currency; refunds and cancellations are valid rows with a negative amount (they
are a churn signal, not noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Annotated, Literal, get_args, get_origin

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None


def now_utc() -> datetime:
    """The run's clock as a naive UTC time stamp to the second (the contract's time zone). Read once, at the edge."""
    from datetime import UTC

    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _naive_utc(ts: datetime) -> datetime:
    """Aware time stamps are converted to UTC; naive ones are taken as UTC already."""
    if ts.tzinfo is not None:
        from datetime import UTC

        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("must be a finite number")
    return x


Timestamp = Annotated[datetime, AfterValidator(_naive_utc)]
Amount = Annotated[float, AfterValidator(_finite)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransactionFields(_Record):
    """One purchase (positive amount) or refund (negative amount) line of a customer."""

    timestamp: Timestamp = Field(
        description="When it happened (naive UTC or ISO 8601 with offset).", examples=["2024-05-01T10:00:00"]
    )
    amount: Amount = Field(description="Money amount; refunds/cancellations are negative.", examples=[42.5])
    order_id: OptionalText = Field(None, description="Order/invoice id; lines of one order share it.")
    quantity: Annotated[float, AfterValidator(_finite)] | None = Field(None, description="Units bought.")
    product_id: OptionalText = Field(None, description="Product / SKU.")
    category: OptionalText = Field(None, description="Product category.")
    channel: OptionalText = Field(None, description="Sales channel, e.g. web, app, store.")


class Transaction(TransactionFields):
    customer_id: CustomerId


class EventFields(_Record):
    """One engagement event: a session, an e-mail open or click, an app login, a support ticket, ..."""

    timestamp: Timestamp = Field(description="When it happened.", examples=["2024-05-03T18:20:00"])
    event_type: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] = Field(
        description="e.g. session, email_open, email_click, support_ticket, app_login.", examples=["email_open"]
    )


class Event(EventFields):
    customer_id: CustomerId


class CustomerFields(_Record):
    """Static facts about a customer; subscription businesses add the cancel date."""

    signup_date: Timestamp | None = Field(None, description="Sign-up / account creation.")
    churn_date: Timestamp | None = Field(
        None, description="Explicit cancel date (subscriptions). Used for labels only, never as a feature."
    )


class Customer(CustomerFields):
    customer_id: CustomerId


ColumnKind = Literal["string", "timestamp", "float64"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    required: bool


@dataclass(frozen=True)
class TableContract:
    """A contract table: its file name stem in the input folder and its columns (from the pydantic model)."""

    name: str
    model: type[BaseModel]
    required_file: bool
    unique_key: tuple[str, ...] = ()

    @cached_property  # read on every request (each Dataset checks its tables' schemas): built once
    def columns(self) -> tuple[Column, ...]:
        return tuple(_column(name, info.annotation, info.is_required()) for name, info in _ordered_fields(self.model))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=not c.required) for c in self.columns])

    def empty(self) -> pa.Table:
        return self.arrow_schema.empty_table()


_ARROW: dict[str, pa.DataType] = {"string": pa.string(), "timestamp": pa.timestamp("us"), "float64": pa.float64()}


def _ordered_fields(model: type[BaseModel]):
    """customer_id first, then the model's own field order."""
    items = list(model.model_fields.items())
    return sorted(items, key=lambda kv: kv[0] != "customer_id")


def _column(name: str, annotation: object, required: bool) -> Column:
    base = annotation
    while get_origin(base) is not None:  # unwrap Annotated[...] and Optional[...]
        args = [a for a in get_args(base) if a is not type(None)]
        base = args[0]
    kind: ColumnKind = {str: "string", datetime: "timestamp", float: "float64"}[base]  # type: ignore[index]
    return Column(name, kind, required)


TRANSACTIONS = TableContract("transactions", Transaction, required_file=True)
EVENTS = TableContract("events", Event, required_file=False)
CUSTOMERS = TableContract("customers", Customer, required_file=False, unique_key=("customer_id",))
TABLES: tuple[TableContract, ...] = (TRANSACTIONS, EVENTS, CUSTOMERS)
