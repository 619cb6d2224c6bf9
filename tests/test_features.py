"""Point-in-time features: exact values on a hand-written fixture, and the leakage / invariance properties."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from features.build import build_features, entities_at, feature_names
from features.registry import FEATURE_SET, feature_registry
from tests.conftest import dataset, ev, ts, tx

AS_OF = datetime(2024, 7, 1)

TRANSACTIONS = [
    # A: three orders, a refund, three products in two categories over two channels
    tx("A", "2024-01-01 10:00", 30.0, order_id="o1", product_id="p1", category="c1", channel="web"),
    tx("A", "2024-01-01 10:00", 20.0, order_id="o1", product_id="p2", category="c1", channel="web"),
    tx("A", "2024-03-01 00:00", 100.0, order_id="o2", product_id="p1", category="c1", channel="web"),
    tx("A", "2024-06-01 12:00", 60.0, order_id="o3", product_id="p3", category="c2", channel="app"),
    tx("A", "2024-06-05 00:00", -20.0, order_id="o3", product_id="p3", category="c2", channel="app"),
    # B: one order of two lines without an order id; a purchase exactly at as_of and one after must not count
    tx("B", "2024-06-30 23:00", 6.0),
    tx("B", "2024-06-30 23:00", 4.0),
    tx("B", "2024-07-01 00:00", 500.0),
    tx("B", "2024-08-01 00:00", 70.0),
    # D: first seen after as_of
    tx("D", "2024-07-02 00:00", 10.0),
]
EVENTS = [
    ev("A", "2024-05-15 00:00", "session"),
    ev("A", "2024-06-20 00:00", "email_open"),
    ev("A", "2024-06-25 00:00", "session"),
    ev("A", "2024-07-01 00:00", "session"),  # at as_of: not before it
    ev("C", "2024-06-11 00:00", "app_login"),  # C: a prospect, events only
]
CUSTOMERS = [{"customer_id": "A", "signup_date": ts("2023-12-15 00:00"), "churn_date": None}]


@pytest.fixture
def features() -> dict[str, dict]:
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    table = build_features(data, entities_at(data, AS_OF))
    return {row["customer_id"]: row for row in table.to_pylist()}


def test_population_is_customers_known_before_as_of(features):
    assert sorted(features) == ["A", "B", "C"]


def test_exact_values_customer_a(features):
    a = features["A"]
    expected = {
        "recency_days": 29.5,
        "frequency": 3,
        "first_purchase_days": 182 - 10 / 24,
        "monetary_total": 190.0,  # net: 210 bought, 20 refunded
        "monetary_mean": 190 / 3,
        "monetary_std": math.sqrt(3100 / 3),  # net order values 50, 100, 40 (o3's refund shares its id)
        "monetary_max": 100.0,
        "orders_30d": 1,
        "spend_30d": 40.0,  # 60 bought on 06-01, 20 refunded on 06-05
        "orders_90d": 1,
        "spend_90d": 40.0,
        "orders_180d": 2,
        "spend_180d": 140.0,
        "orders_365d": 3,
        "spend_365d": 190.0,
        "orders_prev_90d": 1,
        "spend_prev_90d": 100.0,
        "refund_total": 20.0,
        "refund_lines": 1,
        "category_breadth": 2,
        "channel_breadth": 2,
        "purchase_days": 3,
        "gap_mean_days": 76.0,
        "gap_std_days": 32 / math.sqrt(2),
        "gap_max_days": 92.0,
        "last_gap_days": 92.0,
        "events_30d": 2,
        "events_90d": 3,
        "events_prev_30d": 1,
        "days_since_last_event": 6.0,
        "days_since_first_event": 47.0,
        "session_30d": 1,
        "session_90d": 2,
        "session_prev_30d": 1,
        "session_days_since_last": 6.0,
        "email_open_30d": 1,
        "email_open_90d": 1,
        "email_open_prev_30d": 0,
        "email_open_days_since_last": 11.0,
        "app_login_30d": 0,
        "app_login_days_since_last": None,
        "days_since_signup": 199.0,
        "cancelled": 0,
        "orders_trend_90d": 0.0,
        "spend_trend_90d": math.log(41) - math.log(101),
        "refund_share": 20 / 210,
        "recency_gap_ratio": 29.5 / 76,
        "tenure_days": 199.0,
        "orders_per_month": 3 / 199 * 30,
        "days_since_last_engagement": 6.0,
        "events_trend_30d": 1.0,
        "session_trend_30d": 0.0,
        "email_open_trend_30d": 1.0,
        "season_sin": math.sin(2 * math.pi * 183 / 365.25),
        "season_cos": math.cos(2 * math.pi * 183 / 365.25),
    }
    for name, value in expected.items():
        if value is None:
            assert a[name] is None, name
        else:
            assert a[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name  # features carry 9 decimals


def test_exact_values_customer_b_single_order_without_order_id(features):
    b = features["B"]
    assert b["frequency"] == 1  # two lines, same time stamp, no order id: one order
    assert b["monetary_total"] == pytest.approx(10.0)
    assert b["recency_days"] == pytest.approx(1 / 24)
    assert b["monetary_std"] is None and b["gap_mean_days"] is None and b["recency_gap_ratio"] is None
    assert b["purchase_days"] == 1
    assert b["events_90d"] == 0 and b["days_since_last_event"] is None
    assert b["tenure_days"] == pytest.approx(1 / 24)


def test_an_order_is_an_order_and_spend_is_net_of_cancellations():
    """Free orders count for recency and frequency, not for spend; a cancellation invoice (its own id, refund lines
    only) is not an order but takes its money back, on the day it happened."""
    data = dataset(
        [
            tx("free", "2024-05-01 10:00", 0.0, order_id="f1"),  # a 100 % discount
            tx("free", "2024-06-20 10:00", 0.0, order_id="f2"),
            tx("undo", "2024-03-01 10:00", 50.0, order_id="u1"),
            tx("undo", "2024-06-10 10:00", 1000.0, order_id="u2"),
            tx("undo", "2024-06-10 10:05", -1000.0, order_id="Cu2"),  # cancelled minutes later
        ]
    )
    rows = {r["customer_id"]: r for r in build_features(data, entities_at(data, AS_OF)).to_pylist()}
    free, undo = rows["free"], rows["undo"]
    assert free["frequency"] == 2 and free["purchase_days"] == 2
    assert free["recency_days"] == pytest.approx(10 + 14 / 24)
    assert free["monetary_total"] == 0.0 and free["monetary_mean"] == 0.0 and free["spend_90d"] == 0.0
    assert undo["frequency"] == 2 and undo["refund_lines"] == 1
    assert undo["monetary_total"] == pytest.approx(50.0) and undo["monetary_mean"] == pytest.approx(25.0)
    assert undo["spend_30d"] == pytest.approx(0.0) and undo["spend_180d"] == pytest.approx(50.0)
    assert undo["refund_share"] == pytest.approx(1000 / 1050)
    assert undo["spend_trend_90d"] == pytest.approx(-math.log(51))  # no net spend lately, 50 in the 90 days before


def test_prospect_has_zero_counts_and_null_recency(features):
    c = features["C"]
    assert c["frequency"] == 0 and c["monetary_total"] == 0.0 and c["orders_365d"] == 0
    assert c["recency_days"] is None and c["monetary_mean"] is None
    assert c["app_login_30d"] == 1 and c["days_since_last_engagement"] == pytest.approx(20.0)


def test_every_registry_feature_is_a_column_in_order():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    table = build_features(data, entities_at(data, AS_OF))
    assert table.column_names == ["customer_id", "as_of", *feature_names()]
    specs = feature_registry()
    for spec in specs:
        expected = pa.int64() if spec.dtype == "int64" else pa.float64()
        assert table.schema.field(spec.name).type == expected, spec.name
    assert FEATURE_SET.startswith("rfm_engagement")


def _random_history(seed: int, n_customers: int = 40) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    txs, evs = [], []
    for i in range(n_customers):
        cid = f"c{i}"
        for _ in range(rng.randint(1, 15)):
            day = datetime(2023, 1, 1).timestamp() + rng.uniform(0, 600) * 86400
            when = datetime.fromtimestamp(day).replace(microsecond=0)
            amount = round(rng.choice([-1, 1, 1, 1, 1]) * rng.uniform(1, 200), 2)
            txs.append(
                {
                    "customer_id": cid,
                    "timestamp": when,
                    "amount": amount,
                    "order_id": rng.choice([None, f"o{rng.randint(0, 30)}"]),
                    "product_id": f"p{rng.randint(0, 9)}",
                    "category": f"k{rng.randint(0, 3)}",
                    "channel": rng.choice(["web", "app", None]),
                }
            )
        for _ in range(rng.randint(0, 20)):
            day = datetime(2023, 1, 1).timestamp() + rng.uniform(0, 600) * 86400
            evs.append(
                {
                    "customer_id": cid,
                    "timestamp": datetime.fromtimestamp(day).replace(microsecond=0),
                    "event_type": rng.choice(["session", "email_open", "email_click", "support_ticket", "other"]),
                }
            )
    return txs, evs


def _by_customer(table: pa.Table) -> dict[tuple, dict]:
    return {(r["customer_id"], r["as_of"]): r for r in table.to_pylist()}


def _assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        for name, value in left[key].items():
            other = right[key][name]
            if isinstance(value, float):
                assert other == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)
            else:
                assert other == value, (key, name)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_at_or_after_as_of_never_change_features(seed):
    txs, evs = _random_history(seed)
    as_ofs = [datetime(2023, 6, 1), datetime(2023, 11, 15, 12, 0)]
    base = dataset(txs, evs)
    entities = entities_at(base, as_ofs)
    before = _by_customer(build_features(base, entities))

    rng = random.Random(seed)
    later_tx = [dict(r, timestamp=as_ofs[1]) for r in txs[:5]]  # exactly at the latest as_of
    later_tx += [dict(r, timestamp=datetime(2024, 9, 1), amount=rng.uniform(1, 999)) for r in txs]
    later_ev = [dict(r, timestamp=datetime(2024, 9, 2)) for r in evs] + [dict(evs[0], timestamp=as_ofs[1])]
    later_customers = [{"customer_id": "c0", "signup_date": datetime(2024, 1, 1), "churn_date": datetime(2024, 2, 1)}]
    extended = dataset(txs + later_tx, evs + later_ev, later_customers)
    after = _by_customer(build_features(extended, entities))
    _assert_same(before, after)


def test_rows_at_or_after_an_early_as_of_never_change_its_features():
    txs, evs = _random_history(7)
    as_of = datetime(2023, 6, 1)
    early = dataset([r for r in txs if r["timestamp"] < as_of], [r for r in evs if r["timestamp"] < as_of])
    full = dataset(txs, evs)
    entities = entities_at(early, as_of)
    _assert_same(_by_customer(build_features(early, entities)), _by_customer(build_features(full, entities)))


def test_row_order_never_changes_features():
    txs, evs = _random_history(11)
    as_ofs = [datetime(2023, 8, 1)]
    data = dataset(txs, evs)
    shuffled_tx, shuffled_ev = txs[:], evs[:]
    random.Random(0).shuffle(shuffled_tx)
    random.Random(1).shuffle(shuffled_ev)
    shuffled = dataset(shuffled_tx, shuffled_ev)
    entities = entities_at(data, as_ofs)
    _assert_same(_by_customer(build_features(data, entities)), _by_customer(build_features(shuffled, entities)))


def test_several_snapshots_in_one_call_equal_one_call_each():
    txs, evs = _random_history(5)
    data = dataset(txs, evs)
    dates = [datetime(2023, 3, 1), datetime(2023, 7, 1), datetime(2024, 1, 1)]
    together = _by_customer(build_features(data, entities_at(data, dates)))
    separately: dict = {}
    for d in dates:
        separately |= _by_customer(build_features(data, entities_at(data, d)))
    _assert_same(together, separately)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_many_dates_in_one_query_equal_each_date_alone(seed):
    """Many dates aggregate what does not depend on as_of once (order parts, purchase days, first purchases, events
    older than every window of every date); one date cuts the rows first. Both give the same features, also on the
    boundaries: events exactly 90 and 30 days before the earliest date, an order refunded between two dates."""
    first, middle = datetime(2023, 6, 1), datetime(2023, 11, 15, 12)
    dates = [first, middle, datetime(2024, 6, 1)]
    txs, evs = _random_history(seed)
    txs += [
        tx("z", "2023-05-01 10:00", 50.0, order_id="spans", category="k1", channel="web"),
        tx("z", "2023-05-01 10:00", 0.0, order_id="spans", category="k2", channel="web"),
        tx("z", "2023-08-01 00:00", -20.0, order_id="spans", category="k1", channel="web"),
        tx("z", "2023-09-01 00:00", 0.0, order_id="free", category="k3", channel="app"),
    ]
    evs += [
        {"customer_id": "z", "timestamp": first - timedelta(days=90), "event_type": "session"},
        {"customer_id": "z", "timestamp": first - timedelta(days=30), "event_type": "email_open"},
    ]
    data = dataset(txs, evs)
    together = _by_customer(build_features(data, entities_at(data, dates)))
    separately: dict = {}
    for d in dates:
        separately |= _by_customer(build_features(data, entities_at(data, d)))
    _assert_same(together, separately)

    z = together[("z", first)]
    assert (z["frequency"], z["monetary_max"], z["refund_lines"], z["category_breadth"]) == (1, 50.0, 0, 2)
    assert (z["events_30d"], z["events_prev_30d"], z["events_90d"]) == (0, 1, 1)
    assert (z["days_since_last_event"], z["days_since_first_event"], z["session_days_since_last"]) == (30, 90, 90)
    z = together[("z", middle)]
    assert (z["frequency"], z["monetary_max"], z["monetary_total"], z["refund_total"]) == (2, 30.0, 30.0, 20.0)
    assert (z["refund_lines"], z["category_breadth"], z["channel_breadth"], z["purchase_days"]) == (1, 3, 2, 2)


def test_rows_come_back_in_entity_order():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    entities = pa.table({"customer_id": ["C", "A", "B"], "as_of": [AS_OF] * 3})
    assert build_features(data, entities)["customer_id"].to_pylist() == ["C", "A", "B"]


def test_duplicate_entities_are_refused():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    with pytest.raises(ValueError, match="once"):
        build_features(data, pa.table({"customer_id": ["A", "A"], "as_of": [AS_OF, AS_OF]}))


def test_feature_docs_are_generated_from_the_registry():
    from pathlib import Path

    from features.registry import registry_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "features.md"
    assert docs.read_text() == registry_markdown(), (
        "regenerate: uv run churn features --list --markdown > docs/features.md"
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_entities_at_on_a_few_rows_equals_the_duckdb_path(seed, monkeypatch):
    """Request-sized data takes a pyarrow path (no DuckDB set-up); both apply the same rule."""
    import features.build as build

    txs, evs = _random_history(seed)
    customers = [
        {"customer_id": "signup-only", "signup_date": datetime(2023, 5, 1), "churn_date": None},
        {"customer_id": "no-dates", "signup_date": None, "churn_date": None},
        {"customer_id": "c0", "signup_date": datetime(2021, 1, 1), "churn_date": None},
    ]
    data = dataset(txs, evs, customers)
    as_ofs = [datetime(2021, 6, 1), datetime(2023, 6, 1), datetime(2023, 11, 15, 12, 0), datetime(2030, 1, 1)]
    small = entities_at(data, as_ofs)
    monkeypatch.setattr(build, "SMALL_ENTITY_ROWS", -1)
    duck = entities_at(data, as_ofs)
    assert small.num_rows > 10 and small.equals(duck)
    assert "signup-only" in small.filter(pa.compute.equal(small["as_of"], pa.scalar(as_ofs[1]))).column(0).to_pylist()
