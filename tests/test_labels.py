"""Churn labels and survival targets on hand-made timelines (H = 90 days, as_of = 2024-07-01)."""

from __future__ import annotations

from datetime import datetime

import pytest

from features.build import entities_at
from features.labels import LabelWindowError, build_labels, latest_labelable_as_of
from tests.conftest import dataset, ev, ts, tx

AS_OF = datetime(2024, 7, 1)
H = 90

TRANSACTIONS = [
    tx("one", "2024-06-01", 10),  # a single purchase, never again
    tx("at_asof", "2024-05-01", 10),
    tx("at_asof", "2024-07-01 00:00", 10),  # a purchase exactly at as_of
    tx("lapsed", "2024-01-01", 10),  # inactive for H days already at as_of
    tx("returns", "2024-06-01", 10),
    tx("returns", "2024-08-01", 10),
    tx("returns", "2024-12-15", 10),
    tx("censored", "2024-06-01", 10),
    tx("censored", "2024-08-15", 10),
    tx("censored", "2024-11-01", 10),
    tx("censored", "2024-12-20", 10),
    tx("sub", "2024-05-10", 9),
    tx("sub", "2024-06-10", 9),
    tx("sub", "2024-07-10", 9),
    tx("cancelled_before", "2024-05-01", 9),
    tx("refund_only_after", "2024-06-01", 10),
    tx("refund_only_after", "2024-07-05", -10),
    tx("late", "2024-06-20", 10),
    tx("late", "2025-01-01", 10),  # its last purchase is the end of the data
]
CUSTOMERS = [
    {"customer_id": "sub", "signup_date": ts("2024-05-10"), "churn_date": ts("2024-08-10")},
    {"customer_id": "cancelled_before", "signup_date": ts("2024-05-01"), "churn_date": ts("2024-06-15")},
]
EVENTS = [ev("prospect", "2024-06-01", "session")]
DATA_END = datetime(2025, 1, 1)


@pytest.fixture
def labels() -> dict[str, dict]:
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    assert data.data_end == DATA_END
    table = build_labels(data, entities_at(data, AS_OF), horizon_days=H)
    return {r["customer_id"]: r for r in table.to_pylist()}


EXPECTED = {
    # customer: (churned, duration_days, event)
    "one": (1, 60.0, 1),  # churns at 06-01 + 90 = 08-30
    "at_asof": (0, 90.0, 1),  # the as_of purchase restarts the clock: 07-01 + 90
    "lapsed": (1, 0.0, 1),  # already inactive for 90 days at as_of
    "returns": (0, 121.0, 1),  # 08-01 is followed by a 136-day gap: churns at 08-01 + 90 = 10-30
    "censored": (0, 184.0, 0),  # every gap < 90 and 12-20 + 90 is after the data: censored at 2025-01-01
    "sub": (1, 40.0, 1),  # explicit cancel date 08-10 wins over purchases
    "refund_only_after": (1, 60.0, 1),  # a refund is not a purchase
    "late": (1, 79.0, 1),  # 06-20 is followed by a 195-day gap
}


def test_labelled_population(labels):
    # prospects (no purchase before as_of) and customers who cancelled before as_of are not labelled
    assert sorted(labels) == sorted(EXPECTED)


@pytest.mark.parametrize("customer", sorted(EXPECTED))
def test_label_and_survival_target(labels, customer):
    churned, duration, event = EXPECTED[customer]
    row = labels[customer]
    assert (row["churned"], row["event"]) == (churned, event)
    assert row["duration_days"] == pytest.approx(duration)


def test_window_running_past_the_data_is_refused():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    late = datetime(2024, 11, 1)  # + 90 days = 2025-01-30, after the data ends
    with pytest.raises(LabelWindowError, match="after the data ends"):
        build_labels(data, entities_at(data, late), horizon_days=H)
    last_ok = latest_labelable_as_of(DATA_END, H)
    assert build_labels(data, entities_at(data, last_ok), horizon_days=H).num_rows > 0


def test_later_rows_only_change_labels_through_the_window():
    """Labels look forward; rows before as_of other than the last purchase do not move them."""
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    extra = dataset(TRANSACTIONS + [tx("one", "2024-03-01", 5)], EVENTS, CUSTOMERS)
    a = {r["customer_id"]: r for r in build_labels(data, entities_at(data, AS_OF), horizon_days=H).to_pylist()}
    b = {r["customer_id"]: r for r in build_labels(extra, entities_at(extra, AS_OF), horizon_days=H).to_pylist()}
    assert a == b


def test_future_spend_is_net_spend_inside_the_window_only(labels):
    spend = {c: labels[c]["future_spend"] for c in labels}
    assert spend == {
        "one": 0.0,
        "at_asof": 10.0,
        "lapsed": 0.0,
        "returns": 10.0,
        "censored": 10.0,
        "sub": 9.0,
        "refund_only_after": -10.0,  # a refund in the window and no purchase: net spend is negative
        "late": 0.0,
    }


def test_a_free_order_is_a_purchase():
    """An order worth 0 (a 100 % discount) keeps the customer active, as it counts for the features' recency."""
    data = dataset(
        [
            tx("free_buyer", "2024-05-01", 0.0),
            tx("free_buyer", "2024-08-01", 0.0),
            tx("refunder", "2024-05-01", 10.0),
            tx("refunder", "2024-08-01", -10.0),
            tx("other", "2025-01-01", 5.0),
        ]
    )
    rows = {r["customer_id"]: r for r in build_labels(data, entities_at(data, AS_OF), horizon_days=H).to_pylist()}
    assert rows["free_buyer"]["churned"] == 0 and rows["free_buyer"]["future_spend"] == 0.0
    assert rows["refunder"]["churned"] == 1  # a refund is not a purchase
