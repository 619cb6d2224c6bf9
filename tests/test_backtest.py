"""`churn backtest`: what is known at a cutoff, and the protocol replayed there, judged on what happened next."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from typer.testing import CliRunner

from churnguard.cli import app
from tests.conftest import dataset, ts, tx
from training.backtest import data_before

CUTOFF = datetime(2024, 7, 1)


def test_data_before_a_cutoff_holds_only_what_was_known_then():
    data = dataset(
        [tx("a", "2024-06-30 23:59", 5.0), tx("a", "2024-07-01 00:00", 7.0), tx("b", "2024-08-01", 3.0)],
        customers=[
            {"customer_id": "a", "signup_date": ts("2024-01-01"), "churn_date": ts("2024-07-15")},
            {"customer_id": "c", "signup_date": ts("2024-02-01"), "churn_date": ts("2024-03-01")},
            {"customer_id": "d", "signup_date": ts("2024-07-02"), "churn_date": None},
        ],
    )
    known = data_before(data, CUTOFF)
    assert known.transactions["amount"].to_pylist() == [5.0]
    customers = {r["customer_id"]: r for r in known.customers.to_pylist()}
    assert set(customers) == {"a", "c"}  # d signs up after the cutoff
    assert customers["a"]["churn_date"] is None  # cancelled after the cutoff: not known yet
    assert customers["c"]["churn_date"] == ts("2024-03-01")


def test_a_cutoff_whose_outcome_window_runs_past_the_data_is_refused(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["backtest", "--data", str(demo_dir), "--cutoff", "2024-12-01"])
    assert r.exit_code == 2 and "outcome window ends after the data" in r.output, r.output


@pytest.mark.slow
def test_backtest_judges_every_labelled_customer_and_logs_the_run(demo_dir, demo_data, tmp_path, monkeypatch):
    from features.build import build_features, entities_at
    from features.labels import build_labels
    from model.registry import mlflow_client
    from model.settings import MlflowSettings

    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHURN_TRAINING__MAX_TRAINING_ROWS", "8000")
    out = tmp_path / "bt"
    cutoff = "2024-09-01"
    r = CliRunner().invoke(app, ["backtest", "--data", str(demo_dir), "--cutoff", cutoff, "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("backtest.md", "backtest.csv", "backtest.json", "backtest.png"):
        assert (out / name).exists(), name
    result = json.loads((out / "backtest.json").read_text())
    (only,) = result["cutoffs"]
    assert set(only["metrics"]) == {"production", "recency", "rfm_logit"}

    # judged = customers with an order before the cutoff who had not cancelled before it, each scored
    data, _ = demo_data
    when = datetime.fromisoformat(cutoff)
    entities = entities_at(data, when)
    labels = build_labels(data, entities, horizon_days=90).to_pandas()
    orders = build_features(data, entities).to_pandas().set_index("customer_id")["frequency"]
    assert only["n_judged"] == len(labels) and (orders.loc[labels["customer_id"]] >= 1).all()
    assert only["n_scored"] == int((orders >= 1).sum())
    assert only["churn_rate"] == pytest.approx(labels["churned"].mean())

    settings = MlflowSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlartifacts"
    )
    client = mlflow_client(settings)
    (run,) = client.search_runs([client.get_experiment_by_name("churnguard").experiment_id])
    assert run.data.params["kind"] == "backtest" and run.data.params["cutoffs"] == cutoff
    assert run.data.metrics["backtest_production_roc_auc"] == pytest.approx(only["metrics"]["production"]["roc_auc"])
