"""Expected 12-month value of a customer who stays: Gamma-Gamma spend per order x Gamma-Poisson order rate.

The classic CLV decomposition (Fader, Hardie & Lee 2005): each customer has an unobserved order rate and an
unobserved mean order value, both gamma-distributed across customers. Posterior means shrink a customer's own
history towards the population in proportion to how much history there is, so a one-order customer is not
valued at their single basket x 12 months. "Given still active" means no dropout term: the churn classifier
supplies that, and value at risk = churn probability x this value.

    orders/day  E[rate | x repeat orders in T days] = (r + x) / (alpha + T)
    order value E[M | x orders, mean m]             = p (gamma + x m) / (p x + q - 1)
    expected_value_12m = 365 x orders/day x order value
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln

MAX_FIT_ROWS = 200_000


class ValueModel:
    def __init__(self, seed: int = 42) -> None:
        self.seed = seed

    def fit(self, df: pd.DataFrame) -> ValueModel:
        """Fit on one snapshot's features (``frequency``, ``monetary_mean``, ``first_purchase_days``)."""
        buyers = df[(df["frequency"] >= 1) & (df["monetary_mean"] > 0)]
        if len(buyers) > MAX_FIT_ROWS:
            buyers = buyers.sample(MAX_FIT_ROWS, random_state=self.seed)
        x, t = _repeat_orders(buyers), _exposure(buyers)
        self.r_, self.alpha_ = _fit_nbd(x, t)
        self.p_, self.q_, self.gamma_ = _fit_gamma_gamma(
            buyers["frequency"].to_numpy(float), buyers["monetary_mean"].to_numpy(float)
        )
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        x, t = _repeat_orders(df), _exposure(df)
        rate = (self.r_ + x) / (self.alpha_ + t)
        n = df["frequency"].fillna(0).to_numpy(float)
        m = df["monetary_mean"].fillna(0).to_numpy(float)
        order_value = self.p_ * (self.gamma_ + n * m) / (self.p_ * n + self.q_ - 1)
        return 365.0 * rate * order_value

    @property
    def params(self) -> dict[str, float]:
        return {"r": self.r_, "alpha": self.alpha_, "p": self.p_, "q": self.q_, "gamma": self.gamma_}


def _repeat_orders(df: pd.DataFrame) -> np.ndarray:
    return np.maximum(df["frequency"].fillna(0).to_numpy(float) - 1, 0)


def _exposure(df: pd.DataFrame) -> np.ndarray:
    return np.maximum(df["first_purchase_days"].fillna(0).to_numpy(float), 1.0)


def _fit_nbd(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Negative binomial (Gamma-Poisson) MLE for counts x over exposures t (days)."""

    def nll(log_params: np.ndarray) -> float:
        r, alpha = np.exp(log_params)
        ll = gammaln(r + x) - gammaln(r) + r * np.log(alpha / (alpha + t)) + x * np.log(t / (alpha + t))
        return -np.sum(ll)

    start = np.log([1.0, max(np.mean(t) / max(np.mean(x), 1e-3), 1.0)])
    res = minimize(nll, start, method="Nelder-Mead", options={"maxiter": 2000, "xatol": 1e-6, "fatol": 1e-6})
    r, alpha = np.exp(res.x)
    return float(r), float(alpha)


def _fit_gamma_gamma(n: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
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
    p, q, g = np.exp(res.x)
    return float(p), float(q + 1.0), float(g)
