"""The trigger outbox: the one definition of an outbox item, shared by both store backends, the trigger evaluation
(``serving/triggers.py``), the pull route (``serving/outbox.py``) and webhook delivery.

An item is written once per firing, in the same transaction as the evaluation state of its customers
(``Store.add_outbox``), and is identified by :func:`outbox_id` of (rule, customer_id, the firing's as_of date): a
re-run or a resumed run of the same evaluation finds the id present and adds nothing.

Columns (:data:`OUTBOX_SCHEMA`, in this order):

================  ==============  ================================================================================
column            type            meaning
================  ==============  ================================================================================
seq               int64           position in the outbox, increasing in commit order: the pull route's cursor
id                string          uuid5 of ``rule|customer_id|YYYY-MM-DD`` (as_of's date): the idempotency key
customer_id       string
rule              string          the trigger rule that fired (``serving/triggers.yaml``)
action            string          what to do (an action of the retention policy)
fired_at          timestamp[us]   when the evaluation that fired it ran (UTC, naive)
as_of             timestamp[us]   the date the customer was evaluated at (history strictly before it)
fields            string          JSON object of the scorecard / history fields that made the rule fire
control           bool            true: held out at random as control; recorded, never to be contacted
state             string          pending | delivered | dead | control (see :data:`STATES`)
attempts          int64           delivery attempts so far
next_attempt_at   timestamp[us]   when a pending item may be tried next (null once delivered, dead or control)
last_error        string          the last delivery failure, if any
================  ==============  ================================================================================

States: a treated item starts ``pending`` (``next_attempt_at`` = ``fired_at``); delivery moves it to ``delivered``,
or keeps it ``pending`` with a later ``next_attempt_at`` after a failure, or to ``dead`` after the last attempt. A
control item is written as ``control`` and stays so: the pull route shows it (marked), push delivery never sends it,
and the store refuses to mark it.

Ordering: both backends serialise outbox writers (SQLite's write lock; a PostgreSQL advisory lock held for the
transaction), so ``seq`` grows in commit order and a reader never sees seq ``n + 1`` committed before ``n``: a
cursor never skips an item.

Evaluation state (:data:`EVALUATIONS_SCHEMA`): per customer the risk tier of the latest evaluation and of the one
before it, so ``risk_jump`` can compare, and a re-run at the same as_of compares with the same previous tier.

Pending evaluations (:data:`PENDING_SCHEMA`): the customers whose rows ``POST /v1/events`` added or changed, due a
live trigger evaluation (``serving/live_triggers.py``). ``append(..., evaluate=True)`` records them in the same
transaction as the rows, so a stored row always has its evaluation queued, whatever happens to the process next.
A worker *claims* a few (``claim_evaluations``: ``claimed_until`` = now + a lease, so two workers or processes never
evaluate one customer at once, and the claim of a worker that died runs out), evaluates them, and hands the claimed
rows back to ``add_outbox(..., evaluated=...)``, which deletes them in the transaction that writes the firings. A
customer touched again while being evaluated gets a new ``seq``: that row is not deleted but released, and is
evaluated again with the new rows.

================  ==============  ================================================================================
column            type            meaning
================  ==============  ================================================================================
customer_id       string          the customer (one row per customer)
seq               int64           increases on every touch: the worker deletes only the (customer_id, seq) it saw
touched_at        timestamp[us]   when the latest request touched the customer (UTC, naive)
claimed_until     timestamp[us]   a worker's claim runs until then (null: free to claim)
================  ==============  ================================================================================
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import pyarrow as pa

PENDING, DELIVERED, DEAD, CONTROL = "pending", "delivered", "dead", "control"
STATES = (PENDING, DELIVERED, DEAD, CONTROL)
# what delivery may set with ``mark_delivery`` (control items are never delivered)
DELIVERY_STATES = (PENDING, DELIVERED, DEAD)

_TS = pa.timestamp("us")

# what the evaluation writes (add_outbox's input)
ITEM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("fired_at", _TS, nullable=False),
        pa.field("as_of", _TS, nullable=False),
        pa.field("fields", pa.string(), nullable=False),
        pa.field("control", pa.bool_(), nullable=False),
    ]
)
DELIVERY_COLUMNS = (
    pa.field("state", pa.string(), nullable=False),
    pa.field("attempts", pa.int64(), nullable=False),
    pa.field("next_attempt_at", _TS),
    pa.field("last_error", pa.string()),
)
# what the store returns
OUTBOX_SCHEMA = pa.schema([pa.field("seq", pa.int64(), nullable=False), *ITEM_SCHEMA, *DELIVERY_COLUMNS])
OUTBOX_COLUMNS: tuple[str, ...] = tuple(OUTBOX_SCHEMA.names)

# the latest evaluation of each customer, and the one before it
EVALUATIONS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("as_of", _TS, nullable=False),
        pa.field("risk_tier", pa.string(), nullable=False),
        pa.field("prev_as_of", _TS),
        pa.field("prev_tier", pa.string()),
    ]
)
EVALUATION_INPUT = pa.schema([EVALUATIONS_SCHEMA.field(n) for n in ("customer_id", "as_of", "risk_tier")])

# firings, for cool-downs and the contact cap
FIRINGS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("as_of", _TS, nullable=False),
        pa.field("control", pa.bool_(), nullable=False),
    ]
)

# customers due a live trigger evaluation (see the module docstring)
PENDING_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("touched_at", _TS, nullable=False),
        pa.field("claimed_until", _TS),
    ]
)
PENDING_COLUMNS: tuple[str, ...] = tuple(PENDING_SCHEMA.names)

_NAMESPACE = uuid.UUID("5b0e4c1e-7d9a-4a55-9d2c-6f1b8c0e2a11")  # fixed forever: ids must not change


def outbox_id(rule: str, customer_id: str, as_of: date | datetime) -> str:
    """The item's id: the same rule, customer and as_of date always give the same id (one firing per day)."""
    day = as_of.date() if isinstance(as_of, datetime) else as_of
    return str(uuid.uuid5(_NAMESPACE, f"{rule}|{customer_id}|{day.isoformat()}"))


def items_table(rows: list[dict] | pa.Table) -> pa.Table:
    """Outbox items in :data:`ITEM_SCHEMA` (checks the columns; ``add_outbox`` accepts exactly this)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=ITEM_SCHEMA)
    missing = [n for n in ITEM_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"outbox items miss column(s) {', '.join(missing)}")
    return table.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)


def initial_delivery(control: bool, fired_at: datetime) -> tuple[str, int, datetime | None, None]:
    """(state, attempts, next_attempt_at, last_error) of a new item."""
    return (CONTROL, 0, None, None) if control else (PENDING, 0, fired_at, None)


def check_delivery_state(state: str) -> None:
    if state not in DELIVERY_STATES:
        raise ValueError(f"delivery state must be one of {', '.join(DELIVERY_STATES)}, not {state!r}")
