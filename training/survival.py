"""Time to churn: a Weibull accelerated-failure-time model (lifelines) on a compact set of behaviour features.

It answers "by when": a survival curve per customer, read at 30/60/90/180 days, and the median time to churn.
It is fitted on customers who are still active at the snapshot (inactive for less than H days); a customer who
has already been inactive for H days has churned by definition, so their survival is 0 (handled in the
scorecard). The feature preprocessing (signed log, median imputation with missing flags, scaling, clipping)
lives inside this object, so the saved model carries it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import WeibullAFTFitter
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from training.candidates import signed_log1p

SURVIVAL_FEATURES = [
    "recency_days",
    "frequency",
    "monetary_total",
    "monetary_mean",
    "tenure_days",
    "gap_mean_days",
    "recency_gap_ratio",
    "orders_90d",
    "orders_trend_90d",
    "spend_trend_90d",
    "refund_share",
    "days_since_last_engagement",
    "events_30d",
    "events_trend_30d",
]
TIMES = (30, 60, 90, 180)
MAX_FIT_ROWS = 200_000


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -5.0, 5.0)


class SurvivalModel:
    def __init__(self, features: list[str] | None = None, *, penalizer: float = 0.01, seed: int = 42) -> None:
        self.features = features
        self.penalizer = penalizer
        self.seed = seed

    def fit(self, df: pd.DataFrame) -> SurvivalModel:
        """``df`` has the features plus ``duration_days`` and ``event``; rows with duration 0 are skipped."""
        df = df[df["duration_days"] > 0]
        if len(df) > MAX_FIT_ROWS:
            df = df.sample(MAX_FIT_ROWS, random_state=self.seed)
        candidates = self.features or [f for f in SURVIVAL_FEATURES if f in df.columns]
        self.features_ = [f for f in candidates if df[f].notna().any() and df[f].nunique(dropna=True) > 1]
        self.preprocess_: Pipeline = make_pipeline(
            FunctionTransformer(signed_log1p, feature_names_out="one-to-one"),
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=False),
            StandardScaler(),
            FunctionTransformer(_clip, feature_names_out="one-to-one"),
        )
        X = self._transform(df, fit=True)
        imputer, scaler = self.preprocess_[1], self.preprocess_[2]
        self.medians_ = imputer.statistics_
        self.indicators_ = imputer.indicator_.features_ if imputer.indicator_ is not None else np.array([], int)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        X["duration_days"] = df["duration_days"].to_numpy()
        X["event"] = df["event"].to_numpy()
        self.fitter_ = WeibullAFTFitter(penalizer=self.penalizer).fit(X, "duration_days", "event")
        lam = self.fitter_.params_["lambda_"]
        self.beta_ = lam.drop("Intercept").reindex(self.columns_).fillna(0.0).to_numpy()
        self.intercept_ = float(lam["Intercept"])
        self.rho_ = float(np.exp(self.fitter_.params_["rho_"]["Intercept"]))
        return self

    def _transform(self, df: pd.DataFrame, fit: bool = False) -> pd.DataFrame:
        """The sklearn pipeline, with named columns (what lifelines fits on)."""
        x = df[self.features_].astype("float64")
        arr = self.preprocess_.fit_transform(x) if fit else self.preprocess_.transform(x)
        if fit:
            out = self.preprocess_.get_feature_names_out()
            self.columns_ = [n.replace("missingindicator_", "missing_") for n in out]
        return pd.DataFrame(arr, columns=self.columns_, index=df.index)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """The fitted preprocessing as plain numpy (the sklearn pipeline's own checks cost ms per API call)."""
        x = signed_log1p(df[self.features_].to_numpy(dtype="float64", na_value=np.nan))
        missing = np.isnan(x)
        x = np.where(missing, self.medians_, x)
        x = np.hstack([x, missing[:, self.indicators_].astype("float64")])
        return _clip((x - self.mean_) / self.scale_)

    def predict(self, df: pd.DataFrame, times: tuple[int, ...] = TIMES) -> pd.DataFrame:
        """``p_active_<t>d`` for each t and ``median_days_to_churn``, computed from the Weibull parameters.

        S(t) = exp(-(t / lambda)^rho), lambda = exp(beta . x), rho = exp(rho_0): the same as lifelines'
        ``predict_survival_function`` but vectorised over customers, so a million rows take a fraction of a second.
        """
        log_lambda = self.transform(df) @ self.beta_ + self.intercept_
        rho = self.rho_
        out = {f"p_active_{t}d": np.exp(-np.exp(rho * (np.log(t) - log_lambda))) for t in times}
        out["median_days_to_churn"] = np.exp(log_lambda) * np.log(2.0) ** (1.0 / rho)
        return pd.DataFrame(out, index=df.index)

    @property
    def summary(self) -> pd.DataFrame:
        return self.fitter_.summary
