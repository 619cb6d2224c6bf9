"""Fitting the candidate churn classifiers. They compete on the same out-of-time holdout; the best one is registered.

Every candidate is fitted on the *fit* snapshots, tuned (early stopping) and calibrated on the *validation*
snapshot, and comes back as one of the fitted classifiers of ``model/classifiers.py``, which is all a registered
model carries.

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

from model.classifiers import (
    PROB_FLOOR,
    BlendClassifier,
    Calibrator,
    Classifier,
    LightGBMClassifier,
    LogisticClassifier,
    apply_calibration,
    logit,
    signed_log1p,
)
from training.settings import TrainingSettings

RFM_FEATURES = ["recency_days", "frequency", "monetary_total", "tenure_days"]
TARGET = "churned"
TUNING_ROWS = 100_000  # tree-size selection runs on a sample of this many fit rows
SINGLE_THREAD_ROWS = 50_000  # below this many rows one thread is faster (waking OpenMP workers costs more)
CALIBRATION_METHODS = ("sigmoid", "isotonic")


def fit_calibrator(raw: np.ndarray, y: np.ndarray, seed: int) -> Calibrator:
    """Platt or isotonic, whichever has the lower 2-fold cross-validated log loss on these rows.

    Isotonic regression is more flexible and wins with many rows; on a few hundred it overfits its steps and
    Platt's two parameters win. Deciding by out-of-fold log loss lets the data say which regime it is in.
    """
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    cv_log_loss: dict[str, float] = {}
    for method in CALIBRATION_METHODS:
        losses = []
        for a, b in folds.split(raw.reshape(-1, 1), y):
            p = apply_calibration(method, _fit_calibration(method, raw[a], y[a]), raw[b])
            losses.append(log_loss(y[b], np.clip(p, PROB_FLOOR, 1 - PROB_FLOOR), labels=[0, 1]))
        cv_log_loss[method] = float(np.mean(losses))
    method = min(cv_log_loss, key=cv_log_loss.get)
    return Calibrator(method, _fit_calibration(method, raw, y), cv_log_loss)


def _fit_calibration(method: str, raw: np.ndarray, y: np.ndarray) -> IsotonicRegression | LogisticRegression:
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
    return LogisticRegression(C=1e6, max_iter=1000).fit(logit(raw).reshape(-1, 1), y)


def fit_lightgbm(
    fit: pd.DataFrame,
    val: pd.DataFrame,
    features: list[str],
    settings: TrainingSettings,
    *,
    tree_size: tuple[int, int] | None = None,
    n_jobs: int | None = None,
    weights: np.ndarray | None = None,
) -> LightGBMClassifier:
    """Pick the tree size on the validation snapshot (small data overfits 31-leaf trees), then fit and calibrate.

    ``tree_size`` (leaves, min child samples) skips the search; ``weights`` weigh the fit rows.
    """
    x_fit, y_fit = _x(fit, features), fit[TARGET].to_numpy()
    x_val, y_val = _x(val, features), val[TARGET].to_numpy()
    n_jobs = n_jobs or threads_for(len(fit))
    tuning: dict[str, float] = {}
    if tree_size is None:
        sample = fit.sample(TUNING_ROWS, random_state=settings.seed) if len(fit) > TUNING_ROWS else fit
        x_s, y_s = _x(sample, features), sample[TARGET].to_numpy()
        w_s = None if weights is None else pd.Series(weights, index=fit.index).loc[sample.index].to_numpy()
        leaves, child = settings.lgbm_num_leaves, settings.lgbm_min_child_samples
        grid = [(max(leaves // 2, 2), child * 2), (leaves, child), (leaves * 2, max(child // 2, 1))]
        scores = {
            g: _fit_booster(x_s, y_s, x_val, y_val, *g, settings, n_jobs, w_s).best_score_["valid_0"]["binary_logloss"]
            for g in grid
        }
        tree_size = min(scores, key=scores.get)
        tuning = {f"{lv} leaves / {mcs} min child": v for (lv, mcs), v in scores.items()}
    model = _fit_booster(x_fit, y_fit, x_val, y_val, *tree_size, settings, n_jobs, weights)
    best = int(model.best_iteration_ or settings.lgbm_n_estimators)
    raw_val = model.booster_.predict(x_val, num_iteration=best)
    return LightGBMClassifier(
        features=list(features),
        booster=model.booster_,
        best_iteration=best,
        num_leaves=tree_size[0],
        min_child_samples=tree_size[1],
        calibrator=fit_calibrator(raw_val, y_val, settings.seed),
        tuning_log_loss=tuning,
    )


def _fit_booster(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_leaves: int,
    min_child_samples: int,
    settings: TrainingSettings,
    n_jobs: int | None,
    weights: np.ndarray | None = None,
) -> lgb.LGBMClassifier:
    model = booster_model(settings, num_leaves, min_child_samples, settings.lgbm_n_estimators, n_jobs)
    return model.fit(
        x_fit,
        y_fit,
        sample_weight=weights,
        eval_X=(x_val,),
        eval_y=(y_val,),
        eval_metric="binary_logloss",
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )


def threads_for(rows: int) -> int:
    return 1 if rows < SINGLE_THREAD_ROWS else -1


def booster_model(
    settings: TrainingSettings, num_leaves: int, min_child_samples: int, n_estimators: int, n_jobs: int | None
) -> lgb.LGBMClassifier:
    """The one LightGBM configuration every fit uses (selection, production refit, backtest)."""
    return lgb.LGBMClassifier(
        n_estimators=n_estimators,
        learning_rate=settings.lgbm_learning_rate,
        num_leaves=num_leaves,
        min_child_samples=min_child_samples,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        reg_lambda=1.0,
        random_state=settings.seed,
        n_jobs=n_jobs or -1,
        verbose=-1,
        deterministic=True,
        force_row_wise=True,
    )


def _x(df: pd.DataFrame, features: list[str]) -> np.ndarray:
    return df[features].to_numpy(dtype="float64", na_value=np.nan)


def fit_logistic(
    name: str,
    fit: pd.DataFrame,
    val: pd.DataFrame | None,
    features: list[str],
    *,
    seed: int,
    C: float = 1.0,
    weights: np.ndarray | None = None,
) -> LogisticClassifier:
    """Logistic regression on signed-log, standardised features (missing values: the fit rows' medians),
    calibrated on ``val``; without ``val`` its own probabilities are used (a logistic fit is calibrated in-sample)."""
    pipeline, medians = fit_logistic_pipeline(fit, features, seed=seed, C=C, weights=weights)
    calibrator = None
    if val is not None:
        raw_val = pipeline.predict_proba(_imputed(val, features, medians))[:, 1]
        calibrator = fit_calibrator(raw_val, val[TARGET].to_numpy(), seed)
    return LogisticClassifier(name, list(features), medians, pipeline, calibrator)


def fit_logistic_pipeline(
    fit: pd.DataFrame, features: list[str], *, seed: int, C: float = 1.0, weights: np.ndarray | None = None
) -> tuple[Pipeline, np.ndarray]:
    medians = fit[features].median().fillna(0.0).to_numpy()
    pipeline = make_pipeline(
        FunctionTransformer(signed_log1p),
        StandardScaler(),
        LogisticRegression(C=C, max_iter=1000, random_state=seed),
    )
    pipeline.fit(_imputed(fit, features, medians), fit[TARGET].to_numpy(), logisticregression__sample_weight=weights)
    return pipeline, medians


def _imputed(df: pd.DataFrame, features: list[str], medians: np.ndarray) -> np.ndarray:
    x = _x(df, features)
    return np.where(np.isnan(x), medians, x)


def fit_candidates(
    fit: pd.DataFrame,
    val: pd.DataFrame,
    features: list[str],
    settings: TrainingSettings,
    *,
    n_jobs: int | None = None,
    tree_size: tuple[int, int] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, Classifier]:
    """Fit every candidate family on the same rows: LightGBM, the RFM and recency baselines, and their blend.

    ``tree_size`` (leaves, min child samples) skips LightGBM's tree-size search; ``weights`` weigh the fit rows.
    """
    lgbm = fit_lightgbm(fit, val, features, settings, tree_size=tree_size, n_jobs=n_jobs, weights=weights)
    rfm = fit_logistic("rfm_logit", fit, val, RFM_FEATURES, seed=settings.seed, weights=weights)
    recency = fit_logistic("recency", fit, val, ["recency_days"], seed=settings.seed, weights=weights)
    blend = BlendClassifier([lgbm, rfm])
    return {c.name: c for c in (lgbm, rfm, recency, blend)}
