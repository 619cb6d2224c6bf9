"""The one typed configuration object of churnguard, composed from the sections each layer declares.

| section      | declared in            | read by |
|--------------|------------------------|---------|
| validation   | features/settings.py   | validation |
| features     | features/settings.py   | the feature registry (event types) |
| labels       | features/settings.py   | labels, training, scoring (the horizon) |
| mlflow       | model/settings.py      | registry reading (model), logging and promotion (training) |
| monitor      | model/settings.py      | model health: PSI thresholds (``churn monitor``, the report) |
| training     | training/settings.py   | training |
| scoring      | serving/settings.py    | batch scoring, the API |
| serving      | serving/settings.py    | the API |
| delivery     | serving/settings.py    | webhook delivery of the trigger outbox (``churn deliver``) |
| report       | serving/settings.py    | the lifecycle report (``churn report``): how many month ends are scored |
| store        | features/store/settings.py | the customer store (``churn ingest``, reads) |

Defaults are the laptop setup (local files, DuckDB, MLflow on SQLite under ``data_dir``). Environment variables
(``CHURN_<SECTION>__<KEY>``, e.g. ``CHURN_LABELS__HORIZON_DAYS=60``), a ``.env`` file and an optional
``churnguard.toml`` in the working directory override them; CLI flags override everything (``load_settings``
takes them as nested overrides). A misspelt key is an error, not a silent default: a typo in a horizon or a URI
would otherwise train or serve the wrong thing without anyone noticing.

The CLI builds one ``Settings`` at start-up and hands each function the section it needs; nothing imports a
global configuration, and the data-dir defaults (MLflow store, artifacts) are filled in here, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from features.settings import FeatureSettings, LabelSettings, ValidationSettings
from features.store.settings import StoreSettings
from model.settings import MlflowSettings, MonitorSettings
from serving.settings import DeliverySettings, ReportSettings, ScoringSettings, ServingSettings
from training.settings import TrainingSettings

ENV_PREFIX = "CHURN_"
CONFIG_FILE = "churnguard.toml"
DEFAULT_DATA_DIR = Path("data")


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

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Project data dir: demo data, MLflow store, outputs.")
    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    labels: LabelSettings = LabelSettings()
    training: TrainingSettings = TrainingSettings()
    mlflow: MlflowSettings = MlflowSettings()
    monitor: MonitorSettings = MonitorSettings()
    scoring: ScoringSettings = ScoringSettings()
    serving: ServingSettings = ServingSettings()
    store: StoreSettings = StoreSettings()
    delivery: DeliverySettings = DeliverySettings()
    report: ReportSettings = ReportSettings()

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
    def _data_dir_defaults(cls, data: Any) -> Any:
        """Fill what depends on the data dir, so each section arrives complete: the MLflow store (MLflow's own
        MLFLOW_TRACKING_URI is honoured when churnguard's key is not set) and its artifact folder."""
        if not isinstance(data, dict):
            return data
        data_dir = Path(data.get("data_dir") or DEFAULT_DATA_DIR)
        section = data.get("mlflow") or {}
        section = dict(section.model_dump() if isinstance(section, MlflowSettings) else section)
        default_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
        if not section.get("tracking_uri"):
            section["tracking_uri"] = default_uri
        if not section.get("artifact_root"):
            section["artifact_root"] = (data_dir / "mlartifacts").resolve()
        serving = data.get("serving") or {}
        serving = dict(serving.model_dump() if isinstance(serving, ServingSettings) else serving)
        if not serving.get("state_dir"):
            serving["state_dir"] = (data_dir / "serve").resolve()
        return {**data, "mlflow": section, "serving": serving}

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking

    @property
    def model_uri(self) -> str:
        return self.scoring.model_uri or self.mlflow.model_uri()


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


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings at the program's edge; unknown CHURN_* variables are an error.

    ``overrides`` are CLI flags as nested keys (``{"labels": {"horizon_days": 60}}``); ``None`` values mean "flag
    not given" and are dropped, so a flag overrides only what it names.
    """
    bad = unknown_env_keys()
    if bad:
        raise ValueError(f"unknown churnguard setting(s) in the environment: {', '.join(bad)}")
    return Settings(**_given(overrides or {}))


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            nested = _given(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
