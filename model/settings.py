"""The settings section the model layer reads: where the MLflow registry lives and what the model is called.

``churnguard/settings.py`` fills ``tracking_uri`` and ``artifact_root`` from the data dir when they are not set,
so every function below receives a complete section and never reads the environment or a global.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

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
