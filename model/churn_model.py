"""The one deployable artifact: an MLflow pyfunc that turns feature rows into scorecards.

It bundles the winning calibrated classifier, the survival model, the value model, the tier thresholds, the
lifecycle rules, the feature-set name, the event types and the feature order. Batch scoring and the API both
load this object (``models:/churnguard@champion``) and call ``score``; neither keeps a second copy of any of it,
so they cannot drift apart.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.registry import FEATURE_SET, feature_registry
from model.columns import Columns, column, has_column, n_rows, take
from model.scorecard import (
    MODEL_COLUMNS,
    LifecycleRules,
    is_lapsed,
    is_prospect,
    lifecycle_stages,
    risk_tiers,
    top_reasons,
)
from model.seasons import seasons_covered

if TYPE_CHECKING:
    from model.classifiers import Classifier
    from model.drift import DriftReference
    from model.survival import SurvivalModel
    from model.value import ValueModel


class IncompatibleModelError(RuntimeError):
    """The model was trained on features this code no longer computes: it must be retrained."""


@dataclass(frozen=True)
class ModelCard:
    """What ``GET /model`` and the CLI show about a model."""

    model_version: str
    classifier: str
    classifier_description: str
    trained_at: str
    horizon_days: int
    feature_set: str
    features: list[str]
    event_types: list[str]
    training_snapshots: list[str]  # the snapshots the registered (production) fit learned from
    holdout_as_of: str
    tier_thresholds: list[float]
    holdout_metrics: dict[str, float] = field(default_factory=dict)  # selection: out of time, on holdout_as_of
    selection_snapshots: list[str] = field(default_factory=list)  # the snapshots the selection fit learned from
    production_fit: dict[str, Any] = field(default_factory=dict)  # method, fit and calibration snapshots, rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChurnModel(mlflow.pyfunc.PythonModel):
    """Scorecards from ``build_features`` rows. Prospects (no order before as_of) must be filtered out first."""

    # the training distributions ``churn monitor`` and the report compare with (``model/drift.py``); a class
    # default, so a model pickled before references existed loads with None instead of failing
    drift_reference: DriftReference | None = None

    def __init__(
        self,
        *,
        classifier: Classifier,
        survival: SurvivalModel,
        value: ValueModel,
        horizon_days: int,
        event_types: tuple[str, ...],
        tier_thresholds: tuple[float, float, float],
        lifecycle: LifecycleRules,
        training_snapshots: tuple[datetime, ...],
        holdout: datetime,
        metrics: dict[str, float],
        model_version: str = "unregistered",
        selection_snapshots: tuple[datetime, ...] = (),
        production_fit: dict[str, Any] | None = None,
        drift_reference: DriftReference | None = None,
    ) -> None:
        self.classifier = classifier
        self.survival = survival
        self.value = value
        self.horizon_days = horizon_days
        self.event_types = tuple(event_types)
        self.feature_set = FEATURE_SET
        self.feature_names = [s.name for s in feature_registry(self.event_types)]
        self.tier_thresholds = tuple(tier_thresholds)
        self.lifecycle = lifecycle
        self.training_snapshots = tuple(training_snapshots)
        self.holdout = holdout
        self.metrics = dict(metrics)
        self.model_version = model_version
        self.selection_snapshots = tuple(selection_snapshots)
        self.production_fit = dict(production_fit or {})
        self.drift_reference = drift_reference
        self.trained_at = datetime.now().replace(microsecond=0)

    # MLflow entry point: params={"reasons": true} adds top_reasons (TreeSHAP, ~1 ms per row)
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return self.score(model_input, reasons=bool((params or {}).get("reasons", False)))

    def score(self, features: pd.DataFrame, reasons: bool | np.ndarray = False) -> pd.DataFrame:
        """One scorecard row per feature row. ``reasons`` may be a boolean mask: who gets top_reasons."""
        features = features.reset_index(drop=True)
        out = pd.DataFrame(self.score_columns(features, reasons))
        out["as_of"] = pd.to_datetime(out["as_of"])
        return out

    def score_columns(self, features: Columns, reasons: bool | np.ndarray = False) -> dict[str, Any]:
        """``score`` as plain columns (name -> array, in ``MODEL_COLUMNS`` order), for feature rows in either form
        of ``model/columns.py``: the one implementation, so a customer scored alone (the API, without pandas) and
        in a batch get the same scorecard."""
        self._check_columns(features)
        if is_prospect(features).any():
            raise ValueError("prospects (no order before as_of) cannot be scored; filter them out first")
        p = self.classifier.predict_proba(features)
        surv = self.survival.predict_columns(features)
        lapsed = is_lapsed(features, self.horizon_days)  # inactive for H days already: churned
        for name in surv:
            surv[name][lapsed] = 0.0
        value = self.value.predict(features)
        n = len(p)
        out = {
            "customer_id": np.array([str(c) for c in column(features, "customer_id", None)], dtype=object),
            "as_of": column(features, "as_of", None),
            "churn_probability": p,
            "risk_tier": risk_tiers(p, self.tier_thresholds),
            **surv,
            "expected_value_12m": value,
            "value_at_risk": p * value,
            "lifecycle_stage": lifecycle_stages(
                features,
                p,
                horizon_days=self.horizon_days,
                high_threshold=self.tier_thresholds[1],
                rules=self.lifecycle,
            ),
            "top_reasons": self.reasons(features, reasons),
            "model_version": np.full(n, self.model_version, dtype=object),
        }
        return {c: out[c] for c in MODEL_COLUMNS}

    def reasons(self, features: Columns, who: bool | np.ndarray = True) -> list[list[str]]:
        n = n_rows(features)
        mask = np.full(n, bool(who)) if np.isscalar(who) else np.asarray(who, bool)
        result: list[list[str]] = [[] for _ in range(n)]
        if mask.any():
            chosen = features if mask.all() else take(features, mask)
            contrib = self.classifier.contributions(chosen)
            for i, text in zip(np.flatnonzero(mask), top_reasons(contrib, chosen), strict=True):
                result[i] = text
        return result

    def _check_columns(self, features: Columns) -> None:
        missing = [c for c in ("customer_id", "as_of", *self.feature_names) if not has_column(features, c)]
        if missing:
            raise ValueError(f"feature rows lack {len(missing)} column(s) of {self.feature_set}: {missing[:5]}")

    def check_compatible(self) -> None:
        """Refuse a model whose features differ from what this code computes (name, order or event types).

        Scoring such a model would feed it columns it was not trained on, or silently drop some: retrain instead.
        """
        expected = [s.name for s in feature_registry(self.event_types)]
        if self.feature_set != FEATURE_SET or self.feature_names != expected:
            added = sorted(set(expected) - set(self.feature_names))
            removed = sorted(set(self.feature_names) - set(expected))
            raise IncompatibleModelError(
                f"model {self.model_version} was trained on feature set {self.feature_set} "
                f"({len(self.feature_names)} features); this code computes {FEATURE_SET} ({len(expected)} features"
                + (f"; new: {', '.join(added[:5])}" if added else "")
                + (f"; gone: {', '.join(removed[:5])}" if removed else "")
                + ("; same names in another order" if not added and not removed else "")
                + "): retrain it with `churn train`"
            )

    def with_overrides(self, *, tier_thresholds: tuple[float, float, float] | None = None) -> ChurnModel:
        """A copy with scoring-time overrides (the settings may replace the tier thresholds stored at training)."""
        if tier_thresholds is None:
            return self
        clone = copy.copy(self)
        clone.tier_thresholds = tuple(tier_thresholds)
        return clone

    def season_warnings(self, as_of: datetime) -> list[str]:
        """A warning when ``as_of`` falls in a season no training snapshot covers (batch and API show the same)."""
        if seasons_covered(self.training_snapshots, as_of):
            return []
        dates = ", ".join(f"{d:%b %d}" for d in self.training_snapshots)
        return [
            f"as_of {as_of:%Y-%m-%d} falls in a season none of the training snapshots covers ({dates}): "
            "churn rates may differ from training"
        ]

    def card(self) -> ModelCard:
        """What the API's /model endpoint and the CLI show about this model."""
        return ModelCard(
            model_version=self.model_version,
            classifier=self.classifier.name,
            classifier_description=self.classifier.description,
            trained_at=self.trained_at.isoformat(),
            horizon_days=self.horizon_days,
            feature_set=self.feature_set,
            features=list(self.feature_names),
            event_types=list(self.event_types),
            training_snapshots=[d.date().isoformat() for d in self.training_snapshots],
            holdout_as_of=self.holdout.date().isoformat(),
            tier_thresholds=list(self.tier_thresholds),
            holdout_metrics=dict(self.metrics),
            selection_snapshots=[d.date().isoformat() for d in self.selection_snapshots],
            production_fit=dict(self.production_fit),
        )
