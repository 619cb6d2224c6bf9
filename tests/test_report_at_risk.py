"""at_risk in the lifecycle report: the model's churn probability at the scored month ends, through the scorecard's
one rule function; every other month end rule-only and marked so on the page.

A hand-made business (H = 90 days, the default stage rules: new < 60 days, loyal >= 5 orders and 180 days) as of
2024-07-01, month ends 2023-12-01 ... 2024-07-01:

* L orders on the 5th of every month from 2023-11-05 to 2024-06-05: loyal by the rules at 06-01 and 07-01;
* M orders on 03-10, 04-10 and 06-10: active (3 orders, first 113 days before as_of, no long gap);
* N's first order is on 06-20: new at as_of (a score cannot make them at_risk: "new" comes first);
* X orders on 01-15 and 02-01: lapsed from 05-01 on (no order for 90 days).
"""

from __future__ import annotations

import html
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from model.scorecard import STAGES, LifecycleRules
from serving.report import (
    AT_RISK_NOTE,
    FIRST_ORDER,
    RULE_ONLY,
    StageScores,
    build_report,
    render_html,
    score_dependent,
    scoring_note,
)
from tests.conftest import dataset, tx

H = 90
AS_OF = datetime(2024, 7, 1)
JUNE = datetime(2024, 6, 1)
HIGH = 0.5  # the high tier threshold
TRANSACTIONS = [
    *[tx("L", f"{y}-{m:02d}-05 10:00", 10.0) for y, m in [(2023, 11), (2023, 12)] + [(2024, k) for k in range(1, 7)]],
    tx("M", "2024-03-10 10:00", 20.0),
    tx("M", "2024-04-10 10:00", 20.0),
    tx("M", "2024-06-10 10:00", 20.0),
    tx("N", "2024-06-20 10:00", 50.0),
    tx("X", "2024-01-15 10:00", 30.0),
    tx("X", "2024-02-01 10:00", 30.0),
]
DATA = dataset(TRANSACTIONS)


def scores(rows: list[tuple[str, datetime, float]], ends: tuple[datetime, ...]) -> StageScores:
    frame = pd.DataFrame(rows, columns=["customer_id", "as_of", "churn_probability"])
    return StageScores(model_version="7", high_threshold=HIGH, month_ends=ends, scores=frame)


def report(stage_scores: StageScores | None = None):
    return build_report(DATA, as_of=AS_OF, horizon_days=H, scores=stage_scores)


def stage_row(r, when: datetime) -> dict[str, int]:
    return {s: int(v) for s, v in r.stage_counts.loc[pd.Timestamp(when)].items() if v}


def transitions(r) -> dict[tuple[str, str], int]:
    """The last month's transition matrix as {(from, to): customers}, non-zero cells only."""
    rows = [FIRST_ORDER, *STAGES]
    last = r.transitions[-1]
    return {(rows[i], STAGES[j]): int(last[i, j]) for i, j in zip(*np.nonzero(last), strict=True)}


def test_only_customers_the_rules_leave_to_the_score_need_one() -> None:
    facts = report().facts
    assert facts.month_ends[0] == datetime(2023, 12, 1) and facts.month_ends[-1] == AS_OF
    assert sorted(score_dependent(facts, LifecycleRules(), AS_OF).to_pylist()) == ["L", "M"]  # not N (new), X
    assert sorted(score_dependent(facts, LifecycleRules(), JUNE).to_pylist()) == ["L", "M"]  # X lapsed since 05-01


def test_without_a_model_nobody_is_at_risk_and_the_page_says_so() -> None:
    r = report()
    assert stage_row(r, AS_OF) == {"new": 1, "active": 1, "loyal": 1, "lapsed": 1}
    assert transitions(r) == {
        ("loyal", "loyal"): 1,
        ("active", "active"): 1,
        ("lapsed", "lapsed"): 1,
        (FIRST_ORDER, "new"): 1,
    }
    page = render_html(r)
    assert html.escape(AT_RISK_NOTE) in page and scoring_note(r) == AT_RISK_NOTE
    assert "needs a model score" in page  # the per-stage table's at_risk row
    assert page.count(f"<td>{RULE_ONLY}</td>") == len(r.facts.month_ends)  # every month end marked rule-only


def test_a_probability_at_the_high_threshold_makes_at_risk_at_as_of() -> None:
    # L exactly at the threshold (>=), M below it; N's high score cannot beat "new" (and is not needed)
    r = report(scores([("L", AS_OF, HIGH), ("M", AS_OF, 0.2), ("N", AS_OF, 0.95)], (AS_OF,)))
    assert stage_row(r, AS_OF) == {"new": 1, "active": 1, "at_risk": 1, "lapsed": 1}
    assert stage_row(r, JUNE) == {"active": 1, "loyal": 1, "lapsed": 1}  # rule-only: L still loyal there
    # the last month: L loyal (06-01, rule-only) -> at_risk (as_of, scored)
    assert transitions(r) == {
        ("loyal", "at_risk"): 1,
        ("active", "active"): 1,
        ("lapsed", "lapsed"): 1,
        (FIRST_ORDER, "new"): 1,
    }
    table = r.stage_table
    assert table["customers"].to_dict() == {
        "new": 1,
        "active": 1,
        "loyal": 0,
        "at_risk": 1,
        "lapsed": 1,
        "reactivated": 0,
    }
    assert table.loc["at_risk", "orders_per_customer"] == 8  # L's orders
    assert table.loc["at_risk", "historic_clv"] == pytest.approx(80.0)
    assert table.loc["at_risk", "average_order_value"] == pytest.approx(10.0)
    assert table.loc["at_risk", "repeat_customers"] == 1.0
    # the churn-rate column follows the stage at 06-01, rule-only: L counts as loyal there (and stayed active)
    assert table.loc["loyal", "churn_rate"] == 0.0 and np.isnan(table.loc["at_risk", "churn_rate"])

    page = render_html(r)
    assert html.escape(AT_RISK_NOTE) not in page and "needs a model score" not in page
    note = scoring_note(r)
    assert html.escape(note) in page
    assert "model 7" in note and "at 1 month end: 2024-07-01" in note and "other 7 month ends are rule-only" in note
    assert page.count(f"<td>{RULE_ONLY}</td>") == 7 and page.count("<td>model 7</td>") == 1
    assert "2024-06-01 (rule-only)" in page  # the transition matrix's "from" month end
    assert "the at_risk row has no churn rate" in page


def test_below_the_threshold_the_rules_decide() -> None:
    r = report(scores([("L", AS_OF, 0.49), ("M", AS_OF, 0.1)], (AS_OF,)))
    assert stage_row(r, AS_OF) == {"new": 1, "active": 1, "loyal": 1, "lapsed": 1}
    assert r.stage_table.loc["at_risk", "customers"] == 0
    assert "needs a model score" not in render_html(r)  # scored: an at_risk row of zero customers, not a gap


def test_two_scored_month_ends_follow_at_risk_through_the_last_month() -> None:
    # 06-01: L at_risk (0.8), M not (0.3); as_of: L no longer (0.4), M now at_risk (0.7)
    rows = [("L", JUNE, 0.8), ("M", JUNE, 0.3), ("L", AS_OF, 0.4), ("M", AS_OF, 0.7)]
    r = report(scores(rows, (JUNE, AS_OF)))
    assert stage_row(r, JUNE) == {"active": 1, "at_risk": 1, "lapsed": 1}
    assert stage_row(r, AS_OF) == {"new": 1, "loyal": 1, "at_risk": 1, "lapsed": 1}
    assert transitions(r) == {
        ("at_risk", "loyal"): 1,
        ("active", "at_risk"): 1,
        ("lapsed", "lapsed"): 1,
        (FIRST_ORDER, "new"): 1,
    }
    assert np.array_equal(r.transitions[-1].sum(axis=0), r.stage_counts.iloc[-1].to_numpy())
    assert np.array_equal(r.transitions[-1, 1:].sum(axis=1), r.stage_counts.iloc[-2].to_numpy())
    table = r.stage_table
    assert table.loc["at_risk", "churn_rate"] == 0.0  # L, at_risk at 06-01, still active at as_of
    assert table.loc["active", "churn_rate"] == 0.0  # M
    page = render_html(r)
    assert page.count("<td>model 7</td>") == 2 and page.count(f"<td>{RULE_ONLY}</td>") == 6
    assert "the at_risk row has no churn rate" not in page


def test_a_customer_whose_stage_needs_a_score_and_has_none_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 customers whose stage at 2024-07-01 depends on the churn score"):
        report(scores([("L", AS_OF, 0.9)], (AS_OF,)))


# ------------------------------------------------------------------------------------------------ with a real model


@pytest.mark.slow
@pytest.mark.parametrize("max_customers", [200_000, 1000])  # everyone in the health sample; a sample of 1,000
def test_the_report_with_a_model_agrees_with_its_scorecard(trained, demo_data, max_customers: int) -> None:
    """At the scored month ends the report's stage of every customer is the scorecard's ``lifecycle_stage``
    (``ChurnModel.score`` on ``build_features``), and scoring them in the health pass changes no health number."""
    from features.build import build_features, entities_at
    from model.monitoring import model_health
    from model.settings import MonitorSettings
    from serving.health import build_model_report
    from serving.report import default_as_of, stage_history

    data, _ = demo_data
    model = trained.model
    monitor = MonitorSettings(max_customers=max_customers)
    r, health = build_model_report(
        data, model, as_of=default_as_of(data), horizon_days=model.horizon_days, monitor=monitor, scored_month_ends=2
    )
    assert r.scores is not None and r.scores.month_ends == r.facts.month_ends[-2:]
    assert r.scores.high_threshold == model.tier_thresholds[1]
    stages = stage_history(r.facts, model.lifecycle, r.scores)
    period = r.facts.stage_inputs["period"].to_numpy()
    ids = np.asarray(r.facts.stage_inputs["customer_id"].to_pylist())
    for k, end in ((-1, r.as_of), (-2, r.facts.month_ends[-2])):
        features = build_features(data, entities_at(data, end), event_types=model.event_types).to_pandas()
        card = model.score(features.loc[features["frequency"] >= 1])
        at = period == len(r.facts.month_ends) + k
        ours = pd.Series(stages[at], index=ids[at]).sort_index()
        theirs = pd.Series(card["lifecycle_stage"].to_numpy(), index=card["customer_id"].to_numpy()).sort_index()
        assert ours.index.equals(theirs.index)
        assert (ours == theirs).all(), (ours != theirs).sum()
        assert (ours == "at_risk").sum() > 0
        assert r.stage_counts.iloc[k]["at_risk"] == (ours == "at_risk").sum()
    # the probabilities at as_of are the health pass's own; its numbers are those of a health check alone
    plain = model_health(data, model, as_of=r.as_of, settings=monitor)
    assert health.metrics() == plain.metrics() and health.customers == plain.customers
    assert (health.customers <= 1000) == (max_customers == 1000)  # the drift part used the sample alone
