"""Candidate churn classifiers. They compete on the same out-of-time holdout; the best one is registered.

Every candidate is fitted on the *fit* snapshots, tuned (early stopping) and calibrated on the *validation*
snapshot, and exposes the same three things the scorecard needs: calibrated ``predict_proba``, per-feature
``contributions`` in log-odds (for the reasons), and the feature names it reads. So the scorecard contract holds
whichever family wins.

Class imbalance: candidates are fitted on the natural churn rate, unweighted. Re-weighting or resampling would
shift the scores away from probabilities, and churn rates here (10-60%) are not extreme enough to need it;
calibration then maps scores to observed frequencies.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from churnguard.settings import TrainingSettings

RFM_FEATURES = ["recency_days", "frequency", "monetary_total"]
TARGET = "churned"
PROB_FLOOR = 1e-3
TUNING_ROWS = 100_000  # tree-size selection runs on a sample of this many fit rows


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class Calibrator:
    """Platt (sigmoid) or isotonic scaling of a raw score, whichever has the lower 2-fold log loss on the
    validation snapshot. Works on plain arrays so that scoring one customer costs microseconds."""

    def fit(self, raw: np.ndarray, y: np.ndarray, seed: int) -> Calibrator:
        folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
        self.cv_log_loss_: dict[str, float] = {}
        for method in ("sigmoid", "isotonic"):
            losses = []
            for a, b in folds.split(raw.reshape(-1, 1), y):
                model = self._fit_one(method, raw[a], y[a])
                losses.append(
                    log_loss(
                        y[b], np.clip(self._apply(method, model, raw[b]), PROB_FLOOR, 1 - PROB_FLOOR), labels=[0, 1]
                    )
                )
            self.cv_log_loss_[method] = float(np.mean(losses))
        self.method_ = min(self.cv_log_loss_, key=self.cv_log_loss_.get)
        self.model_ = self._fit_one(self.method_, raw, y)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, kept inside [0.001, 0.999]: isotonic steps can reach exactly 0 or 1, and
        nobody is certain to stay or to leave."""
        return np.clip(self._apply(self.method_, self.model_, raw), PROB_FLOOR, 1 - PROB_FLOOR)

    @staticmethod
    def _fit_one(method: str, raw: np.ndarray, y: np.ndarray):
        if method == "isotonic":
            return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return LogisticRegression(C=1e6, max_iter=1000).fit(_logit(raw).reshape(-1, 1), y)

    @staticmethod
    def _apply(method: str, model: IsotonicRegression | LogisticRegression, raw: np.ndarray) -> np.ndarray:
        if method == "isotonic":
            return model.predict(raw)
        z = model.coef_[0, 0] * _logit(raw) + model.intercept_[0]
        return 1.0 / (1.0 + np.exp(-z))


def _threads(rows: int) -> dict:
    """One thread for a few rows: waking OpenMP workers costs more than the prediction (and jitters the API)."""
    return {"num_threads": 1} if rows < 1000 else {}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class LightGBMCandidate:
    """Gradient-boosted trees on every registry feature: the expected winner when behaviour is rich."""

    name = "lightgbm"

    def __init__(
        self,
        features: list[str],
        *,
        n_estimators: int = 600,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        early_stopping_rounds: int = 50,
        tune_complexity: bool = True,
        seed: int = 42,
        n_jobs: int | None = None,
    ) -> None:
        self.features = features
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.tune_complexity = tune_complexity
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(self, fit: pd.DataFrame, val: pd.DataFrame) -> LightGBMCandidate:
        """Pick the tree size on the validation snapshot (small data overfits 31-leaf trees), then fit."""
        self.num_leaves_, self.min_child_samples_ = self.num_leaves, self.min_child_samples
        if self.tune_complexity:
            sample = fit.sample(TUNING_ROWS, random_state=self.seed) if len(fit) > TUNING_ROWS else fit
            grid = [
                (max(self.num_leaves // 2, 2), self.min_child_samples * 2),
                (self.num_leaves, self.min_child_samples),
                (self.num_leaves * 2, max(self.min_child_samples // 2, 1)),
            ]
            scores = {g: self._fit_booster(sample, val, *g).best_score_["valid_0"]["binary_logloss"] for g in grid}
            self.num_leaves_, self.min_child_samples_ = min(scores, key=scores.get)
            self.tuning_log_loss_ = {f"{leaves} leaves / {mcs} min child": v for (leaves, mcs), v in scores.items()}
        self.model_ = self._fit_booster(fit, val, self.num_leaves_, self.min_child_samples_)
        self.best_iteration_ = int(self.model_.best_iteration_ or self.n_estimators)
        self.booster_ = self.model_.booster_
        self.calibrator_ = Calibrator().fit(self._raw(val), val[TARGET].to_numpy(), self.seed)
        return self

    def _fit_booster(self, fit: pd.DataFrame, val: pd.DataFrame, num_leaves: int, min_child_samples: int):
        model = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=num_leaves,
            min_child_samples=min_child_samples,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            reg_lambda=1.0,
            random_state=self.seed,
            n_jobs=self.n_jobs or -1,
            verbose=-1,
            deterministic=True,
            force_row_wise=True,
        )
        return model.fit(
            self._x(fit),
            fit[TARGET].to_numpy(),
            eval_X=(self._x(val),),
            eval_y=(val[TARGET].to_numpy(),),
            eval_metric="binary_logloss",
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )

    def _x(self, df: pd.DataFrame) -> np.ndarray:
        return df[self.features].to_numpy(dtype="float64", na_value=np.nan)

    def _raw(self, df: pd.DataFrame) -> np.ndarray:
        return self.booster_.predict(self._x(df), num_iteration=self.best_iteration_, **_threads(len(df)))

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.calibrator_.transform(self._raw(df))

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """TreeSHAP contributions to the raw log-odds (before calibration, which is monotone)."""
        contrib = self.booster_.predict(
            self._x(df), pred_contrib=True, num_iteration=self.best_iteration_, **_threads(len(df))
        )
        return pd.DataFrame(contrib[:, :-1], columns=self.features, index=df.index)

    def importance(self) -> pd.Series:
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.features).sort_values(ascending=False)

    @property
    def description(self) -> str:
        return (
            f"LightGBM, {self.best_iteration_} trees of {self.num_leaves_} leaves (early-stopped), "
            f"{len(self.features)} features, "
            f"{self.calibrator_.method_} calibration"
        )


class LogisticCandidate:
    """Logistic regression on log-scaled features: the RFM baseline, or recency alone."""

    def __init__(self, name: str, features: list[str], *, C: float = 1.0, seed: int = 42) -> None:
        self.name = name
        self.features = features
        self.C = C
        self.seed = seed

    def fit(self, fit: pd.DataFrame, val: pd.DataFrame) -> LogisticCandidate:
        self.medians_ = fit[self.features].median().fillna(0.0)
        self.model_: Pipeline = make_pipeline(
            FunctionTransformer(signed_log1p),
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=1000, random_state=self.seed),
        )
        self.model_.fit(self._x(fit), fit[TARGET].to_numpy())
        self.calibrator_ = Calibrator().fit(self._raw(val), val[TARGET].to_numpy(), self.seed)
        return self

    def _x(self, df: pd.DataFrame) -> np.ndarray:
        x = df[self.features].to_numpy(dtype="float64", na_value=np.nan)
        return np.where(np.isnan(x), self.medians_.to_numpy(), x)

    def _raw(self, df: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self._x(df))[:, 1]

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.calibrator_.transform(self._raw(df))

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """Exact for a linear model: coefficient x standardised value, in log-odds."""
        transformed = self.model_[:-1].transform(self._x(df))
        coef = self.model_[-1].coef_[0]
        return pd.DataFrame(transformed * coef, columns=self.features, index=df.index)

    def importance(self) -> pd.Series:
        return pd.Series(np.abs(self.model_[-1].coef_[0]), index=self.features).sort_values(ascending=False)

    @property
    def description(self) -> str:
        return f"logistic regression on log({', '.join(self.features)}), {self.calibrator_.method_} calibration"


class BlendCandidate:
    """Mean of two calibrated candidates' probabilities: robust when neither dominates."""

    name = "blend"

    def __init__(self, members: list) -> None:
        self.members = members
        self.features = list(dict.fromkeys(f for m in members for f in m.features))

    def fit(self, fit: pd.DataFrame, val: pd.DataFrame) -> BlendCandidate:
        return self  # members are fitted already

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return np.mean([m.predict_proba(df) for m in self.members], axis=0)

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        parts = [m.contributions(df).reindex(columns=self.features, fill_value=0.0) for m in self.members]
        return sum(parts) / len(parts)

    def importance(self) -> pd.Series:
        parts = [m.importance() / max(m.importance().sum(), 1e-12) for m in self.members]
        return pd.concat(parts, axis=1).fillna(0).mean(axis=1).sort_values(ascending=False)

    @property
    def description(self) -> str:
        return "mean of " + " and ".join(m.name for m in self.members)


Candidate = LightGBMCandidate | LogisticCandidate | BlendCandidate  # what a ChurnModel's classifier can be


def fit_candidates(
    fit: pd.DataFrame,
    val: pd.DataFrame,
    features: list[str],
    *,
    settings: TrainingSettings,
    n_jobs: int | None = None,
    tree_size: tuple[int, int] | None = None,
) -> dict[str, Candidate]:
    """Fit every candidate family on the same data. ``settings`` is the training section of the settings;
    ``tree_size`` (leaves, min child samples) skips LightGBM's tree-size search."""
    leaves, min_child = tree_size or (settings.lgbm_num_leaves, settings.lgbm_min_child_samples)
    lgbm = LightGBMCandidate(
        features,
        n_estimators=settings.lgbm_n_estimators,
        learning_rate=settings.lgbm_learning_rate,
        num_leaves=leaves,
        min_child_samples=min_child,
        early_stopping_rounds=settings.early_stopping_rounds,
        tune_complexity=tree_size is None,
        seed=settings.seed,
        n_jobs=n_jobs,
    ).fit(fit, val)
    rfm = LogisticCandidate("rfm_logit", RFM_FEATURES, seed=settings.seed).fit(fit, val)
    recency = LogisticCandidate("recency", ["recency_days"], seed=settings.seed).fit(fit, val)
    blend = BlendCandidate([lgbm, rfm])
    return {c.name: c for c in (lgbm, rfm, recency, blend)}
