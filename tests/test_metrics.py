"""Evaluation metrics on hand-computed examples, the IPCW Brier score against scikit-survival, and the rule that
picks the registered model (``choose_winner``) on hand-made metric tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import brier_score, integrated_brier_score
from sksurv.util import Surv

from training.evaluation import choose_winner
from training.metrics import expected_calibration_error, ipcw_brier, lift_at, survival_metrics

# ------------------------------------------------------------------------------------------------ ECE


def test_ece_by_hand():
    """Ten equal-width bins; |observed rate - mean prediction| weighted by the bin's share of rows."""
    p = np.array([0.05, 0.05, 0.25, 0.25, 0.6, 0.65, 0.9, 0.95, 1.0])
    y = np.array([0, 1, 0, 0, 1, 0, 1, 1, 1])
    # bin 0 (0.05, 0.05):     observed 1/2, mean 0.05  -> 2 x 0.45  = 0.90
    # bin 2 (0.25, 0.25):     observed 0,   mean 0.25  -> 2 x 0.25  = 0.50
    # bin 6 (0.6, 0.65):      observed 1/2, mean 0.625 -> 2 x 0.125 = 0.25
    # bin 9 (0.9, 0.95, 1.0): observed 1,   mean 0.95  -> 3 x 0.05  = 0.15  (p = 1.0 belongs to the last bin)
    # ECE = (0.90 + 0.50 + 0.25 + 0.15) / 9 = 1.8 / 9 = 0.2
    assert expected_calibration_error(y, p) == pytest.approx(0.2, abs=1e-12)


def test_ece_of_calibrated_bins_is_zero_and_bins_are_not_pooled():
    # one customer in four churns at p = 0.25: calibrated
    assert expected_calibration_error(np.array([1, 0, 0, 0]), np.full(4, 0.25)) == pytest.approx(0.0, abs=1e-12)
    # two bins wrong in opposite directions do not cancel: bin 1 (p=0.15, y=1) and bin 8 (p=0.85, y=0)
    # (|1 - 0.15| + |0 - 0.85|) / 2 = 0.85, whereas the overall means (0.5 vs 0.5) agree
    assert expected_calibration_error(np.array([1, 0]), np.array([0.15, 0.85])) == pytest.approx(0.85)


def test_ece_with_five_bins():
    # bins of width 0.2: 0.1 and 0.3 now fall in bins 0 and 1; observed 0 and 1
    # (|0 - 0.1| + |1 - 0.3|) / 2 = 0.4
    y, p = np.array([0, 1]), np.array([0.1, 0.3])
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------ lift


def test_lift_by_hand():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0])  # churn rate 3/10
    p = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    # top 20% = 2 rows: p 0.9 (y=1) and the first of the two 0.8s (row 1, y=0; ties keep row order)
    # rate 1/2 over 3/10 -> lift 5/3
    assert lift_at(y, p, 0.2) == pytest.approx(5 / 3)
    # top 30% = 3 rows: y 1, 0, 1 -> 2/3 over 3/10 = 20/9
    assert lift_at(y, p, 0.3) == pytest.approx(20 / 9)
    # a share below one row still takes one: 10 x 0.04 = 0.4 -> 1 row (y=1) -> 1 / 0.3
    assert lift_at(y, p, 0.04) == pytest.approx(10 / 3)
    # everybody: lift 1
    assert lift_at(y, p, 1.0) == pytest.approx(1.0)


def test_lift_without_churners_is_undefined():
    assert math.isnan(lift_at(np.zeros(5, dtype=int), np.linspace(0, 1, 5), 0.2))


# ------------------------------------------------------------------------------------------------ IPCW Brier


def _survival_data(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Continuous event and censoring times (no ties between them), about 40% censored."""
    rng = np.random.default_rng(seed)
    event_time = rng.weibull(1.3, n) * 80
    censor_time = rng.uniform(20, 200, n)
    return np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ipcw_brier_equals_scikit_survival(seed):
    duration, event = _survival_data(seed)
    y = Surv.from_arrays(event.astype(bool), duration)
    rng = np.random.default_rng(100 + seed)
    for t in (15.0, 30.0, 60.0, 90.0, 150.0):
        s = np.exp(-((t / rng.uniform(40, 120, len(duration))) ** 1.3))  # some predicted S(t) per customer
        (_, reference) = brier_score(y, y, s, t)
        assert ipcw_brier(duration, event, s, t) == pytest.approx(reference[0], abs=1e-6)


def test_integrated_brier_equals_scikit_survival():
    duration, event = _survival_data(3)
    times = (30, 60, 90)
    rng = np.random.default_rng(7)
    scale = rng.uniform(40, 120, len(duration))
    surv = pd.DataFrame({f"p_active_{t}d": np.exp(-((t / scale) ** 1.3)) for t in times})
    ours = survival_metrics(duration, event, surv, scale * math.log(2) ** (1 / 1.3), times=times)
    y = Surv.from_arrays(event.astype(bool), duration)
    reference = integrated_brier_score(y, y, surv.to_numpy(), np.array(times, dtype=float))
    assert ours["survival_ibs"] == pytest.approx(reference, abs=1e-6)


def test_ipcw_brier_at_a_tie_between_an_event_and_a_censoring():
    """Where an event and a censoring fall on the same day the two implementations differ by a convention, pinned
    here. Ours is lifelines' Kaplan-Meier on (duration, 1 - event): the customer whose event falls on that day still
    counts as at risk of censoring. scikit-survival takes events first and removes them from the censoring risk set.
    Our labels never produce such a tie (every censored customer is censored at the one data end, see
    test_ipcw_brier_on_the_held_out_snapshot_equals_scikit_survival), so both give the same number there."""
    duration = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1, 0])
    s = np.array([0.2, 0.4, 0.5, 0.7, 0.9])  # predicted S(2.5)
    # Brier at t = 2.5: events by 2.5 (durations 1 and 2) score S^2 / G(duration); still active (3 and 4) score
    # (1 - S)^2 / G(2.5); the customer censored at 2 scores 0.
    # censoring survival G: 1 before day 2; at day 2 one censoring among those at risk:
    #   ours: 4 at risk (durations >= 2)                      -> G(2) = G(2.5) = 1 - 1/4 = 0.75
    #   scikit-survival: 4 at risk minus the event on day 2   -> G(2) = G(2.5) = 1 - 1/3 = 2/3
    # ours = (0.2^2 / 1 + 0.4^2 / 0.75 + 0.3^2 / 0.75 + 0.1^2 / 0.75) / 5 = (0.04 + 0.26 / 0.75) / 5 = 0.0773333
    # scikit-survival = (0.04 + 0.26 / (2/3)) / 5 = 0.43 / 5 = 0.086
    assert ipcw_brier(duration, event, s, 2.5) == pytest.approx((0.04 + 0.26 / 0.75) / 5, abs=1e-12)
    y = Surv.from_arrays(event.astype(bool), duration)
    assert brier_score(y, y, s, 2.5)[1][0] == pytest.approx(0.43 / 5, abs=1e-12)


@pytest.mark.slow
def test_ipcw_brier_on_the_held_out_snapshot_equals_scikit_survival(trained):
    """The survival evaluation's own data: customers active at the held-out date, predicted by the trained model."""
    holdout = trained.holdout_features
    active = holdout[holdout["duration_days"] > 0]
    duration, event = active["duration_days"].to_numpy(), active["event"].to_numpy()
    censored_at = np.unique(duration[event == 0])
    assert len(censored_at) == 1  # everybody still active is censored at the data end ...
    assert not np.isin(duration[event == 1], censored_at).any()  # ... and no event falls exactly there
    surv = trained.model.survival.predict(active)
    y = Surv.from_arrays(event.astype(bool), duration)
    for t in (30, 60, 90):
        s = surv[f"p_active_{t}d"].to_numpy()
        assert ipcw_brier(duration, event, s, t) == pytest.approx(brier_score(y, y, s, t)[1][0], abs=1e-6)


# ------------------------------------------------------------------------------------------------ model selection


def _m(log_loss: float, roc_auc: float) -> dict[str, float]:
    return {"log_loss": log_loss, "roc_auc": roc_auc}


def test_lowest_held_out_log_loss_wins_even_with_a_lower_auc():
    winner, why = choose_winner(
        {"lightgbm": _m(0.30, 0.80), "rfm_logit": _m(0.33, 0.84), "recency": _m(0.35, 0.86), "blend": _m(0.31, 0.85)}
    )
    assert winner == "lightgbm"
    # runner-up blend: (0.31 - 0.30) / 0.31 = 3.2% lower
    assert why.startswith("lightgbm wins on held-out log loss 0.3000 vs 0.3100 for blend, 3.2% lower")


def test_a_baseline_wins_when_it_has_the_lowest_log_loss():
    winner, why = choose_winner({"lightgbm": _m(0.64, 0.73), "rfm_logit": _m(0.60, 0.73), "recency": _m(0.93, 0.68)})
    assert winner == "rfm_logit"
    assert "LightGBM reached 0.6400 / AUC 0.730" in why


def test_an_exact_log_loss_tie_goes_to_the_higher_auc():
    winner, _ = choose_winner({"lightgbm": _m(0.30, 0.80), "blend": _m(0.30 + 1e-13, 0.82)})
    assert winner == "blend"


def test_a_full_tie_goes_to_the_simpler_model():
    # AUCs equal to 4 decimals: recency < rfm_logit < blend < lightgbm
    winner, _ = choose_winner({"lightgbm": _m(0.3, 0.80), "blend": _m(0.3, 0.80001), "rfm_logit": _m(0.3, 0.79999)})
    assert winner == "rfm_logit"


def test_a_log_loss_difference_beyond_the_tie_is_not_a_tie():
    winner, _ = choose_winner({"lightgbm": _m(0.3, 0.70), "recency": _m(0.3 + 1e-9, 0.90)})
    assert winner == "lightgbm"
