"""Row identity: what makes two stored rows "the same row", so that re-ingesting or retrying adds nothing.

* Transactions and events have no natural key, so a row *is* its content: ``row_id`` is a 64-bit hash of every
  contract column (customer id, time stamp to the second, amount, ...: the typed values validation keeps). Two rows
  with the same content in one batch are both real (validation rejects only rows identical in *every raw column*:
  e.g. two lines differing only in a column the contract ignores are both kept), so the k-th copy of a content
  within its batch gets ``hash(row_hash, k)``: a batch with three identical purchases stores three rows, and a
  second ingest of the same file, or a later file that repeats them, finds all three present. Store semantics are
  therefore "multiset union": each content is kept as many times as the most copies any one batch brought.
* Customers are identified by ``customer_id``; their ``row_id`` (hash of id, sign-up and churn dates) only tells
  whether a later file brings a *changed* version (see ``features/store/__init__.py`` for what that does).

Identity is checked per customer (``customer_id`` + ``row_id``): a false "already present" needs two different rows
of the *same customer* to share 64 bits, about 1e-16 for a customer with 100 rows (1e-10 over a million customers).

The hash is DuckDB's ``hash()``, computed here for every writer (batch ingest, the API's appends, both backends), so
all agree by construction. DuckDB does not promise that function stays the same across releases, so each store
records the id of a fixed probe row when it is created (:data:`PROBE`) and refuses to write with a DuckDB whose hash
differs, instead of silently duplicating every row on the next ingest.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import duckdb
import numpy as np
import pyarrow as pa

from features.contract import CUSTOMERS, TableContract
from features.duck import connect, quote

ROW_ID = "row_id"
SMALL = 100  # up to this many rows (an API request) the values go in as query parameters: no Arrow round trip
_INPUT = "cg_identity_input"
_SQL_TYPES = {"string": "VARCHAR", "timestamp": "TIMESTAMP", "float64": "DOUBLE"}


def row_ids(con: duckdb.DuckDBPyConnection, contract: TableContract, table: pa.Table) -> pa.Array:
    """``row_id`` (int64) of each row of a contract table, in row order (see the module docstring)."""
    if table.num_rows == 0:
        return pa.array([], pa.int64())
    if table.num_rows <= SMALL:
        ids = _small_hashes(con, contract, table)
    else:
        columns = ", ".join(quote(c) for c in contract.column_names)
        con.register(_INPUT, table.select(list(contract.column_names)))
        try:
            hashes = con.sql(f"SELECT hash({columns}) AS h FROM {_INPUT}").to_arrow_table()["h"]
        finally:
            con.unregister(_INPUT)
        ids = hashes.to_numpy().astype(np.uint64, copy=False)
    if contract is not CUSTOMERS:
        ids = _number_copies(con, table["customer_id"], ids)
    return pa.array(ids.view(np.int64))


def _small_hashes(con: duckdb.DuckDBPyConnection, contract: TableContract, table: pa.Table) -> np.ndarray:
    """The same ``hash()`` over the same typed values, as parameters (3 ms instead of 12 ms for one row on a busy
    machine: registering an Arrow table and fetching Arrow back dominate for a handful of rows)."""
    names = list(contract.column_names)
    typed = ", ".join(f"CAST(c{i} AS {_SQL_TYPES[col.kind]})" for i, col in enumerate(contract.columns))
    row = "(" + ", ".join("?" * len(names)) + ")"
    aliases = ", ".join(f"c{i}" for i in range(len(names)))
    query = f"SELECT hash({typed}) FROM (VALUES {', '.join([row] * table.num_rows)}) AS t({aliases})"
    values = [v for r in table.select(names).to_pylist() for v in r.values()]
    return np.array([h for (h,) in con.execute(query, values).fetchall()], dtype=np.uint64)


def _number_copies(con: duckdb.DuckDBPyConnection, customer_id: pa.ChunkedArray, ids: np.ndarray) -> np.ndarray:
    """The ids with the k-th (k >= 2) row with the same customer and content hash gets ``hash(hash, k)``.

    Repeated hashes are found with one numpy sort of the 64-bit hashes (0.1 s for 2.4M rows, where a DuckDB
    GROUP BY over all rows took 1.4 s); only the rows carrying a repeated hash go to the numbering query."""
    if len(ids) < 2:
        return ids
    ordered = np.sort(ids)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return ids
    rows = np.flatnonzero(np.isin(ids, repeated))
    frame = pa.table({"pos": pa.array(rows), "customer_id": customer_id.take(pa.array(rows)), "h": ids[rows]})
    con.register(_INPUT, frame)
    try:
        copies = con.sql(
            f"""
            SELECT pos, hash(h, copy) AS id FROM (
                SELECT pos, h, row_number() OVER (PARTITION BY customer_id, h ORDER BY pos) AS copy FROM {_INPUT}
            ) WHERE copy > 1
            """
        ).to_arrow_table()
    finally:
        con.unregister(_INPUT)
    if copies.num_rows:
        ids = ids.copy()
        ids[copies["pos"].to_numpy()] = copies["id"].to_numpy()
    return ids


def probe(con: duckdb.DuckDBPyConnection) -> str:
    """The row id of a fixed transaction: stored with each store, compared before every write."""
    from features.contract import TRANSACTIONS

    row = {
        "customer_id": "probe-ü",
        "timestamp": datetime(2024, 2, 29, 12, 30, 1),
        "amount": -12.5,
        "order_id": None,
        "quantity": 3.0,
        "product_id": "p",
        "category": None,
        "channel": "web",
    }
    table = pa.Table.from_pylist([row], schema=TRANSACTIONS.arrow_schema)
    return str(row_ids(con, TRANSACTIONS, table)[0].as_py())


@lru_cache(maxsize=1)
def current_probe() -> str:
    """:func:`probe` with this process's DuckDB, computed once."""
    con = connect()
    try:
        return probe(con)
    finally:
        con.close()
