"""Validation: every bad row lands in the rejects with its reason; kept + rejected = read; broken inputs stop."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.io import write_table
from features.mapping import load_mapping
from features.validate import DataContractError, load_dataset

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
