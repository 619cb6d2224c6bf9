"""The API's side of the customer store (``features/store/``): scoring stored customers by id, and new rows.

* **Lookups** (``GET /v1/customers/{id}/score``, ``POST /v1/customers/score``): the customers' stored rows
  (``store.rows_for``) go through the same accounting as batch scoring (``serving/scoring.py::score_batch``):
  customers first seen on or after ``as_of`` are not scored (``REJECTED_AFTER``), customers with no purchase
  before it are prospects (``NOT_SCORABLE``), everybody else through ``score_dataset``. So a lookup equals
  ``churn score`` on the store for the same customer and ``as_of`` (``tests/test_api_store.py`` checks it field
  by field on both backends). Ids with no row at all are *not found* (404 for one, ``not_found`` for many).
* **New rows** (``POST /v1/events``): each row is checked against the data contract's own models
  (``features/contract.py``: the same models batch validation derives its checks from), with file validation's
  reasons (``missing amount``, ``unparseable timestamp``, ``timestamp after now``, ``exact duplicate``,
  ``duplicate customer_id``, ``churn_date before signup_date``, ...). Kept rows go through ``store.append``, one
  transaction, where row identity makes a retried request add nothing; rejected rows come back with their table,
  index, field and reason.
* **An unreachable store** is a :class:`StoreUnavailable` (503 on these routes, ``/readyz`` not ready), never a
  default: the store is opened on first use and again after a failure, so the service starts (and serves the
  routes that need no store) while the store is down, and recovers without a restart when it comes back. A failed
  store call is tried once more before it counts (a connection dropped by a server restart is replaced then).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from features.build import entities_at
from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS, Customer, Event, TableContract, Transaction
from features.engines import Engine
from features.store import Store, StoreError, StoreSettings, open_store
from model.churn_model import ChurnModel
from serving.policy import Policy
from serving.scoring import REJECTED_AFTER, ScoredRows, score_rows

log = logging.getLogger("churnguard.api")
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ the store


class StoreUnavailable(Exception):
    """The customer store cannot be reached (or opened): the request cannot be answered now."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(reason)
        self.location = location
        self.reason = reason


class StoreHandle:
    """The service's store: opened on first use, reopened after a failure; store failures become
    :class:`StoreUnavailable`."""

    def __init__(self, settings: StoreSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.location = _location(settings, self.data_dir)
        self._store: Store | None = None
        self._lock = threading.Lock()

    def _get(self) -> Store:
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_store(self.settings, self.data_dir)
                except (StoreError, OSError, sqlite3.Error) as e:
                    raise StoreUnavailable(self.location, _one_line(e)) from None
                self.location = self._store.location
            return self._store

    def run(self, work: Callable[[Store], T]) -> T:
        """``work(store)`` for one request; tried a second time if it fails (a request thread may hold a connection
        the server dropped while it was down or restarting: the store replaces it on the retry). Reads are safe to
        repeat, and so are appends (a row already stored is not added again). A second failure is a
        ``StoreUnavailable``."""
        for attempt in (1, 2):
            try:
                return work(self._get())
            except (StoreError, OSError, sqlite3.Error) as e:
                if attempt == 2:
                    raise StoreUnavailable(self.location, _one_line(e)) from None
                log.warning("the customer store at %s failed, trying once more: %s", self.location, _one_line(e))
        raise AssertionError("unreachable")

    def check(self) -> str | None:
        """None when the store answers a (cheap, empty) read, else why not: for ``/readyz``."""
        try:
            self.run(lambda store: store.rows_for([]))
        except StoreUnavailable as e:
            return f"the customer store at {e.location} cannot be reached: {e.reason}"
        return None

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                with contextlib.suppress(Exception):
                    self._store.close()
                self._store = None


def _location(settings: StoreSettings, data_dir: Path) -> str:
    """Where the store is, for messages (a PostgreSQL URL without its password)."""
    if settings.url:
        from features.store.base import _redact

        return _redact(settings.url)
    return str(settings.path or data_dir / "store")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# ------------------------------------------------------------------------------------------------ lookups


@dataclass
class Lookup:
    scored: ScoredRows
    not_found: list[str] = field(default_factory=list)


def score_stored(
    store: Store,
    customer_ids: Sequence[str],
    as_of: datetime,
    model: ChurnModel,
    policy: Policy,
    *,
    engine: Engine | None = None,
    reasons: bool = False,
) -> Lookup:
    """Scorecards of stored customers at ``as_of``, with ``score_batch``'s accounting (module docstring)."""
    storable = [c for c in customer_ids if "\x00" not in c]  # no store holds such an id (see check_rows)
    data = store.rows_for(storable)
    known = set(data.customer_ids().to_pylist())
    not_found = [c for c in customer_ids if c not in known]
    entities = entities_at(data, as_of)
    entered = set(entities["customer_id"].to_pylist())
    later = [{"customer_id": c, "reason": REJECTED_AFTER} for c in customer_ids if c in known and c not in entered]
    if entities.num_rows:
        scored = score_rows(data, entities, model, policy, engine=engine, reasons=reasons)
    else:
        scored = ScoredRows([], [])
    rejected = later + scored.rejected
    if len(customer_ids) > 1:  # answers in the order the ids were asked
        order = {c: i for i, c in enumerate(customer_ids)}
        scored.scores.sort(key=lambda card: order[card["customer_id"]])
        rejected.sort(key=lambda r: order[r["customer_id"]])
    return Lookup(ScoredRows(scored.scores, rejected), not_found)


# ------------------------------------------------------------------------------------------------ new rows

EXACT_DUPLICATE = "exact duplicate"  # the reasons file validation gives (features/validate.py)
DUPLICATE_CUSTOMER = "duplicate customer_id"
CHURN_BEFORE_SIGNUP = "churn_date before signup_date"
_TABLES: dict[str, tuple[TableContract, type[BaseModel]]] = {
    "transactions": (TRANSACTIONS, Transaction),
    "events": (EVENTS, Event),
    "customers": (CUSTOMERS, Customer),
}


@dataclass(frozen=True)
class RowReject:
    table: str
    index: int
    field: str
    reason: str
    detail: str
    customer_id: str | None


@dataclass
class CheckedRows:
    kept: dict[str, list[BaseModel]]
    rejected: list[RowReject]


def check_rows(tables: dict[str, list[Any]], *, now: datetime | None) -> CheckedRows:
    """Each row of each table against its contract model; the first failed check (in column order) is its reason.

    ``now``: rows with a time stamp after it are rejected (``validation.reject_future``); None keeps them."""
    kept: dict[str, list[BaseModel]] = {}
    rejected: list[RowReject] = []
    for name, rows in tables.items():
        contract, model = _TABLES[name]
        order = {c: i for i, c in enumerate(contract.column_names)}
        seen_rows: set[str] = set()
        seen_ids: set[str] = set()
        kept[name] = []

        def reject(i: int, column: str | None, reason: str, detail: str, row: Any, name: str = name) -> None:
            where = f"{name}[{i}]" + (f".{column}" if column else "")
            cid = row.get("customer_id") if isinstance(row, dict) else None
            rejected.append(RowReject(name, i, where, reason, detail, cid if isinstance(cid, str) else None))

        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                reject(i, None, "not an object", f"each row is a JSON object, got {type(row).__name__}", row)
                continue
            try:
                parsed = model.model_validate(row)
            except ValidationError as e:
                column, reason, detail = _first_error(e, contract, order)
                reject(i, column, reason, detail, row)
                continue
            nul = next((k for k, v in parsed.model_dump().items() if isinstance(v, str) and "\x00" in v), None)
            if nul:  # PostgreSQL text cannot hold it, so neither store takes it
                reject(i, nul, f"invalid {nul}", "text must not contain the NUL character (\\u0000)", row)
                continue
            late = _after_now(parsed, now)
            if late:
                reject(i, late, f"{late} after now", f"{getattr(parsed, late)} is after {now}", row)
                continue
            if name == "customers":
                signup, churn = parsed.signup_date, parsed.churn_date  # type: ignore[attr-defined]
                if signup is not None and churn is not None and churn < signup:
                    reject(i, "churn_date", CHURN_BEFORE_SIGNUP, f"{churn} is before {signup}", row)
                    continue
                cid = parsed.customer_id  # type: ignore[attr-defined]
                if cid in seen_ids:
                    reject(i, "customer_id", DUPLICATE_CUSTOMER, f"{cid!r} appears earlier in customers", row)
                    continue
                seen_ids.add(cid)
            else:
                raw = json.dumps(row, sort_keys=True, default=str)
                if raw in seen_rows:
                    reject(i, None, EXACT_DUPLICATE, "identical to an earlier row of this request", row)
                    continue
                seen_rows.add(raw)
            kept[name].append(parsed)
    return CheckedRows(kept, rejected)


def _first_error(e: ValidationError, contract: TableContract, order: dict[str, int]) -> tuple[str | None, str, str]:
    """(column, reason in file validation's words, pydantic's message) of the row's first failing column."""
    kinds = {c.name: c.kind for c in contract.columns}
    errors = sorted(e.errors(), key=lambda err: order.get(str(err["loc"][0]) if err["loc"] else "", len(order)))
    err = errors[0]
    column = str(err["loc"][0]) if err["loc"] else None
    detail = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    kind = kinds.get(column or "")
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        return column, f"unknown column {column}", f"the contract has no column {column!r}"
    if typ == "missing" or (typ == "string_too_short" and kind == "string"):
        return column, f"missing {column}", detail
    if kind == "timestamp":
        return column, f"unparseable {column}", detail
    if kind == "float64":
        if "finite" in detail:
            return column, f"non-finite {column}", detail
        return column, f"non-numeric {column}", detail
    if typ == "string_too_long":
        return column, f"{column} too long", detail
    return column, f"invalid {column}", detail


def _after_now(row: BaseModel, now: datetime | None) -> str | None:
    """The first time stamp column after ``now`` (a cancel date may lie ahead: it is a label, never a feature)."""
    if now is None:
        return None
    for column in ("timestamp", "signup_date"):
        value = getattr(row, column, None)
        if value is not None and value > now:
            return column
    return None
