"""Expected 12-month value of a customer who stays: Gamma-Gamma spend per order x Gamma-Poisson order rate.

The classic CLV decomposition (Fader, Hardie & Lee 2005): each customer has an unobserved order rate and an
unobserved mean order value, both gamma-distributed across customers. Posterior means shrink a customer's own
history towards the population in proportion to how much history there is, so a one-order customer is not
valued at their single basket x 12 months. "Given still active" means no dropout term: the churn classifier
supplies that, and value at risk = churn probability x this value. Fitted in ``training/value.py``.

    orders/day  E[rate | x repeat orders in T days] = (r + x) / (alpha + T)
    order value E[M | x orders, mean m]             = p (gamma + x m) / (p x + q - 1)
    expected_value_12m = 365 x orders/day x order value
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from model.columns import Columns, column


@dataclass(frozen=True)
class ValueModel:
    r: float  # order rates ~ Gamma(r, alpha) per day
    alpha: float
    p: float  # spend per order ~ Gamma(p, nu), nu ~ Gamma(q, gamma)
    q: float
    gamma: float

    def predict(self, df: Columns) -> np.ndarray:
        x, t = repeat_orders(df), exposure_days(df)
        rate = (self.r + x) / (self.alpha + t)
        n = _filled(df, "frequency")
        m = np.maximum(_filled(df, "monetary_mean"), 0.0)  # net of refunds: may be negative
        order_value = self.p * (self.gamma + n * m) / (self.p * n + self.q - 1)
        return 365.0 * rate * order_value

    @property
    def params(self) -> dict[str, float]:
        return asdict(self)


def repeat_orders(df: Columns) -> np.ndarray:
    return np.maximum(_filled(df, "frequency") - 1, 0)


def exposure_days(df: Columns) -> np.ndarray:
    return np.maximum(_filled(df, "first_purchase_days"), 1.0)


def _filled(df: Columns, name: str) -> np.ndarray:
    """The column as float64, a missing value 0."""
    values = column(df, name)
    return np.where(np.isnan(values), 0.0, values)
