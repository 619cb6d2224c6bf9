"""Read an input folder and validate it against the data contract: nothing is lost, nothing is silent.

Every raw row ends up either in the clean ``Dataset`` or in the rejects table with its source file, row number
and the first reason it failed. The checks are generated from ``features/contract.py``:

* a required column that is empty -> ``missing <column>``
* a time stamp that does not parse -> ``unparseable <column>``; one after the run's clock -> ``<column> after now``
* a number that does not parse -> ``non-numeric <column>``; NaN/inf -> ``non-finite <column>``
* a row identical to an earlier row of the same file -> ``exact duplicate``
* customers: a cancel before sign-up -> ``churn_date before signup_date``; a second row for the same id ->
  ``duplicate customer_id``

Refunds (negative amounts) are valid, and every optional column may be absent (it becomes nulls). A missing
transactions file, an empty one, a missing required column or a file that cannot be parsed is not a row problem
but a broken input: it stops with a one-line error naming the file (and column).

How it stays near the time it takes just to read the files (``benchmarks/bench_validation.py``):

* Tables are read and checked one at a time, the one with the most rows first, so memory holds one raw table next
  to the clean ones. CSV columns with few distinct values are read as dictionaries (same text, less memory).
* One DuckDB pass (per slice of 4M rows, parallel inside) computes the code of the first failed check of every
  row, the typed numbers and time stamps, and a hash of the customer id; the results go straight into numpy. Text
  columns that need no trimming are not copied through DuckDB at all, and time stamps shaped
  ``YYYY-MM-DD HH:MM:SS`` take the plain timestamp cast (the time-zone-aware parse, three times slower, is kept
  for every other shape; the two agree on those shapes, ``tests/test_validate.py``).
* Exact duplicates: identical raw rows have identical typed values, so one numpy sort of a key made from them finds
  the few rows that can be duplicates; only those are compared column by column, so no hash collision can ever
  reject a row.
* Clean rows are sorted by customer and time (``features/ordering.py`` says why and how); text columns with few
  distinct values are reordered through dictionary codes, and ``customer_id`` is rebuilt from the sorted ids.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
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
from features.ordering import customer_order

ROW = "__row"
CODE = "__code"
ID_HASH = "__id_hash"
EXACT_DUPLICATE = "exact duplicate"
OUTPUT_CHUNK_ROWS = 1 << 17  # clean tables are chunked: DuckDB scans Arrow chunks in parallel
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
Progress = Callable[[str], None]


class DataContractError(ValueError):
    """The input cannot be read as the contract at all (missing file, empty file, missing column, bad format)."""


@dataclass(frozen=True)
class RawTable:
    """A table as read from its file, before any check; ``source`` names the file in messages and rejects."""

    contract: TableContract
    data: pa.Table
    source: str
    mapping: TableMapping = TableMapping()


def load_dataset(
    data_dir: Path,
    *,
    now: datetime,
    mapping: Mapping | None = None,
    reject_future: bool = True,
    progress: Progress | None = None,
) -> tuple[Dataset, pa.Table]:
    """Read ``data_dir`` (transactions required, events and customers optional) and validate it.

    Each file is read just before it is checked and dropped right after, so peak memory holds one raw table.
    ``progress`` (optional) receives a short message as each table starts.
    """
    mapping = mapping or Mapping()
    inputs = [
        _Input(
            contract,
            str(path),
            table_mapping,
            partial(read_file, path, table_mapping, compact=True),
            _estimated_rows(path),
        )
        for contract, path, table_mapping in find_files(data_dir, mapping)
    ]
    return _validate_all(inputs, now=now, reject_future=reject_future, progress=progress)


def _estimated_rows(path: Path) -> int:
    """About how many rows the file holds (Parquet says so in its footer; CSV: size / length of the first lines).

    Tables are checked in descending order of rows: the per-row work arrays, not the bytes, make a table's peak,
    and the largest one is best checked while no clean table is held yet."""
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_metadata(path).num_rows
        with path.open("rb") as f:
            head = f.read(1 << 16)
        return path.stat().st_size * max(head.count(b"\n"), 1) // max(len(head), 1)
    except (pa.ArrowException, OSError):
        return 0  # read_file reports the broken file


def read_folder(data_dir: Path, mapping: Mapping) -> list[RawTable]:
    """Every input table of ``data_dir``, read into memory (``load_dataset`` reads them one at a time instead)."""
    return [RawTable(c, read_file(p, m), str(p), m) for c, p, m in find_files(data_dir, mapping)]


def find_files(data_dir: Path, mapping: Mapping) -> list[tuple[TableContract, Path, TableMapping]]:
    """(contract, file, mapping) for each table present; stops if there is no transactions file."""
    if not data_dir.is_dir():
        raise DataContractError(f"data folder not found: {data_dir}")
    found = []
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
        found.append((contract, path, table_mapping))
    return found


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


def read_file(path: Path, mapping: TableMapping | None = None, *, compact: bool = False) -> pa.Table:
    """Parquet as typed; CSV with every column as text, so a bad value is a reject instead of a read error.

    ``compact``: CSV text columns with few distinct values in the first 2 MB (not the customer id) are read as
    dictionary arrays: smaller, and their clean columns need no encoding pass later. Values are the same text.
    """
    mapping = mapping or TableMapping()
    if path.is_dir():
        raise DataContractError(f"{path}: is a folder, expected a .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".txt"):
        raise DataContractError(f"{path}: unsupported file type (use .csv or .parquet)")
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        plain = {mapping.columns.get("customer_id", "customer_id")} if compact else None
        return _read_csv(path, mapping.csv_delimiter, plain)
    except DataContractError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataContractError(f"{path}: cannot be read: {_first_line(e)}") from None


def _read_csv(path: Path, delimiter: str, plain: set[str] | None = None) -> pa.Table:
    """Every column as text; with ``plain`` given, low-cardinality columns not in it as dictionary text."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is not in the name
        header = next(csv.reader(f, delimiter=delimiter), None)
    if not header:
        raise DataContractError(f"{path}: file is empty (no header row)")
    _check_unique_names(header, str(path))
    parse = pacsv.ParseOptions(delimiter=delimiter)

    def convert(types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""])

    types: dict[str, pa.DataType] = {name: pa.string() for name in header}
    if plain is not None:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 21),
            parse_options=parse,
            convert_options=convert(types),
        )
        sample = next(iter(reader), None)
        if sample is not None and sample.num_rows >= 1000:
            for name in header:
                if name not in plain and pc.count_distinct(sample.column(name)).as_py() <= sample.num_rows // 20:
                    types[name] = pa.dictionary(pa.int32(), pa.string())
    return pacsv.read_csv(path, parse_options=parse, convert_options=convert(types))


def _check_unique_names(names: list[str], source: str) -> None:
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataContractError(f"{source}: column '{duplicated[0]}' appears more than once in the header")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def validate_tables(
    raw_tables: list[RawTable], *, now: datetime, reject_future: bool = True, progress: Progress | None = None
) -> tuple[Dataset, pa.Table]:
    """Check each raw table against its contract; return the clean dataset and every rejected row."""
    inputs = [
        _Input(t.contract, t.source, t.mapping, partial(lambda t: t.data, t), t.data.num_rows) for t in raw_tables
    ]
    return _validate_all(inputs, now=now, reject_future=reject_future, progress=progress)


@dataclass(frozen=True)
class _Input:
    contract: TableContract
    source: str
    mapping: TableMapping
    read: Callable[[], pa.Table]
    rows: int  # (estimated) to check the largest table first, while no clean table is held yet


def _validate_all(
    inputs: list[_Input], *, now: datetime, reject_future: bool, progress: Progress | None
) -> tuple[Dataset, pa.Table]:
    say = progress or (lambda _message: None)
    con = connect()
    results: dict[str, _Result] = {}
    try:
        for item in sorted(inputs, key=lambda i: -i.rows):
            say(f"validating {item.contract.name} ({item.source})")
            clock = now if reject_future else None
            results[item.contract.name] = _validate_table(
                con, item.contract, item.source, item.mapping, item.read, clock
            )
            _release()
        ordered = [results[t.name] for t in TABLES if t.name in results]  # reports and rejects in contract order
        tx = results.get(TRANSACTIONS.name)
        if tx is not None and tx.report.rows_kept == 0:
            raise DataContractError(
                f"{tx.report.source}: no valid transactions ({tx.report.rows_read} rows read, all rejected: "
                f"{_top_reasons(tx.report.rejected)})"
            )
        clean = {t.name: results[t.name].kept if t.name in results else t.empty() for t in TABLES}
        events = results.get("events")
        report = _summarise(
            con,
            Dataset(**clean),
            tuple(r.report for r in ordered),
            [r.customer_ids for r in ordered],
            events.value_counts.get("event_type") if events else {},
        )
    finally:
        con.close()
    all_rejects = pa.concat_tables([r.rejected for r in ordered]) if ordered else REJECTS_SCHEMA.empty_table()
    return Dataset(**clean, report=report), all_rejects


def _top_reasons(rejected: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])[:3]) or "none"


# --------------------------------------------------------------------------------------------- one table


@dataclass(frozen=True)
class _Result:
    kept: pa.Table
    rejected: pa.Table
    report: TableReport
    customer_ids: pa.Array  # distinct customer ids of the kept rows
    value_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # of low-cardinality text columns


@dataclass(frozen=True)
class _Plan:
    """How each contract column is produced, and the checks in the order their reasons win."""

    sources: dict[str, list[str]]  # contract column -> source columns
    passthrough: dict[str, str]  # contract column -> source column taken as is (clean text)
    typed_sql: dict[str, str]  # contract column -> DuckDB expression of the typed value
    raw_sql: dict[str, str]  # contract column -> DuckDB expression that is NULL when the value is missing
    checks: list[tuple[str, str]]  # (SQL condition, reason) before the exact-duplicate check
    after_duplicate: list[tuple[str, str]]  # the same, checked after it (customers)
    types: dict[str, pa.DataType]  # contract column -> clean Arrow type
    window: str = ""  # extra inner column(s) the checks need

    @property
    def reasons(self) -> list[str]:
        """Reason of each code: 0 is a valid row."""
        return ["", *(r for _, r in self.checks), *(r for _, r in self.after_duplicate), EXACT_DUPLICATE]


def _validate_table(
    con: duckdb.DuckDBPyConnection,
    contract: TableContract,
    source: str,
    mapping: TableMapping,
    read: Callable[[], pa.Table],
    now: datetime | None,
) -> _Result:
    data = read()
    names, n_rows = data.column_names, data.num_rows
    if n_rows == 0:
        if contract.required_file:
            raise DataContractError(f"{source}: file has no rows")
        report = TableReport(contract.name, source, 0, 0)
        return _Result(contract.empty(), REJECTS_SCHEMA.empty_table(), report, pa.array([], pa.string()))
    _check_unique_names(names, source)
    plan = _plan(contract, source, mapping, data, now)
    holder = [data]  # _run drops the raw table as soon as it can; no other reference may keep it alive
    del data
    try:
        kept, rejected, counts, ids, value_counts = _run(con, contract, source, holder, plan)
    except duckdb.Error as e:  # e.g. a timestamp_format DuckDB cannot use, or a column type it cannot cast
        raise DataContractError(f"{source}: {_first_line(e)}") from None
    used = {src for col_sources in plan.sources.values() for src in col_sources}
    ignored = tuple(c for c in names if c not in used)
    report = TableReport(contract.name, source, n_rows, kept.num_rows, counts, ignored)
    assert report.rows_kept + report.rows_rejected == report.rows_read
    return _Result(kept, rejected, report, ids, value_counts)


def _run(
    con: duckdb.DuckDBPyConnection, contract: TableContract, source: str, holder: list[pa.Table], plan: _Plan
) -> tuple[pa.Table, pa.Table, dict[str, int], pa.Array, dict[str, dict[str, int]]]:
    data = holder.pop()
    typed = _typed_pass(con, data, plan)
    _mark_duplicates(con, data, typed, plan)
    code = typed.code
    reasons = plan.reasons
    counts = {reasons[c]: int(k) for c, k in enumerate(np.bincount(code, minlength=len(reasons))) if c and k}
    rejected = _rejects(con, contract, source, data, code, reasons, plan)

    # the clean rows, sorted by customer and time. The raw table goes first (its text time stamps are the largest
    # column); only the columns that make the clean table stay.
    keep = np.flatnonzero(code == 0).astype(np.int32 if len(code) < 2**31 else np.int64)
    keep_mask = pa.array(code == 0)
    typed.code = None
    columns = {name: _column(data, typed, plan, name) for name in contract.column_names}
    del data, code
    _release()
    customer = _text(columns.pop("customer_id")).filter(keep_mask).combine_chunks()
    del keep_mask
    ts = None
    if "timestamp" in columns:
        ts = columns.pop("timestamp").values[keep]  # required: never null in kept rows
    id_hash = typed.id_hash[keep]
    typed.id_hash = None
    order = customer_order(customer, id_hash, ts)
    del customer, typed, id_hash
    rows = keep[order.rows]  # output row -> input row
    del keep
    ids = _text(order.ids)
    codes = order.id_codes()
    ready = {"customer_id": _chunked(lambda a, b: _decode(codes[a:b], ids), len(rows))}
    if ts is not None:  # already in memory for the ordering: gathered from there
        ts = ts[order.rows].view("datetime64[us]")
        ready["timestamp"] = _chunked(lambda a, b: pa.array(ts[a:b]), len(rows))
    kept, value_counts = _reorder_all(contract, ready, columns, rows)
    return kept, rejected, counts, ids, value_counts


@dataclass
class _Numbers:
    """A typed number or time stamp column held in numpy (int64 microseconds for time stamps), with its nulls."""

    values: np.ndarray
    valid: np.ndarray  # bool
    type: pa.DataType


@dataclass
class _Typed:
    """What the DuckDB pass returns for each input row: the check code, the customer id hash, and the typed
    columns DuckDB makes (numbers and time stamps in numpy, text as Arrow)."""

    code: np.ndarray
    id_hash: np.ndarray
    numbers: dict[str, _Numbers]
    text: dict[str, pa.ChunkedArray]


TYPED_PASS_ROWS = 1 << 22  # rows per DuckDB query: parallel inside, bounded result memory


def _typed_pass(con: duckdb.DuckDBPyConnection, data: pa.Table, plan: _Plan) -> _Typed:
    """Run the check query over slices of the table (DuckDB materialises each in parallel; a streamed result would
    run on one thread) and move the results into preallocated numpy arrays."""
    n = data.num_rows
    checked = data.append_column(ROW, pa.array(np.arange(1, n + 1, dtype=np.int64))) if plan.window else data
    step = n if plan.window else TYPED_PASS_ROWS  # the customers' window needs the whole table at once
    code, id_hash = np.empty(n, np.uint8), np.empty(n, np.uint64)
    numbers = {
        name: _Numbers(np.empty(n, np.int64 if pa.types.is_timestamp(t) else np.float64), np.empty(n, bool), t)
        for name, t in plan.types.items()
        if not pa.types.is_string(t) and name in plan.typed_sql
    }
    text: dict[str, list[pa.ChunkedArray]] = {
        name: [] for name in plan.typed_sql if name not in plan.passthrough and name not in numbers
    }
    sql = _typed_sql(plan, data.column_names)
    for start in range(0, max(n, 1), step):
        stop = min(start + step, n)
        con.register("raw_input", checked.slice(start, stop - start))
        try:
            result = con.sql(sql).to_arrow_table()
        finally:
            con.unregister("raw_input")
        if result.num_rows != stop - start:
            raise RuntimeError(f"validation pass returned {result.num_rows} rows for {stop - start}")
        code[start:stop] = result[CODE].to_numpy()
        id_hash[start:stop] = result[ID_HASH].to_numpy()
        for name, out in numbers.items():
            values = result[name].to_numpy()  # nulls become NaN / NaT
            if pa.types.is_timestamp(out.type):
                values = values.view(np.int64)
                out.valid[start:stop] = values != np.iinfo(np.int64).min  # NaT
            else:
                out.valid[start:stop] = ~np.isnan(values)  # a clean number is never NaN (non-finite is a reject)
            out.values[start:stop] = values
        for name, chunks in text.items():
            chunks.append(result[name])
        del result
    return _Typed(
        code,
        id_hash,
        numbers,
        {name: pa.chunked_array([c for p in parts for c in p.chunks], pa.string()) for name, parts in text.items()},
    )


def _release() -> None:
    """Hand memory pyarrow's allocator keeps for reuse back to the system, so the next table's peak is not on top
    of this one's leftovers."""
    pa.default_memory_pool().release_unused()


# --------------------------------------------------------------------------------------------- the plan


def _plan(contract: TableContract, source: str, mapping: TableMapping, data: pa.Table, now: datetime | None) -> _Plan:
    sources = _column_sources(contract, source, mapping, data.column_names)
    passthrough: dict[str, str] = {}
    typed_sql: dict[str, str] = {}
    raw_sql: dict[str, str] = {}
    checks: list[tuple[str, str]] = []
    kinds = {c.name: c.kind for c in contract.columns}
    single = {src[0] for name, src in sources.items() if name not in mapping.derive and kinds[name] == "string"}
    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy releases the GIL: check two columns at a time
        clean = dict(zip(single, pool.map(lambda c: _is_clean_text(data[c]), single), strict=True))
    for col in contract.columns:
        if col.name not in sources:
            continue
        raw, value = _column_sql(col, sources[col.name], mapping, data, clean)
        if col.kind == "string" and col.name not in mapping.derive and value == quote(sources[col.name][0]):
            passthrough[col.name] = sources[col.name][0]  # clean text: taken from the Arrow table as it is
        typed_sql[col.name], raw_sql[col.name] = value, raw
        parsed_text = col.kind != "string" and col.name not in mapping.derive
        checks.extend(_checks(col, now, parsed_text and _is_text(data.schema.field(sources[col.name][0]).type)))
    after: list[tuple[str, str]] = []
    window = ""
    if contract is CUSTOMERS:
        if "churn_date" in sources and "signup_date" in sources:
            after.append(('"churn_date" < "signup_date"', "churn_date before signup_date"))
        key = typed_sql["customer_id"]
        window = f"row_number() OVER (PARTITION BY {key} ORDER BY {ROW}) AS __id_copy"
        after.append(("__id_copy > 1", "duplicate customer_id"))
    types = {f.name: f.type for f in contract.arrow_schema}
    return _Plan(sources, passthrough, typed_sql, raw_sql, checks, after, types, window)


def _column_sources(
    contract: TableContract, source: str, mapping: TableMapping, present: list[str]
) -> dict[str, list[str]]:
    """Which source columns feed each contract column; stops on a required column nobody provides."""
    out: dict[str, list[str]] = {}
    for col in contract.columns:
        if col.name in mapping.derive:
            needed = expression_columns(mapping.derive[col.name])
        elif col.name in mapping.columns:
            needed = [mapping.columns[col.name]]
        elif col.name in present:
            needed = [col.name]
        elif col.required:
            hint = ""
            if len(present) == 1 and any(d in present[0] for d in ";\t|"):
                hint = " - is the file delimited by something else than ','? set csv_delimiter in the mapping"
            raise DataContractError(
                f"{source}: missing required column '{col.name}' "
                f"(columns found: {', '.join(present)}; map yours in churnguard.yaml or with --map){hint}"
            )
        else:
            continue
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataContractError(f"{source}: column '{missing[0]}' (mapped to '{col.name}') does not exist")
        out[col.name] = needed
    return out


def _typed_sql(plan: _Plan, raw_columns: list[str]) -> str:
    """One pass: the code of the first failed check, the typed values DuckDB makes, the row and id hashes."""
    inner = [f"{sql} AS {quote(name)}" for name, sql in plan.typed_sql.items()]
    inner += [f"{sql} AS {quote(name + '__raw')}" for name, sql in plan.raw_sql.items()]
    inner.append(f"hash({plan.typed_sql['customer_id']}) AS {ID_HASH}")
    if plan.window:
        inner.append(plan.window)
    conditions = [cond for cond, _ in plan.checks] + [cond for cond, _ in plan.after_duplicate]
    case = " ".join(f"WHEN {cond} THEN {i}" for i, cond in enumerate(conditions, start=1))
    outer = [f"CAST(CASE {case} ELSE 0 END AS UTINYINT) AS {CODE}"]
    outer += [quote(name) for name in plan.typed_sql if name not in plan.passthrough]
    outer.append(ID_HASH)
    order = ""
    if plan.window:  # a projection keeps the input order (DuckDB preserves insertion order); a window does not
        inner.append(ROW)
        order = f" ORDER BY {ROW}"
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM raw_input){order}"


def _checks(col: Column, now: datetime | None, text: bool) -> list[tuple[str, str]]:
    """(condition, reason) for one column, in the order reasons win. ``text``: the raw value is text that the
    typed value was parsed from, and a blank one (spaces only) counts as missing; TRIM runs only where the typed
    value is null (DuckDB evaluates the rest of an AND only for rows the first part keeps)."""
    name, raw = quote(col.name), quote(col.name + "__raw")
    missing = f"{name} IS NULL AND ({raw} IS NULL OR TRIM({raw}) = '')" if text else f"{raw} IS NULL"
    present_but_null = f"{name} IS NULL AND TRIM({raw}) <> ''" if text else f"{raw} IS NOT NULL AND {name} IS NULL"
    out = []
    if col.required:
        out.append((missing, f"missing {col.name}"))
    if col.kind == "timestamp":
        out.append((present_but_null, f"unparseable {col.name}"))
        if now is not None and col.name != "churn_date":
            out.append((f"{name} > TIMESTAMP '{now.isoformat(sep=' ')}'", f"{col.name} after now"))
    elif col.kind == "float64":
        out.append((present_but_null, f"non-numeric {col.name}"))
        out.append((f"{name} IS NOT NULL AND NOT isfinite({name})", f"non-finite {col.name}"))
    return out


_SQL_TYPE = {"string": "VARCHAR", "timestamp": "TIMESTAMP", "float64": "DOUBLE"}
# time stamps of exactly these shapes carry no offset and no fraction: the plain cast gives what the time-zone-aware
# parse gives (checked on random strings of these shapes in tests/test_validate.py), three times faster
_PLAIN_TIMESTAMP_SHAPES = ("____-__-__ __:__:__", "____-__-__T__:__:__", "____-__-__")


def _column_sql(
    col: Column, sources: list[str], mapping: TableMapping, data: pa.Table, clean_text: dict[str, bool]
) -> tuple[str, str]:
    """(expression that is NULL when the value is missing, typed expression) for one contract column."""
    if col.name in mapping.derive:
        numeric = {s: _as_double(s, data.schema.field(s).type) for s in sources}
        any_null = " OR ".join(f"{quote(s)} IS NULL" for s in sources)
        return f"CASE WHEN {any_null} THEN NULL ELSE 'derived' END", expression_sql(mapping.derive[col.name], numeric)
    (src,) = sources
    arrow_type = data.schema.field(src).type
    if col.kind == "string":
        text = _as_text(src, arrow_type, clean_text.get(src, False))
        return text, text
    q = quote(src)
    value = _as_double(src, arrow_type) if col.kind == "float64" else _as_timestamp(src, arrow_type, mapping)
    # text numbers and time stamps parse with or without surrounding spaces: the raw value is the text itself, and
    # the checks tell a blank one (missing) from a bad one (see _checks)
    return q, value


def _is_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _is_clean_text(values: pa.ChunkedArray) -> bool:
    """Text with no empty value and no leading or trailing space: usable without TRIM/NULLIF.

    Reads the first and last byte of each value straight from the Arrow buffers (a few ms per million rows).
    """
    if not _is_text(values.type):
        return False
    if pa.types.is_dictionary(values.type):  # the values are in the dictionaries; a null index is just null
        return all(_is_clean_text(pa.chunked_array([c.dictionary])) for c in values.chunks if len(c.dictionary))
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    for chunk in values.chunks:
        if len(chunk) == 0 or chunk.null_count == len(chunk):
            continue
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        starts, ends = offsets[:-1], offsets[1:]
        if chunk.null_count:  # null slots are empty: look at the values only
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            starts, ends = starts[valid], ends[valid]
        if (ends <= starts).any():
            return False
        data = np.frombuffer(data_buf, dtype=np.uint8)
        if (data[starts] == 32).any() or (data[ends - 1] == 32).any():
            return False
    return True


def _as_text(src: str, arrow_type: pa.DataType, clean: bool) -> str:
    q = quote(src)
    if clean:
        return q
    if pa.types.is_floating(arrow_type):  # ids that went through a float column: 12346.0 -> '12346'
        return f"CASE WHEN {q} = TRUNC({q}) THEN CAST(CAST({q} AS BIGINT) AS VARCHAR) ELSE CAST({q} AS VARCHAR) END"
    return f"NULLIF(TRIM(CAST({q} AS VARCHAR)), '')"


def _as_double(src: str, arrow_type: pa.DataType) -> str:
    q = quote(src)
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return f"CAST({q} AS DOUBLE)"
    if _is_text(arrow_type):
        return f"TRY_CAST({q} AS DOUBLE)"  # the cast itself skips surrounding spaces (as TRIM would)
    return f"TRY_CAST(CAST({q} AS VARCHAR) AS DOUBLE)"


def _as_timestamp(src: str, arrow_type: pa.DataType, mapping: TableMapping) -> str:
    """Naive UTC, truncated to the second (see the contract)."""
    q = quote(src)
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        # aware -> UTC wall time (session zone is UTC); naive and dates stay as they are
        return f"date_trunc('second', CAST({q} AS TIMESTAMP))"
    text = q if _is_text(arrow_type) else f"CAST({q} AS VARCHAR)"
    if mapping.timestamp_format:
        return f"date_trunc('second', TRY_STRPTIME(TRIM({text}), {_sql_string(mapping.timestamp_format)}))"
    parsed = f"date_trunc('second', CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP))"  # skips spaces itself
    if not _is_text(arrow_type):
        return parsed
    shapes = " OR ".join(f"{q} LIKE '{shape}'" for shape in _PLAIN_TIMESTAMP_SHAPES)
    return f"CASE WHEN {shapes} THEN TRY_CAST({q} AS TIMESTAMP) ELSE {parsed} END"


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------- duplicates, rejects


def _mark_duplicates(con: duckdb.DuckDBPyConnection, data: pa.Table, typed: _Typed, plan: _Plan) -> None:
    """Set the code of rows identical to an earlier row (among rows whose reason would come after it).

    Rows with an earlier reason keep it, as identical rows share every column check. Identical raw rows have
    identical typed values, so rows whose key (the id hash xor every typed number and time stamp times a constant)
    occurs once cannot be duplicates; one numpy sort finds the others. If they are many (data where those columns
    repeat a lot), a hash of the whole raw row narrows them down; the rest are compared on every column, so no hash
    collision can ever reject a row.
    """
    code = typed.code
    first_after = 1 + len(plan.checks)  # codes of the checks that come after the duplicate check
    eligible = (code == 0) | (code >= first_after)
    key = typed.id_hash.copy()
    for i, column in enumerate(typed.numbers.values()):  # nulls hold 0 there: at worst one more candidate
        key ^= column.values.view(np.uint64) * np.uint64(_ODD[i % len(_ODD)])
    candidates = np.flatnonzero(_repeated(key, eligible))
    del key, eligible
    if candidates.size > 0.05 * len(code):  # narrow down with the whole raw row
        table = data.filter(_mask(len(code), candidates))
        con.register("candidates", table)
        try:
            row_hash = con.sql(f"SELECT hash({', '.join(quote(c) for c in data.column_names)}) FROM candidates")
            row_hash = row_hash.fetchnumpy()
        finally:
            con.unregister("candidates")
        row_hash = np.asarray(next(iter(row_hash.values())), dtype=np.uint64)
        candidates = candidates[_repeated(row_hash, np.ones(len(row_hash), dtype=bool))]
    if candidates.size == 0:
        return
    table = data.filter(_mask(len(code), candidates)).append_column(ROW, pa.array(candidates + 1))
    cols = ", ".join(quote(c) for c in data.column_names)
    con.register("candidates", table)
    try:
        copies = con.sql(
            f"SELECT {ROW} FROM (SELECT {ROW}, row_number() OVER (PARTITION BY {cols} ORDER BY {ROW}) AS copy "
            f"FROM candidates) WHERE copy > 1"
        ).fetchnumpy()[ROW]
    finally:
        con.unregister("candidates")
    code[np.asarray(copies, dtype=np.int64) - 1] = len(plan.reasons) - 1


_ODD = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def _repeated(key: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which of the rows flagged in ``among`` have a key that occurs at least twice among them."""
    ordered = key[among]
    ordered.sort()
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if twice.size == 0:
        return np.zeros(len(key), dtype=bool)
    # membership through a 16 MB table of the keys' low bits (one cached read per row), then exactly
    low = np.uint64((1 << 24) - 1)
    table = np.zeros(1 << 24, dtype=bool)
    table[(twice & low).astype(np.int64)] = True
    maybe = np.flatnonzero(among & table[(key & low).astype(np.int64)])
    out = np.zeros(len(key), dtype=bool)
    out[maybe[np.isin(key[maybe], twice)]] = True
    return out


def _mask(n: int, rows: np.ndarray) -> pa.Array:
    """A selection of ascending ``rows`` as a filter (reads chunk by chunk, unlike ``take`` on chunked columns)."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def _rejects(
    con: duckdb.DuckDBPyConnection,
    contract: TableContract,
    source: str,
    data: pa.Table,
    code: np.ndarray,
    reasons: list[str],
    plan: _Plan,
) -> pa.Table:
    """The rejected rows with file, row number, reason, customer id (as text) and the whole raw row as JSON."""
    bad = np.flatnonzero(code)
    if bad.size == 0:
        return REJECTS_SCHEMA.empty_table()
    table = data.filter(_mask(len(code), bad))
    table = table.append_column(ROW, pa.array(bad + 1)).append_column(
        "__reason", pa.array(reasons, pa.string()).take(pa.array(code[bad]))
    )
    as_json = ", ".join(f"{_sql_string(c)}: {quote(c)}" for c in data.column_names)
    key = plan.typed_sql["customer_id"]
    con.register("bad_rows", table)
    try:
        out = con.execute(
            f"""SELECT ? AS "table", ? AS source_file, {ROW} AS row_number, __reason AS reason,
                       {key} AS customer_id, to_json({{{as_json}}}) AS raw
                FROM bad_rows ORDER BY {ROW}""",
            [contract.name, source],
        ).to_arrow_table()
    finally:
        con.unregister("bad_rows")
    return out.cast(REJECTS_SCHEMA)


# --------------------------------------------------------------------------------------------- reordering


def _column(data: pa.Table, typed: _Typed, plan: _Plan, name: str) -> pa.ChunkedArray | _Numbers | None:
    """A contract column's values in input order: the source column itself, DuckDB's typed one, or None (absent)."""
    if name in plan.passthrough:
        return data[plan.passthrough[name]]
    return typed.numbers.get(name, typed.text.get(name))


def _chunked(make: Callable[[int, int], pa.Array], n: int) -> pa.ChunkedArray:
    return pa.chunked_array([make(a, min(a + OUTPUT_CHUNK_ROWS, n)) for a in range(0, max(n, 1), OUTPUT_CHUNK_ROWS)])


def _decode(
    codes: np.ndarray, dictionary: pa.Array, valid: np.ndarray | None = None, a: int = 0, b: int = 0
) -> pa.Array:
    """Values from dictionary codes (``valid[a:b]``: which are not null)."""
    indices = pa.array(codes) if valid is None else pa.array(codes, mask=~valid[a:b])
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(dictionary.type)


def _reorder_all(
    contract: TableContract,
    ready: dict[str, pa.ChunkedArray],
    sources: dict[str, pa.ChunkedArray | None],
    rows: np.ndarray,
) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """The clean table: the ``ready`` columns, and every ``sources`` column gathered at ``rows``; with the count
    of each value of the columns that went through a dictionary."""
    columns = dict(ready)
    value_counts = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # each task gets the only reference to its column, so the input is freed as soon as it is gathered
        futures = {name: pool.submit(_reorder, [sources.pop(name)], rows) for name in list(sources)}
        for name, future in futures.items():
            columns[name], counts = future.result()
            if counts is not None:
                value_counts[name] = counts
    schema = contract.arrow_schema
    table = pa.Table.from_arrays(
        [columns[f.name] if columns.get(f.name) is not None else pa.nulls(len(rows), f.type) for f in schema],
        schema=schema,
    )
    return table, value_counts


def _text(values: pa.ChunkedArray | pa.Array | None) -> pa.ChunkedArray | pa.Array | None:
    """Plain ``string`` (from ``large_string`` or dictionary text)."""
    if values is not None and (pa.types.is_large_string(values.type) or pa.types.is_dictionary(values.type)):
        return values.cast(pa.string())
    return values


def _reorder(
    holder: list[pa.ChunkedArray | _Numbers | None], rows: np.ndarray
) -> tuple[pa.ChunkedArray | None, dict | None]:
    """A column (the only reference, in ``holder``) in output order, with its value counts if it went through a
    dictionary. Numbers and time stamps are gathered with numpy; text with few distinct values through dictionary
    codes (a random read of small codes instead of scattered strings, about 4x faster); other text directly."""
    values = holder.pop()
    if values is None:
        return None, None
    n = len(rows)
    if isinstance(values, _Numbers):
        gathered, valid, value_type = values.values[rows], values.valid[rows], values.type
        del values
        if pa.types.is_timestamp(value_type):
            gathered = gathered.view("datetime64[us]")
        mask = None if valid.all() else ~valid

        def chunk(a: int, b: int) -> pa.Array:
            return pa.array(gathered[a:b], type=value_type, mask=None if mask is None else mask[a:b])

        return _chunked(chunk, n), None
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    if pa.types.is_dictionary(values.type) or pa.types.is_string(values.type):
        dictionary_text = pa.types.is_dictionary(values.type)
        sample = values.slice(0, 100_000)
        if dictionary_text or (len(sample) and pc.count_distinct(sample).as_py() <= len(sample) // 20):
            encoded = values if dictionary_text else pc.dictionary_encode(values)
            encoded = encoded.unify_dictionaries().combine_chunks()
            del values
            dictionary = _text(encoded.dictionary)
            indices = encoded.indices.fill_null(0).to_numpy()[rows]
            valid = encoded.is_valid().to_numpy(zero_copy_only=False)[rows] if encoded.null_count else None
            del encoded
            counts = np.bincount(indices if valid is None else indices[valid], minlength=len(dictionary))
            value_counts = {v: int(k) for v, k in zip(dictionary.to_pylist(), counts, strict=True) if k}
            return _chunked(lambda a, b: _decode(indices[a:b], dictionary, valid, a, b), n), value_counts
    flat = values.combine_chunks()
    del values
    return _chunked(lambda a, b: flat.take(pa.array(rows[a:b])), n), None


# --------------------------------------------------------------------------------------------- summary


def _summarise(
    con: duckdb.DuckDBPyConnection,
    data: Dataset,
    tables: tuple[TableReport, ...],
    ids: list[pa.Array],
    event_types: dict[str, int] | None,
) -> ValidationReport:
    n_customers = len(pc.unique(pa.chunked_array(ids, type=pa.string()))) if ids else 0
    first = last = None
    if data.transactions.num_rows:
        bounds = pc.min_max(data.transactions["timestamp"])
        first, last = bounds["min"].as_py(), bounds["max"].as_py()
    if event_types is None:
        con.register("ev", data.events.select(["event_type"]))
        try:
            event_types = dict(con.sql("SELECT event_type, count(*) FROM ev GROUP BY 1").fetchall())
        finally:
            con.unregister("ev")
    per_type = dict(sorted(event_types.items(), key=lambda kv: (-kv[1], kv[0])))
    return ValidationReport(tables, int(n_customers), first, last, per_type)
