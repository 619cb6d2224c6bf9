"""The one typed configuration object of churnguard.

Defaults are the laptop setup (local files, DuckDB, MLflow on SQLite under ``data_dir``). Environment variables
(``CHURN_<SECTION>__<KEY>``, e.g. ``CHURN_LABELS__HORIZON_DAYS=60``), a ``.env`` file and an optional
``churnguard.toml`` in the working directory override them. A misspelt key is an error, not a silent default:
a typo in a horizon or a URI would otherwise train or serve the wrong thing without anyone noticing.

The CLI builds one ``Settings`` at start-up and hands each function the section it needs; nothing imports a
global configuration.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from features.store.settings import StoreSettings

ENV_PREFIX = "CHURN_"
CONFIG_FILE = "churnguard.toml"

DEFAULT_EVENT_TYPES = ("session", "email_open", "email_click", "support_ticket", "app_login")
DEFAULT_TIER_THRESHOLDS = (0.3, 0.5, 0.7)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationSettings(_Section):
    """How raw rows are checked (see ``features/contract.py`` for the schema itself)."""

    reject_future: bool = Field(True, description="Reject rows whose timestamp is after the run's clock ('now').")


class FeatureSettings(_Section):
    """Feature engine and the configurable parts of the feature registry."""

    event_types: tuple[str, ...] = Field(
        DEFAULT_EVENT_TYPES, description="Event types that get their own features; others count as engagement only."
    )


class LabelSettings(_Section):
    horizon_days: int = Field(
        90, ge=7, le=730, description="Churn horizon H: churned = no purchase in [as_of, as_of+H)."
    )


class TrainingSettings(_Section):
    n_snapshots: int = Field(6, ge=2, le=60, description="Rolling snapshot dates used to build the training set.")
    snapshot_step_days: int = Field(30, ge=7, description="Days between consecutive snapshot dates.")
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


class MlflowSettings(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<data_dir>/mlflow.db. MLFLOW_TRACKING_URI also works."
    )
    experiment: str = "churnguard"
    model_name: str = "churnguard"


class ScoringSettings(_Section):
    model_uri: str | None = Field(None, description="Model to score with; default models:/<model_name>@champion.")
    tier_thresholds: tuple[float, float, float] | None = Field(
        None,
        description="churn_probability cut-offs for medium, high and critical risk; default: the model's own "
        f"(set at training, {DEFAULT_TIER_THRESHOLDS}).",
    )
    policy_file: Path | None = Field(None, description="Retention policy YAML; default: the one shipped in serving/.")
    control_share: float = Field(0.1, ge=0, lt=1, description="Share of the outreach list held out as control.")
    chunk_size: int = Field(100_000, ge=100, description="Customers scored per chunk in batch scoring.")
    reasons: Literal["outreach", "all", "none"] = Field(
        "outreach", description="Who gets top_reasons in batch: outreach-list customers, everybody, or nobody."
    )

    @field_validator("tier_thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and not (0 < v[0] < v[1] < v[2] < 1):
            raise ValueError("tier thresholds must be increasing and inside (0, 1)")
        return v


class ServingSettings(_Section):
    port: int = Field(3000, ge=1, le=65535)
    max_body_bytes: int = Field(20_000_000, ge=1000, description="Larger request bodies get 413.")


class Settings(BaseSettings):
    """Everything churnguard can be told. See the README's configuration section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
        toml_file=CONFIG_FILE,
    )

    data_dir: Path = Field(Path("data"), description="Project data dir: demo data, MLflow store, outputs.")
    api_token: SecretStr | None = Field(None, description="When set, scoring API calls need 'Bearer <token>'.")
    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    labels: LabelSettings = LabelSettings()
    training: TrainingSettings = TrainingSettings()
    mlflow: MlflowSettings = MlflowSettings()
    scoring: ScoringSettings = ScoringSettings()
    serving: ServingSettings = ServingSettings()
    store: StoreSettings = StoreSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _mlflow_env(cls, data: Any) -> Any:
        """Honour MLflow's own MLFLOW_TRACKING_URI when churnguard's key is not set."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri and isinstance(data, dict):
            section = dict(data.get("mlflow") or {})
            section.setdefault("tracking_uri", uri)
            data = {**data, "mlflow": section}
        return data

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def model_uri(self) -> str:
        return self.scoring.model_uri or f"models:/{self.mlflow.model_name}@champion"


def unknown_env_keys(environ: dict[str, str] | None = None) -> list[str]:
    """CHURN_* variables that name no setting (pydantic-settings would silently ignore them)."""
    environ = dict(os.environ if environ is None else environ)
    known = {name.upper() for name in Settings.model_fields}
    bad = []
    for key in environ:
        if not key.upper().startswith(ENV_PREFIX):
            continue
        head = key[len(ENV_PREFIX) :].split("__", 1)[0].upper()
        if head not in known:
            bad.append(key)
    return sorted(bad)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings at the program's edge; unknown CHURN_* variables are an error."""
    bad = unknown_env_keys()
    if bad:
        raise ValueError(f"unknown churnguard setting(s) in the environment: {', '.join(bad)}")
    return Settings(**overrides)


def now_utc() -> datetime:
    """The run's clock, as a naive UTC timestamp (the data contract's time zone). Read once, at the edge."""
    from datetime import UTC

    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
