"""Types and entry points of the customer store (see ``features/store/__init__.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from pydantic import BaseModel

from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS, TableContract
from features.dataset import Dataset, ValidationReport
from features.mapping import Mapping
from features.store.settings import EmptyStoreError, StoreError, StoreSettings
from features.validate import RawTable, load_dataset, validate_tables

TABLE_NAMES = ("transactions", "events", "customers")
KEYS_SCHEMA = pa.schema([pa.field("customer_id", pa.string(), nullable=False), ("customer_key", pa.int64())])
CONTRACTS: dict[str, TableContract] = {"transactions": TRANSACTIONS, "events": EVENTS, "customers": CUSTOMERS}


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    report: ValidationReport
    rejected: int
    added: dict[str, int]
    present: dict[str, int]
    updated_customers: int = 0


@dataclass(frozen=True)
class AppendResult:
    added: dict[str, int]
    present: dict[str, int]
    updated_customers: int = 0
    queued: int = 0  # customers queued for a live trigger evaluation (``append(..., evaluate=True)``)


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    kind: str  # "ingest" or "compact"
    source: str
    committed_at: datetime
    summary: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """What every backend offers (``EmbeddedStore``, ``PostgresStore``)."""

    location: str

    def write_batch(
        self, data: Dataset, rejects: pa.Table, *, batch_id: str, source: str, report: ValidationReport
    ) -> IngestResult: ...

    def append(
        self,
        transactions: Iterable[Any] = (),
        events: Iterable[Any] = (),
        customers: Iterable[Any] = (),
        *,
        evaluate: bool = False,
    ) -> AppendResult:
        """Already-validated rows, one transaction; rows already stored are skipped. ``evaluate``: the customers
        whose rows were added or changed are queued for a live trigger evaluation in the same transaction."""
        ...

    def dataset(self) -> Dataset: ...

    def rows_for(self, customer_ids: Sequence[str]) -> Dataset: ...

    def customer_ids(self) -> pa.Array: ...

    def customer_keys(self) -> pa.Table: ...

    def chunks(self, customers_per_chunk: int) -> Iterator[Dataset]: ...

    def batches(self) -> list[BatchInfo]: ...

    def rejects(self, batch_id: str | None = None) -> pa.Table: ...

    def compact(self) -> None: ...

    def close(self) -> None: ...

    # the trigger outbox and evaluation state (``features/store/outbox.py`` defines the columns)

    def add_outbox(
        self, items: pa.Table, *, evaluations: pa.Table | None = None, evaluated: pa.Table | None = None
    ) -> int:
        """Add outbox items (``ITEM_SCHEMA``) not present yet (by ``id``), record ``evaluations``
        (``EVALUATION_INPUT``: customer_id, as_of, risk_tier) and retire the pending evaluations ``evaluated`` (rows
        of ``claim_evaluations``), all in one transaction; returns how many items were added."""
        ...

    def claim_evaluations(self, now: datetime, limit: int, lease_s: float) -> pa.Table:
        """Claim up to ``limit`` pending evaluations nobody holds (or whose claim ran out), oldest touch first,
        until ``now + lease_s`` (``PENDING_SCHEMA``)."""
        ...

    def pending_evaluations(self) -> int:
        """How many customers are waiting for a live trigger evaluation (claimed or not)."""
        ...

    def outbox_after(self, cursor: int, limit: int) -> pa.Table:
        """Items with ``seq > cursor``, in ``seq`` order, at most ``limit`` (``OUTBOX_SCHEMA``)."""
        ...

    def pending_deliveries(self, now: datetime, limit: int) -> pa.Table:
        """Pending items due at ``now`` (``next_attempt_at <= now``), oldest due first (``OUTBOX_SCHEMA``)."""
        ...

    def claim_deliveries(self, now: datetime, limit: int, lease_until: datetime) -> pa.Table:
        """Take the items ``pending_deliveries`` would return and, in the same transaction, move their
        ``next_attempt_at`` to ``lease_until``: several deliverers on one store never take the same item while its
        lease runs, and an item whose deliverer died becomes due again when the lease ends (at least once)."""
        ...

    def mark_delivery(
        self, id: str, state: str, attempts: int, next_attempt_at: datetime | None, last_error: str | None
    ) -> None:
        """Record a delivery attempt's outcome; unknown ids and control items are a ``StoreError``."""
        ...

    def retry_dead(self, now: datetime) -> int:
        """Every dead-lettered item back to ``pending``, attempts reset to 0, due at ``now`` (its ``last_error``
        kept until the next attempt); returns how many."""
        ...

    def firings_since(self, since: datetime, customer_ids: Sequence[str] | None = None) -> pa.Table:
        """Items with ``as_of >= since`` (all customers, or those given): ``FIRINGS_SCHEMA``."""
        ...

    def evaluations(self, customer_ids: Sequence[str] | None = None) -> pa.Table:
        """The latest and previous evaluation of each customer (``EVALUATIONS_SCHEMA``)."""
        ...


def open_store(settings: StoreSettings, data_dir: Path, *, create: bool = True) -> Store:
    """The store the settings name: PostgreSQL when ``url`` is set, else the embedded one under ``data_dir``.

    ``create=False`` is for readers: an embedded store that was never written is ``EmptyStoreError`` rather than
    a new empty folder left behind by a read."""
    if settings.url:
        if not settings.url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"setting store.url: unsupported URL {_redact(settings.url)!r} (use postgresql://...)")
        from features.store.postgres import PostgresStore

        return PostgresStore(settings.url)
    from features.store.embedded import EmbeddedStore

    path = settings.path or Path(data_dir) / "store"
    if not create and not EmbeddedStore.exists(path):
        raise EmptyStoreError(str(path))
    return EmbeddedStore(path, compact_after=settings.compact_after)


def ingest(
    store: Store,
    source: Path | Sequence[RawTable] | Dataset,
    *,
    now: datetime,
    mapping: Mapping | None = None,
    reject_future: bool = True,
    rejects: pa.Table | None = None,
) -> IngestResult:
    """Validate ``source`` (a folder, raw tables, or a ``Dataset`` validated already, with its ``rejects``) and
    append the kept rows as one batch. A broken input raises before anything is written."""
    if isinstance(source, Dataset):
        if source.report is None:
            raise ValueError("ingest of a Dataset needs the one validation returned (with its report)")
        data, rejected, name = source, rejects, "dataset"
    elif isinstance(source, Path | str):
        data, rejected = load_dataset(Path(source), now=now, mapping=mapping, reject_future=reject_future)
        name = str(source)
    else:
        data, rejected = validate_tables(list(source), now=now, reject_future=reject_future)
        name = ", ".join(t.source for t in source)
    from features.validate import REJECTS_SCHEMA

    rejected = rejected if rejected is not None else REJECTS_SCHEMA.empty_table()
    assert data.report is not None
    return store.write_batch(data, rejected, batch_id=new_batch_id(), source=name, report=data.report)


def new_batch_id() -> str:
    """Sortable by time, unique: ``20261202T170501-3f9c2a1b``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def records(transactions: Iterable[Any] = (), events: Iterable[Any] = (), customers: Iterable[Any] = ()) -> dict:
    """API rows (dicts or the contract's pydantic models) as contract tables, time stamps cut to the second."""
    given = {"transactions": transactions, "events": events, "customers": customers}
    for name, rows in given.items():
        if not isinstance(rows, pa.Table):
            given[name] = [r.model_dump() if isinstance(r, BaseModel) else r for r in rows]
    data = Dataset.from_records(**given)
    return {name: getattr(data, name) for name in TABLE_NAMES}


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
