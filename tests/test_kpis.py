"""Lifecycle KPIs computed by hand on a small dataset, and the stage inputs checked against ``build_features``.

The hand-made business (H = 30 days, as_of = 2024-04-16, so April is a partial month):

    A  order o1: 01-05 30.00 and 02-02 20.00 (one order over two months); order 02-10 40.00; refund 03-20 -10.00
    B  order 01-20 100.00; order 03-25 50.00; a line on 04-20 (after as_of: ignored)
    C  one order of two lines at 02-15 10:00 (no order id, same time stamp): 60.00 + 15.00; cancelled 03-10
    D  order 03-05 80.00 (an event on 2023-06-01 before it); order 04-10 20.00
    E  events only (a prospect: never counted)

Month ends: 02-01, 03-01, 04-01 and as_of 04-16. Active at t = last order started less than 30 days before t
and no cancel before t:

    02-01  A (01-05: 26.6 days), B (01-20: 11.6 days)                    -> 2
    03-01  A (02-10: 19.5 days), C (02-15: 14.6 days); B (01-20: 40.6 days) no -> 2
    04-01  B (03-25: 6.6 days), D (03-05: 26.5 days); A (50.5 days) no, C cancelled 03-10 -> 2
    04-16  B (21.6 days), D (04-10: 5.5 days)                            -> 2
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.build import build_features, entities_at
from features.kpis import KPIS, STAGE_INPUT_COLUMNS, kpi_markdown, lifecycle_facts, month_ends
from tests.conftest import ROOT, dataset, ev, ts, tx
from tests.test_pandas_reference import random_dataset

H = 30
AS_OF = datetime(2024, 4, 16)
TRANSACTIONS = [
    tx("A", "2024-01-05 09:00", 30.0, order_id="o1"),
    tx("A", "2024-02-02 09:00", 20.0, order_id="o1"),
    tx("A", "2024-02-10 12:00", 40.0),
    tx("A", "2024-03-20 08:00", -10.0),
    tx("B", "2024-01-20 10:00", 100.0),
    tx("B", "2024-03-25 10:00", 50.0),
    tx("B", "2024-04-20 10:00", 999.0),
    tx("C", "2024-02-15 10:00", 60.0),
    tx("C", "2024-02-15 10:00", 15.0),
    tx("D", "2024-03-05 11:00", 80.0),
    tx("D", "2024-04-10 11:00", 20.0),
]
EVENTS = [ev("D", "2023-06-01", "session"), ev("E", "2024-02-01", "session")]
CUSTOMERS = [{"customer_id": "C", "signup_date": ts("2024-02-01"), "churn_date": ts("2024-03-10")}]

NAN = float("nan")
EXPECTED = {  # Jan, Feb, Mar, Apr (partial)
    "active_customers": [2, 2, 2, 2],  # see the module docstring
    "new_customers": [2, 1, 1, 0],  # first orders: A, B in Jan; C in Feb; D in Mar
    # active at the start and not at the end / active at the start:
    # Jan: nobody at the start; Feb: {A, B} -> B lapsed: 1/2; Mar: {A, C} -> both gone: 2/2; Apr: {B, D} -> 0/2
    "churn_rate": [NAN, 1 / 2, 2 / 2, 0 / 2],
    # buyers who had ordered before the month / buyers: Jan A, B new: 0/2; Feb A (again), C (new): 1/2;
    # Mar B (again), D (new): 1/2; Apr D (again): 1/1. A's o1 line on 02-02 is not a new order.
    "repeat_purchase_rate": [0 / 2, 1 / 2, 1 / 2, 1 / 1],
    # (active at end - new) / active at start: Feb (2 - 1) / 2; Mar (2 - 1) / 2; Apr (2 - 0) / 2
    "customer_retention_rate": [NAN, 0.5, 0.5, 1.0],
    # purchase lines in the month / orders started in it: Jan (30 + 100) / 2; Feb (20 + 40 + 60 + 15) / 2;
    # Mar (50 + 80) / 2; Apr 20 / 1
    "average_order_value": [65.0, 67.5, 65.0, 20.0],
    # all lines in the month: Jan 30 + 100; Feb 20 + 40 + 75; Mar 50 + 80 - 10; Apr 20 (04-20 is after as_of)
    "revenue": [130.0, 135.0, 120.0, 20.0],
    # revenue to date / customers with an order by then: 130 / 2; 265 / 3; 385 / 4; 405 / 4
    "historic_clv": [65.0, 265 / 3, 96.25, 101.25],
}


@pytest.fixture(scope="module")
def facts():
    return lifecycle_facts(dataset(TRANSACTIONS, EVENTS, CUSTOMERS), AS_OF, horizon_days=H)


def test_months_and_partial_flag(facts) -> None:
    assert facts.month_ends == (datetime(2024, 2, 1), datetime(2024, 3, 1), datetime(2024, 4, 1), AS_OF)
    months = facts.months.to_pydict()
    assert months["month_start"] == [datetime(2024, m, 1) for m in (1, 2, 3, 4)]
    assert months["partial"] == [False, False, False, True]
    assert month_ends(datetime(2024, 1, 5), datetime(2024, 3, 1)) == [datetime(2024, 2, 1), datetime(2024, 3, 1)]


@pytest.mark.parametrize("kpi", [k.name for k in KPIS])
def test_every_kpi_by_hand(facts, kpi: str) -> None:
    got = [NAN if v is None else v for v in facts.months[kpi].to_pylist()]
    for g, e in zip(got, EXPECTED[kpi], strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=1e-12), (kpi, got, EXPECTED[kpi])


def test_every_kpi_has_an_expected_value() -> None:
    assert set(EXPECTED) == {k.name for k in KPIS}


def test_cohort_retention_by_hand(facts) -> None:
    rows = {(r["cohort"].month, r["months_since"]): (r["customers"], r["retained"]) for r in facts.cohorts.to_pylist()}
    assert rows == {
        # January cohort {A, B}: Feb A's 02-10 order; Mar B's 03-25 order; Apr nobody
        (1, 0): (2, 2), (1, 1): (2, 1), (1, 2): (2, 1), (1, 3): (2, 0),
        # February cohort {C}: never again
        (2, 0): (1, 1), (2, 1): (1, 0), (2, 2): (1, 0),
        # March cohort {D}: ordered again in April
        (3, 0): (1, 1), (3, 1): (1, 1),
    }  # fmt: skip
    retention = facts.cohorts.filter(pc.equal(facts.cohorts["months_since"], 1))["retention"].to_pylist()
    assert retention == [0.5, 0.0, 1.0]


def test_customer_totals_by_hand(facts) -> None:
    rows = {r["customer_id"]: (r["orders"], r["order_value"], r["net_spend"]) for r in facts.customers.to_pylist()}
    assert rows == {
        "A": (2, 90.0, 80.0),  # 30 + 20 + 40 purchases, - 10 refund
        "B": (2, 150.0, 150.0),  # the 04-20 line is after as_of
        "C": (1, 75.0, 75.0),
        "D": (2, 100.0, 100.0),
    }


def test_stage_inputs_by_hand(facts) -> None:
    rows = {(r["customer_id"], r["as_of"]): r for r in facts.stage_inputs.to_pylist()}
    assert "E" not in {c for c, _ in rows}  # prospects have no stage
    a = rows[("A", datetime(2024, 4, 1))]
    # last order 02-10 12:00, first 01-05 09:00; purchase days 01-05, 02-02, 02-10: last gap 8 days
    assert a["frequency"] == 2 and a["recency_days"] == pytest.approx(50.5) and a["last_gap_days"] == 8.0
    c = rows[("C", datetime(2024, 4, 1))]
    assert c["cancelled"] == 1 and rows[("C", datetime(2024, 3, 1))]["cancelled"] == 0
    d = rows[("D", datetime(2024, 4, 1))]
    # tenure counts from the event on 2023-06-01 (305 days before 04-01), not the first order
    assert d["tenure_days"] == 305.0 and d["first_purchase_days"] == pytest.approx(26 + 13 / 24)
    assert d["last_gap_days"] is None
    assert ("D", datetime(2024, 3, 1)) not in rows  # no order before 03-01 yet


def _assert_same(ours, theirs) -> None:
    for column in STAGE_INPUT_COLUMNS:
        a = np.asarray(ours[column].to_numpy(zero_copy_only=False), dtype=float)
        b = np.asarray(theirs[column].to_numpy(zero_copy_only=False), dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), column
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=1e-9, err_msg=column)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("as_of", [datetime(2024, 3, 1), datetime(2023, 11, 15, 12, 0)])
def test_stage_inputs_equal_the_registry_features(seed: int, as_of: datetime) -> None:
    """The month-end stage inputs are build_features' columns for every customer with an order, at every end."""
    data = random_dataset(seed, n_customers=50)
    facts = lifecycle_facts(data, as_of, horizon_days=90)
    features = build_features(data, entities_at(data, list(facts.month_ends)))
    features = features.filter(pc.greater(features["frequency"], 0))
    assert facts.stage_inputs.num_rows == features.num_rows
    ours = facts.stage_inputs.sort_by([("as_of", "ascending"), ("customer_id", "ascending")])
    theirs = features.sort_by([("as_of", "ascending"), ("customer_id", "ascending")])
    assert ours["customer_id"].equals(theirs["customer_id"]) and ours["as_of"].equals(theirs["as_of"])
    _assert_same(ours, theirs)


def test_rows_at_or_after_as_of_change_nothing() -> None:
    base = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    later = dataset(
        [*TRANSACTIONS, tx("A", "2024-04-16 00:00", 500.0), tx("F", "2024-05-01", 9.0)],
        [*EVENTS, ev("B", "2024-04-17", "session")],
        CUSTOMERS,
    )
    one, two = (lifecycle_facts(d, AS_OF, horizon_days=H) for d in (base, later))
    assert one.months.equals(two.months) and one.cohorts.equals(two.cohorts)
    assert one.stage_inputs.equals(two.stage_inputs) and one.customers.equals(two.customers)


def test_no_purchase_before_as_of_is_an_error() -> None:
    with pytest.raises(ValueError, match="no purchase before as_of"):
        lifecycle_facts(dataset(TRANSACTIONS), datetime(2024, 1, 1), horizon_days=H)


def test_kpi_docs_are_generated_from_the_definitions() -> None:
    text = (ROOT / "docs" / "kpis.md").read_text()
    assert text == kpi_markdown(), "docs/kpis.md is stale: run `uv run python -m features.kpis > docs/kpis.md`"
    for k in KPIS:
        assert k.definition in text


def test_active_is_the_complement_of_the_scorecards_lapsed_rule() -> None:
    """One lapsed rule (features/labels.py): H days without an order, or cancelled. Boundaries by hand, H = 90."""
    import pandas as pd

    from features.kpis import active_flags
    from model.scorecard import is_lapsed

    recency = [0.0, 89.99, 90.0, 200.0, 10.0]
    cancelled = [0, 0, 0, 0, 1]
    expected_lapsed = [False, False, True, True, True]
    frame = pd.DataFrame({"recency_days": recency, "cancelled": cancelled})
    table = pa.table({"recency_days": recency, "cancelled": cancelled})
    assert is_lapsed(frame, 90).tolist() == expected_lapsed
    assert active_flags(table, 90).tolist() == [not x for x in expected_lapsed]
