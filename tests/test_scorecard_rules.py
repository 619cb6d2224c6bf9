"""The scorecard's rules on hand-made customers: lifecycle stages (each rule, their order, their boundaries), risk
tiers exactly at each threshold, and value at risk / expected value saved on hand numbers.

Feature rows come from ``build_features`` over small hand-written purchase histories (as_of 2024-07-01 00:00,
H = 90 days, default ``LifecycleRules``: new < 60 days, loyal = 5+ orders and 180+ days of tenure), so the stage
rules are checked against the features they read, not against numbers typed into a frame.

The value-at-risk tests score through ``tests/hand_model.py``: a ``ChurnModel`` assembled from hand-set parts
whose outputs can be computed on paper.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.build import build_features, entities_at
from model.scorecard import (
    DEFAULT_TIER_THRESHOLDS,
    SCORECARD_COLUMNS,
    LifecycleRules,
    check_tier_thresholds,
    lifecycle_stages,
    risk_tiers,
)
from serving.policy import POLICY_COLUMNS, Policy
from serving.scoring import with_actions
from serving.settings import ScoringSettings
from tests.conftest import dataset, ts, tx
from tests.hand_model import hand_model
from training.settings import TrainingSettings

AS_OF = datetime(2024, 7, 1)
H = 90
HIGH = DEFAULT_TIER_THRESHOLDS[1]  # 0.5: where the "high" tier starts, and at_risk with it


def orders(customer_id: str, *days: str, amount: float = 50.0) -> list[dict]:
    """One single-line order at midnight on each day (an order without order_id is its time stamp)."""
    return [tx(customer_id, f"{d} 00:00", amount) for d in days]


# ------------------------------------------------------------------------------------------------ lifecycle stages
# Days before as_of 2024-07-01: 10 -> 06-21, 30 -> 06-01, 59 -> 05-03, 60 -> 05-02, 89 -> 04-03, 90 -> 04-02,
# 120 -> 03-03, 179 -> 01-04, 180 -> 01-03, 200 -> 2023-12-14, 300 -> 2023-09-05.

STAGE_TRANSACTIONS = [
    # recency exactly H (last order 04-02, 90.0 days): lapsed
    *orders("lapsed_at_H", "2024-01-15", "2024-04-02"),
    # recency H - 1 (last order 04-03), gap 01-15 -> 04-03 = 79 days, 2 orders: active
    *orders("active_at_H_minus_1", "2024-01-15", "2024-04-03"),
    # first order 30 days ago (new by dates) but cancelled on 06-15: lapsed beats new
    *orders("cancelled_new", "2024-06-01"),
    # first and only order 59 days ago: new
    *orders("new_59", "2024-05-03"),
    # first and only order exactly 60 days ago: not new
    *orders("not_new_60", "2024-05-02"),
    # signed up 300 days ago, first order 10 days ago: "new" is about the first order, not the sign-up
    *orders("new_old_signup", "2024-06-21"),
    # 2023-10-01 -> 2024-06-01 is a 244-day gap, last order 30 days ago: reactivated
    *orders("reactivated", "2023-10-01", "2024-06-01"),
    # gap 03-03 -> 06-01 exactly 90 days: reactivated; 03-04 -> 06-01 is 89 days: not
    *orders("reactivated_gap_H", "2024-03-03", "2024-06-01"),
    *orders("gap_H_minus_1", "2024-03-04", "2024-06-01"),
    # came back after 243 days (2023-01-01 -> 09-01) but silent again for 304 days: lapsed
    *orders("reactivated_then_lapsed", "2023-01-01", "2023-09-01"),
    # 5 orders, first exactly 180 days ago, gaps 43/44/41/41 days: loyal
    *orders("loyal", "2024-01-03", "2024-02-15", "2024-03-30", "2024-05-10", "2024-06-20"),
    # the same with the first order 179 days ago: active
    *orders("tenure_179", "2024-01-04", "2024-02-15", "2024-03-30", "2024-05-10", "2024-06-20"),
    # 4 orders over 200 days (gaps 63/44/82): active
    *orders("four_orders", "2023-12-14", "2024-02-15", "2024-03-30", "2024-06-20"),
    # 5 orders in 120 days (gaps 29/30/31/19) but signed up 200 days ago: tenure 200, loyal
    *orders("loyal_by_signup", "2024-03-03", "2024-04-01", "2024-05-01", "2024-06-01", "2024-06-20"),
]
STAGE_CUSTOMERS = [
    {"customer_id": "cancelled_new", "signup_date": ts("2024-05-20"), "churn_date": ts("2024-06-15")},
    {"customer_id": "new_old_signup", "signup_date": ts("2023-09-05"), "churn_date": None},
    {"customer_id": "loyal_by_signup", "signup_date": ts("2023-12-14"), "churn_date": None},
]


@pytest.fixture(scope="module")
def stage_features() -> pd.DataFrame:
    data = dataset(STAGE_TRANSACTIONS, customers=STAGE_CUSTOMERS)
    return build_features(data, entities_at(data, AS_OF), event_types=()).to_pandas().set_index("customer_id")


def stage(features: pd.DataFrame, customer_id: str, p: float, rules: LifecycleRules | None = None) -> str:
    row = features.loc[[customer_id]].reset_index()
    (out,) = lifecycle_stages(row, np.array([p]), horizon_days=H, high_threshold=HIGH, rules=rules or LifecycleRules())
    return out


def test_the_features_the_stages_read(stage_features):
    """The hand arithmetic above, as the features see it (so a stage failure below is about the rule)."""
    f = stage_features
    assert f.loc["lapsed_at_H", "recency_days"] == 90.0
    assert f.loc["active_at_H_minus_1", "recency_days"] == 89.0
    assert f.loc["cancelled_new", "cancelled"] == 1 and f.loc["cancelled_new", "first_purchase_days"] == 30.0
    assert f.loc["not_new_60", "first_purchase_days"] == 60.0
    assert f.loc["new_old_signup", "first_purchase_days"] == 10.0 and f.loc["new_old_signup", "tenure_days"] == 300.0
    assert f.loc["reactivated", "last_gap_days"] == 244.0
    assert f.loc["reactivated_gap_H", "last_gap_days"] == 90.0
    assert f.loc["gap_H_minus_1", "last_gap_days"] == 89.0
    assert f.loc["loyal", ["frequency", "tenure_days"]].tolist() == [5, 180.0]
    assert f.loc["tenure_179", ["frequency", "tenure_days"]].tolist() == [5, 179.0]
    assert f.loc["loyal_by_signup", ["first_purchase_days", "tenure_days"]].tolist() == [120.0, 200.0]


LOW = 0.1  # far below every threshold: these customers are not at risk
JUST_BELOW_HIGH = float(np.nextafter(HIGH, 0))


@pytest.mark.parametrize(
    "customer_id, p, expected",
    [
        # lapsed: inactive for at least H days (boundary included), or cancelled
        ("lapsed_at_H", LOW, "lapsed"),
        ("active_at_H_minus_1", LOW, "active"),
        ("cancelled_new", LOW, "lapsed"),  # lapsed beats new
        ("reactivated_then_lapsed", LOW, "lapsed"),  # lapsed beats reactivated
        ("lapsed_at_H", 0.99, "lapsed"),  # lapsed beats at_risk
        # new: first order less than 60 days ago (60 exactly is not new)
        ("new_59", LOW, "new"),
        ("new_59", 0.99, "new"),  # new beats at_risk
        ("not_new_60", LOW, "active"),
        ("not_new_60", 0.99, "at_risk"),
        ("new_old_signup", LOW, "new"),
        # reactivated: the last order came after a gap of at least H days (H exactly included)
        ("reactivated", LOW, "reactivated"),
        ("reactivated", 0.99, "reactivated"),  # reactivated beats at_risk
        ("reactivated_gap_H", LOW, "reactivated"),
        ("gap_H_minus_1", LOW, "active"),
        # at_risk: churn probability at the "high" tier threshold or above
        ("gap_H_minus_1", HIGH, "at_risk"),
        ("gap_H_minus_1", JUST_BELOW_HIGH, "active"),
        ("loyal", HIGH, "at_risk"),  # at_risk beats loyal
        # loyal: 5+ orders and 180+ days of tenure (both boundaries included); tenure counts the sign-up
        ("loyal", JUST_BELOW_HIGH, "loyal"),
        ("tenure_179", LOW, "active"),
        ("four_orders", LOW, "active"),
        ("loyal_by_signup", LOW, "loyal"),
    ],
)
def test_lifecycle_stage_rules(stage_features, customer_id, p, expected):
    assert stage(stage_features, customer_id, p) == expected


def test_lifecycle_rule_thresholds_come_from_the_rules(stage_features):
    rules = LifecycleRules(new_days=61, loyal_min_orders=4, loyal_min_tenure_days=200)
    assert stage(stage_features, "not_new_60", LOW, rules) == "new"
    assert stage(stage_features, "four_orders", LOW, rules) == "loyal"
    assert stage(stage_features, "loyal", LOW, rules) == "active"  # tenure 180 < 200


def test_stages_are_vectorised_row_by_row(stage_features):
    """All customers at once give the same stages as one at a time (np.select keeps rows apart)."""
    f = stage_features.reset_index()
    p = np.linspace(0.05, 0.95, len(f))
    together = lifecycle_stages(f, p, horizon_days=H, high_threshold=HIGH, rules=LifecycleRules())
    one_by_one = [stage(stage_features, c, q) for c, q in zip(f["customer_id"], p, strict=True)]
    assert list(together) == one_by_one


# ------------------------------------------------------------------------------------------------ risk tiers


def test_risk_tiers_exactly_at_each_threshold():
    t1, t2, t3 = 0.3, 0.5, 0.7
    below = [float(np.nextafter(t, 0)) for t in (t1, t2, t3)]
    p = np.array([0.0, below[0], t1, below[1], t2, below[2], t3, 1.0])
    assert list(risk_tiers(p, (t1, t2, t3))) == [
        "low",
        "low",
        "medium",  # p == t1
        "medium",
        "high",  # p == t2
        "high",
        "critical",  # p == t3
        "critical",
    ]


@pytest.mark.parametrize(
    "thresholds",
    [(0.5, 0.3, 0.7), (0.3, 0.3, 0.7), (0.3, 0.7, 0.7), (0.0, 0.5, 0.7), (0.3, 0.5, 1.0), (-0.1, 0.5, 0.7)],
)
def test_tier_thresholds_must_increase_inside_0_1(thresholds):
    with pytest.raises(ValueError, match="increasing and inside"):
        check_tier_thresholds(thresholds)
    # every setting that holds them refuses too
    with pytest.raises(ValidationError, match="increasing and inside"):
        ScoringSettings(tier_thresholds=thresholds)
    with pytest.raises(ValidationError, match="increasing and inside"):
        TrainingSettings(tier_thresholds=thresholds)


def test_valid_tier_thresholds_pass_unchanged():
    assert check_tier_thresholds((0.01, 0.5, 0.99)) == (0.01, 0.5, 0.99)
    assert ScoringSettings(tier_thresholds=(0.2, 0.4, 0.8)).tier_thresholds == (0.2, 0.4, 0.8)


# ------------------------------------------------------------------------------------------------ value at risk

# A policy shaped like the shipped one (serving/policy.yaml), its numbers written here so that tuning that file does
# not move these tests.
POLICY = Policy.model_validate(
    {
        "value_bands": {"high": 500, "medium": 100},
        "actions": {
            "personal_call": {"cost": 12.0, "save_rate": 0.30},
            "winback_discount": {"cost": 4.0, "save_rate": 0.12},
            "onboarding_nudge": {"cost": 1.0, "save_rate": 0.08},
            "reactivation_campaign": {"cost": 1.5, "save_rate": 0.05},
            "no_action": {"cost": 0.0, "save_rate": 0.0},
        },
        "rules": [
            {"stage": ["lapsed"], "action": "reactivation_campaign"},
            {"stage": ["new"], "tier": ["medium", "high", "critical"], "action": "onboarding_nudge"},
            {"tier": ["high", "critical"], "value": ["high"], "action": "personal_call"},
            {"tier": ["high", "critical"], "value": ["medium", "low"], "action": "winback_discount"},
            {"action": "no_action"},
        ],
    }
)

VALUE_TRANSACTIONS = [
    # call: 5 orders, first 200 days ago, last 40 days ago (05-22), mean order 660 / 5 = 132
    tx("call", "2023-12-14", 100.0),
    tx("call", "2024-02-01", 120.0),
    tx("call", "2024-03-15", 132.0),
    tx("call", "2024-04-20", 144.0),
    tx("call", "2024-05-22", 164.0),
    # winback: 2 orders, first 200 days ago, last 42 days ago (05-20), mean 120; gap 158 days -> reactivated
    tx("winback", "2023-12-14", 100.0),
    tx("winback", "2024-05-20", 140.0),
    # nudge: one order of 90, 39 days ago (05-23) -> new
    tx("nudge", "2024-05-23", 90.0),
    # quiet: 2 orders of 60, first 77 days ago (04-15), last 30 days ago (06-01), gap 47 days -> active
    tx("quiet", "2024-04-15", 60.0),
    tx("quiet", "2024-06-01", 60.0),
    # gone: one order of 50, 122 days ago (03-01) -> lapsed
    tx("gone", "2024-03-01", 50.0),
]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture(scope="module")
def value_features() -> pd.DataFrame:
    data = dataset(VALUE_TRANSACTIONS)
    return build_features(data, entities_at(data, AS_OF), event_types=()).to_pandas()


def _by_customer(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("customer_id").loc[["call", "winback", "nudge", "quiet", "gone"]]


def test_scorecard_numbers_by_hand(value_features):
    cards = _by_customer(hand_model().score(value_features))

    # churn probability: sigmoid(0.5 x recency - 20); "gone" (recency 122: sigmoid(41) = 1.0 in floats) is held
    # at the 0.999 ceiling of calibrated probabilities
    p = {
        "call": 0.5,  # recency 40
        "winback": sigmoid(1.0),  # recency 42: 0.7310585786300049
        "nudge": sigmoid(-0.5),  # recency 39: 0.3775406687981454
        "quiet": sigmoid(-5.0),  # recency 30: 0.0066928509242848554
        "gone": 0.999,
    }
    np.testing.assert_allclose(cards["churn_probability"], list(p.values()), rtol=1e-12)
    assert cards["risk_tier"].tolist() == ["high", "critical", "medium", "low", "critical"]

    # expected_value_12m = 365 x (r + x) / (alpha + T) x p (gamma + n m) / (p n + q - 1), x = n - 1, T = first order
    value = {
        "call": 365 * (1 + 4) / (165 + 200) * 2 * (60 + 5 * 132) / (2 * 5 + 3 - 1),  # 5 orders/yr x 120 = 600
        "winback": 365 * (1 + 1) / (165 + 200) * 2 * (60 + 2 * 120) / (2 * 2 + 3 - 1),  # 2 x 100 = 200
        "nudge": 365 * (1 + 0) / (165 + 39) * 2 * (60 + 1 * 90) / (2 * 1 + 3 - 1),  # 365 / 204 x 75 = 134.19
        "quiet": 365 * (1 + 1) / (165 + 77) * 2 * (60 + 2 * 60) / (2 * 2 + 3 - 1),  # 730 / 242 x 60 = 180.99
        "gone": 365 * (1 + 0) / (165 + 122) * 2 * (60 + 1 * 50) / (2 * 1 + 3 - 1),  # 365 / 287 x 55 = 69.95
    }
    assert value["call"] == pytest.approx(600.0) and value["winback"] == pytest.approx(200.0)
    np.testing.assert_allclose(cards["expected_value_12m"], list(value.values()), rtol=1e-12)

    # value_at_risk = churn_probability x expected_value_12m
    var = {c: p[c] * value[c] for c in p}  # call 300, winback 146.2117, nudge 50.6625, quiet 1.2113, gone 69.8778
    assert var["call"] == pytest.approx(300.0)
    np.testing.assert_allclose(cards["value_at_risk"], list(var.values()), rtol=1e-12)

    # survival: S(t) = exp(-t / 100), median 100 ln 2 = 69.31 days; the lapsed customer is at 0 already
    active = ["call", "winback", "nudge", "quiet"]
    np.testing.assert_allclose(cards.loc[active, "p_active_30d"], math.exp(-0.3), rtol=1e-12)
    np.testing.assert_allclose(cards.loc[active, "p_active_180d"], math.exp(-1.8), rtol=1e-12)
    np.testing.assert_allclose(cards.loc[active, "median_days_to_churn"], 100 * math.log(2), rtol=1e-12)
    assert (cards.loc["gone", ["p_active_30d", "p_active_90d", "median_days_to_churn"]] == 0).all()

    assert cards["lifecycle_stage"].tolist() == ["at_risk", "reactivated", "new", "active", "lapsed"]


def test_expected_value_saved_by_hand(value_features):
    scores = _by_customer(with_actions(hand_model().score(value_features), POLICY))
    assert list(scores.reset_index().columns) == [*SCORECARD_COLUMNS, *POLICY_COLUMNS]

    # call: at_risk, high tier, value 600 (high band) -> personal_call: 300 x 0.30 - 12 = 78
    # winback: reactivated, critical, value 200 (medium band) -> winback_discount: 146.2117 x 0.12 - 4 = 13.5454
    # nudge: new, medium tier -> onboarding_nudge: 0.37754 x 134.19118 x 0.08 - 1 = 3.0530
    # quiet: active, low tier -> no_action: 0 x ... - 0 = 0
    # gone: lapsed -> reactivation_campaign: 0.999 x 69.94774 x 0.05 - 1.5 = 1.99389
    assert scores["recommended_action"].tolist() == [
        "personal_call",
        "winback_discount",
        "onboarding_nudge",
        "no_action",
        "reactivation_campaign",
    ]
    assert scores["value_band"].tolist() == ["high", "medium", "medium", "medium", "low"]
    np.testing.assert_allclose(scores["action_cost"], [12.0, 4.0, 1.0, 0.0, 1.5])
    expected = [
        0.5 * 600 * 0.30 - 12,
        sigmoid(1.0) * 200 * 0.12 - 4,
        sigmoid(-0.5) * (365 / 204 * 75) * 0.08 - 1,
        0.0,
        0.999 * (365 / 287 * 55) * 0.05 - 1.5,
    ]
    assert expected[0] == pytest.approx(78.0)
    np.testing.assert_allclose(scores["expected_value_saved"], expected, rtol=1e-12)


def test_at_risk_follows_the_high_tier_threshold_in_use(value_features):
    """The stage rule reads the same 'high' threshold as the tiers, including a scoring-time override."""
    default = _by_customer(hand_model().score(value_features)).loc["call"]
    assert (default["churn_probability"], default["risk_tier"], default["lifecycle_stage"]) == (0.5, "high", "at_risk")

    moved = hand_model().with_overrides(tier_thresholds=(0.3, 0.6, 0.8))
    call = _by_customer(moved.score(value_features)).loc["call"]
    # p = 0.5 is now "medium", so not at_risk: 5 orders over 200 days make the customer loyal
    assert (call["risk_tier"], call["lifecycle_stage"]) == ("medium", "loyal")


@pytest.mark.parametrize("key", ["stage", "tier", "value"])
def test_a_policy_whose_last_rule_is_not_catch_all_is_refused(key):
    condition = {"stage": ["lapsed"], "tier": ["high"], "value": ["high"]}[key]
    with pytest.raises(ValidationError, match="last rule must match everybody"):
        Policy.model_validate(
            {
                "value_bands": {"high": 500, "medium": 100},
                "actions": {"call": {"cost": 1.0, "save_rate": 0.1}},
                "rules": [{"action": "call"}, {key: condition, "action": "call"}],
            }
        )
