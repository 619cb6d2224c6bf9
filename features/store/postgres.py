"""The customer store on PostgreSQL (``CHURN_STORE__URL=postgresql://...``): the same interface as the embedded one.

Tables live in the ``churnguard`` schema. Transactions and events have the primary key ``(customer_id, row_id)``
(``features/store/identity.py``): it makes re-ingests and retried API calls idempotent (``ON CONFLICT DO NOTHING``)
and finds one customer's rows. ``customer_id`` is collated ``"C"`` (byte order), like the embedded store, so
customer-range chunks and their order agree between backends. An ingest is one transaction (serialised with an
advisory lock); readers see the store before or after it (MVCC), never half of it; a killed client's transaction
is rolled back by the server.

Two drivers, each where it measured best (2M transaction rows, local server, 2 busy cores):

=========================  =================================  ===============================
step                       ADBC (``adbc-driver-postgresql``)    psycopg 3
=========================  =================================  ===============================
bulk load (Arrow in)       6.5 s (``adbc_ingest``, COPY)        8.3 s (COPY of CSV text)
bulk read (Arrow out)      4.8-5.7 s                           5.6-8.3 s COPY CSV + 1.5-2.4 s parse
one customer's rows        0.77 ms p50, 10 ms p99              0.27 ms p50, 5.4 ms p99
=========================  =================================  ===============================

so batches move as Arrow through ADBC, and the API's small reads and appends go through psycopg.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from features.contract import CUSTOMERS
from features.dataset import Dataset, ValidationReport
from features.duck import connect
from features.store.base import (
    CONTRACTS,
    KEYS_SCHEMA,
    TABLE_NAMES,
    AppendResult,
    BatchInfo,
    IngestResult,
    StoreError,
    _redact,
    records,
)
from features.store.identity import ROW_ID, current_probe, row_ids
from features.store.outbox import (
    CONTROL,
    DEAD,
    EVALUATION_INPUT,
    EVALUATIONS_SCHEMA,
    FIRINGS_SCHEMA,
    OUTBOX_COLUMNS,
    OUTBOX_SCHEMA,
    PENDING,
    PENDING_COLUMNS,
    PENDING_SCHEMA,
    STATES,
    check_delivery_state,
    items_table,
)
from features.validate import REJECTS_SCHEMA

SCHEMA = "churnguard"
_SQL = {"string": "text", "timestamp": "timestamp", "float64": "double precision"}
_ARROW_SCHEMA = {name: c.arrow_schema for name, c in CONTRACTS.items()}
_COLUMNS = {name: list(c.column_names) for name, c in CONTRACTS.items()}
_COLLATE_C, _NOT_NULL = ' COLLATE "C"', " NOT NULL"
_LOCK = 7_264_311  # advisory lock id: one ingest at a time
_OUTBOX_LOCK = 7_264_312  # one outbox writer at a time: seq grows in commit order (a cursor never skips an item)


def _ddl() -> list[str]:
    out = [
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.batches (seq bigserial PRIMARY KEY, batch_id text UNIQUE NOT NULL, "
        "kind text NOT NULL, source text NOT NULL, committed_at timestamp NOT NULL, summary jsonb NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.customer_keys (customer_key bigint GENERATED ALWAYS AS IDENTITY "
        'PRIMARY KEY, customer_id text COLLATE "C" UNIQUE NOT NULL)',
        f'CREATE TABLE IF NOT EXISTS {SCHEMA}.rejects (batch_id text NOT NULL, "table" text, source_file text, '
        "row_number bigint, reason text, customer_id text, raw text)",
        f"CREATE INDEX IF NOT EXISTS rejects_batch ON {SCHEMA}.rejects (batch_id)",
        # the trigger outbox and evaluation state (features/store/outbox.py)
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.outbox (seq bigserial PRIMARY KEY, id text UNIQUE NOT NULL, "
        'customer_id text COLLATE "C" NOT NULL, rule text NOT NULL, action text NOT NULL, fired_at timestamp NOT '
        "NULL, as_of timestamp NOT NULL, fields json NOT NULL, control boolean NOT NULL, state text NOT NULL CHECK "
        f"(state IN ({', '.join(repr(s) for s in STATES)})), attempts bigint NOT NULL, next_attempt_at timestamp, "
        "last_error text)",
        f"CREATE INDEX IF NOT EXISTS outbox_due ON {SCHEMA}.outbox (next_attempt_at, seq) WHERE state = '{PENDING}'",
        f"CREATE INDEX IF NOT EXISTS outbox_as_of ON {SCHEMA}.outbox (as_of)",
        f"CREATE INDEX IF NOT EXISTS outbox_customer ON {SCHEMA}.outbox (customer_id, as_of)",
        f'CREATE TABLE IF NOT EXISTS {SCHEMA}.trigger_evaluations (customer_id text COLLATE "C" PRIMARY KEY, '
        "as_of timestamp NOT NULL, risk_tier text NOT NULL, prev_as_of timestamp, prev_tier text)",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.pending_evaluations (seq bigserial PRIMARY KEY, customer_id text "
        'COLLATE "C" UNIQUE NOT NULL, touched_at timestamp NOT NULL, claimed_until timestamp)',
    ]
    for name, contract in CONTRACTS.items():
        cols = ", ".join(
            f'"{c.name}" {_SQL[c.kind]}{_COLLATE_C if c.name == "customer_id" else ""}{_NOT_NULL if c.required else ""}'
            for c in contract.columns
        )
        key = "customer_id" if contract is CUSTOMERS else "customer_id, row_id"
        out.append(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{name} ({cols}, row_id bigint NOT NULL, batch_seq bigint, "
            f"PRIMARY KEY ({key}))"
        )
    return out


class PostgresStore:
    """The store in a PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = _redact(url)
        self._local = threading.local()
        with self._small() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for statement in _ddl():
                con.execute(statement)
            con.execute(
                f"INSERT INTO {SCHEMA}.meta VALUES ('row_id_probe', %s) ON CONFLICT DO NOTHING", (current_probe(),)
            )
            self._probe = con.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'row_id_probe'").fetchone()[0]

    # ------------------------------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def _small(self) -> Iterator[Any]:
        """This thread's psycopg connection (small reads and the API's appends)."""
        import psycopg

        con = getattr(self._local, "con", None)
        try:
            if con is None or con.closed:
                con = self._local.con = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            yield con
        except psycopg.OperationalError as e:
            self._local.con = None
            raise StoreError(f"cannot reach the store at {self.location}: {_first_line(e)}") from None
        except psycopg.Error as e:
            raise StoreError(f"store at {self.location}: {_first_line(e)}") from None

    @contextlib.contextmanager
    def _bulk(self) -> Iterator[Any]:
        """A fresh ADBC connection in one transaction (committed on success, rolled back otherwise)."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        try:
            con = adbc.connect(self.url)
        except adbc_driver_manager.Error as e:
            raise StoreError(f"cannot reach the store at {self.location}: {_first_line(e)}") from None
        try:
            yield con
            con.commit()
        except adbc_driver_manager.Error as e:
            raise StoreError(f"store at {self.location}: {_first_line(e)}") from None
        finally:
            con.close()

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _check_probe(self) -> None:
        if current_probe() != self._probe:
            raise StoreError(
                f"store at {self.location}: its row ids were computed by another DuckDB hash function than this "
                "one (DuckDB was upgraded); rebuild the store by ingesting the source files into a new one"
            )

    # ------------------------------------------------------------------------------------------ writes

    def write_batch(
        self, data: Dataset, rejects: pa.Table, *, batch_id: str, source: str, report: ValidationReport
    ) -> IngestResult:
        self._check_probe()
        duck = connect()
        batch = {name: _with_row_ids(duck, name, getattr(data, name)) for name in TABLE_NAMES}
        duck.close()
        with self._bulk() as con, con.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
            cur.execute(
                f"INSERT INTO {SCHEMA}.batches (batch_id, kind, source, committed_at, summary) "
                f"VALUES ('{_literal(batch_id)}', 'ingest', '{_literal(source)}', '{now.isoformat()}', '{{}}') "
                "RETURNING seq"
            )
            seq = cur.fetchone()[0]
            for name, table in batch.items():
                cur.adbc_ingest(f"cg_stage_{name}", table, mode="create", temporary=True)
            added, present = {}, {}
            for name in ("transactions", "events"):
                cols = ", ".join(f'"{c}"' for c in (*_COLUMNS[name], ROW_ID))
                cur.execute(
                    f"WITH ins AS (INSERT INTO {SCHEMA}.{name} ({cols}, batch_seq) SELECT {cols}, {seq} "
                    f"FROM cg_stage_{name} ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
                )
                added[name] = cur.fetchone()[0]
                present[name] = batch[name].num_rows - added[name]
            cur.execute(_upsert_customers(f"SELECT *, {seq} FROM cg_stage_customers"))
            inserted, updated = cur.fetchone()
            added["customers"], present["customers"] = inserted, batch["customers"].num_rows - inserted - updated
            cur.execute(
                f"WITH ins AS (INSERT INTO {SCHEMA}.customer_keys (customer_id) SELECT customer_id FROM "
                "(SELECT customer_id FROM cg_stage_transactions UNION SELECT customer_id FROM cg_stage_events "
                "UNION SELECT customer_id FROM cg_stage_customers) ids ORDER BY customer_id "
                "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
            )
            new_keys = cur.fetchone()[0]
            if rejects.num_rows:
                cur.adbc_ingest("cg_stage_rejects", rejects.cast(REJECTS_SCHEMA), mode="create", temporary=True)
                cur.execute(f"INSERT INTO {SCHEMA}.rejects SELECT '{_literal(batch_id)}', * FROM cg_stage_rejects")
            summary = {
                "added": added,
                "present": present,
                "updated_customers": updated,
                "rejected": rejects.num_rows,
                "new_customer_keys": new_keys,
                "validation": {t.name: [t.rows_read, t.rows_kept, t.rejected] for t in report.tables},
            }
            cur.execute(
                f"UPDATE {SCHEMA}.batches SET summary = '{_literal(json.dumps(summary))}'::jsonb WHERE seq = {seq}"
            )
        return IngestResult(batch_id, report, rejects.num_rows, added, present, updated)

    def append(
        self,
        transactions: Iterable[Any] = (),
        events: Iterable[Any] = (),
        customers: Iterable[Any] = (),
        *,
        evaluate: bool = False,
    ) -> AppendResult:
        """Already-validated rows (the API's), one transaction; rows already stored are skipped; with ``evaluate``,
        the customers whose rows changed are queued for a live trigger evaluation in it."""
        self._check_probe()
        duck = getattr(self._local, "duck", None) or connect(threads=1)
        self._local.duck = duck
        tables = {name: _with_row_ids(duck, name, t) for name, t in records(transactions, events, customers).items()}
        ids = sorted({i for t in tables.values() for i in t["customer_id"].to_pylist()})
        added, present, updated = {}, {}, 0
        changed: set[str] = set()
        with self._small() as con, con.transaction():
            if ids:
                con.execute(
                    f"INSERT INTO {SCHEMA}.customer_keys (customer_id) SELECT unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING",
                    (ids,),
                )
            for name in ("transactions", "events"):
                table = tables[name]
                added[name] = 0
                if table.num_rows:
                    cols, select, values = _unnest(name, table)
                    new = con.execute(
                        f"INSERT INTO {SCHEMA}.{name} ({cols}) {select} ON CONFLICT DO NOTHING RETURNING customer_id",
                        values,
                    ).fetchall()
                    added[name] = len(new)
                    changed.update(c for (c,) in new)
                present[name] = table.num_rows - added[name]
            table = tables["customers"]
            added["customers"] = 0
            if table.num_rows:
                cols, select, values = _unnest("customers", table)
                added["customers"], updated, written = con.execute(
                    _upsert_customers(select, with_seq=False, ids=True), values
                ).fetchone()
                changed.update(written or [])
            present["customers"] = table.num_rows - added["customers"] - updated
            if evaluate and changed:
                # a touch gives the pending row a new seq (excluded.seq: the proposed row's fresh serial); a claim
                # in progress stays
                con.execute(
                    f"INSERT INTO {SCHEMA}.pending_evaluations (customer_id, touched_at) SELECT unnest(%s::text[]), "
                    "%s ON CONFLICT (customer_id) DO UPDATE SET seq = excluded.seq, touched_at = excluded.touched_at",
                    (sorted(changed), datetime.now(UTC).replace(tzinfo=None)),
                )
        return AppendResult(added, present, updated, len(changed) if evaluate else 0)

    def compact(self) -> None:
        """Nothing to merge in PostgreSQL; refreshes the planner's statistics after large ingests."""
        with self._small() as con:
            for name in (*TABLE_NAMES, "customer_keys"):
                con.execute(f"ANALYZE {SCHEMA}.{name}")

    # ------------------------------------------------------------------------------------------ outbox

    def add_outbox(
        self, items: pa.Table, *, evaluations: pa.Table | None = None, evaluated: pa.Table | None = None
    ) -> int:
        items = items_table(items)
        control = items["control"].to_pylist()
        fired = items["fired_at"].to_pylist()
        with self._small() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_OUTBOX_LOCK,))
            added = 0
            if items.num_rows:
                added = con.execute(
                    f"WITH ins AS (INSERT INTO {SCHEMA}.outbox (id, customer_id, rule, action, fired_at, as_of, "
                    "fields, control, state, attempts, next_attempt_at) SELECT * FROM unnest(%s::text[], %s::text[], "
                    "%s::text[], %s::text[], %s::timestamp[], %s::timestamp[], %s::json[], %s::boolean[], %s::text[], "
                    "%s::bigint[], %s::timestamp[]) ON CONFLICT (id) DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
                    (
                        items["id"].to_pylist(),
                        items["customer_id"].to_pylist(),
                        items["rule"].to_pylist(),
                        items["action"].to_pylist(),
                        fired,
                        items["as_of"].to_pylist(),
                        items["fields"].to_pylist(),
                        control,
                        [CONTROL if c else PENDING for c in control],
                        [0] * items.num_rows,
                        [None if c else f for c, f in zip(control, fired, strict=True)],
                    ),
                ).fetchone()[0]
            if evaluations is not None and evaluations.num_rows:
                ev = evaluations.select(EVALUATION_INPUT.names).cast(EVALUATION_INPUT)
                con.execute(
                    f"INSERT INTO {SCHEMA}.trigger_evaluations AS t (customer_id, as_of, risk_tier) "
                    "SELECT * FROM unnest(%s::text[], %s::timestamp[], %s::text[]) ON CONFLICT (customer_id) DO UPDATE "
                    "SET prev_as_of = CASE WHEN excluded.as_of > t.as_of THEN t.as_of ELSE t.prev_as_of END, "
                    "prev_tier = CASE WHEN excluded.as_of > t.as_of THEN t.risk_tier ELSE t.prev_tier END, "
                    "as_of = excluded.as_of, risk_tier = excluded.risk_tier WHERE excluded.as_of >= t.as_of",
                    (ev["customer_id"].to_pylist(), ev["as_of"].to_pylist(), ev["risk_tier"].to_pylist()),
                )
            if evaluated is not None and evaluated.num_rows:
                ids, seqs = evaluated["customer_id"].to_pylist(), evaluated["seq"].to_pylist()
                con.execute(
                    f"DELETE FROM {SCHEMA}.pending_evaluations p USING unnest(%s::text[], %s::bigint[]) AS d(c, s) "
                    "WHERE p.customer_id = d.c AND p.seq = d.s",
                    (ids, seqs),
                )
                # touched again meanwhile (a newer seq): due again at once, with the new rows
                con.execute(
                    f"UPDATE {SCHEMA}.pending_evaluations SET claimed_until = NULL WHERE customer_id = ANY(%s)", (ids,)
                )
        return added

    def claim_evaluations(self, now: datetime, limit: int, lease_s: float) -> pa.Table:
        at = _naive(now)
        assert at is not None
        with self._small() as con, con.transaction():
            rows = con.execute(
                f"UPDATE {SCHEMA}.pending_evaluations SET claimed_until = %s WHERE seq IN (SELECT seq FROM "
                f"{SCHEMA}.pending_evaluations WHERE claimed_until IS NULL OR claimed_until <= %s ORDER BY seq "
                f"LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {', '.join(PENDING_COLUMNS)}",
                (at + timedelta(seconds=lease_s), at, int(limit)),
            ).fetchall()
        return _from_rows(sorted(rows, key=lambda r: r[1]), PENDING_SCHEMA)

    def pending_evaluations(self) -> int:
        with self._small() as con:
            return con.execute(f"SELECT count(*) FROM {SCHEMA}.pending_evaluations").fetchone()[0]

    def outbox_after(self, cursor: int, limit: int) -> pa.Table:
        with self._small() as con:
            rows = con.execute(
                f"SELECT {_OUTBOX_SELECT} FROM {SCHEMA}.outbox WHERE seq > %s ORDER BY seq LIMIT %s",
                (int(cursor), int(limit)),
            ).fetchall()
        return _from_rows(rows, OUTBOX_SCHEMA)

    def pending_deliveries(self, now: datetime, limit: int) -> pa.Table:
        with self._small() as con:
            rows = con.execute(
                _DUE_ITEMS,
                (_naive(now), int(limit)),
            ).fetchall()
        return _from_rows(rows, OUTBOX_SCHEMA)

    def claim_deliveries(self, now: datetime, limit: int, lease_until: datetime) -> pa.Table:
        # SKIP LOCKED: a second deliverer claiming at the same moment takes the next items instead of waiting
        with self._small() as con, con.transaction():
            rows = con.execute(
                _DUE_ITEMS + " FOR UPDATE SKIP LOCKED",
                (_naive(now), int(limit)),
            ).fetchall()
            seq = OUTBOX_COLUMNS.index("seq")
            con.execute(
                f"UPDATE {SCHEMA}.outbox SET next_attempt_at = %s WHERE seq = ANY(%s)",
                (_naive(lease_until), [r[seq] for r in rows]),
            )
        return _from_rows(rows, OUTBOX_SCHEMA)

    def mark_delivery(
        self, id: str, state: str, attempts: int, next_attempt_at: datetime | None, last_error: str | None
    ) -> None:
        check_delivery_state(state)
        with self._small() as con, con.transaction():
            found = con.execute(f"SELECT state FROM {SCHEMA}.outbox WHERE id = %s FOR UPDATE", (id,)).fetchone()
            if found is None:
                raise StoreError(f"no outbox item {id!r} in the store at {self.location}")
            if found[0] == CONTROL:
                raise StoreError(f"outbox item {id!r} is a control item: it is never delivered")
            con.execute(
                f"UPDATE {SCHEMA}.outbox SET state = %s, attempts = %s, next_attempt_at = %s, last_error = %s "
                "WHERE id = %s",
                (state, int(attempts), _naive(next_attempt_at), last_error, id),
            )

    def retry_dead(self, now: datetime) -> int:
        with self._small() as con, con.transaction():
            cur = con.execute(
                f"UPDATE {SCHEMA}.outbox SET state = '{PENDING}', attempts = 0, next_attempt_at = %s "
                f"WHERE state = '{DEAD}'",
                (_naive(now),),
            )
            return cur.rowcount

    def firings_since(self, since: datetime, customer_ids: Sequence[str] | None = None) -> pa.Table:
        query = f"SELECT customer_id, rule, as_of, control FROM {SCHEMA}.outbox WHERE as_of >= %s"
        params: tuple = (_naive(since),)
        if customer_ids is not None:
            query, params = query + " AND customer_id = ANY(%s)", (*params, sorted(set(customer_ids)))
        with self._small() as con:
            return _from_rows(con.execute(query, params).fetchall(), FIRINGS_SCHEMA)

    def evaluations(self, customer_ids: Sequence[str] | None = None) -> pa.Table:
        query = f"SELECT customer_id, as_of, risk_tier, prev_as_of, prev_tier FROM {SCHEMA}.trigger_evaluations"
        params: tuple = ()
        if customer_ids is not None:
            query, params = query + " WHERE customer_id = ANY(%s)", (sorted(set(customer_ids)),)
        with self._small() as con:
            return _from_rows(con.execute(query, params).fetchall(), EVALUATIONS_SCHEMA)

    # ------------------------------------------------------------------------------------------ reads

    def dataset(self) -> Dataset:
        return self._read_bulk("")

    def chunks(self, customers_per_chunk: int) -> Iterator[Dataset]:
        """Customer-id ranges of ``customers_per_chunk`` customers, all from one snapshot."""
        with self._bulk() as con, con.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute(f"SELECT customer_id FROM {SCHEMA}.customer_keys ORDER BY customer_id")
            ids = cur.fetch_arrow_table()["customer_id"]
            for start in range(0, len(ids), customers_per_chunk):
                lo, hi = ids[start].as_py(), ids[min(start + customers_per_chunk, len(ids)) - 1].as_py()
                yield self._read_tables(cur, f"WHERE customer_id BETWEEN '{_literal(lo)}' AND '{_literal(hi)}'")

    def _read_bulk(self, where: str) -> Dataset:
        with self._bulk() as con, con.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return self._read_tables(cur, where)

    def _read_tables(self, cur: Any, where: str) -> Dataset:
        tables = {}
        for name in TABLE_NAMES:
            cols = ", ".join(f'"{c}"' for c in _COLUMNS[name])
            cur.execute(f"SELECT {cols} FROM {SCHEMA}.{name} {where}")
            tables[name] = _as_contract(name, cur.fetch_arrow_table())
        return Dataset(**tables)

    def rows_for(self, customer_ids: Sequence[str]) -> Dataset:
        ids = sorted(set(customer_ids))
        tables = {}
        with self._small() as con, con.transaction():
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for name in TABLE_NAMES:
                cols = ", ".join(f'"{c}"' for c in _COLUMNS[name])
                order = ', "timestamp"' if name != "customers" else ""
                rows = con.execute(
                    f"SELECT {cols} FROM {SCHEMA}.{name} WHERE customer_id = ANY(%s) ORDER BY customer_id{order}",
                    (ids,),
                ).fetchall()
                columns = list(zip(*rows, strict=True)) if rows else [() for _ in _COLUMNS[name]]
                schema = _ARROW_SCHEMA[name]
                tables[name] = pa.Table.from_arrays(
                    [pa.array(v, f.type) for f, v in zip(schema, columns, strict=True)], schema=schema
                )
        return Dataset(**tables)

    def customer_ids(self) -> pa.Array:
        with self._bulk() as con, con.cursor() as cur:
            cur.execute(f"SELECT customer_id FROM {SCHEMA}.customer_keys ORDER BY customer_id")
            return cur.fetch_arrow_table()["customer_id"].combine_chunks().cast(pa.string())

    def customer_keys(self) -> pa.Table:
        with self._bulk() as con, con.cursor() as cur:
            cur.execute(f"SELECT customer_id, customer_key FROM {SCHEMA}.customer_keys ORDER BY customer_key")
            table = cur.fetch_arrow_table()
        return table.cast(KEYS_SCHEMA)

    def batches(self) -> list[BatchInfo]:
        with self._small() as con:
            rows = con.execute(
                f"SELECT batch_id, kind, source, committed_at, summary FROM {SCHEMA}.batches ORDER BY seq"
            ).fetchall()
        return [BatchInfo(b, kind, source, at, summary) for b, kind, source, at, summary in rows]

    def rejects(self, batch_id: str | None = None) -> pa.Table:
        with self._small() as con:
            if (
                batch_id
                and not con.execute(f"SELECT 1 FROM {SCHEMA}.batches WHERE batch_id = %s", (batch_id,)).fetchone()
            ):
                raise StoreError(f"no batch {batch_id!r} in the store at {self.location}")
        where = f"WHERE r.batch_id = '{_literal(batch_id)}'" if batch_id else ""
        with self._bulk() as con, con.cursor() as cur:
            cur.execute(
                f'SELECT r.batch_id, r."table", r.source_file, r.row_number, r.reason, r.customer_id, r.raw '
                f"FROM {SCHEMA}.rejects r JOIN {SCHEMA}.batches b USING (batch_id) {where} ORDER BY b.seq, r.row_number"
            )
            table = cur.fetch_arrow_table()
        return table.cast(REJECTS_SCHEMA.insert(0, pa.field("batch_id", pa.string())))


# ---------------------------------------------------------------------------------------------- helpers


def _upsert_customers(select: str, *, with_seq: bool = True, ids: bool = False) -> str:
    """Insert new customers, replace changed ones (the latest write wins); returns (inserted, updated), and with
    ``ids`` the written customer ids (an array) too."""
    cols = ", ".join(f'"{c}"' for c in (*_COLUMNS["customers"], ROW_ID)) + (", batch_seq" if with_seq else "")
    return (
        f"WITH up AS (INSERT INTO {SCHEMA}.customers AS c ({cols}) {select} ON CONFLICT (customer_id) DO UPDATE "
        "SET signup_date = excluded.signup_date, churn_date = excluded.churn_date, row_id = excluded.row_id, "
        "batch_seq = excluded.batch_seq WHERE c.row_id <> excluded.row_id RETURNING customer_id, (xmax = 0) AS "
        "inserted) SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
        + (", array_agg(customer_id)" if ids else "")
        + " FROM up"
    )


def _unnest(name: str, table: pa.Table) -> tuple[str, str, list[list]]:
    """Column list, ``SELECT * FROM unnest(...)`` and its array parameters, for a few rows in one statement."""
    names = [*_COLUMNS[name], ROW_ID]
    kinds = {c.name: c.kind for c in CONTRACTS[name].columns}
    types = [f"{_SQL[kinds[n]]}[]" if n in kinds else "bigint[]" for n in names]
    select = f"SELECT * FROM unnest({', '.join(f'%s::{t}' for t in types)})"
    return ", ".join(f'"{n}"' for n in names), select, [table[n].to_pylist() for n in names]


def _as_contract(name: str, table: pa.Table) -> pa.Table:
    """ADBC's Arrow result in the contract schema (its strings and nullability flags differ)."""
    schema = _ARROW_SCHEMA[name]
    return pa.Table.from_arrays([table[f.name].cast(f.type) for f in schema], schema=schema)


def _with_row_ids(duck: Any, name: str, table: pa.Table) -> pa.Table:
    return table.append_column(pa.field(ROW_ID, pa.int64(), nullable=False), row_ids(duck, CONTRACTS[name], table))


def _literal(text: str) -> str:
    """Quote for a SQL string literal (ADBC statements here take no parameters)."""
    return text.replace("'", "''")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_OUTBOX_SELECT = ", ".join("fields::text" if c == "fields" else c for c in OUTBOX_COLUMNS)
# pending items due at a time, oldest due first: what a deliverer reads and what it claims (+ FOR UPDATE ...)
_DUE_ITEMS = (
    f"SELECT {_OUTBOX_SELECT} FROM {SCHEMA}.outbox WHERE state = '{PENDING}' AND next_attempt_at <= %s "
    "ORDER BY next_attempt_at, seq LIMIT %s"
)


def _naive(when: datetime | None) -> datetime | None:
    """Naive UTC, as the store keeps time stamps."""
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def _from_rows(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays([pa.array(v, f.type) for f, v in zip(schema, columns, strict=True)], schema=schema)
