"""The settings sections the model layer reads: where the MLflow registry lives and what the model is called
(``mlflow``), and when the model's inputs have drifted too far from training (``monitor``).

``churnguard/settings.py`` fills ``tracking_uri`` and ``artifact_root`` from the data dir when they are not set,
so every function below receives a complete section and never reads the environment or a global.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from features.settings import Section


class MlflowSettings(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<data_dir>/mlflow.db. MLFLOW_TRACKING_URI also works."
    )
    registry_uri: str | None = Field(None, description="Model registry URI; default: the tracking URI.")
    artifact_root: Path | None = Field(
        None, description="Where a local (SQLite) store keeps run artifacts; default <data_dir>/mlartifacts."
    )
    experiment: str = "churnguard"
    model_name: str = "churnguard"

    @property
    def tracking(self) -> str:
        if self.tracking_uri is None:
            raise ValueError("mlflow.tracking_uri is not set (the composed Settings fill it from the data dir)")
        return self.tracking_uri

    @property
    def registry(self) -> str:
        return self.registry_uri or self.tracking

    def model_uri(self, alias: str = "champion") -> str:
        return f"models:/{self.model_name}@{alias}"


class MonitorSettings(Section):
    """Model health (``churn monitor``, the report's model-health section): PSI thresholds and the sample size."""

    psi_warn: float = Field(0.1, gt=0, description="PSI from which a feature or the score is flagged 'warn'.")
    psi_alert: float = Field(
        0.25, gt=0, description="PSI from which a feature or the score is an alert (`churn monitor` exits 4)."
    )
    max_customers: int = Field(
        50_000,
        ge=1000,
        description="Health metrics use a seeded random sample of at most this many customers per date: with decile "
        "bins, the PSI of two samples of one population averages ~10 x (1/n + 1/reference rows), < 0.001 at 50,000.",
    )
    seed: int = 42
    expected_drift: tuple[str, ...] = Field(
        ("first_purchase_days", "tenure_days", "days_since_first_event"),
        description="Features that grow with the length of the history (days since the first order, activity or "
        "event): their PSI is shown but never raises the status, because while the history is shorter than "
        "customers' lifetimes they shift by construction between training and scoring. Empty: judge them too.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> MonitorSettings:
        if self.psi_warn >= self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) must be below psi_alert ({self.psi_alert})")
        return self
