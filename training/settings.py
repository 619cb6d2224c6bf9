"""The settings section training reads (composed into ``Settings.training`` by ``churnguard/settings.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from features.settings import Section
from model.scorecard import DEFAULT_TIER_THRESHOLDS, check_tier_thresholds


class TrainingSettings(Section):
    n_snapshots: int = Field(6, ge=2, le=60, description="Rolling snapshot dates used to build the training set.")
    snapshot_step_days: int = Field(30, ge=7, description="Days between consecutive snapshot dates.")
    dense_below_rows: int = Field(
        0,
        ge=0,
        description="When the monthly training snapshots would hold fewer labelled rows than this, snapshots are "
        "taken every dense_step_days over the whole history instead (0: never; measured no better on Online Retail).",
    )
    dense_step_days: int = Field(
        14,
        ge=1,
        description="Days between snapshots when they are dense, or when the history is too short for monthly.",
    )
    max_snapshots: int = Field(30, ge=2, le=200, description="At most this many dense training snapshots.")
    production_fit: Literal["selection", "latest", "latest_all", "crossfit"] = Field(
        "crossfit",
        description="How the selected model is refitted on the freshest labels before it is registered "
        "(training/production.py; 'selection' registers the selection fit as it is).",
    )
    production_max_rows: int = Field(
        250_000,
        ge=1000,
        description="Cap on the rows the production fit learns from (a seeded sample across its snapshots).",
    )
    recency_half_life_days: float | None = Field(
        None, gt=0, description="Weigh production-fit rows by 0.5 ** (age / half-life); none: equal weights."
    )
    seed: int = 42
    min_labelled_customers: int = Field(300, ge=10, description="Refuse to train with fewer labelled customers.")
    min_churners: int = Field(20, ge=1, description="Refuse to train with fewer churned (and retained) examples.")
    lgbm_n_estimators: int = Field(600, ge=10, description="Upper bound on boosting rounds (early stopping picks).")
    lgbm_learning_rate: float = Field(0.05, gt=0, le=1)
    lgbm_num_leaves: int = Field(31, ge=2)
    lgbm_min_child_samples: int = Field(50, ge=1)
    early_stopping_rounds: int = Field(50, ge=5)
    survival_penalizer: float = Field(0.01, ge=0)
    max_training_rows: int = Field(
        2_000_000, ge=1000, description="Cap on snapshot rows used to fit (sampled per snapshot, seeded)."
    )
    tier_thresholds: tuple[float, float, float] = Field(
        DEFAULT_TIER_THRESHOLDS,
        description="churn_probability cut-offs for medium, high and critical risk stored in the model "
        "(scoring may override them).",
    )

    @field_validator("tier_thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        return check_tier_thresholds(v)
