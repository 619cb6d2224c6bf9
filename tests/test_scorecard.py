"""Scorecard wording and coherence: reasons in words for every feature, and the lapsed customer's fields."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.registry import DEFAULT_EVENT_TYPES, feature_registry
from model.scorecard import reason_text, top_reasons

EVENT_TYPES = (*DEFAULT_EVENT_TYPES, "store_visit")  # a type of the user's own gets sentences too
SPECS = feature_registry(EVENT_TYPES)


def _row(value: float | None) -> pd.Series:
    """Every feature at one value (a count, a number of days, an amount), or all missing."""
    row = {s.name: (np.nan if value is None else value) for s in SPECS}
    if value is not None:
        row.update({"season_sin": math.sin(1.0), "season_cos": math.cos(1.0), "cancelled": 1})
    return pd.Series(row)


@pytest.mark.parametrize("value", [0.0, 3.0, 42.5, None])
def test_every_feature_reads_as_words_never_a_description_or_unknown(value):
    row = _row(value)
    for spec in SPECS:
        text = reason_text(spec.name, row)
        assert text and not text[0].isupper(), (spec.name, text)
        assert "unknown" not in text and "nan" not in text.split(), (spec.name, text)
        assert spec.description.rstrip(".") not in text, (spec.name, text)
        assert "_" not in text, (spec.name, text)  # no raw column names


def test_reasons_for_the_issues_examples():
    row = pd.Series(
        {
            "monetary_std": np.nan,
            "recency_days": 75.0,
            "gap_mean_days": 9.0,
            "spend_90d": -20.0,
            "spend_prev_90d": 300.0,
            "spend_trend_90d": -5.7,
            "season_sin": math.sin(2 * math.pi * 253 / 365.25),
            "season_cos": math.cos(2 * math.pi * 253 / 365.25),
        }
    )
    assert reason_text("monetary_std", row) == "only one order so far"
    assert reason_text("recency_days", row) == "no purchase for 75 days; usual gap is 9 days"
    assert reason_text("spend_trend_90d", row) == "net spend down: -20 in the last 90 days vs 300 in the 90 days before"
    assert reason_text("season_cos", row) == "time of year: customers leave more often in September"


def test_top_reasons_raise_risk_and_name_the_season_once():
    features = pd.DataFrame(
        {"recency_days": [40.0], "gap_mean_days": [10.0], "frequency": [2], "season_sin": [1.0], "season_cos": [0.0]}
    )
    contributions = pd.DataFrame(
        {"recency_days": [0.9], "gap_mean_days": [-0.5], "frequency": [0.1], "season_sin": [0.2], "season_cos": [0.2]}
    )
    assert top_reasons(contributions, features) == [
        ["no purchase for 40 days; usual gap is 10 days", "time of year: customers leave more often in April",
         "only 2 orders so far"]
    ]  # fmt: skip


SURVIVAL = ["p_active_30d", "p_active_60d", "p_active_90d", "p_active_180d", "median_days_to_churn"]


@pytest.mark.slow
def test_a_lapsed_customer_reads_coherently(trained):
    """Lapsed = churned by the inactivity definition: the survival view says 0 and the stage says lapsed, while
    churn_probability is the chance they stay away another horizon (README, scorecard fields)."""
    holdout = trained.holdout_features
    horizon = trained.model.horizon_days
    lapsed = holdout[holdout["recency_days"] >= horizon].head(50)
    active = holdout[holdout["recency_days"] < horizon / 3].head(200)
    assert len(lapsed) > 10
    cards = trained.model.score(lapsed, reasons=True)
    assert (cards["lifecycle_stage"] == "lapsed").all()
    assert (cards[SURVIVAL] == 0).all().all()
    assert cards["churn_probability"].between(0.001, 0.999).all()
    assert cards["churn_probability"].mean() > trained.model.score(active)["churn_probability"].mean()
    assert cards["value_at_risk"].equals(cards["churn_probability"] * cards["expected_value_12m"])
    inactive = ("no purchase for", "no activity of any kind for", "their usual gap since the last purchase")
    assert cards["top_reasons"].map(lambda r: any(w in t for t in r for w in inactive)).mean() > 0.5


@pytest.mark.slow
def test_a_customer_with_only_free_orders_is_scored(trained):
    from datetime import datetime

    from features.build import as_entities
    from serving.policy import load_policy
    from serving.scoring import score_dataset
    from tests.conftest import dataset, tx

    data = dataset([tx("free", "2024-03-01 10:00", 0.0, order_id="f1"), tx("free", "2024-05-01", 0.0, order_id="f2")])
    scored = score_dataset(data, as_entities(["free"], datetime(2024, 6, 1)), trained.model, load_policy())
    assert scored.rejected.empty
    card = scored.scores.iloc[0]
    assert card["customer_id"] == "free" and 0 < card["churn_probability"] < 1
    assert card["expected_value_12m"] >= 0
