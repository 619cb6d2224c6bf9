"""The `churn` command: thin wrappers over the library, one-line errors with exit code 2."""

from __future__ import annotations

from datetime import datetime

import pyarrow.parquet as pq
from typer.testing import CliRunner

from churnguard.cli import app

runner = CliRunner()


def test_generate_validate_features_labels(tmp_path):
    demo = tmp_path / "demo"
    r = runner.invoke(app, ["generate", "--out", str(demo), "--customers", "300", "--months", "12", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert (demo / "transactions.csv").exists()

    r = runner.invoke(app, ["validate", "--data", str(demo), "--rejects", str(tmp_path / "rejects.csv")])
    assert r.exit_code == 0, r.output
    assert "exact duplicate" in r.output and (tmp_path / "rejects.csv").exists()

    out = tmp_path / "features.parquet"
    r = runner.invoke(
        app, ["features", "--data", str(demo), "--as-of", "2023-07-01", "--as-of", "2023-10-01", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert set(pq.read_table(out)["as_of"].to_pylist()) == {datetime(2023, 7, 1), datetime(2023, 10, 1)}

    r = runner.invoke(
        app, ["labels", "--data", str(demo), "--as-of", "2023-07-01", "--out", str(tmp_path / "labels.csv")]
    )
    assert r.exit_code == 0, r.output
    assert "churn rate at 90 days" in r.output


def test_feature_list():
    r = runner.invoke(app, ["features", "--list"])
    assert r.exit_code == 0 and "recency_days" in r.output


def test_broken_input_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "transactions.csv").write_text("customer_id,when,amount\nc1,2024-01-01,3\n")
    r = runner.invoke(app, ["validate", "--data", str(tmp_path)])
    assert r.exit_code == 2
    assert "missing required column 'timestamp'" in r.output
    assert "Traceback" not in r.output


def test_label_window_past_the_data_is_refused(tmp_path):
    (tmp_path / "transactions.csv").write_text("customer_id,timestamp,amount\nc1,2024-01-01,3\nc1,2024-03-01,3\n")
    r = runner.invoke(
        app, ["labels", "--data", str(tmp_path), "--as-of", "2024-02-01", "--out", str(tmp_path / "l.csv")]
    )
    assert r.exit_code == 2 and "after the data ends" in r.output


def test_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv("CHURN_HORIZON", "30")
    r = runner.invoke(app, ["features", "--list"])
    assert r.exit_code == 2 and "CHURN_HORIZON" in r.output
