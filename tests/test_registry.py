"""The pyfunc artifact and the registry: round trip through a temporary MLflow store, aliases, promotion gate."""

from __future__ import annotations

import copy

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from churnguard.settings import Settings
from model.registry import download_model, load_model, mlflow_client
from model.scorecard import MODEL_COLUMNS
from training.tracking import log_training, promote

pytestmark = pytest.mark.slow


def test_first_version_is_challenger_and_champion(registered, test_settings):
    client = mlflow_client(test_settings.mlflow)
    assert registered.became_champion
    assert str(client.get_model_version_by_alias("churnguard", "champion").version) == registered.version
    assert str(client.get_model_version_by_alias("churnguard", "challenger").version) == registered.version
    assert test_settings.tracking_uri.startswith("sqlite:///")


def test_pyfunc_round_trip_gives_the_full_scorecard(registered, trained, test_settings):
    holdout = trained.holdout_features.head(50)
    rows = holdout[["customer_id", "as_of", *trained.model.feature_names]]
    local, _ = download_model(test_settings.mlflow, "models:/churnguard@champion")
    loaded = mlflow.pyfunc.load_model(str(local))
    out = loaded.predict(rows, params={"reasons": True})
    assert list(out.columns) == list(MODEL_COLUMNS)
    expected = trained.model.score(rows, reasons=True)
    numeric = ["churn_probability", "p_active_30d", "p_active_90d", "median_days_to_churn", "expected_value_12m"]
    np.testing.assert_allclose(out[numeric].to_numpy(float), expected[numeric].to_numpy(float), rtol=1e-12)
    assert out["top_reasons"].map(len).gt(0).any()
    assert set(out["risk_tier"]) <= {"low", "medium", "high", "critical"}


def test_run_logs_params_metrics_plots_and_features(registered, test_settings):
    client = mlflow_client(test_settings.mlflow)
    run = client.get_run(registered.run_id)
    for key in (
        "horizon_days",
        "train_snapshots",
        "holdout_snapshot",
        "feature_set",
        "data_transactions",
        "data_start",
        "data_end",
    ):
        assert key in run.data.params
    assert {"roc_auc", "log_loss", "baseline_recency_roc_auc", "survival_concordance"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(registered.run_id, "evaluation/plots")}
    assert {"evaluation/plots/reliability.png", "evaluation/plots/gain_lift.png"} <= artifacts


def test_load_model_names_the_registry_version(registered, test_settings):
    model = load_model(test_settings.mlflow)
    assert model.model_version == f"churnguard/{registered.version}"


def test_promotion_gate(trained, test_settings, demo_data, tmp_path):
    """A worse challenger is not promoted (re-scored or by stored metrics); an equally good one is."""
    data, _ = demo_data
    settings = Settings(data_dir=tmp_path).mlflow  # a registry of its own
    first = log_training(trained, settings)
    assert first.became_champion

    worse = copy.copy(trained)
    worse.model = copy.copy(trained.model)
    worse.model.classifier = _recency_candidate(trained)
    worse.evaluation = copy.deepcopy(trained.evaluation)
    worse.evaluation.winner = "recency"
    second = log_training(worse, settings)
    assert not second.became_champion
    decision = promote(settings, data=data)
    assert not decision.promoted and "kept the champion" in decision.reason, decision.reason
    decision = promote(settings)  # same held-out snapshot and data: stored metrics may be compared
    assert not decision.promoted and "stored metrics" in decision.reason, decision.reason
    client = mlflow_client(settings)
    assert str(client.get_model_version_by_alias("churnguard", "champion").version) == first.version
    assert str(client.get_model_version_by_alias("churnguard", "challenger").version) == second.version

    third = log_training(trained, settings)  # as good as the champion: promoted
    decision = promote(settings, data=data)
    assert decision.promoted, decision.reason
    assert str(client.get_model_version_by_alias("churnguard", "champion").version) == third.version


def _recency_candidate(trained):
    from training.candidates import fit_logistic

    frame = trained.frame
    return fit_logistic("recency", frame.part("fit"), frame.part("validation"), ["recency_days"], seed=42)


def test_pyfunc_refuses_prospects(trained):
    rows = trained.holdout_features.head(3).copy()
    rows.loc[rows.index[0], "frequency"] = 0
    with pytest.raises(ValueError, match="prospects"):
        trained.model.score(pd.DataFrame(rows))


def test_tier_thresholds_setting_overrides_the_models_own(registered, test_settings):
    assert load_model(test_settings.mlflow).tier_thresholds == (0.3, 0.5, 0.7)
    model = load_model(test_settings.mlflow).with_overrides(tier_thresholds=(0.2, 0.4, 0.8))
    assert model.tier_thresholds == (0.2, 0.4, 0.8)
    scores = model.score(_holdout_rows(model), reasons=False)
    assert (scores.loc[scores["churn_probability"] >= 0.8, "risk_tier"] == "critical").all()


def _holdout_rows(model):
    rows = {name: [1.0] * 3 for name in model.feature_names}
    rows.update(
        {
            "customer_id": ["a", "b", "c"],
            "as_of": pd.to_datetime(["2024-01-01"] * 3),
            "frequency": [1, 3, 9],
            "recency_days": [5.0, 80.0, 200.0],
            "cancelled": [0, 0, 0],
        }
    )
    return pd.DataFrame(rows)
