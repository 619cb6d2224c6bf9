"""The value model: its posterior formulas on hand numbers, recovery of known parameters from simulated customers,
and what happens when a fit does not converge (a warning) or is meaningless (a refusal)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from model.value import ValueModel
from training.value import ConvergenceWarning, ValueFitError, fit_gamma_gamma, fit_nbd, fit_value_model


def customers(frequency, monetary_mean, first_purchase_days) -> pd.DataFrame:
    return pd.DataFrame(
        {"frequency": frequency, "monetary_mean": monetary_mean, "first_purchase_days": first_purchase_days}
    )


def test_posterior_formulas_by_hand():
    """orders/day (r + x) / (alpha + T), x = n - 1 repeat orders over T days since the first order;
    order value p (gamma + n m) / (p n + q - 1); expected_value_12m = 365 x both."""
    model = ValueModel(r=0.5, alpha=20.0, p=4.0, q=3.0, gamma=40.0)
    df = customers([1, 4, 10], [30.0, 80.0, 25.0], [10.0, 180.0, 700.0])
    # one order of 30, 10 days ago:  (0.5 + 0) / (20 + 10) = 1/60 per day;  4 (40 + 30) / (4 + 2) = 46.667
    #   365 / 60 x 280 / 6 = 283.889: pulled towards the population's order value (p gamma / (q - 1) = 80)
    # 4 orders of 80 on average over 180 days:  3.5 / 200 per day;  4 (40 + 320) / (16 + 2) = 80
    #   365 x 0.0175 x 80 = 511.0
    # 10 orders of 25 over 700 days:  9.5 / 720 per day;  4 (40 + 250) / (40 + 2) = 27.619
    #   365 x 9.5 / 720 x 1160 / 42 = 133.013
    expected = [
        365 * (0.5 + 0) / (20 + 10) * 4 * (40 + 1 * 30) / (4 * 1 + 3 - 1),
        365 * (0.5 + 3) / (20 + 180) * 4 * (40 + 4 * 80) / (4 * 4 + 3 - 1),
        365 * (0.5 + 9) / (20 + 700) * 4 * (40 + 10 * 25) / (4 * 10 + 3 - 1),
    ]
    np.testing.assert_allclose(expected, [283.888889, 511.0, 133.012566], rtol=1e-6)
    np.testing.assert_allclose(model.predict(df), expected, rtol=1e-12)


def test_no_history_is_the_population_mean():
    """n = 0 or unknown orders: rate r / (alpha + 1 day), order value p gamma / (q - 1)."""
    model = ValueModel(r=1.0, alpha=165.0, p=2.0, q=3.0, gamma=60.0)
    df = customers([0, np.nan], [np.nan, np.nan], [0.0, np.nan])
    # 365 x (1 + 0) / (165 + 1) x 2 x 60 / (0 + 3 - 1) = 365 / 166 x 60 = 131.928
    np.testing.assert_allclose(model.predict(df), 365 / 166 * 60, rtol=1e-12)


def simulate(seed: int, n: int, *, r: float, alpha: float, p: float, q: float, gamma: float) -> pd.DataFrame:
    """Customers of the model's own story: order rate ~ Gamma(r, rate alpha) per day, repeat orders ~ Poisson over
    the days since the first order; spend per order ~ Gamma(p, rate nu), nu ~ Gamma(q, rate gamma)."""
    rng = np.random.default_rng(seed)
    exposure = rng.uniform(30, 730, n)
    orders = rng.poisson(rng.gamma(r, 1 / alpha, n) * exposure) + 1
    nu = rng.gamma(q, 1 / gamma, n)
    mean_order = rng.gamma(p * orders, 1 / nu) / orders  # the mean of n Gamma(p, nu) orders
    return customers(orders, mean_order, exposure)


def test_fit_recovers_known_parameters():
    truth = {"r": 0.8, "alpha": 40.0, "p": 3.0, "q": 4.0, "gamma": 30.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a clean fit converges
        fitted = fit_value_model(simulate(0, 20_000, **truth))
    # 20,000 customers: each parameter within 15% (measured errors over 5 seeds: at most 3% for r, alpha and q,
    # 9% for p and gamma, which trade off against each other)
    for name, value in truth.items():
        assert fitted.params[name] == pytest.approx(value, rel=0.15), name
    # the identified quantities are much tighter: mean orders/day r / alpha and mean order value p gamma / (q - 1)
    assert fitted.r / fitted.alpha == pytest.approx(0.8 / 40, rel=0.03)
    assert fitted.p * fitted.gamma / (fitted.q - 1) == pytest.approx(3 * 30 / 3, rel=0.03)


def test_fit_uses_buyers_only_and_needs_two():
    with pytest.raises(ValueFitError, match="positive spend: 1 found"):
        fit_value_model(customers([0, 3, 2], [np.nan, 20.0, 0.0], [5.0, 100.0, 50.0]))


def test_a_fit_that_does_not_converge_warns():
    """Two customers, no repeat in 1 day and 2 repeats in 300: the likelihood keeps rising towards the Poisson
    limit (r, alpha -> infinity) and the optimiser runs out of iterations. That is a warning, which training copies
    into the evaluation report, not a silent number."""
    x, t = np.array([0.0, 2.0]), np.array([1.0, 300.0])
    with pytest.warns(ConvergenceWarning, match="order rate .* did not converge"):
        fit_nbd(x, t)
    with pytest.warns(ConvergenceWarning, match="order rate .* did not converge"):
        fit_value_model(customers([1, 3], [20.0, 30.0], [1.0, 300.0]))


def test_a_meaningless_fit_is_refused():
    """A likelihood that is not a number (zero exposure, an infinite order value) cannot give expected values:
    refused at once, naming the fit, not after every iteration of the optimiser."""
    with pytest.raises(ValueFitError, match="order rate .* not a finite number"):
        fit_nbd(np.array([0.0, 1.0, 2.0]), np.array([0.0, 10.0, 20.0]))
    with pytest.raises(ValueFitError, match="spend per order .* not a finite number"):
        fit_gamma_gamma(np.array([1.0, 2.0, 3.0]), np.array([10.0, np.inf, 20.0]))
    with pytest.raises(ValueFitError, match="spend per order .* not a finite number"):
        fit_value_model(customers([1, 2, 3, 4], [10.0, np.inf, 20.0, 30.0], [10.0, 100.0, 200.0, 300.0]))
