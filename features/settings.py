"""Settings sections read by the features layer. ``churnguard/settings.py`` composes them into one ``Settings``.

Each section is a frozen pydantic model that forbids unknown keys, so a misspelt setting is an error, not a
silent default. Functions receive the section they need as an argument; nothing here reads the environment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from features.registry import DEFAULT_EVENT_TYPES


class Section(BaseModel):
    """Base of every settings section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationSettings(Section):
    """How raw rows are checked (see ``features/contract.py`` for the schema itself)."""

    reject_future: bool = Field(True, description="Reject rows whose timestamp is after the run's clock ('now').")


class FeatureSettings(Section):
    """The configurable parts of the feature registry."""

    event_types: tuple[str, ...] = Field(
        DEFAULT_EVENT_TYPES, description="Event types that get their own features; others count as engagement only."
    )


class LabelSettings(Section):
    """The churn definition shared by labels, training and scoring."""

    horizon_days: int = Field(
        90, ge=7, le=730, description="Churn horizon H: churned = no purchase in [as_of, as_of+H)."
    )
