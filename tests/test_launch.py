"""`churn serve`'s decisions before anything listens: interface, keys, workers, how BentoML is started."""

from __future__ import annotations

import sys

import pytest

from model.settings import MlflowSettings
from serving.launch import is_loopback, plan_launch
from serving.settings import ScoringSettings, ServingSettings

MLFLOW = MlflowSettings(tracking_uri="sqlite:////tmp/never-read.db")


def _plan(tmp_path, **serving):
    return plan_launch(
        ServingSettings(model_source="bento", **serving),  # no registry needed for these decisions
        ScoringSettings(),
        MLFLOW,
        data_dir=tmp_path,
        model_uri="models:/churnguard@champion",
        environ={"PATH": "/usr/bin"},
    )


def test_without_keys_it_listens_on_loopback_only_and_says_so(tmp_path):
    plan = _plan(tmp_path)
    assert plan.host == "127.0.0.1" and not plan.warnings
    assert "no API key configured" in plan.notes[0] and "127.0.0.1 only" in plan.notes[0]
    assert _plan(tmp_path, host="localhost").host == "localhost"


def test_other_interfaces_need_keys_or_an_explicit_flag(tmp_path):
    with pytest.raises(ValueError, match="needs API keys"):
        _plan(tmp_path, host="0.0.0.0")
    plan = _plan(tmp_path, host="0.0.0.0", allow_unauthenticated=True)
    assert plan.host == "0.0.0.0" and "NO authentication" in plan.warnings[0]


def test_with_keys_it_listens_everywhere_by_default(tmp_path):
    plan = _plan(tmp_path, api_keys={"crm": "t"})
    assert plan.host == "0.0.0.0" and not plan.warnings and not plan.notes


def test_a_broken_keys_file_stops_the_launch(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text("[keys.crm]\nsha256 = 'short'\n")
    with pytest.raises(ValueError, match="keys.crm.sha256"):
        _plan(tmp_path, keys_file=keys)


def test_bentoml_runs_from_this_interpreter_with_the_workers_asked(tmp_path):
    plan = _plan(tmp_path, workers=3, port=3111)
    assert plan.argv[:3] == [sys.executable, "-m", "bentoml"]
    assert plan.argv[3:5] == ["serve", "serving.service:ChurnService"]
    assert plan.argv[-4:] == ["--host", "127.0.0.1", "--port", "3111"]
    assert "services.churnguard.workers=3" in plan.env["BENTOML_CONFIG_OPTIONS"]
    assert plan.env["CHURN_DATA_DIR"] == str(tmp_path.resolve())
    assert plan.env["CHURN_MLFLOW__TRACKING_URI"] == MLFLOW.tracking


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))
