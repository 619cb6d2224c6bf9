"""The predict side of the churn classifiers: what a registered model carries and runs at scoring time.

Training (``training/candidates.py``) fits these; every family exposes the same four things the scorecard needs:
calibrated ``predict_proba``, per-feature ``contributions`` in log-odds (for the reasons), ``importance`` and the
feature names it reads. So the scorecard contract holds whichever family wins, and nothing here fits anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from model.columns import Columns, matrix, n_rows
from model.rowwise import row_dot
from model.scorecard import Contributions

PROB_FLOOR = 1e-3  # nobody is certain to stay or to leave


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """log(1 + |x|) with the sign of x: tames heavy-tailed spend and counts, keeps refunds negative."""
    return np.sign(x) * np.log1p(np.abs(x))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass
class Calibrator:
    """Maps a raw score to a probability: Platt scaling (``sigmoid``, a logistic fit on the raw log-odds) or
    ``isotonic`` regression. Works on plain arrays so that scoring one customer costs microseconds."""

    method: str
    model: IsotonicRegression | LogisticRegression
    cv_log_loss: dict[str, float] = field(default_factory=dict)  # what the choice between the two was based on

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities inside [0.001, 0.999]: isotonic steps can reach exactly 0 or 1."""
        return np.clip(apply_calibration(self.method, self.model, raw), PROB_FLOOR, 1 - PROB_FLOOR)


def apply_calibration(method: str, model: IsotonicRegression | LogisticRegression, raw: np.ndarray) -> np.ndarray:
    if method == "isotonic":
        return model.predict(raw)
    z = model.coef_[0, 0] * logit(raw) + model.intercept_[0]
    return 1.0 / (1.0 + np.exp(-z))


def _threads(rows: int) -> dict:
    """One thread for a few rows: waking OpenMP workers costs more than the prediction (and jitters the API)."""
    return {"num_threads": 1} if rows < 1000 else {}


@dataclass
class LightGBMClassifier:
    """Gradient-boosted trees on every registry feature: the expected winner when behaviour is rich."""

    features: list[str]
    booster: lgb.Booster
    best_iteration: int
    num_leaves: int
    min_child_samples: int
    calibrator: Calibrator
    tuning_log_loss: dict[str, float] = field(default_factory=dict)
    name: str = "lightgbm"

    def x(self, df: Columns) -> np.ndarray:
        return matrix(df, self.features)

    def raw(self, df: Columns) -> np.ndarray:
        return self.booster.predict(self.x(df), num_iteration=self.best_iteration, **_threads(n_rows(df)))

    def predict_proba(self, df: Columns) -> np.ndarray:
        return self.calibrator.transform(self.raw(df))

    def contributions(self, df: Columns) -> Contributions:
        """TreeSHAP contributions to the raw log-odds (before calibration, which is monotone)."""
        contrib = self.booster.predict(
            self.x(df), pred_contrib=True, num_iteration=self.best_iteration, **_threads(n_rows(df))
        )
        return Contributions(contrib[:, :-1], list(self.features))

    def importance(self) -> pd.Series:
        gain = self.booster.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.features).sort_values(ascending=False)

    @property
    def description(self) -> str:
        return (
            f"LightGBM, {self.best_iteration} trees of {self.num_leaves} leaves (early-stopped), "
            f"{len(self.features)} features, {self.calibrator.method} calibration"
        )


@dataclass
class LogisticClassifier:
    """Logistic regression on log-scaled features: the RFM baseline, or recency alone.

    ``pipeline`` is signed log -> standard scaling -> logistic regression; missing values take the training
    medians first.
    """

    name: str
    features: list[str]
    medians: np.ndarray
    pipeline: Pipeline
    calibrator: Calibrator | None  # None: the regression's own probabilities (calibrated on its fit rows)

    def x(self, df: Columns) -> np.ndarray:
        x = matrix(df, self.features)
        return np.where(np.isnan(x), self.medians, x)

    def raw(self, df: Columns) -> np.ndarray:
        """The regression's probability, as ``pipeline.predict_proba`` computes it (expit of the linear predictor),
        with the linear predictor summed row by row (``model/rowwise.py``: API == batch to the bit)."""
        regression = self.pipeline[-1]
        return expit(row_dot(self.transformed(df), regression.coef_[0]) + regression.intercept_[0])

    def transformed(self, df: Columns) -> np.ndarray:
        """The features as the regression sees them (the pipeline's steps before it, if any)."""
        x = self.x(df)
        return self.pipeline[:-1].transform(x) if len(self.pipeline) > 1 else x

    def predict_proba(self, df: Columns) -> np.ndarray:
        raw = self.raw(df)
        if self.calibrator is None:
            return np.clip(raw, PROB_FLOOR, 1 - PROB_FLOOR)
        return self.calibrator.transform(raw)

    def contributions(self, df: Columns) -> Contributions:
        """Exact for a linear model: coefficient x standardised value, in log-odds."""
        transformed = self.transformed(df)
        coef = self.pipeline[-1].coef_[0]
        return Contributions(transformed * coef, list(self.features))

    def importance(self) -> pd.Series:
        return pd.Series(np.abs(self.pipeline[-1].coef_[0]), index=self.features).sort_values(ascending=False)

    @property
    def description(self) -> str:
        calibration = f"{self.calibrator.method} calibration" if self.calibrator else "its own probabilities"
        return f"logistic regression on log({', '.join(self.features)}), {calibration}"


@dataclass
class BlendClassifier:
    """Mean of two calibrated classifiers' probabilities: robust when neither dominates."""

    members: list[LightGBMClassifier | LogisticClassifier]
    name: str = "blend"

    @property
    def features(self) -> list[str]:
        return list(dict.fromkeys(f for m in self.members for f in m.features))

    def predict_proba(self, df: Columns) -> np.ndarray:
        return np.mean([m.predict_proba(df) for m in self.members], axis=0)

    def contributions(self, df: Columns) -> Contributions:
        """The members' mean, feature by feature (0 for a feature a member does not read)."""
        names = self.features
        position = {n: j for j, n in enumerate(names)}
        parts = []
        for m in self.members:
            c = m.contributions(df)
            full = np.zeros((c.values.shape[0], len(names)))
            full[:, [position[n] for n in c.names]] = c.values
            parts.append(full)
        return Contributions(sum(parts) / len(parts), names)

    def importance(self) -> pd.Series:
        parts = [m.importance() / max(m.importance().sum(), 1e-12) for m in self.members]
        return pd.concat(parts, axis=1).fillna(0).mean(axis=1).sort_values(ascending=False)

    @property
    def description(self) -> str:
        return "mean of " + " and ".join(m.name for m in self.members)


Classifier = LightGBMClassifier | LogisticClassifier | BlendClassifier  # what a ChurnModel's classifier can be
