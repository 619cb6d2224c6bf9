"""The synthetic demo business: deterministic, inside its window, realistic enough to fail, and honest about
its mess.

The mess counts are recomputed here with plain pandas (not with the project's validator), the way anyone
reading the files would find them."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from churnguard.demo import EVENT_TYPES, DemoProcess, DemoSummary, generate
from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS

START = date(2023, 1, 1)
END = pd.Timestamp("2025-01-01")
N = 2_000
TS_FORMAT = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, DemoSummary]:
    return {fmt: generate(tmp_path_factory.mktemp(fmt), customers=N, seed=3, fmt=fmt) for fmt in ("csv", "parquet")}


@pytest.fixture(scope="module")
def business(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """A larger business for the realism checks, read back and cleaned of the injected mess."""
    summary = generate(tmp_path_factory.mktemp("business"), customers=6_000, seed=11, fmt="parquet")
    tx, ev = clean(raw(summary, "transactions")), clean(raw(summary, "events"))
    customers = raw(summary, "customers")
    segment = customers.set_index("customer_id")["segment"]
    tx["segment"] = segment.reindex(tx["customer_id"]).to_numpy()
    return {"tx": tx, "ev": ev, "customers": customers}


def raw(summary: DemoSummary, table: str) -> pd.DataFrame:
    """The file as written: CSV as text (empty field = missing), Parquet as typed."""
    path = summary.paths[table]
    if summary.fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return pd.read_parquet(path)


def parsed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["timestamp"] = pd.to_datetime(out["timestamp"], format=TS_FORMAT, errors="coerce")
    if "amount" in out:
        out["amount"] = pd.to_numeric(out["amount"], errors="coerce")
    return out


def problems(df: pd.DataFrame, end: pd.Timestamp = END) -> pd.DataFrame:
    """One column per mess kind, True where a row has that problem, found independently of the generator."""
    p = parsed(df)
    found = {
        "duplicate": df.duplicated().to_numpy(),
        "missing_customer_id": df["customer_id"].isna().to_numpy(),
        "bad_timestamp": p["timestamp"].isna().to_numpy(),
        "future_timestamp": (p["timestamp"] >= end).to_numpy(),
    }
    if "amount" in df:
        found["missing_amount"] = df["amount"].isna().to_numpy()
        found["non_numeric_amount"] = (df["amount"].notna() & p["amount"].isna()).to_numpy()
    return pd.DataFrame(found)


def clean(df: pd.DataFrame, end: pd.Timestamp = END) -> pd.DataFrame:
    return parsed(df)[~problems(df, end).any(axis=1).to_numpy()].reset_index(drop=True)


# --- determinism and files ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = generate(tmp_path / "a", customers=500, seed=5, fmt="csv")
    b = generate(tmp_path / "b", customers=500, seed=5, fmt="csv")
    c = generate(tmp_path / "c", customers=500, seed=6, fmt="csv")
    for name in ("transactions", "events", "customers", "manifest"):
        assert a.paths[name].read_bytes() == b.paths[name].read_bytes(), name
    assert a.paths["transactions"].read_bytes() != c.paths["transactions"].read_bytes()
    assert a.paths["events"].read_bytes() != c.paths["events"].read_bytes()


def test_parquet_is_deterministic_too(tmp_path):
    a = generate(tmp_path / "a", customers=300, seed=1, fmt="parquet")
    b = generate(tmp_path / "b", customers=300, seed=1, fmt="parquet")
    for name in ("transactions", "events", "customers"):
        assert a.paths[name].read_bytes() == b.paths[name].read_bytes(), name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_files_follow_the_contract(demo, fmt):
    summary = demo[fmt]
    assert sorted(p.name for p in summary.out_dir.iterdir()) == sorted(
        [f"transactions.{fmt}", f"events.{fmt}", f"customers.{fmt}", "manifest.json"]
    )  # and no temp files left behind
    for contract in (TRANSACTIONS, EVENTS):
        assert list(raw(summary, contract.name).columns) == list(contract.column_names)
    assert list(raw(summary, "customers").columns) == [*CUSTOMERS.column_names, "segment", "region"]
    for name, rows in summary.rows.items():
        assert len(raw(summary, name)) == rows
    assert summary.start == START and summary.end == END.date() and summary.n_customers == N


def test_parquet_types(demo):
    schema = pq.read_schema(demo["parquet"].paths["transactions"])
    assert str(schema.field("timestamp").type) == "timestamp[us]"
    assert str(schema.field("amount").type) == "double"
    for name in ("customer_id", "order_id", "product_id", "category", "channel"):
        assert str(schema.field(name).type) == "string"
    customers = pq.read_schema(demo["parquet"].paths["customers"])
    for name in ("signup_date", "churn_date"):
        assert str(customers.field(name).type) == "timestamp[us]"


def test_csv_text_formats(demo):
    tx = clean(raw(demo["csv"], "transactions"))
    text = pd.read_csv(demo["csv"].paths["transactions"], dtype=str).iloc[:1000]
    assert text["timestamp"].str.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}").all()
    assert text["customer_id"].str.fullmatch(r"C\d{7}").all()
    assert (tx["quantity"].astype(float) >= 1).all()
    assert set(tx["channel"]) == {"web", "app", "store"}


def test_customers(demo):
    customers = raw(demo["parquet"], "customers")
    assert customers["customer_id"].is_unique and len(customers) == N
    assert customers["customer_id"].iloc[0] == "C0000001"
    assert customers["signup_date"].notna().all() and (customers["signup_date"] < END).all()
    initial = (customers["signup_date"] < pd.Timestamp(START)).mean()
    assert 0.25 < initial < 0.35
    subscription = customers["segment"] == "subscription"
    assert 0.07 < subscription.mean() < 0.13
    assert customers.loc[~subscription, "churn_date"].isna().all()  # retail customers never cancel
    churned = customers[customers["churn_date"].notna()]
    assert (churned["churn_date"] > churned["signup_date"]).all() and (churned["churn_date"] < END).all()
    assert customers["region"].nunique() >= 3


# --- the window and the mess --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("table", ["transactions", "events"])
def test_manifest_counts_are_what_the_files_contain(demo, fmt, table):
    summary = demo[fmt]
    found = problems(raw(summary, table))
    manifest = json.loads(summary.paths["manifest"].read_text())
    expected = manifest["messy"][table]
    assert expected == summary.messy[table]
    for kind in found.columns:
        assert int(found[kind].sum()) == expected.get(kind, 0), kind
    assert (found.sum(axis=1) <= 1).all(), "a messy row must be messy in exactly one way"
    assert sum(expected.values()) > 0
    if table == "transactions":
        share = sum(expected.values()) / summary.rows[table]
        assert 0.005 < share < 0.02
        kinds = {k for k, n in expected.items() if n > 0}
        every = {"duplicate", "missing_customer_id", "bad_timestamp", "future_timestamp", "missing_amount"}
        assert kinds == every | ({"non_numeric_amount"} if fmt == "csv" else set())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_messy_rows_are_interspersed(demo, fmt):
    found = problems(raw(demo[fmt], "transactions")).any(axis=1).to_numpy()
    where = np.flatnonzero(found) / found.size
    assert not found[0]
    assert where.min() < 0.1 and where.max() > 0.9 and 0.35 < where.mean() < 0.65


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_no_valid_row_outside_the_window(demo, fmt):
    summary = demo[fmt]
    for table in ("transactions", "events"):
        ts = parsed(raw(summary, table))["timestamp"].dropna()
        assert (ts >= pd.Timestamp(START)).all()
        outside = ts >= END
        assert outside.sum() == summary.messy[table]["future_timestamp"]
        assert (ts[outside].dt.year >= 2099).all()


def test_the_clean_data_is_what_remains_without_the_messy_rows(demo):
    """Messy rows are extra copies, so cleaning the CSV and the Parquet files gives the same rows."""
    a = clean(raw(demo["csv"], "transactions"))
    b = clean(raw(demo["parquet"], "transactions"))
    a["amount"] = a["amount"].astype(float)
    a["quantity"] = a["quantity"].astype(float)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


# --- realism ------------------------------------------------------------------------------------------------


def orders_of(tx: pd.DataFrame) -> pd.DataFrame:
    buys = tx[(tx["amount"] > 0) & (tx["segment"] == "retail")]
    by_order = buys.groupby("order_id")
    return by_order.agg(customer_id=("customer_id", "first"), timestamp=("timestamp", "first"))


def test_volumes_per_customer(business):
    n = len(business["customers"])
    assert 8 <= len(business["tx"]) / n <= 14
    assert 15 <= len(business["ev"]) / n <= 28
    assert set(business["ev"]["event_type"]) == set(EVENT_TYPES)


def test_purchase_counts_are_skewed_with_many_one_time_buyers(business):
    per_customer = orders_of(business["tx"]).groupby("customer_id").size()
    assert 0.15 <= (per_customer == 1).mean() <= 0.60
    assert per_customer.mean() > per_customer.median()
    assert per_customer.quantile(0.99) >= 5 * per_customer.median()  # a heavy tail of frequent buyers


def test_orders_peak_in_november_and_december(business):
    orders = orders_of(business["tx"])
    monthly = orders.groupby(orders["timestamp"].dt.to_period("M")).size()
    for year in (2023, 2024):
        months = monthly[monthly.index.year == year]
        assert months[months.index.month == 12].iloc[0] > 1.3 * months.mean()
        assert months[months.index.month == 11].iloc[0] > months.mean()
        assert months[months.index.month.isin([6, 7, 8])].mean() < months.mean()


def test_orders_have_lines_and_refunds_point_to_earlier_orders(business):
    tx = business["tx"]
    buys, refunds = tx[tx["amount"] > 0], tx[tx["amount"] < 0]
    assert (tx["amount"] != 0).all()
    lines = buys.groupby("order_id").agg(
        n=("amount", "size"),
        ts=("timestamp", "nunique"),
        customer=("customer_id", "nunique"),
        first=("timestamp", "min"),
    )
    assert (lines["ts"] == 1).all() and (lines["customer"] == 1).all()
    assert 1.4 < lines["n"].mean() < 2.5
    assert 0.02 <= len(refunds) / len(lines) <= 0.045
    assert refunds["order_id"].isin(lines.index).all()
    bought = lines.loc[refunds["order_id"], "first"].to_numpy()
    assert (refunds["timestamp"].to_numpy() > bought).all()
    same = buys.set_index(["order_id", "product_id"])["amount"]
    assert np.allclose(
        -refunds.set_index(["order_id", "product_id"])["amount"],
        same.reindex(refunds.set_index(["order_id", "product_id"]).index),
    )


def test_subscriptions_stop_charging_after_the_cancel(business):
    tx, customers = business["tx"], business["customers"]
    charges = tx[tx["category"] == "subscription"]
    assert (charges["segment"] == "subscription").all() and (charges["amount"] > 0).all()
    churn = customers.set_index("customer_id")["churn_date"]
    cancel = churn.reindex(charges["customer_id"]).to_numpy()
    after = pd.notna(cancel) & (charges["timestamp"].to_numpy() >= cancel)
    assert not after.any()
    subscribers = customers[customers["segment"] == "subscription"]
    assert 0.25 < subscribers["churn_date"].notna().mean() < 0.7
    monthly = charges.groupby("customer_id")["timestamp"].agg(["min", "max", "size"])
    span = (monthly["max"] - monthly["min"]).dt.days / 30.44
    assert (monthly["size"] - 1 - span).abs().max() < 1.01  # one charge a month
    assert charges.groupby("customer_id")["amount"].nunique().max() == 1  # a fixed plan price


def test_engagement_fades_before_the_last_purchase(business):
    """Customers who stopped buying (last order over 180 days before the end) were less engaged in the month
    before their last order than two to four months before it. The 3 days right before it are left out:
    they hold the browsing of that order itself. Tickets are left out too: they rise before leaving (tested
    below)."""
    orders = orders_of(business["tx"])
    by_customer = orders.groupby("customer_id")["timestamp"]
    info = pd.DataFrame({"first": by_customer.min(), "last": by_customer.max(), "n": by_customer.size()})
    day = pd.Timedelta(days=1)
    gone = info["last"] < END - 180 * day
    leavers = info[gone & (info["first"] < info["last"] - 120 * day) & (info["n"] >= 2)]
    assert len(leavers) > 200
    ev = business["ev"]
    ev = ev[ev["event_type"] != "support_ticket"]
    ev = ev.merge(leavers[["last"]], left_on="customer_id", right_index=True)
    before = (ev["last"] - ev["timestamp"]) / day
    recent = ((before > 3) & (before <= 33)).sum() / 30
    earlier = ((before > 60) & (before <= 120)).sum() / 60
    assert recent < 0.85 * earlier, f"events per day: {recent:.1f} in the last month vs {earlier:.1f} before"


def test_leavers_are_quieter_than_stayers_at_a_cut_off(business):
    """What a churn model sees at a cut-off: recent buyers who will not buy again had fewer events in the last
    30 days than 60-120 days before, unlike recent buyers who buy again within 90 days (pooled over four
    cut-offs)."""
    orders = orders_of(business["tx"])
    first = orders.groupby("customer_id")["timestamp"].min()
    ev = business["ev"]
    day = pd.Timedelta(days=1)
    rates = {"leaver": np.zeros(2), "stayer": np.zeros(2)}
    for as_of in pd.to_datetime(["2023-10-01", "2024-01-01", "2024-04-01", "2024-06-01"]):
        ts = orders["timestamp"]
        known = pd.Index(orders[(ts < as_of) & (ts >= as_of - 90 * day)]["customer_id"].unique())
        known = known[first.reindex(known) < as_of - 120 * day]
        later = orders[orders["timestamp"] >= as_of]
        groups = {
            "leaver": known[~known.isin(later["customer_id"])],
            "stayer": known[known.isin(later[later["timestamp"] < as_of + 90 * day]["customer_id"])],
        }
        for group, ids in groups.items():
            before = (as_of - ev[ev["customer_id"].isin(ids)]["timestamp"]) / day
            recent = ((before > 0) & (before <= 30)).sum() / 30
            rates[group] += [recent, ((before > 60) & (before <= 120)).sum() / 60]
    leaver, stayer = rates["leaver"][0] / rates["leaver"][1], rates["stayer"][0] / rates["stayer"][1]
    assert leaver < 0.7, f"leavers' recent/earlier event rate {leaver:.2f}"
    assert leaver < 0.6 * stayer, f"leavers {leaver:.2f} vs stayers {stayer:.2f}"


def test_support_tickets_rise_before_leaving(business):
    ev, customers = business["ev"], business["customers"]
    churned = customers.dropna(subset=["churn_date"]).set_index("customer_id")["churn_date"]
    tickets = ev[ev["event_type"] == "support_ticket"]
    cancel = churned.reindex(tickets["customer_id"]).to_numpy()
    before = (cancel - tickets["timestamp"].to_numpy()) / pd.Timedelta(days=1)
    last_45 = ((before > 0) & (before <= 45)).sum() / 45
    earlier = ((before > 45) & (before <= 365)).sum() / 320
    assert last_45 > 3 * earlier


def test_engagement_follows_purchase_frequency(business):
    orders = orders_of(business["tx"]).groupby("customer_id").size()
    events = business["ev"].groupby("customer_id").size().reindex(orders.index, fill_value=0)
    assert np.corrcoef(np.log1p(orders), np.log1p(events))[0, 1] > 0.4


def test_a_window_starting_mid_month_and_charges_on_the_sign_up_day(tmp_path):
    summary = generate(tmp_path, customers=3_000, seed=2, start=date(2022, 3, 15), months=7, fmt="parquet")
    start, end = pd.Timestamp("2022-03-15"), pd.Timestamp("2022-10-15")
    assert summary.end == end.date()
    tx, customers = clean(raw(summary, "transactions"), end), raw(summary, "customers")
    for table in (tx, clean(raw(summary, "events"), end)):
        assert table["timestamp"].min() >= start and table["timestamp"].max() < end
    charges = tx[tx["category"] == "subscription"].merge(customers, on="customer_id")
    assert len(charges) > 500
    signup, ts = charges["signup_date"], charges["timestamp"]
    month_end = ts + pd.offsets.MonthEnd(0)
    assert (ts.dt.day == np.minimum(signup.dt.day, month_end.dt.day)).all()
    assert (ts.dt.time == signup.dt.time).all()
    churned = customers["churn_date"].dropna()
    assert (churned >= start).all() and (churned < end).all()


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, customers=10, fmt="xlsx")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        generate(tmp_path, customers=0)
    with pytest.raises(ValueError, match="hour_factors"):
        DemoProcess(hour_factors=(1.0,) * 23)
    with pytest.raises(ValueError, match="unknown mess kinds"):
        DemoProcess(event_mess=(("typo", 0.1),))
