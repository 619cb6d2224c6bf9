"""The customer store: one persistent, validated home for transactions, events and customers.

``ingest(store, folder)`` validates a folder exactly as ``churn validate`` does (``features/validate.py``: same
contract, same rejects) and appends the kept rows; the API appends a few already-validated rows with
``store.append(...)``; batch jobs read the whole store (``store.dataset()``) or a chunk of customers at a time
(``store.chunks(n)``), and the API reads one customer's rows (``store.rows_for([id])``). Reads never re-validate.

**Identity and idempotency** (``features/store/identity.py``). Transactions and events are identified by a hash of
their contract columns (the k-th identical copy within one batch has its own id), customers by ``customer_id``.
Ingesting the same file twice adds nothing; a later file adds only rows not yet stored; a retried API request adds
nothing. Every ingest is one transaction with a batch id; its rejected rows are stored with that id
(``store.rejects(batch_id)``); an ingest that fails or is killed at any point leaves the store as it was.

**A customer whose sign-up or churn date changes** in a later file (or API call): the latest write wins: the
store's customer row becomes the new version, and the ingest reports it as *updated* (not added). That is what a
subscription export does when a customer cancels: the same id comes back with a ``churn_date``. A batch that does
not mention a customer leaves them as they are.

**Backends.** ``StoreSettings.url`` unset: the embedded store under ``<data_dir>/store`` (Arrow IPC segment files
per batch + an SQLite catalog, ``features/store/embedded.py``: why, with measurements, is written there);
``postgresql://...``: PostgreSQL (``features/store/postgres.py``). Both pass the same tests
(``tests/test_store.py``).

**The trigger outbox** (``features/store/outbox.py``: columns, states, ordering) lives in the same store: each
trigger firing once (``add_outbox``, idempotent on its id, in one transaction with the customers' evaluation state),
read by cursor (``outbox_after``) or for delivery (``pending_deliveries`` / ``mark_delivery``).

**Customer keys.** Each customer gets a stable integer ``customer_key`` when an ingest first sees them
(``store.customer_keys()``), for feature queries that group on integers. Customers first seen through the API get
theirs at the next ingest (or ``compact()``). ``Dataset`` tables keep ``customer_id`` strings, as everywhere else.
"""

from __future__ import annotations

from typing import Any

from features.store.settings import StoreError, StoreSettings

__all__ = [
    "AppendResult",
    "BatchInfo",
    "IngestResult",
    "Store",
    "StoreError",
    "StoreSettings",
    "ingest",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """The rest loads on first use (pyarrow, DuckDB), so settings can import this package cheaply."""
    import importlib

    base = importlib.import_module("features.store.base")
    try:
        return getattr(base, name)
    except AttributeError:
        raise AttributeError(f"module 'features.store' has no attribute {name!r}") from None
