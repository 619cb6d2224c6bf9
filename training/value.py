"""Fitting the value model (``model/value.py``) by maximum likelihood, with the fits' convergence checked.

A fit that does not converge is not silently used: ``fit_value_model`` warns (``ConvergenceWarning``, which the
training run puts in the evaluation report) when the optimiser stopped without converging, and refuses
(``ValueFitError``) when the parameters are not finite numbers, because every expected value would then be
meaningless.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult, minimize
from scipy.special import gammaln

from model.value import ValueModel, exposure_days, repeat_orders

MAX_FIT_ROWS = 200_000


class ConvergenceWarning(UserWarning):
    """A maximum-likelihood fit stopped before converging; its numbers may be off."""


class ValueFitError(ValueError):
    """The value model could not be fitted to these customers."""


def fit_value_model(df: pd.DataFrame, *, seed: int = 42) -> ValueModel:
    """Fit on one snapshot's features (``frequency``, ``monetary_mean``, ``first_purchase_days``)."""
    buyers = df[(df["frequency"] >= 1) & (df["monetary_mean"] > 0)]
    if len(buyers) < 2:
        raise ValueFitError(f"the value model needs customers with positive spend: {len(buyers)} found")
    if len(buyers) > MAX_FIT_ROWS:
        buyers = buyers.sample(MAX_FIT_ROWS, random_state=seed)
    r, alpha = fit_nbd(repeat_orders(buyers), exposure_days(buyers))
    p, q, gamma = fit_gamma_gamma(buyers["frequency"].to_numpy(float), buyers["monetary_mean"].to_numpy(float))
    return ValueModel(r=r, alpha=alpha, p=p, q=q, gamma=gamma)


def fit_nbd(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Negative binomial (Gamma-Poisson) MLE for counts x over exposures t (days)."""

    def nll(log_params: np.ndarray) -> float:
        r, alpha = np.exp(log_params)
        ll = gammaln(r + x) - gammaln(r) + r * np.log(alpha / (alpha + t)) + x * np.log(t / (alpha + t))
        return -np.sum(ll)

    start = np.log([1.0, max(np.mean(t) / max(np.mean(x), 1e-3), 1.0)])
    res = minimize(nll, start, method="Nelder-Mead", options={"maxiter": 2000, "xatol": 1e-6, "fatol": 1e-6})
    r, alpha = _checked(res, "order rate (Gamma-Poisson)")
    return float(r), float(alpha)


def fit_gamma_gamma(n: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    """Gamma-Gamma MLE on (orders n, mean order value m); q is kept above 1 so the posterior mean exists."""

    def nll(log_params: np.ndarray) -> float:
        p, q, g = np.exp(log_params)
        q = q + 1.0
        ll = (
            gammaln(p * n + q)
            - gammaln(p * n)
            - gammaln(q)
            + q * np.log(g)
            + (p * n - 1) * np.log(m)
            + p * n * np.log(n)
            - (p * n + q) * np.log(g + n * m)
        )
        return -np.sum(ll)

    start = np.log([2.0, 2.0, max(np.median(m), 1.0)])
    res = minimize(nll, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6})
    p, q, g = _checked(res, "spend per order (Gamma-Gamma)")
    return float(p), float(q + 1.0), float(g)


def _checked(res: OptimizeResult, what: str) -> np.ndarray:
    params = np.exp(res.x)
    if not np.all(np.isfinite(params)) or not np.isfinite(res.fun):
        raise ValueFitError(f"the {what} fit diverged (parameters {params}): expected values would be meaningless")
    if not res.success:
        warnings.warn(
            f"the {what} fit did not converge ({res.message.strip().rstrip('.')}); expected values may be off",
            ConvergenceWarning,
            stacklevel=3,
        )
    return params
