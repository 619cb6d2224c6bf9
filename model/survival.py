"""Time to churn at scoring time: the fitted Weibull accelerated-failure-time model, evaluated in closed form.

Training (``training/survival.py``) fits it with lifelines on a compact set of behaviour features; what a
registered model carries is only the fitted preprocessing (signed log, median imputation with missing flags,
scaling, clipping) and the Weibull parameters, so scoring needs numpy alone. A customer who has already been
inactive for H days has churned by definition; the scorecard sets their survival to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.classifiers import signed_log1p
from model.columns import Columns, matrix
from model.rowwise import row_dot

TIMES = (30, 60, 90, 180)
CLIP = 5.0  # standardised covariates are clipped to +-5: one extreme customer must not get an absurd curve


def clip_covariates(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -CLIP, CLIP)


@dataclass
class SurvivalModel:
    """S(t) = exp(-(t / lambda)^rho), log lambda = intercept + beta . x(features)."""

    features: list[str]  # raw feature columns read
    columns: list[str]  # covariate names after preprocessing (features, then missing_<feature> flags)
    medians: np.ndarray  # imputation values, on the signed-log scale
    indicators: np.ndarray  # positions of the features that get a missing flag
    mean: np.ndarray
    scale: np.ndarray
    beta: np.ndarray
    intercept: float
    rho: float

    def transform(self, df: Columns) -> np.ndarray:
        """The fitted preprocessing as plain numpy (sklearn's own checks cost milliseconds per API call)."""
        x = signed_log1p(matrix(df, self.features))
        missing = np.isnan(x)
        x = np.where(missing, self.medians, x)
        x = np.hstack([x, missing[:, self.indicators].astype("float64")])
        return clip_covariates((x - self.mean) / self.scale)

    def predict(self, df: pd.DataFrame, times: tuple[int, ...] = TIMES) -> pd.DataFrame:
        """``p_active_<t>d`` for each t and ``median_days_to_churn``, vectorised over customers.

        The same numbers as lifelines' ``predict_survival_function`` / ``predict_median`` for the fitted model,
        but a million rows take a fraction of a second.
        """
        return pd.DataFrame(self.predict_columns(df, times), index=df.index)

    def predict_columns(self, df: Columns, times: tuple[int, ...] = TIMES) -> dict[str, np.ndarray]:
        """``predict`` as plain columns (name -> array)."""
        # not ``X @ beta``: the same bits for a customer scored alone (the API) or among a million (model/rowwise.py)
        log_lambda = row_dot(self.transform(df), self.beta) + self.intercept
        out = {f"p_active_{t}d": np.exp(-np.exp(self.rho * (np.log(t) - log_lambda))) for t in times}
        out["median_days_to_churn"] = np.exp(log_lambda) * np.log(2.0) ** (1.0 / self.rho)
        return out
