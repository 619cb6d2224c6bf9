"""Retention policy: from a scorecard to a recommended action, and the ranked outreach list with a control group.

The policy is a small YAML file (``serving/policy.yaml`` is the default; ``CHURN_SCORING__POLICY_FILE`` points to
your own). It is validated when loaded, so a typo in an action name or a tier fails at start-up with the line at
fault, not in the middle of a nightly run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.columns import Columns, column
from model.scorecard import STAGES, TIERS

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
# what the policy adds beside the scorecard's own policy fields (recommended_action, expected_value_saved)
POLICY_COLUMNS = ("value_band", "action_cost")
ValueBand = Literal["low", "medium", "high"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Action(_Strict):
    description: str = ""
    cost: float = Field(ge=0)
    save_rate: float = Field(ge=0, le=1)


class Rule(_Strict):
    stage: list[Literal[STAGES]] | None = None  # type: ignore[valid-type]
    tier: list[Literal[TIERS]] | None = None  # type: ignore[valid-type]
    value: list[ValueBand] | None = None
    action: str


class ValueBands(_Strict):
    high: float
    medium: float

    @model_validator(mode="after")
    def _ordered(self) -> ValueBands:
        if not self.medium < self.high:
            raise ValueError("value_bands: medium must be below high")
        return self


class Policy(_Strict):
    value_bands: ValueBands
    actions: dict[str, Action]
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Policy:
        for i, rule in enumerate(self.rules):
            if rule.action not in self.actions:
                raise ValueError(f"rules[{i}]: unknown action {rule.action!r} (known: {', '.join(self.actions)})")
        last = self.rules[-1]
        if last.stage or last.tier or last.value:
            raise ValueError(
                "the last rule must match everybody (no stage/tier/value), so every customer gets an action"
            )
        return self

    def value_band(self, value: np.ndarray) -> np.ndarray:
        return np.where(
            value >= self.value_bands.high, "high", np.where(value >= self.value_bands.medium, "medium", "low")
        ).astype(object)

    def assign(self, scores: pd.DataFrame) -> pd.DataFrame:
        """recommended_action, action_cost and expected_value_saved for each scorecard row."""
        return pd.DataFrame(self.assign_columns(scores), index=scores.index)

    def assign_columns(self, scores: Columns) -> dict[str, np.ndarray]:
        """``assign`` as plain columns, for scorecards in either form of ``model/columns.py`` (a frame, or the
        columns ``ChurnModel.score_columns`` returns): value_band, recommended_action, action_cost,
        expected_value_saved."""
        band = self.value_band(column(scores, "expected_value_12m"))
        stage = column(scores, "lifecycle_stage", None)
        tier = column(scores, "risk_tier", None)
        action = np.full(len(band), None, dtype=object)
        for rule in self.rules:
            match = np.array([a is None for a in action], dtype=bool)  # dtype: an empty frame is fine too
            if rule.stage:
                match &= np.isin(stage, rule.stage)
            if rule.tier:
                match &= np.isin(tier, rule.tier)
            if rule.value:
                match &= np.isin(band, rule.value)
            action[match] = rule.action
        cost = np.array([self.actions[a].cost for a in action], dtype=float)
        save = np.array([self.actions[a].save_rate for a in action], dtype=float)
        return {
            "value_band": band,
            "recommended_action": action,
            "action_cost": cost,
            "expected_value_saved": column(scores, "value_at_risk") * save - cost,
        }


def load_policy(path: Path | None = None) -> Policy:
    path = Path(path or DEFAULT_POLICY)
    if not path.exists():
        raise FileNotFoundError(f"policy file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    try:
        return Policy.model_validate(raw or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


def outreach_candidates(scores: pd.DataFrame, capacity: int | None = None) -> pd.DataFrame:
    """Customers worth contacting (an action and positive expected value saved), best first, at most ``capacity``.

    The order is total (ties broken by customer id), so the best ``capacity`` of a whole batch are among the best
    ``capacity`` of its chunks: batch scoring keeps only those chunk rows' features for the outreach reasons.
    """
    eligible = scores[(scores["recommended_action"] != "no_action") & (scores["expected_value_saved"] > 0)]
    ranked = eligible.sort_values(["expected_value_saved", "customer_id"], ascending=[False, True], kind="stable")
    return ranked.head(capacity) if capacity is not None else ranked


def select_outreach(
    scores: pd.DataFrame,
    *,
    capacity: int | None = None,
    budget: float | None = None,
    control_share: float = 0.1,
    seed: int = 42,
) -> pd.DataFrame:
    """The outreach list: positive expected value saved, best first, up to capacity / budget.

    A seeded random ``control_share`` of the list is flagged ``control`` (not to be contacted), so the business
    can measure the campaign's lift by comparing them with the contacted ones later. Control customers count
    against capacity but not against the budget (they cost nothing).
    """
    ranked = outreach_candidates(scores, capacity)
    control = np.zeros(len(ranked), dtype=bool)
    n_control = int(round(len(ranked) * control_share))
    control[np.random.default_rng(seed).choice(len(ranked), size=n_control, replace=False)] = True
    ranked = ranked.assign(control=control)
    if budget is not None:
        spend = np.cumsum(np.where(control, 0.0, ranked["action_cost"].to_numpy()))
        ranked = ranked[spend <= budget]
    return ranked.assign(rank=np.arange(1, len(ranked) + 1)).reset_index(drop=True)
