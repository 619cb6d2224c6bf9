"""The calibrator's choice between Platt scaling and isotonic regression (``fit_calibrator``): the data decide by
2-fold cross-validated log loss, and the calibrator keeps both numbers."""

from __future__ import annotations

import numpy as np
import pytest

from training.candidates import CALIBRATION_METHODS, fit_calibrator


def _step_shaped(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """P(churn | raw) jumps from 0.1 to 0.9 at raw = 0.5: no sigmoid of logit(raw) follows a step."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.01, 0.99, n)
    y = (rng.uniform(size=n) < np.where(raw < 0.5, 0.1, 0.9)).astype(int)
    return raw, y


def _logistic(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """P(churn | raw) = sigmoid(1.5 x logit(raw)): exactly Platt's family, and only 60 rows."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.02, 0.98, n)
    z = 1.5 * np.log(raw / (1 - raw))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    return raw, y


def _check_choice(calibrator, expected: str) -> None:
    assert set(calibrator.cv_log_loss) == set(CALIBRATION_METHODS) == {"sigmoid", "isotonic"}
    assert all(np.isfinite(v) and v > 0 for v in calibrator.cv_log_loss.values())
    other = next(m for m in CALIBRATION_METHODS if m != expected)
    assert calibrator.method == expected, calibrator.cv_log_loss
    assert calibrator.cv_log_loss[expected] < calibrator.cv_log_loss[other]


@pytest.mark.parametrize("seed", range(3))
def test_isotonic_wins_on_many_rows_of_a_step(seed):
    raw, y = _step_shaped(seed)
    calibrator = fit_calibrator(raw, y, seed)
    _check_choice(calibrator, "isotonic")
    # out-of-fold log loss near the step's own entropy, -(0.1 ln 0.1 + 0.9 ln 0.9) = 0.325; Platt's clearly worse
    assert calibrator.cv_log_loss["isotonic"] == pytest.approx(0.325, abs=0.02)
    assert calibrator.cv_log_loss["sigmoid"] > calibrator.cv_log_loss["isotonic"] + 0.05
    # and the fitted calibrator reproduces the step
    np.testing.assert_allclose(calibrator.transform(np.array([0.25, 0.75])), [0.1, 0.9], atol=0.02)


@pytest.mark.parametrize("seed", range(5))
def test_platt_wins_on_few_rows_of_a_logistic_relation(seed):
    raw, y = _logistic(100 + seed)
    calibrator = fit_calibrator(raw, y, seed)
    _check_choice(calibrator, "sigmoid")
    # the fitted slope on logit(raw) is positive: more raw risk, more churn
    assert calibrator.model.coef_[0, 0] > 0


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # Platt on separable rows
def test_calibrated_probabilities_stay_off_0_and_1():
    """Isotonic steps reach 0 and 1 on separable rows; the scorecard never says certain."""
    raw = np.linspace(0.01, 0.99, 2000)
    y = (raw > 0.5).astype(int)
    calibrator = fit_calibrator(raw, y, 0)
    p = calibrator.transform(np.array([0.0, 0.01, 0.99, 1.0]))
    assert p.min() == pytest.approx(1e-3) and p.max() == pytest.approx(1 - 1e-3)
