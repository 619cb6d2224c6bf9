"""Engines that run the compiled feature SQL: DuckDB for data of any size, SQLite for a handful of customers.

Both execute the *same* Ibis expression (``features.build.feature_query``), compiled once per dialect and cached;
``tests/test_engines.py`` checks on random histories that they return identical features. DuckDB has a fixed cost of
~35-40 ms per query of this shape (planning plus per-pipeline set-up), which dominates when a request holds one
customer; SQLite answers the same query in ~5 ms there (``benchmarks/bench_features.py``), and is hopeless at
millions of rows. The scoring API therefore uses ``SQLiteEngine``, which hands anything large to DuckDB.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dataset import Dataset
from features.duck import connect
from features.settings import FeatureSettings

POSITION = "position"  # entity row number, carried through the query so results come back in entity order
TABLE_NAMES = {
    "transactions": "cg_transactions",
    "events": "cg_events",
    "customers": "cg_customers",
    "entities": "cg_entities",
}


class EngineUnavailableError(RuntimeError):
    """The configured engine cannot run here (no Java, a Spark master that does not answer): an error, never a
    silent fallback to another engine."""


class Engine(Protocol):
    dialect: str

    def for_size(self, rows: int) -> Engine: ...

    def run(self, sql: str, data: Dataset, entities: pa.Table, schema: pa.Schema | None = None) -> pa.Table: ...


class DuckDBEngine:
    """Embedded DuckDB over Arrow; one connection per thread (the API serves concurrently)."""

    dialect = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None) -> None:
        self.threads = threads
        self.memory_limit = memory_limit
        self._local = threading.local()

    def for_size(self, rows: int) -> DuckDBEngine:
        return self

    def _connection(self):
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = connect(self.threads, self.memory_limit)
        return con

    def run(self, sql: str, data: Dataset, entities: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        """Run SQL compiled from ``features.build.contract_tables`` over a dataset and an entity table."""
        con = self._connection()
        for name, table in _tables(data, entities):
            con.register(TABLE_NAMES[name], table)
        try:
            result = con.sql(sql).to_arrow_table()
            return result.cast(schema) if schema is not None else result
        finally:
            for name in TABLE_NAMES.values():
                con.unregister(name)


class SQLiteEngine:
    """In-memory SQLite (through Ibis's SQLite backend, which adds the functions SQLite lacks) for small inputs.

    Results come back with the same Arrow schema as DuckDB's: the caller's entity table supplies
    ``customer_id`` and ``as_of`` by position.
    """

    dialect = "sqlite"

    def __init__(self, max_rows: int = 50_000, fallback: DuckDBEngine | None = None) -> None:
        self.max_rows = max_rows
        self.fallback = fallback or DuckDBEngine(threads=1)
        self._local = threading.local()

    def for_size(self, rows: int) -> Engine:
        return self if rows <= self.max_rows else self.fallback

    def _connection(self):
        con = getattr(self._local, "con", None)
        if con is None:
            import ibis

            con = self._local.con = ibis.sqlite.connect().con
            # Ibis's sample-variance aggregate divides by zero for a single value; DuckDB (and SQL) give NULL
            con.create_aggregate("_ibis_var_sample", 1, _SampleVariance)
        return con

    def run(self, sql: str, data: Dataset, entities: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        if schema is None:
            raise ValueError("SQLiteEngine needs the result schema (SQLite values carry no column types)")
        con = self._connection()
        created = self._local.__dict__.setdefault("tables", {})
        for name, table in _tables(data, entities):
            target = TABLE_NAMES[name]
            # the temp tables are emptied, not dropped: a schema change makes SQLite compile the feature query
            # again (~1.5 ms a request); they are made anew only when their columns change
            if created.get(target) != table.column_names:
                con.execute(f"DROP TABLE IF EXISTS {target}")
                con.execute(f"CREATE TEMP TABLE {target} ({', '.join(table.column_names)})")
                created[target] = table.column_names
            else:
                con.execute(f"DELETE FROM {target}")
            if table.num_rows:
                rows = zip(*[_sqlite_values(table[c]) for c in table.column_names], strict=True)
                con.executemany(f"INSERT INTO {target} VALUES ({', '.join('?' * table.num_columns)})", rows)
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        return _typed_result(dict(zip(names, columns, strict=True)), schema, entities)


class _SampleVariance:
    """Welford's running variance, NULL below two values."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def step(self, value: float | None) -> None:
        if value is not None:
            self.n += 1
            delta = value - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (value - self.mean)

    def finalize(self) -> float | None:
        return self.m2 / (self.n - 1) if self.n > 1 else None


def _tables(data: Dataset, entities: pa.Table):
    return (
        ("transactions", data.transactions),
        ("events", data.events),
        ("customers", data.customers),
        ("entities", entities),
    )


def _sqlite_values(column: pa.ChunkedArray) -> list:
    """Time stamps as ISO text (how Ibis's SQLite dialect stores them), everything else as Python values."""
    if pa.types.is_timestamp(column.type):
        return pc.strftime(column, format="%Y-%m-%d %H:%M:%S").to_pylist()
    return column.to_pylist()


def _typed_result(columns: dict[str, tuple], schema: pa.Schema, entities: pa.Table) -> pa.Table:
    """SQLite's Python values in the expected schema; entity columns come from the entity table by position."""
    position = np.asarray(columns[POSITION], dtype=np.int64)
    rows = pa.array(np.searchsorted(entities[POSITION].to_numpy(), position))  # entity positions are ascending
    arrays = []
    for field in schema:
        if field.name in entities.column_names and field.name != POSITION:
            arrays.append(entities[field.name].take(rows))
        else:
            arrays.append(pa.array(columns[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


@lru_cache(maxsize=1)
def default_engine() -> DuckDBEngine:
    return DuckDBEngine()


def make_engine(settings: FeatureSettings) -> Engine:
    """The batch engine the features section names: the shared DuckDB engine, or a new ``SparkEngine``
    (its session starts on first use; call its ``stop()`` when done)."""
    if settings.engine == "spark":
        from features.spark import SparkEngine

        return SparkEngine(
            master=settings.spark_master or None, conf=settings.spark_conf, staging_dir=settings.spark_staging_dir
        )
    return default_engine()
