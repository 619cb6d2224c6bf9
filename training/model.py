"""The one deployable artifact: an MLflow pyfunc that turns feature rows into scorecards.

It bundles the winning calibrated classifier, the survival model, the value model, the tier thresholds, the
lifecycle rules, the feature-set name, the event types and the feature order. Batch scoring and the API both
load this object (``models:/churnguard@champion``) and call ``score``; neither keeps a second copy of any of it,
so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.registry import FEATURE_SET, feature_registry
from training.scorecard import LifecycleRules, lifecycle_stages, risk_tiers, top_reasons

if TYPE_CHECKING:
    from training.candidates import Candidate
    from training.survival import SurvivalModel
    from training.value import ValueModel

SCORE_COLUMNS = [
    "customer_id",
    "as_of",
    "churn_probability",
    "risk_tier",
    "p_active_30d",
    "p_active_60d",
    "p_active_90d",
    "p_active_180d",
    "median_days_to_churn",
    "expected_value_12m",
    "value_at_risk",
    "lifecycle_stage",
    "top_reasons",
    "model_version",
]


class ChurnModel(mlflow.pyfunc.PythonModel):
    """Scorecards from ``build_features`` rows. Prospects (no order before as_of) must be filtered out first."""

    def __init__(
        self,
        *,
        classifier: Candidate,
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
        self.trained_at = datetime.now().replace(microsecond=0)

    # MLflow entry point: params={"reasons": true} adds top_reasons (TreeSHAP, ~1 ms per row)
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return self.score(model_input, reasons=bool((params or {}).get("reasons", False)))

    def score(self, features: pd.DataFrame, reasons: bool | np.ndarray = False) -> pd.DataFrame:
        """One scorecard row per feature row. ``reasons`` may be a boolean mask: who gets top_reasons."""
        features = features.reset_index(drop=True)
        self._check_columns(features)
        if (features["frequency"] < 1).any():
            raise ValueError("prospects (no order before as_of) cannot be scored; filter them out first")
        p = self.classifier.predict_proba(features)
        lapsed = (features["recency_days"].to_numpy(float) >= self.horizon_days) | (features["cancelled"] == 1)
        surv = self.survival.predict(features)
        surv.loc[lapsed, :] = 0.0  # inactive for H days already: churned by definition
        value = self.value.predict(features)
        out = pd.DataFrame(
            {
                "customer_id": features["customer_id"].astype(str),
                "as_of": pd.to_datetime(features["as_of"]),
                "churn_probability": p,
                "risk_tier": risk_tiers(p, self.tier_thresholds),
                **{c: surv[c].to_numpy() for c in surv.columns},
                "expected_value_12m": value,
                "value_at_risk": p * value,
                "lifecycle_stage": lifecycle_stages(
                    features,
                    p,
                    horizon_days=self.horizon_days,
                    high_threshold=self.tier_thresholds[1],
                    rules=self.lifecycle,
                ),
            }
        )
        out["top_reasons"] = self.reasons(features, reasons)
        out["model_version"] = self.model_version
        return out[SCORE_COLUMNS]

    def reasons(self, features: pd.DataFrame, who: bool | np.ndarray = True) -> list[list[str]]:
        mask = np.full(len(features), bool(who)) if np.isscalar(who) else np.asarray(who, bool)
        result: list[list[str]] = [[] for _ in range(len(features))]
        if mask.any():
            chosen = features.loc[mask]
            contrib = self.classifier.contributions(chosen)
            descriptions = {s.name: s.description for s in feature_registry(self.event_types)}
            for i, text in zip(np.flatnonzero(mask), top_reasons(contrib, chosen, descriptions), strict=True):
                result[i] = text
        return result

    def _check_columns(self, features: pd.DataFrame) -> None:
        missing = [c for c in ("customer_id", "as_of", *self.feature_names) if c not in features.columns]
        if missing:
            raise ValueError(f"feature rows lack {len(missing)} column(s) of {self.feature_set}: {missing[:5]}")

    def season_warnings(self, as_of: datetime) -> list[str]:
        """A warning when ``as_of`` falls in a season no training snapshot covers (batch and API show the same)."""
        from training.snapshots import seasons_covered

        if seasons_covered(self.training_snapshots, as_of):
            return []
        dates = ", ".join(f"{d:%b %d}" for d in self.training_snapshots)
        return [
            f"as_of {as_of:%Y-%m-%d} falls in a season none of the training snapshots covers ({dates}): "
            "churn rates may differ from training"
        ]

    def card(self) -> dict:
        """What the API's /model endpoint and the CLI show about this model."""
        return {
            "model_version": self.model_version,
            "classifier": self.classifier.name,
            "classifier_description": self.classifier.description,
            "trained_at": self.trained_at.isoformat(),
            "horizon_days": self.horizon_days,
            "feature_set": self.feature_set,
            "features": self.feature_names,
            "event_types": list(self.event_types),
            "training_snapshots": [d.date().isoformat() for d in self.training_snapshots],
            "holdout_as_of": self.holdout.date().isoformat(),
            "tier_thresholds": list(self.tier_thresholds),
            "holdout_metrics": self.metrics,
        }
