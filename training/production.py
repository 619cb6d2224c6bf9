"""The production fit: the selected family refitted on the freshest labels before it is registered.

Selection (``training/train.py``) fits every candidate on snapshots whose label windows end before the held-out
snapshot and picks the family and its hyper-parameters there, out of time. That model's newest label is then two
horizons old when it scores today. The production fit refits the winner, the survival model and the value model
on every labelled snapshot up to the held-out one (the latest whose label window ends by the end of the data),
so that the latest window sets the level of the probabilities, and never calibrates on rows it was fitted on.

Methods (``TrainingSettings.production_fit``), measured with ``churn backtest`` (README, "Quality"):

* ``selection``: register the selection fit as it is (the behaviour before the production fit existed).
* ``latest``: fit on the snapshots whose label windows end by the latest snapshot (the selection's training
  snapshots), early-stop and calibrate on the latest snapshot. Fitted and calibration rows never share a label
  period, exactly like selection, shifted one step forward.
* ``latest_all``: as ``latest`` but fitted on every snapshot before the latest one, including those whose label
  windows overlap it (more recent rows; the calibration rows' outcomes are partly seen through the same
  customers' overlapping windows).
* ``crossfit``: fitted on every labelled snapshot including the latest; the calibrator is fitted on out-of-fold
  scores of the latest snapshot, from K models that each leave a fold of customers out (all of their snapshots),
  and then applied to the model fitted on all rows.

``recency_half_life_days`` weighs fit rows by ``0.5 ** (age / half-life)``, age = days before the latest snapshot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from model.classifiers import BlendClassifier, LightGBMClassifier, LogisticClassifier
from training.candidates import (
    RFM_FEATURES,
    TARGET,
    _x,
    booster_model,
    fit_calibrator,
    fit_lightgbm,
    fit_logistic,
    fit_logistic_pipeline,
    threads_for,
)
from training.survival import fit_survival
from training.value import fit_value_model

if TYPE_CHECKING:
    from model.classifiers import Classifier
    from model.survival import SurvivalModel
    from model.value import ValueModel
    from training.settings import TrainingSettings
    from training.snapshots import SnapshotFrame

PRODUCTION_FITS = ("selection", "latest", "latest_all", "crossfit")
CROSSFIT_FOLDS = 3


@dataclass
class ProductionFit:
    """The registered model's parts and what they were fitted on."""

    classifier: Classifier
    survival: SurvivalModel
    value: ValueModel
    method: str
    fit_dates: tuple[datetime, ...]
    calibration_dates: tuple[datetime, ...]
    n_fit_rows: int
    n_calibration_rows: int
    half_life_days: float | None = None

    def describe(self) -> str:
        dates = f"{self.fit_dates[0]:%Y-%m-%d} .. {self.fit_dates[-1]:%Y-%m-%d}"
        text = (
            f"{self.classifier.name} refitted ({self.method}) on {len(self.fit_dates)} snapshots {dates} "
            f"({self.n_fit_rows:,} rows), calibrated on "
            + ", ".join(f"{d:%Y-%m-%d}" for d in self.calibration_dates)
            + f" ({self.n_calibration_rows:,} rows)"
        )
        if self.half_life_days:
            text += f"; rows weighted with a {self.half_life_days:g}-day half-life"
        return text

    def card(self) -> dict[str, str | int | float | list[str] | None]:
        return {
            "method": self.method,
            "fit_snapshots": [f"{d:%Y-%m-%d}" for d in self.fit_dates],
            "calibration_snapshots": [f"{d:%Y-%m-%d}" for d in self.calibration_dates],
            "n_fit_rows": self.n_fit_rows,
            "n_calibration_rows": self.n_calibration_rows,
            "recency_half_life_days": self.half_life_days,
        }


def recency_weights(as_of: pd.Series, latest: datetime, half_life_days: float | None) -> np.ndarray | None:
    """0.5 ** (days before the latest snapshot / half-life); None without a half-life (equal weights)."""
    if not half_life_days:
        return None
    age = (pd.Timestamp(latest) - pd.to_datetime(as_of)).dt.days.to_numpy(float)
    return np.power(0.5, age / half_life_days)


def fit_production(
    frame: SnapshotFrame,
    winner: str,
    selected: dict[str, Classifier],
    features: list[str],
    settings: TrainingSettings,
    *,
    selection_survival: SurvivalModel,
    selection_value: ValueModel,
) -> ProductionFit:
    """Refit the winning family (same hyper-parameters), the survival model and the value model."""
    plan = frame.plan
    method = settings.production_fit
    latest = plan.holdout
    if method == "selection":
        fit_rows = frame.part("fit")
        return ProductionFit(
            selected[winner],
            selection_survival,
            selection_value,
            method,
            plan.fit,
            (plan.validation,),
            len(fit_rows),
            len(frame.part("validation")),
        )
    half_life = settings.recency_half_life_days
    calibration = frame.at([latest])
    if method == "latest":
        dates = plan.train
    elif method in ("latest_all", "crossfit"):
        dates = tuple(d for d in plan.production if d < latest)
    else:
        raise ValueError(f"unknown production fit {method!r}: use one of {', '.join(PRODUCTION_FITS)}")
    fit = _rows(frame, dates, settings)
    if method == "crossfit":
        every = _rows(frame, (*dates, latest), settings)
        calibration = every[every["as_of"] == pd.Timestamp(latest)]
        weights = recency_weights(every["as_of"], latest, half_life)
        classifier = _crossfit(winner, selected, every, calibration.index, features, settings, weights)
        fit_dates, fit_rows = (*dates, latest), every
    else:
        weights = recency_weights(fit["as_of"], latest, half_life)
        classifier = refit(winner, selected, fit, calibration, features, settings, weights)
        fit_dates, fit_rows = dates, fit
    survival = fit_survival(
        _rows(frame, (*dates, latest), settings), penalizer=settings.survival_penalizer, seed=settings.seed
    )
    value = fit_value_model(frame.at([latest]), seed=settings.seed)
    return ProductionFit(
        classifier,
        survival.model,
        value,
        method,
        tuple(fit_dates),
        (latest,),
        len(fit_rows),
        len(calibration),
        half_life,
    )


def _rows(frame: SnapshotFrame, dates: tuple[datetime, ...], settings: TrainingSettings) -> pd.DataFrame:
    """The rows of ``dates``, at most ``production_max_rows`` of them: a seeded sample kept in frame order
    (reproducible fits), taken before any copy so that a 2M-row frame is never duplicated in memory."""
    index = frame.frame.index[frame.frame["as_of"].isin(pd.to_datetime(list(dates))).to_numpy()]
    if len(index) > settings.production_max_rows:
        rng = np.random.default_rng(settings.seed)
        index = index[np.sort(rng.choice(len(index), settings.production_max_rows, replace=False))]
    return frame.frame.loc[index]


def refit(
    name: str,
    selected: dict[str, Classifier],
    fit: pd.DataFrame,
    val: pd.DataFrame,
    features: list[str],
    settings: TrainingSettings,
    weights: np.ndarray | None,
) -> Classifier:
    """The family ``name`` fitted on ``fit``, tuned and calibrated on ``val``, with the selected hyper-parameters."""
    seed = settings.seed
    if name == "lightgbm":
        lg = selected["lightgbm"]
        assert isinstance(lg, LightGBMClassifier)
        return fit_lightgbm(
            fit, val, features, settings, tree_size=(lg.num_leaves, lg.min_child_samples), weights=weights
        )
    if name == "rfm_logit":
        return fit_logistic("rfm_logit", fit, val, RFM_FEATURES, seed=seed, weights=weights)
    if name == "recency":
        return fit_logistic("recency", fit, val, ["recency_days"], seed=seed, weights=weights)
    if name == "blend":
        return BlendClassifier(
            [refit(m, selected, fit, val, features, settings, weights) for m in ("lightgbm", "rfm_logit")]
        )
    raise ValueError(f"no production refit for candidate {name!r}")


def _folds(customer_ids: pd.Series, k: int, seed: int) -> np.ndarray:
    """A customer's fold, stable across snapshots (all of a customer's rows leave together)."""

    def fold(c: str) -> int:
        return int(hashlib.blake2b(f"{seed}:{c}".encode(), digest_size=4).hexdigest(), 16) % k

    return customer_ids.map(fold).to_numpy()


def _crossfit(
    name: str,
    selected: dict[str, Classifier],
    rows: pd.DataFrame,
    calibration_index: pd.Index,
    features: list[str],
    settings: TrainingSettings,
    weights: np.ndarray | None,
) -> Classifier:
    if name == "blend":
        members = [
            _crossfit(m, selected, rows, calibration_index, features, settings, weights)
            for m in ("lightgbm", "rfm_logit")
        ]
        return BlendClassifier(members)
    folds = _folds(rows["customer_id"], CROSSFIT_FOLDS, settings.seed)
    is_cal = rows.index.isin(calibration_index)
    y = rows[TARGET].to_numpy()
    oof = np.full(len(rows), np.nan)
    for k in range(CROSSFIT_FOLDS):
        train_k = folds != k
        w = None if weights is None else weights[train_k]
        fitted = _raw_fit(name, selected, rows[train_k], features, settings, w)
        out_k = (folds == k) & is_cal
        oof[out_k] = fitted(rows[out_k])
    final = _raw_fit(name, selected, rows, features, settings, weights)
    calibrator = fit_calibrator(oof[is_cal], y[is_cal], settings.seed)
    model = final.model  # type: ignore[attr-defined]
    model.calibrator = calibrator
    return model


class _Raw:
    """A fitted family without calibration: ``model`` (the classifier) and raw scores for rows."""

    def __init__(self, model: LightGBMClassifier | LogisticClassifier) -> None:
        self.model = model

    def __call__(self, df: pd.DataFrame) -> np.ndarray:
        return self.model.raw(df)


def _raw_fit(
    name: str,
    selected: dict[str, Classifier],
    rows: pd.DataFrame,
    features: list[str],
    settings: TrainingSettings,
    weights: np.ndarray | None,
) -> _Raw:
    if name == "lightgbm":
        lg = selected["lightgbm"]
        assert isinstance(lg, LightGBMClassifier)
        booster = booster_model(
            settings, lg.num_leaves, lg.min_child_samples, lg.best_iteration, threads_for(len(rows))
        ).fit(_x(rows, features), rows[TARGET].to_numpy(), sample_weight=weights)
        return _Raw(
            LightGBMClassifier(
                features=list(features),
                booster=booster.booster_,
                best_iteration=lg.best_iteration,
                num_leaves=lg.num_leaves,
                min_child_samples=lg.min_child_samples,
                calibrator=None,  # type: ignore[arg-type]  # set by the caller
            )
        )
    columns = {"rfm_logit": RFM_FEATURES, "recency": ["recency_days"]}[name]
    pipeline, medians = fit_logistic_pipeline(rows, columns, seed=settings.seed, weights=weights)
    return _Raw(LogisticClassifier(name, list(columns), medians, pipeline, None))
