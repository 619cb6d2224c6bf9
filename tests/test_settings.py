from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from churnguard.settings import Settings, load_settings, unknown_env_keys


def test_defaults_are_the_laptop_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = load_settings()
    assert s.labels.horizon_days == 90
    assert s.tracking_uri == f"sqlite:///{(tmp_path / 'data' / 'mlflow.db').resolve()}"
    assert s.model_uri == "models:/churnguard@champion"


def test_env_overrides_nested_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_LABELS__HORIZON_DAYS", "60")
    monkeypatch.setenv("CHURN_API_TOKEN", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    s = load_settings()
    assert s.labels.horizon_days == 60
    assert s.api_token.get_secret_value() == "s3cret"
    assert s.tracking_uri == "http://mlflow:5000"


def test_unknown_keys_are_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_LABELS__HORIZN_DAYS", "60")
    with pytest.raises(ValidationError, match="horizn_days"):
        load_settings()
    assert unknown_env_keys({"CHURN_HORIZON": "1", "CHURN_LABELS__HORIZON_DAYS": "2"}) == ["CHURN_HORIZON"]
    with pytest.raises(ValidationError):
        Settings(nonsense=1)


def test_toml_file_is_read_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("churnguard.toml").write_text("[labels]\nhorizon_days = 45\n")
    assert load_settings().labels.horizon_days == 45
    Path("churnguard.toml").write_text("[labels]\nhorizon = 45\n")
    with pytest.raises(ValidationError):
        load_settings()


def test_bad_values_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_SCORING__TIER_THRESHOLDS", "[0.5, 0.3, 0.7]")
    with pytest.raises(ValidationError, match="increasing"):
        load_settings()


def test_pointing_mlflow_at_one_store_does_not_leak_into_later_settings(tmp_path, monkeypatch):
    """MLflow exports the URI it is given; a second project in the same process must still get its own store."""
    import mlflow

    from model.registry import alias_version, mlflow_client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    global_uri = mlflow.get_tracking_uri()
    first = Settings(data_dir=tmp_path / "a").mlflow
    assert alias_version(mlflow_client(first), first, "churnguard", "champion") is None  # touches store a
    other = Settings(data_dir=tmp_path / "b")
    assert other.tracking_uri == f"sqlite:///{(tmp_path / 'b' / 'mlflow.db').resolve()}"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == global_uri  # MLflow's process-wide URI is never set by churnguard
