"""The settings sections serving reads: batch scoring and the API (composed by ``churnguard/settings.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from features.settings import Section
from model.scorecard import check_tier_thresholds


class ScoringSettings(Section):
    model_uri: str | None = Field(None, description="Model to score with; default models:/<model_name>@champion.")
    tier_thresholds: tuple[float, float, float] | None = Field(
        None,
        description="churn_probability cut-offs for medium, high and critical risk; default: the model's own "
        "(set at training from training.tier_thresholds).",
    )
    policy_file: Path | None = Field(None, description="Retention policy YAML; default: the one shipped in serving/.")
    control_share: float = Field(0.1, ge=0, lt=1, description="Share of the outreach list held out as control.")
    chunk_size: int = Field(100_000, ge=100, description="Customers scored per chunk in batch scoring.")
    reasons: Literal["outreach", "all", "none"] = Field(
        "outreach", description="Who gets top_reasons in batch: outreach-list customers, everybody, or nobody."
    )
    capacity: int | None = Field(None, ge=1, description="At most this many customers on the outreach list.")
    budget: float | None = Field(None, ge=0, description="At most this much action cost on the outreach list.")
    seed: int = Field(42, description="Seed of the control group draw.")

    @field_validator("tier_thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        return check_tier_thresholds(v) if v is not None else v


class ServingSettings(Section):
    port: int = Field(3000, ge=1, le=65535)
    max_body_bytes: int = Field(20_000_000, ge=1000, description="Larger request bodies get 413.")
