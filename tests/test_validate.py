"""Validation: every bad row lands in the rejects with its reason; kept + rejected = read; broken inputs stop."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churnguard.cli import app
from features.io import write_table
from features.mapping import load_mapping
from features.validate import _PLAIN_TIMESTAMP_SHAPES, DataContractError, load_dataset, read_file

NOW = datetime(2025, 1, 1)

TX_CSV = """customer_id,timestamp,amount,order_id,channel
c1,2024-01-01 10:00:00,10.5,o1,web
c1,2024-01-01 10:00:00,10.5,o1,web
,2024-01-02 10:00:00,3,o2,web
c2,2024-02-30 10:00:00,3,o3,web
c2,not a date,3,o3,web
c2,2099-01-01 00:00:00,3,o4,web
c3,2024-03-01 10:00:00,n/a,o5,app
c3,2024-03-01 11:00:00,,o6,app
c3,2024-03-02 11:00:00,-4.25,o5,app
c4,2024-03-03T10:00:00+02:00,7,o7,store
c4,2024-03-04 10:00:00,inf,o8,store
"""
EVENTS_CSV = """customer_id,timestamp,event_type,device
c1,2024-01-01 09:00:00,email_open,phone
c1,2024-01-01 09:00:00,email_open,phone
c9,2024-01-05 09:00:00,,phone
c9,yesterday,session,phone
"""
CUSTOMERS_CSV = """customer_id,signup_date,churn_date
c1,2023-12-01,
c1,2023-12-02,
c2,2024-01-10,2023-01-01
c3,soon,
"""

EXPECTED_TX = {
    "exact duplicate": [2],
    "missing customer_id": [3],
    "unparseable timestamp": [4, 5],
    "timestamp after now": [6],
    "non-numeric amount": [7],
    "missing amount": [8],
    "non-finite amount": [11],
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "transactions.csv").write_text(TX_CSV)
    (tmp_path / "events.csv").write_text(EVENTS_CSV)
    (tmp_path / "customers.csv").write_text(CUSTOMERS_CSV)
    return tmp_path


def test_each_bad_row_is_rejected_with_its_reason(folder):
    data, rejects = load_dataset(folder, now=NOW)
    rows = [r for r in rejects.to_pylist() if r["table"] == "transactions"]
    got: dict[str, list[int]] = {}
    for r in rows:
        got.setdefault(r["reason"], []).append(r["row_number"])
        assert r["source_file"].endswith("transactions.csv")
    assert got == EXPECTED_TX
    assert data.transactions["customer_id"].to_pylist() == ["c1", "c3", "c4"]
    # refunds are valid negative amounts; an offset time stamp is converted to naive UTC
    assert data.transactions["amount"].to_pylist() == [10.5, -4.25, 7.0]
    assert data.transactions["timestamp"].to_pylist()[2] == datetime(2024, 3, 3, 8, 0)


def test_rejected_rows_keep_the_raw_values(folder):
    _, rejects = load_dataset(folder, now=NOW)
    bad_date = next(r for r in rejects.to_pylist() if r["reason"] == "unparseable timestamp")
    assert '"timestamp":"2024-02-30 10:00:00"' in bad_date["raw"]
    assert bad_date["customer_id"] == "c2"


def test_events_and_customers_are_checked_too(folder):
    data, rejects = load_dataset(folder, now=NOW)
    reasons = {(r["table"], r["row_number"]): r["reason"] for r in rejects.to_pylist()}
    assert reasons[("events", 2)] == "exact duplicate"
    assert reasons[("events", 3)] == "missing event_type"
    assert reasons[("events", 4)] == "unparseable timestamp"
    assert reasons[("customers", 2)] == "duplicate customer_id"
    assert reasons[("customers", 3)] == "churn_date before signup_date"
    assert reasons[("customers", 4)] == "unparseable signup_date"
    assert data.events.num_rows == 1 and data.customers.num_rows == 1


def test_kept_plus_rejected_equals_read(folder):
    data, rejects = load_dataset(folder, now=NOW)
    report = data.report
    for t in report.tables:
        assert t.rows_kept + t.rows_rejected == t.rows_read
    assert report.rows_read == 11 + 4 + 4
    assert report.rows_rejected == rejects.num_rows
    assert report.tables[1].ignored_columns == ("device",)


def test_future_rows_are_kept_when_asked(folder):
    data, _ = load_dataset(folder, now=NOW, reject_future=False)
    assert data.report.tables[0].rejected.get("timestamp after now") is None


def test_missing_required_column_names_file_and_column(tmp_path):
    (tmp_path / "transactions.csv").write_text("customer_id,when,amount\nc1,2024-01-01,3\n")
    with pytest.raises(DataContractError, match=r"transactions.csv: missing required column 'timestamp'"):
        load_dataset(tmp_path, now=NOW)


def test_missing_or_empty_transactions_file(tmp_path):
    with pytest.raises(DataContractError, match="no transactions file"):
        load_dataset(tmp_path, now=NOW)
    (tmp_path / "transactions.csv").write_text("")
    with pytest.raises(DataContractError, match="empty"):
        load_dataset(tmp_path, now=NOW)
    (tmp_path / "transactions.csv").write_text("customer_id,timestamp,amount\n")
    with pytest.raises(DataContractError, match="no rows"):
        load_dataset(tmp_path, now=NOW)


def test_all_rows_rejected_is_an_error_with_the_reasons(tmp_path):
    (tmp_path / "transactions.csv").write_text("customer_id,timestamp,amount\n,2024-01-01,3\n")
    with pytest.raises(DataContractError, match="1 missing customer_id"):
        load_dataset(tmp_path, now=NOW)


def test_mapping_renames_and_derives_columns(tmp_path):
    table = pa.table(
        {
            "invoice": ["536365", "C536379", "536366"],
            "cust": pa.array([17850, 17850, None], pa.int64()),
            "invoice_date": pa.array(
                [datetime(2010, 12, 1, 8, 26), datetime(2010, 12, 1, 9, 41), datetime(2010, 12, 1, 8, 28)],
                pa.timestamp("ns"),
            ),
            "quantity": pa.array([6, -1, 2], pa.int32()),
            "price": [2.55, 27.5, 1.85],
        }
    )
    pq.write_table(table, tmp_path / "sales.parquet")
    (tmp_path / "churnguard.yaml").write_text(
        "transactions:\n  file: sales.parquet\n  columns: {customer_id: cust, timestamp: invoice_date, "
        "order_id: invoice}\n  derive: {amount: quantity * price}\n"
    )
    data, rejects = load_dataset(tmp_path, now=NOW, mapping=load_mapping(tmp_path))
    assert data.transactions["amount"].to_pylist() == pytest.approx([15.3, -27.5])
    assert data.transactions["customer_id"].to_pylist() == ["17850", "17850"]
    assert data.transactions["order_id"].to_pylist() == ["536365", "C536379"]
    assert rejects["reason"].to_pylist() == ["missing customer_id"]


def test_map_flags_and_timestamp_format(tmp_path):
    (tmp_path / "orders.csv").write_text("who;when;value\nc1;31/12/2023 10:00;5\n")
    mapping = load_mapping(
        tmp_path,
        flags=[
            "file=orders.csv",
            "csv_delimiter=;",
            "customer_id=who",
            "timestamp=when",
            "amount=value * 2",
            "timestamp_format=%d/%m/%Y %H:%M",
        ],
    )
    data, _ = load_dataset(tmp_path, now=NOW, mapping=mapping)
    assert data.transactions.to_pylist()[0]["timestamp"] == datetime(2023, 12, 31, 10, 0)
    assert data.transactions.to_pylist()[0]["amount"] == 10.0


@pytest.mark.parametrize("expr", ["__import__('os').system('x')", "quantity ** 2", "price if 1 else 2", "'a'"])
def test_mapping_expressions_cannot_run_code(tmp_path, expr):
    with pytest.raises(ValueError):
        load_mapping(tmp_path, flags=[f"amount={expr}"])


def test_rejects_are_written_atomically(folder, tmp_path):
    _, rejects = load_dataset(folder, now=NOW)
    out = tmp_path / "out" / "rejects.parquet"
    write_table(rejects, out)
    assert pq.read_table(out).num_rows == rejects.num_rows
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_no_file(tmp_path, folder):
    _, rejects = load_dataset(folder, now=NOW)
    unwritable = rejects.append_column("nested", pa.array([[1]] * rejects.num_rows))  # CSV cannot hold lists
    out_dir = tmp_path / "out"
    with pytest.raises(pa.ArrowException):
        write_table(unwritable, out_dir / "rejects.csv")
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------- optional columns

TX_REQUIRED_ONLY = "customer_id,timestamp,amount\nc1,2024-01-01 10:00:00,5\nc2,2024-02-01 10:00:00,-2\n"


@pytest.mark.parametrize(
    ("files", "expect"),
    [
        pytest.param(
            {"customers.csv": "customer_id,signup_date\nc1,2023-01-01\nc2,2023-06-01\n"},
            {"customers": 2, "signup_date": [datetime(2023, 1, 1), datetime(2023, 6, 1)], "churn_date": [None, None]},
            id="customers-without-churn_date",
        ),
        pytest.param(
            {"customers.csv": "customer_id,churn_date\nc1,2024-03-01\nc2,\n"},
            {"customers": 2, "signup_date": [None, None], "churn_date": [datetime(2024, 3, 1), None]},
            id="customers-without-signup_date",
        ),
        pytest.param(
            {"customers.csv": "customer_id\nc2\nc1\nc1\n"},
            {"customers": 2, "signup_date": [None, None], "churn_date": [None, None]},
            id="customers-id-only",
        ),
        pytest.param({}, {"customers": 0, "events": 0}, id="no-events-no-customers"),
        pytest.param(
            {"events.csv": "customer_id,timestamp,event_type\nc1,2024-01-05,session\n"},
            {"customers": 0, "events": 1},
            id="no-customers-file",
        ),
        pytest.param(
            {"customers.csv": "customer_id,signup_date\nc1,2023-01-01\n"},
            {"customers": 1, "events": 0},
            id="no-events-file",
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_optional_column_and_file_may_be_absent(tmp_path, files, expect, fmt):
    _write(tmp_path / "transactions.csv", TX_REQUIRED_ONLY, fmt)
    for name, text in files.items():
        _write(tmp_path / name, text, fmt)
    data, rejects = load_dataset(tmp_path, now=NOW)
    tx = data.transactions.to_pydict()
    assert tx["customer_id"] == ["c1", "c2"] and tx["amount"] == [5.0, -2.0]
    for col in ("order_id", "quantity", "product_id", "category", "channel"):
        assert tx[col] == [None, None]
    assert data.customers.num_rows == expect["customers"]
    if "events" in expect:
        assert data.events.num_rows == expect["events"]
    for col in ("signup_date", "churn_date"):
        if col in expect:
            assert data.customers[col].to_pylist() == expect[col]
    assert rejects.num_rows == sum(t.rows_rejected for t in data.report.tables)


def test_customers_without_churn_date_validate_through_the_cli(tmp_path):
    """The bug from real data: a customers file without churn_date crashed validate/train/score."""
    (tmp_path / "transactions.csv").write_text(TX_REQUIRED_ONLY)
    (tmp_path / "customers.csv").write_text("customer_id,signup_date\nc1,2023-01-01\nc1,2023-01-02\n")
    r = CliRunner().invoke(app, ["validate", "--data", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "duplicate customer_id: 1" in r.output and "Traceback" not in r.output


def _write(path: Path, text: str, fmt: str) -> None:
    """The CSV text as is, or as Parquet with the values pyarrow infers (the typed path of validation)."""
    if fmt == "csv":
        path.write_text(text)
        return
    tmp = path.with_suffix(".tmp.csv")
    tmp.write_text(text)
    pq.write_table(pacsv.read_csv(tmp), path.with_suffix(".parquet"))
    tmp.unlink()


# --------------------------------------------------------------------------------------------- CSV = Parquet


def test_csv_and_parquet_of_the_same_rows_give_the_same_dataset(folder, tmp_path):
    """Parquet written from the CSV text (every column a string) must validate exactly like the CSV."""
    as_parquet = tmp_path / "parquet"
    as_parquet.mkdir()
    for name in ("transactions", "events", "customers"):
        pq.write_table(read_file(folder / f"{name}.csv"), as_parquet / f"{name}.parquet")
    csv_data, csv_rejects = load_dataset(folder, now=NOW)
    pq_data, pq_rejects = load_dataset(as_parquet, now=NOW)
    for name in ("transactions", "events", "customers"):
        assert getattr(csv_data, name).equals(getattr(pq_data, name)), name
    assert csv_rejects.drop_columns(["source_file"]).equals(pq_rejects.drop_columns(["source_file"]))
    assert [t.rejected for t in csv_data.report.tables] == [t.rejected for t in pq_data.report.tables]


def test_typed_parquet_and_csv_of_a_demo_business_agree(tmp_path):
    """A small demo business as CSV, and the same files as typed Parquet (types inferred by pyarrow): the clean
    tables are equal row for row (same order), and the same rows are rejected for the same reasons."""
    from churnguard.demo import generate

    csv_dir, pq_dir = tmp_path / "csv", tmp_path / "parquet"
    generate(csv_dir, customers=400, seed=5, months=12, fmt="csv")
    pq_dir.mkdir()
    for name in ("transactions", "events", "customers"):
        pq.write_table(pacsv.read_csv(csv_dir / f"{name}.csv"), pq_dir / f"{name}.parquet")
    csv_data, csv_rejects = load_dataset(csv_dir, now=NOW)
    pq_data, pq_rejects = load_dataset(pq_dir, now=NOW)
    for name in ("transactions", "events", "customers"):
        assert getattr(csv_data, name).equals(getattr(pq_data, name)), name
    keys = ["table", "row_number", "reason", "customer_id"]
    assert csv_rejects.select(keys).equals(pq_rejects.select(keys))
    assert csv_rejects.num_rows > 0  # the demo injects messy rows


def test_clean_rows_are_sorted_by_customer_then_time_then_file_order(tmp_path):
    rows = [
        ("b", "2024-01-02 00:00:00", "1", "o1"),
        ("a", "2024-01-03 00:00:00", "2", "o2"),
        ("b", "2024-01-01 00:00:00", "3", "o3"),
        ("a", "2024-01-03 00:00:00", "4", "o4"),  # same customer and time as o2: file order decides
        ("a", "2024-01-01 00:00:00", "5", "o5"),
    ]
    text = "customer_id,timestamp,amount,order_id\n" + "".join(",".join(r) + "\n" for r in rows)
    (tmp_path / "transactions.csv").write_text(text)
    data, _ = load_dataset(tmp_path, now=NOW)
    assert data.transactions["order_id"].to_pylist() == ["o5", "o2", "o4", "o3", "o1"]


# --------------------------------------------------------------------------------------------- padded values


def test_padded_and_blank_values_are_trimmed_like_the_api(tmp_path):
    """Columns with leading/trailing spaces or empty strings take the TRIM path; the result is as if clean."""
    (tmp_path / "transactions.csv").write_text(
        "customer_id,timestamp,amount,channel\n"
        " c1 , 2024-01-01 10:00:00 , 3.5 ,web\n"
        "c2,2024-01-02 10:00:00,4, \n"
        "   ,2024-01-03 10:00:00,4,web\n"
        "c3,   ,4,web\n"
        "c4,2024-01-04 10:00:00,  ,web\n"
    )
    data, rejects = load_dataset(tmp_path, now=NOW)
    tx = data.transactions.to_pydict()
    assert tx["customer_id"] == ["c1", "c2"]
    assert tx["timestamp"] == [datetime(2024, 1, 1, 10), datetime(2024, 1, 2, 10)]
    assert tx["amount"] == [3.5, 4.0] and tx["channel"] == ["web", None]
    assert [r["reason"] for r in rejects.to_pylist()] == ["missing customer_id", "missing timestamp", "missing amount"]


def test_plain_timestamp_shapes_parse_like_the_time_zone_aware_cast():
    """The fast path for 'YYYY-MM-DD HH:MM:SS'-shaped text must give what the time-zone-aware parse gives."""
    import random

    from features.duck import connect

    rnd = random.Random(0)
    alphabet = "0123456789+-:ZT .2"
    values = []
    for _ in range(20_000):
        base = rnd.choice(["2024-03-03 10:00:00", "2024-03-03T10:00:00", "2024-03-03", "2024-02-29 23:59:59"])
        chars = list(base)
        for _ in range(rnd.randint(0, 2)):
            chars[rnd.randrange(len(chars))] = rnd.choice(alphabet)
        values.append("".join(chars))
    con = connect()
    con.register("v", pa.table({"x": values}))
    differ = con.sql(
        f"SELECT x FROM v WHERE ({' OR '.join(f'x LIKE {s!r}' for s in _PLAIN_TIMESTAMP_SHAPES)}) AND "
        "TRY_CAST(x AS TIMESTAMP) IS DISTINCT FROM date_trunc('second', CAST(TRY_CAST(x AS TIMESTAMPTZ) AS TIMESTAMP))"
    ).fetchall()
    assert differ == []


# --------------------------------------------------------------------------------------------- broken inputs


def _broken_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (CLI arguments, text the one-line error must contain)."""
    cases: dict[str, tuple[list[str], str]] = {}

    def folder(name: str, files: dict[str, str | bytes]) -> str:
        d = tmp_path / name
        d.mkdir()
        for file, content in files.items():
            if file.endswith("/"):
                (d / file).mkdir()
            elif isinstance(content, bytes):
                (d / file).write_bytes(content)
            else:
                (d / file).write_text(content)
        return str(d)

    ok_tx = "customer_id,timestamp,amount\nc1,2024-01-01,3\n"
    cases["missing folder"] = (["--data", str(tmp_path / "nope")], "data folder not found")
    cases["no transactions"] = (["--data", folder("none", {"events.csv": "x\n"})], "no transactions file")
    cases["empty file"] = (["--data", folder("empty", {"transactions.csv": ""})], "file is empty")
    cases["header only"] = (
        ["--data", folder("header", {"transactions.csv": "customer_id,timestamp,amount\n"})],
        "no rows",
    )
    cases["missing column"] = (
        ["--data", folder("nocol", {"transactions.csv": "customer_id,amount\nc1,3\n"})],
        "missing required column 'timestamp'",
    )
    cases["semicolons"] = (
        ["--data", folder("semi", {"transactions.csv": "customer_id;timestamp;amount\nc1;2024-01-01;3\n"})],
        "csv_delimiter",
    )
    cases["ragged row"] = (
        ["--data", folder("ragged", {"transactions.csv": ok_tx + "c2,2024-01-02,3,extra\n"})],
        "transactions.csv: cannot be read",
    )
    cases["not utf-8"] = (
        ["--data", folder("latin", {"transactions.csv": ok_tx.encode() + "c\xe9,2024-01-02,3\n".encode("latin-1")})],
        "transactions.csv: cannot be read",
    )
    cases["not parquet"] = (
        ["--data", folder("garbage", {"transactions.parquet": b"this is not parquet"})],
        "transactions.parquet: cannot be read",
    )
    cases["folder named like a file"] = (
        ["--data", folder("dir", {"transactions.csv/": ""})],
        "is a folder",
    )
    cases["duplicate header"] = (
        ["--data", folder("dup", {"transactions.csv": "customer_id,timestamp,amount,amount\nc1,2024-01-01,3,4\n"})],
        "appears more than once",
    )
    cases["events without event_type"] = (
        ["--data", folder("ev", {"transactions.csv": ok_tx, "events.csv": "customer_id,timestamp\nc1,2024-01-01\n"})],
        "events.csv: missing required column 'event_type'",
    )
    cases["all rows rejected"] = (
        ["--data", folder("allbad", {"transactions.csv": "customer_id,timestamp,amount\n,2024-01-01,3\n"})],
        "no valid transactions",
    )
    cases["bad yaml"] = (
        ["--data", folder("yaml", {"transactions.csv": ok_tx, "churnguard.yaml": "transactions: [unclosed\n"})],
        "not valid YAML",
    )
    cases["unknown mapped column"] = (
        ["--data", folder("map", {"transactions.csv": ok_tx}), "--map", "amout=x"],
        "amout",
    )
    cases["mapped column absent"] = (
        ["--data", folder("map2", {"transactions.csv": ok_tx}), "--map", "order_id=invoice"],
        "column 'invoice' (mapped to 'order_id') does not exist",
    )
    cases["bad timestamp format"] = (
        ["--data", folder("fmt", {"transactions.csv": ok_tx}), "--map", "timestamp_format=%Q"],
        "transactions.csv",
    )
    cases["mapping file missing"] = (
        ["--data", folder("nomap", {"transactions.csv": ok_tx}), "--mapping", str(tmp_path / "x.yaml")],
        "mapping file not found",
    )
    return cases


def test_every_broken_input_is_one_clean_line(tmp_path):
    runner = CliRunner()
    for name, (args, expected) in _broken_inputs(tmp_path).items():
        r = runner.invoke(app, ["validate", *args])
        assert r.exit_code == 2, (name, r.output, r.exception)
        assert "Traceback" not in r.output, name
        assert expected in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1, (name, r.output)


def test_equal_typed_values_with_different_text_are_not_duplicates(tmp_path):
    """Duplicates are found through typed values first, but only identical raw rows are rejected."""
    (tmp_path / "transactions.csv").write_text(
        "customer_id,timestamp,amount,product_id\n"
        "c1,2024-01-01 10:00:00,10.5,p1\n"
        "c1,2024-01-01 10:00:00,10.50,p1\n"  # same values, other text: kept
        "c1,2024-01-01T10:00:00,10.5,p1\n"  # same time, other text: kept
        "c1,2024-01-01 10:00:00,10.5,p2\n"  # other product: kept
        "c1,2024-01-01 10:00:00,10.5,p1\n"  # identical to row 1: rejected
    )
    data, rejects = load_dataset(tmp_path, now=NOW)
    assert data.transactions.num_rows == 4
    assert [(r["row_number"], r["reason"]) for r in rejects.to_pylist()] == [(5, "exact duplicate")]


def test_duplicates_when_most_rows_share_their_typed_values(tmp_path):
    """Many rows alike in every typed column (the whole-row hash narrows them down): still exact."""
    lines = [f"c{i % 3},2024-01-01 10:00:00,1,p{i}" for i in range(200)] + ["c1,2024-01-01 10:00:00,1,p7"] * 3
    (tmp_path / "transactions.csv").write_text("customer_id,timestamp,amount,product_id\n" + "\n".join(lines) + "\n")
    data, rejects = load_dataset(tmp_path, now=NOW)
    assert data.transactions.num_rows == 200
    # row 8 holds c1/p7 (i = 7); rows 201-203 repeat it
    assert [(r["row_number"], r["reason"]) for r in rejects.to_pylist()] == [
        (201, "exact duplicate"),
        (202, "exact duplicate"),
        (203, "exact duplicate"),
    ]


def test_compact_reading_changes_nothing(tmp_path):
    """load_dataset reads low-cardinality CSV columns as dictionaries; the in-memory path reads plain text."""
    from churnguard.demo import generate
    from features.mapping import Mapping
    from features.validate import read_folder, validate_tables

    generate(tmp_path, customers=300, seed=9, months=12, fmt="csv")
    compact, compact_rejects = load_dataset(tmp_path, now=NOW)
    raw = read_folder(tmp_path, Mapping())
    assert not any(pa.types.is_dictionary(f.type) for t in raw for f in t.data.schema)
    assert pa.types.is_dictionary(read_file(tmp_path / "events.csv", compact=True).schema.field("event_type").type)
    plain, plain_rejects = validate_tables(raw, now=NOW)
    for name in ("transactions", "events", "customers"):
        assert getattr(compact, name).equals(getattr(plain, name)), name
    assert compact_rejects.equals(plain_rejects)
    assert compact.report == plain.report


def test_checking_in_slices_changes_nothing(folder, monkeypatch):
    """Big tables are checked in slices of rows; the result must not depend on where the slices fall."""
    import features.validate as validate

    whole, whole_rejects = load_dataset(folder, now=NOW)
    monkeypatch.setattr(validate, "TYPED_PASS_ROWS", 3)
    sliced, sliced_rejects = load_dataset(folder, now=NOW)
    for name in ("transactions", "events", "customers"):
        assert getattr(whole, name).equals(getattr(sliced, name)), name
    assert whole_rejects.equals(sliced_rejects)
