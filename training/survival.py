"""Fitting the time-to-churn model: a Weibull accelerated-failure-time model (lifelines).

It is fitted on customers who are still active at the snapshot (inactive for less than H days) and answers
"by when" at scoring time (``model/survival.py``). The preprocessing is an sklearn pipeline fitted here; its
fitted parameters, not the pipeline, go into the registered model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifelines import WeibullAFTFitter
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from model.classifiers import signed_log1p
from model.survival import SurvivalModel, clip_covariates

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
MAX_FIT_ROWS = 200_000


@dataclass
class SurvivalFit:
    """The registered part (``model``) and what produced it: the sklearn preprocessing and the lifelines fitter,
    kept for the report and for checking that the closed form equals lifelines."""

    model: SurvivalModel
    preprocess: Pipeline
    fitter: WeibullAFTFitter

    def covariates(self, df: pd.DataFrame) -> pd.DataFrame:
        """The sklearn pipeline's output with named columns, as lifelines sees it."""
        x = self.preprocess.transform(df[self.model.features].astype("float64"))
        return pd.DataFrame(x, columns=self.model.columns, index=df.index)


def fit_survival(df: pd.DataFrame, *, penalizer: float = 0.01, seed: int = 42) -> SurvivalFit:
    """``df`` has the features plus ``duration_days`` and ``event``; rows with duration 0 are skipped.

    lifelines warns (``ConvergenceWarning``) when the fit struggles; the training run collects such warnings
    into the evaluation report instead of dropping them.
    """
    df = df[df["duration_days"] > 0]
    if len(df) > MAX_FIT_ROWS:
        df = df.sample(MAX_FIT_ROWS, random_state=seed)
    candidates = [f for f in SURVIVAL_FEATURES if f in df.columns]
    features = [f for f in candidates if df[f].notna().any() and df[f].nunique(dropna=True) > 1]
    preprocess = make_pipeline(
        FunctionTransformer(signed_log1p, feature_names_out="one-to-one"),
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=False),
        StandardScaler(),
        FunctionTransformer(clip_covariates, feature_names_out="one-to-one"),
    )
    x = preprocess.fit_transform(df[features].astype("float64"))
    columns = [n.replace("missingindicator_", "missing_") for n in preprocess.get_feature_names_out()]
    covariates = pd.DataFrame(x, columns=columns, index=df.index)
    covariates["duration_days"] = df["duration_days"].to_numpy()
    covariates["event"] = df["event"].to_numpy()
    fitter = WeibullAFTFitter(penalizer=penalizer).fit(covariates, "duration_days", "event")
    lam = fitter.params_["lambda_"]
    imputer, scaler = preprocess[1], preprocess[2]
    model = SurvivalModel(
        features=features,
        columns=columns,
        medians=imputer.statistics_,
        indicators=imputer.indicator_.features_ if imputer.indicator_ is not None else np.array([], int),
        mean=scaler.mean_,
        scale=scaler.scale_,
        beta=lam.drop("Intercept").reindex(columns).fillna(0.0).to_numpy(),
        intercept=float(lam["Intercept"]),
        rho=float(np.exp(fitter.params_["rho_"]["Intercept"])),
    )
    return SurvivalFit(model, preprocess, fitter)
