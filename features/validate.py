"""Read an input folder and validate it against the data contract: nothing is lost, nothing is silent.

Every raw row ends up either in the clean ``Dataset`` or in the rejects table with its source file, row number
and the first reason it failed. The checks are generated from ``features/contract.py``:

* a required column that is empty -> ``missing <column>``
* a time stamp that does not parse -> ``unparseable <column>``; one after the run's clock -> ``<column> after now``
* a number that does not parse -> ``non-numeric <column>``; NaN/inf -> ``non-finite <column>``
* a row identical to an earlier row of the same file -> ``exact duplicate``
* customers: a second row for the same id -> ``duplicate customer_id``; a cancel before sign-up ->
  ``churn_date before signup_date``

Refunds (negative amounts) are valid. A missing transactions file, an empty one, or a missing required column is
not a row problem but a broken input: it stops with a one-line error naming the file and column.

The checks run as one DuckDB query per table over Arrow data (a few seconds for 10M rows).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import CUSTOMERS, TABLES, TRANSACTIONS, Column, TableContract
from features.dataset import Dataset, TableReport, ValidationReport
from features.duck import connect, quote
from features.mapping import Mapping, TableMapping, expression_columns, expression_sql

ROW = "__row"
REJECTS_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("source_file", pa.string()),
        ("row_number", pa.int64()),
        ("reason", pa.string()),
        ("customer_id", pa.string()),
        ("raw", pa.string()),
    ]
)


class DataContractError(ValueError):
    """The input cannot be read as the contract at all (missing file, empty file, missing column)."""


@dataclass(frozen=True)
class RawTable:
    """A table as read from its file, before any check; ``source`` names the file in messages and rejects."""

    contract: TableContract
    data: pa.Table
    source: str
    mapping: TableMapping = TableMapping()


def load_dataset(
    data_dir: Path, *, now: datetime, mapping: Mapping | None = None, reject_future: bool = True
) -> tuple[Dataset, pa.Table]:
    """Read ``data_dir`` (transactions required, events and customers optional) and validate it."""
    return validate_tables(read_folder(data_dir, mapping or Mapping()), now=now, reject_future=reject_future)


def read_folder(data_dir: Path, mapping: Mapping) -> list[RawTable]:
    if not data_dir.is_dir():
        raise DataContractError(f"data folder not found: {data_dir}")
    tables = []
    for contract in TABLES:
        table_mapping = mapping.for_table(contract.name)
        path = _find_file(data_dir, contract, table_mapping)
        if path is None:
            if contract.required_file:
                raise DataContractError(
                    f"{data_dir}: no {contract.name} file (expected {contract.name}.csv or {contract.name}.parquet,"
                    " or a 'file:' in the column mapping)"
                )
            continue
        tables.append(RawTable(contract, read_file(path, table_mapping), str(path), table_mapping))
    return tables


def _find_file(data_dir: Path, contract: TableContract, mapping: TableMapping) -> Path | None:
    if mapping.file:
        path = data_dir / mapping.file
        if not path.exists():
            raise DataContractError(f"{path}: file named in the column mapping does not exist")
        return path
    for suffix in (".parquet", ".csv"):
        path = data_dir / f"{contract.name}{suffix}"
        if path.exists():
            return path
    return None


def read_file(path: Path, mapping: TableMapping | None = None) -> pa.Table:
    """Parquet as typed; CSV with every column as text, so a bad value is a reject instead of a read error."""
    mapping = mapping or TableMapping()
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix in (".csv", ".txt"):
        with path.open(newline="") as f:
            header = next(csv.reader(f, delimiter=mapping.csv_delimiter), None)
        if not header:
            raise DataContractError(f"{path}: file is empty (no header row)")
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=mapping.csv_delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    raise DataContractError(f"{path}: unsupported file type (use .csv or .parquet)")


def validate_tables(
    raw_tables: list[RawTable], *, now: datetime, reject_future: bool = True
) -> tuple[Dataset, pa.Table]:
    """Check each raw table against its contract; return the clean dataset and every rejected row."""
    con = connect()
    clean: dict[str, pa.Table] = {t.name: t.empty() for t in TABLES}
    reports, rejects = [], []
    for raw in raw_tables:
        kept, rejected, report = _validate_table(con, raw, now=now if reject_future else None)
        clean[raw.contract.name] = kept
        rejects.append(rejected)
        reports.append(report)
    if clean[TRANSACTIONS.name].num_rows == 0:
        tx_report = next(r for r in reports if r.name == TRANSACTIONS.name)
        raise DataContractError(
            f"{tx_report.source}: no valid transactions ({tx_report.rows_read} rows read, all rejected: "
            f"{_top_reasons(tx_report.rejected)})"
        )
    dataset = Dataset(**clean)
    report = _summarise(con, dataset, tuple(reports))
    con.close()
    all_rejects = pa.concat_tables(rejects) if rejects else REJECTS_SCHEMA.empty_table()
    return Dataset(**clean, report=report), all_rejects


def _top_reasons(rejected: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])[:3]) or "none"


def _validate_table(
    con: duckdb.DuckDBPyConnection, raw: RawTable, *, now: datetime | None
) -> tuple[pa.Table, pa.Table, TableReport]:
    """Find the bad rows (few) first, then type the good ones in one projection, sorted by customer and time.

    Full-width work (casting, JSON of the raw row, duplicate search over every column) is done only where it
    is needed.
    """
    data = raw.data
    if data.num_rows == 0:
        if raw.contract.required_file:
            raise DataContractError(f"{raw.source}: file has no rows")
        return raw.contract.empty(), REJECTS_SCHEMA.empty_table(), TableReport(raw.contract.name, raw.source, 0, 0)
    sources = _column_sources(raw)
    data = data.append_column(ROW, pa.array(np.arange(1, data.num_rows + 1, dtype=np.int64)))
    con.register("raw_input", data)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE dup_rows AS {_duplicates_sql(raw.data.column_names)}")
        bad = con.sql(_bad_rows_sql(raw, sources, data.schema, now)).to_arrow_table()
        con.register("bad_rows", bad)
        rejected = con.execute(
            _rejects_sql(raw.data.column_names, _customer_key(sources, data.schema)), [raw.contract.name, raw.source]
        ).to_arrow_table()
        # clean rows are stored sorted by customer and time: feature queries on a chunk of customers then read
        # only that chunk's row groups (DuckDB prunes the scan with the join's min/max filter)
        order = ("customer_id" if raw.contract is CUSTOMERS else "customer_id, timestamp") + f", {ROW}"
        kept = (
            con.sql(
                f"SELECT {', '.join(_typed_columns(raw, sources, data.schema))} FROM raw_input "
                f"WHERE {ROW} NOT IN (SELECT {ROW} FROM bad_rows) ORDER BY {order}"
            )
            .to_arrow_table()
            .cast(raw.contract.arrow_schema)
        )
    finally:
        con.unregister("raw_input")
        con.unregister("bad_rows")
    counts = {r["values"]: r["counts"] for r in pc.value_counts(bad["__reason"]).to_pylist()} if bad.num_rows else {}
    used = {src for col_sources in sources.values() for src in col_sources}
    ignored = tuple(c for c in raw.data.column_names if c not in used)
    report = TableReport(raw.contract.name, raw.source, raw.data.num_rows, kept.num_rows, counts, ignored)
    assert report.rows_kept + report.rows_rejected == report.rows_read
    return kept, rejected.cast(REJECTS_SCHEMA), report


def _column_sources(raw: RawTable) -> dict[str, list[str]]:
    """Which source columns feed each contract column; stops on a required column nobody provides."""
    present = set(raw.data.column_names)
    out: dict[str, list[str]] = {}
    for col in raw.contract.columns:
        if col.name in raw.mapping.derive:
            needed = expression_columns(raw.mapping.derive[col.name])
        elif col.name in raw.mapping.columns:
            needed = [raw.mapping.columns[col.name]]
        elif col.name in present:
            needed = [col.name]
        elif col.required:
            raise DataContractError(
                f"{raw.source}: missing required column '{col.name}' "
                f"(columns found: {', '.join(raw.data.column_names)};"
                " map yours in churnguard.yaml or with --map)"
            )
        else:
            continue
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataContractError(f"{raw.source}: column '{missing[0]}' (mapped to '{col.name}') does not exist")
        out[col.name] = needed
    return out


def _duplicates_sql(columns: list[str]) -> str:
    """Rows identical to an earlier row. A 64-bit hash finds candidate groups cheaply; the exact comparison over
    every column runs on the candidates only, so a hash collision can never reject a row."""
    cols = ", ".join(quote(c) for c in columns)
    return f"""
        WITH hashed AS (SELECT {ROW}, hash({cols}) AS h FROM raw_input),
        repeated AS (SELECT h FROM hashed GROUP BY h HAVING count(*) > 1),
        candidates AS (SELECT r.* FROM raw_input r JOIN hashed USING ({ROW}) WHERE hashed.h IN (SELECT h FROM repeated))
        SELECT {ROW} FROM (
            SELECT {ROW}, row_number() OVER (PARTITION BY {cols} ORDER BY {ROW}) AS copy FROM candidates
        ) WHERE copy > 1
    """


def _bad_rows_sql(raw: RawTable, sources: dict[str, list[str]], schema: pa.Schema, now: datetime | None) -> str:
    """Row number and the first failed check of every row that fails one."""
    checks, reasons = [], []
    for col in raw.contract.columns:
        if col.name not in sources:
            continue
        raw_sql, typed_sql = _column_sql(col, sources[col.name], raw.mapping, schema)
        checks.append(f"{raw_sql} AS {quote(col.name + '_raw')}, {typed_sql} AS {quote(col.name)}")
        reasons.extend(_reasons(col, now))
    reasons.append(f"WHEN {ROW} IN (SELECT {ROW} FROM dup_rows) THEN 'exact duplicate'")
    window = ""
    if raw.contract is CUSTOMERS:
        reasons.append("WHEN churn_date < signup_date THEN 'churn_date before signup_date'")
        window = f", row_number() OVER (PARTITION BY {_customer_key(sources, schema)} ORDER BY {ROW}) AS id_copy"
        reasons.append("WHEN id_copy > 1 THEN 'duplicate customer_id'")
    return f"""
        SELECT {ROW}, __reason FROM (
            SELECT {ROW}, CASE {" ".join(reasons)} END AS __reason FROM (
                SELECT {ROW}, {", ".join(checks)}{window} FROM raw_input
            )
        ) WHERE __reason IS NOT NULL ORDER BY {ROW}
    """


def _customer_key(sources: dict[str, list[str]], schema: pa.Schema) -> str:
    (src,) = sources["customer_id"]
    return _as_text(src, schema.field(src).type)


def _rejects_sql(columns: list[str], customer_key: str) -> str:
    """The rejected rows with file, row number, reason, customer id (as text) and the whole raw row as JSON."""
    as_json = ", ".join(f"{_sql_string(c)}: {quote(c)}" for c in columns)
    return f"""
        SELECT ? AS "table", ? AS source_file, {ROW} AS row_number, __reason AS reason,
               {customer_key} AS customer_id, to_json({{{as_json}}}) AS raw
        FROM bad_rows JOIN raw_input USING ({ROW}) ORDER BY {ROW}
    """


def _typed_columns(raw: RawTable, sources: dict[str, list[str]], schema: pa.Schema) -> list[str]:
    out = []
    for col in raw.contract.columns:
        if col.name not in sources:
            out.append(f"CAST(NULL AS {_SQL_TYPE[col.kind]}) AS {quote(col.name)}")
        else:
            out.append(f"{_column_sql(col, sources[col.name], raw.mapping, schema)[1]} AS {quote(col.name)}")
    return out


_SQL_TYPE = {"string": "VARCHAR", "timestamp": "TIMESTAMP", "float64": "DOUBLE"}


def _column_sql(col: Column, sources: list[str], mapping: TableMapping, schema: pa.Schema) -> tuple[str, str]:
    """(raw text-or-null expression, typed expression) for one contract column."""
    if col.name in mapping.derive:
        numeric = {s: _as_double(s, schema.field(s).type) for s in sources}
        any_null = " OR ".join(f"{quote(s)} IS NULL" for s in sources)
        raw = f"CASE WHEN {any_null} THEN NULL ELSE 'derived' END"
        return raw, expression_sql(mapping.derive[col.name], numeric)
    (src,) = sources
    arrow_type = schema.field(src).type
    if col.kind == "string":
        text = _as_text(src, arrow_type)
        return text, text
    if col.kind == "float64":
        return _raw_text(src, arrow_type), _as_double(src, arrow_type)
    return _raw_text(src, arrow_type), _as_timestamp(src, arrow_type, mapping.timestamp_format)


def _raw_text(src: str, arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return f"NULLIF(TRIM({quote(src)}), '')"
    return quote(src)


def _as_text(src: str, arrow_type: pa.DataType) -> str:
    q = quote(src)
    if pa.types.is_floating(arrow_type):  # ids that went through a float column: 12346.0 -> '12346'
        return f"CASE WHEN {q} = TRUNC({q}) THEN CAST(CAST({q} AS BIGINT) AS VARCHAR) ELSE CAST({q} AS VARCHAR) END"
    return f"NULLIF(TRIM(CAST({q} AS VARCHAR)), '')"


def _as_double(src: str, arrow_type: pa.DataType) -> str:
    q = quote(src)
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return f"CAST({q} AS DOUBLE)"
    return f"TRY_CAST(TRIM(CAST({q} AS VARCHAR)) AS DOUBLE)"


def _as_timestamp(src: str, arrow_type: pa.DataType, fmt: str | None) -> str:
    """Naive UTC, truncated to the second (see the contract)."""
    q = quote(src)
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        # aware -> UTC wall time (session zone is UTC); naive and dates stay as they are
        parsed = f"CAST({q} AS TIMESTAMP)"
    elif fmt:
        parsed = f"TRY_STRPTIME(TRIM(CAST({q} AS VARCHAR)), {_sql_string(fmt)})"
    else:
        parsed = f"CAST(TRY_CAST(TRIM(CAST({q} AS VARCHAR)) AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"date_trunc('second', {parsed})"


def _reasons(col: Column, now: datetime | None) -> list[str]:
    name, raw = quote(col.name), quote(col.name + "_raw")
    out = []
    if col.required:
        out.append(f"WHEN {raw} IS NULL THEN 'missing {col.name}'")
    if col.kind == "timestamp":
        out.append(f"WHEN {raw} IS NOT NULL AND {name} IS NULL THEN 'unparseable {col.name}'")
        if now is not None and col.name != "churn_date":
            out.append(f"WHEN {name} > TIMESTAMP '{now.isoformat(sep=' ')}' THEN '{col.name} after now'")
    elif col.kind == "float64":
        out.append(f"WHEN {raw} IS NOT NULL AND {name} IS NULL THEN 'non-numeric {col.name}'")
        out.append(f"WHEN {name} IS NOT NULL AND NOT isfinite({name}) THEN 'non-finite {col.name}'")
    return out


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _summarise(con: duckdb.DuckDBPyConnection, data: Dataset, tables: tuple[TableReport, ...]) -> ValidationReport:
    con.register("tx", data.transactions)
    con.register("ev", data.events)
    con.register("cu", data.customers)
    n_customers, first, last = con.sql(
        "SELECT (SELECT count(DISTINCT customer_id) FROM (SELECT customer_id FROM tx UNION ALL "
        "SELECT customer_id FROM ev UNION ALL SELECT customer_id FROM cu)), min(timestamp), max(timestamp) FROM tx"
    ).fetchone()
    per_type = dict(con.sql("SELECT event_type, count(*) FROM ev GROUP BY 1 ORDER BY 2 DESC").fetchall())
    return ValidationReport(tables, int(n_customers), first, last, per_type)
