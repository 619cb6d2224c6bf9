"""Model health: the PSI formula on hand-computed values, the training reference, ``model_health``, the report's
section and ``churn monitor``'s exit codes, on the session's tiny real model."""

from __future__ import annotations

import copy
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from model.drift import EPSILON, Distribution, psi, status
from model.monitoring import NO_REFERENCE, model_health
from model.settings import MonitorSettings

SETTINGS = MonitorSettings()


# ------------------------------------------------------------------------------------------------ the formula


def test_psi_hand_computed() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530722, abs=1e-9)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # symmetric in its two arguments
    assert psi([0.1, 0.9], [0.4, 0.6]) == pytest.approx(psi([0.4, 0.6], [0.1, 0.9]))


def test_psi_counts_an_empty_bin_as_epsilon() -> None:
    assert EPSILON == 1e-4
    # training: nobody in bin 2; today 10 %: (0.9 - 1) ln(0.9 / 1) + (0.1 - 0.0001) ln(0.1 / 0.0001)
    expected = -0.1 * math.log(0.9) + (0.1 - 1e-4) * math.log(1000)
    assert psi([1.0, 0.0], [0.9, 0.1]) == pytest.approx(expected, abs=1e-12)
    assert psi([1.0, 0.0], [0.9, 0.1]) == pytest.approx(0.7006208, abs=1e-6)
    # empty on both sides: contributes nothing
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])


def test_status_thresholds_are_inclusive() -> None:
    assert [status(v, 0.1, 0.25) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "ok",
        "ok",
        "warn",
        "warn",
        "alert",
        "alert",
    ]


def test_decile_bins_by_hand() -> None:
    values = pd.Series([*range(1, 11), None, None], dtype="float64")
    d = Distribution.fit("x", values)
    # deciles of 1..10 with linear interpolation: 1 + 9p
    assert d.edges == pytest.approx((1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1))
    assert d.shares == pytest.approx((1 / 12,) * 10 + (2 / 12,))  # one value per bin, the two nulls last
    assert d.labels[0] == "(-inf, 1.9]" and d.labels[-2] == "(9.1, inf)" and d.labels[-1] == "null"
    assert d.n == 12
    # closed on the right; below the first and above the last edge fall into the outer bins
    assert d.counts([1.9, 1.91, -50, 1e9, None]).tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]


def test_tied_values_get_their_own_bin() -> None:
    d = Distribution.fit("orders_30d", pd.Series([0] * 8 + [1, 5], dtype="int64"))
    # deciles 10..70 % are 0; 80 %: position 7.2 -> 0.2; 90 %: position 8.1 -> 1 + 0.1 * 4 = 1.4
    assert d.edges == pytest.approx((0.0, 0.2, 1.4))
    assert d.shares == pytest.approx((0.8, 0.0, 0.1, 0.1, 0.0))
    # today everybody has one order: all in (0.2, 1.4]
    today = pd.Series([1] * 10)
    assert d.shares_of(today).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    expected = (
        (1e-4 - 0.8) * math.log(1e-4 / 0.8) + (1.0 - 0.1) * math.log(1.0 / 0.1) + (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    )
    assert d.psi_of(today) == pytest.approx(expected, abs=1e-12)


def test_categories_other_and_null() -> None:
    d = Distribution.fit("channel", pd.Series(["web", "store", "web", None]))
    assert d.kind == "categorical" and d.categories == ("store", "web")
    assert d.labels == ["store", "web", "other", "null"]
    assert d.shares == pytest.approx((0.25, 0.5, 0.0, 0.25))
    assert d.shares_of(pd.Series(["app", "web", "app", "store"])).tolist() == [0.25, 0.25, 0.5, 0.0]


def test_all_null_column() -> None:
    d = Distribution.fit("days_since_signup", pd.Series([np.nan] * 4))
    assert d.edges == () and d.shares == (0.0, 1.0)
    assert d.psi_of(pd.Series([np.nan] * 3)) == 0.0


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="psi_warn"):
        MonitorSettings(psi_warn=0.3, psi_alert=0.25)


# ------------------------------------------------------------------------------------------------ training reference


def test_reference_recorded_at_training_equals_a_recompute(trained) -> None:
    from training.drift import SCORE, reference_date

    model, production = trained.model, trained.production
    ref = model.drift_reference
    assert ref is not None
    when = reference_date(production.fit_dates, production.calibration_dates)
    assert ref.as_of == f"{when:%Y-%m-%d}"
    rows = trained.frame.at([when])
    assert ref.n_rows == len(rows) > 100
    assert set(ref.features) == set(model.classifier.features)
    for name in model.classifier.features:
        assert ref.features[name] == Distribution.fit(name, rows[name]), name
    scores = model.classifier.predict_proba(rows)
    assert ref.score == Distribution.fit(SCORE, scores)
    assert ref.mean_score == pytest.approx(scores.mean())
    assert ref.churn_rate == pytest.approx(rows["churned"].mean())
    # independently of Distribution: numpy deciles, pandas right-closed bins
    for name in ("recency_days", "monetary_total"):
        x = rows[name].to_numpy(dtype="float64", na_value=np.nan)
        present = x[~np.isnan(x)]
        edges = np.unique(np.quantile(present, np.arange(1, 10) / 10))
        assert ref.features[name].edges == pytest.approx(tuple(edges))
        binned = pd.cut(present, [-np.inf, *edges, np.inf], right=True)
        shares = [*pd.Series(binned).value_counts(sort=False).to_numpy() / len(x), np.isnan(x).mean()]
        assert ref.features[name].shares == pytest.approx(tuple(shares))


def test_reference_travels_with_the_registered_model(registered, trained, test_settings) -> None:
    from model.registry import load_model

    loaded = load_model(test_settings.mlflow, registered.model_uri)
    assert loaded.drift_reference == trained.model.drift_reference


# ------------------------------------------------------------------------------------------------ model_health


@pytest.fixture(scope="module")
def data(demo_data):
    return demo_data[0]


@pytest.fixture(scope="module")
def day_after(data) -> datetime:
    end = data.data_end
    return datetime(end.year, end.month, end.day) + timedelta(days=1)


@pytest.fixture(scope="module")
def health_now(trained, data, day_after):
    return model_health(data, trained.model, as_of=day_after, settings=SETTINGS)


@pytest.fixture(scope="module")
def health_shifted(trained, data, day_after):
    return model_health(data, trained.model, as_of=day_after + timedelta(days=200), settings=SETTINGS)


def test_health_on_the_training_data_is_not_an_alert(health_now, trained) -> None:
    h = health_now
    assert h.status != "alert", [(c.name, c.psi) for c in h.judged if c.status == "alert"]
    assert h.score is not None and h.score.psi < 0.1  # the same business, 90 days on
    season = {"season_sin", "season_cos"}
    assert {c.name for c in h.features} == set(trained.model.classifier.features) - season
    assert [c.psi for c in h.features] == sorted((c.psi for c in h.features), reverse=True)
    assert h.reference_as_of == trained.model.drift_reference.as_of
    # the expected-drift features are measured and shown but do not decide the status
    expected = {c.name for c in h.columns if c.expected}
    assert expected == set(SETTINGS.expected_drift) & {c.name for c in h.features}
    assert h.worst is not None and not h.worst.expected


def test_health_shares_are_the_reference_bins_on_todays_population(health_now, trained, data, day_after) -> None:
    from features.build import build_features, entities_at

    rows = build_features(data, entities_at(data, day_after), event_types=trained.model.event_types).to_pandas()
    rows = rows[(rows["frequency"] >= 1) & (rows["cancelled"] == 0)]
    assert health_now.customers == len(rows)
    ref = trained.model.drift_reference.features["recency_days"]
    column = next(c for c in health_now.features if c.name == "recency_days")
    assert column.current == pytest.approx(ref.shares_of(rows["recency_days"]).tolist())
    assert column.psi == pytest.approx(psi(ref.shares, column.current))


def test_shifted_recency_is_an_alert(health_shifted) -> None:
    h = health_shifted
    assert h.status == "alert"
    assert h.worst is not None and h.worst.psi >= SETTINGS.psi_alert
    recency = next(c for c in h.features if c.name == "recency_days")
    assert recency.status == "alert"
    assert h.score is not None and h.score.status == "alert"  # 200 days without an order: everybody looks gone


def test_outcome_check(health_now, data, trained) -> None:
    o = health_now.outcome
    assert o is not None
    assert o.window_end == data.data_end
    assert o.window_start == data.data_end - timedelta(days=trained.model.horizon_days)
    assert o.in_sample  # the production fit learned from the freshest labels, this window's
    assert o.customers > 1000 and 0 < o.observed < 1 and 0 < o.predicted < 1
    assert abs(o.predicted - o.observed) < 0.1
    assert o.roc_auc is not None and o.roc_auc > 0.7
    assert len(o.deciles) == 10 and sum(d["n"] for d in o.deciles) == o.customers
    assert [d["predicted"] for d in o.deciles] == sorted(d["predicted"] for d in o.deciles)


def test_model_without_reference(trained, data, day_after) -> None:
    from serving.health import health_section

    old = copy.copy(trained.model)
    old.__dict__.pop("drift_reference", None)  # as unpickled from a model saved before references existed
    assert old.drift_reference is None
    h = model_health(data, old, as_of=day_after, settings=SETTINGS)
    assert h.no_reference == NO_REFERENCE and h.features == [] and h.score is None and h.status == "ok"
    assert h.outcome is not None  # predicted vs observed needs no reference
    page = health_section(h).html
    assert "No drift reference" in page and "Predicted vs observed" in page and "<table class='psi-table'>" not in page


def test_metrics_for_mlflow(health_shifted) -> None:
    m = health_shifted.metrics()
    assert m["psi_max"] == health_shifted.worst.psi
    assert m["psi_recency_days"] == next(c.psi for c in health_shifted.features if c.name == "recency_days")
    assert m["psi_score"] == health_shifted.score.psi
    assert m["n_alert"] == health_shifted.count("alert") >= 1
    assert all(np.isfinite(v) for v in m.values())


# ------------------------------------------------------------------------------------------------ the report


def test_health_section_in_the_report(health_now, health_shifted) -> None:
    from dataclasses import replace

    from serving.health import health_section
    from serving.report import NO_MODEL, build_report, render_html
    from tests.test_pandas_reference import random_dataset

    small = build_report(random_dataset(3, n_customers=40), as_of=datetime(2024, 3, 1), horizon_days=90)
    page = render_html(replace(small, model_health=health_section(health_shifted)))
    assert NO_MODEL not in page
    assert "Population stability (PSI)" in page and "Predicted vs observed churn" in page
    assert page.count("<tr class='psi-alert'>") == health_shifted.count("alert")  # the score and the features
    assert f"{health_shifted.worst.name}</th><td>{health_shifted.worst.psi:.3f}" in page
    calm = health_section(health_now).html
    assert "psi-expected" in calm and "Not judged" in calm


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def cli_env(registered, test_settings):
    return {"CHURN_DATA_DIR": str(test_settings.data_dir)}


def test_monitor_exit_codes(cli_env, demo_dir, health_shifted, day_after, test_settings) -> None:
    from typer.testing import CliRunner

    from churnguard.cli import EXIT_DRIFT, app
    from model.registry import mlflow_client

    runner = CliRunner()
    fine = runner.invoke(app, ["monitor", "--data", str(demo_dir)], env=cli_env)
    assert fine.exit_code == 0, fine.output
    assert "PSI against the training snapshot" in fine.output
    assert ("stable:" in fine.output) or ("drift warning:" in fine.output)

    later = f"{day_after + timedelta(days=200):%Y-%m-%d}"
    shifted = runner.invoke(app, ["monitor", "--data", str(demo_dir), "--as-of", later], env=cli_env)
    assert shifted.exit_code == EXIT_DRIFT == 4, shifted.output
    worst = health_shifted.worst
    assert f"drift alert: {worst.name} PSI {worst.psi:.3f} >= 0.25" in " ".join(shifted.output.split())

    client = mlflow_client(test_settings.mlflow)
    experiment = client.get_experiment_by_name(test_settings.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "params.kind = 'monitor'", order_by=["start_time DESC"])
    assert len(runs) >= 2
    last = runs[0]
    assert last.data.tags["status"] == "alert" and last.data.tags["worst"] == worst.name
    assert last.data.metrics["psi_max"] == pytest.approx(worst.psi)
    assert last.data.params["as_of"].startswith(later)


def test_monitor_thresholds_are_settings(cli_env, demo_dir) -> None:
    from typer.testing import CliRunner

    from churnguard.cli import app

    # thresholds so low that the unchanged data passes them: the same run becomes an alert
    env = {**cli_env, "CHURN_MONITOR__PSI_WARN": "0.0001", "CHURN_MONITOR__PSI_ALERT": "0.0002"}
    result = CliRunner().invoke(app, ["monitor", "--data", str(demo_dir)], env=env)
    assert result.exit_code == 4 and "drift alert:" in result.output, result.output


def test_report_cli_shows_the_champions_health(cli_env, registered, demo_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from churnguard.cli import app
    from serving.report import NO_MODEL

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--data", str(demo_dir), "--out", str(out)], env=cli_env)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Population stability (PSI)" in page and NO_MODEL not in page
    assert f"Model <b>churnguard/{registered.version}</b>" in page
    # the champion's churn probability puts customers at_risk at as_of; the earlier month ends are rule-only
    assert f"at_risk uses model churnguard/{registered.version}&#x27;s churn probability" in page
    assert "<td>rule-only</td>" in page and f"<td>model churnguard/{registered.version}</td>" in page
    missing = CliRunner().invoke(
        app,
        ["report", "--data", str(demo_dir), "--out", str(out), "--model", "models:/churnguard@nobody"],
        env=cli_env,
    )
    assert missing.exit_code == 2 and "no model behind models:/churnguard@nobody" in missing.output
    assert "Trigger campaigns" not in page  # no store, nothing fired

    # triggers fired (a store of its own): the campaign lift table joins the section
    import json
    from datetime import datetime

    from features.store import StoreSettings, open_store
    from features.store.outbox import items_table, outbox_id

    when = datetime(2024, 6, 1)
    store = open_store(StoreSettings(path=tmp_path / "store"), tmp_path)
    try:
        store.add_outbox(
            items_table(
                [
                    {
                        "id": outbox_id("cart_abandoned", f"C{i:06d}", when),
                        "customer_id": f"C{i:06d}",
                        "rule": "cart_abandoned",
                        "action": "cart_reminder",
                        "fired_at": when,
                        "as_of": when,
                        "fields": json.dumps({}),
                        "control": i % 2 == 0,
                    }
                    for i in range(20)
                ]
            )
        )
    finally:
        store.close()
    env = {**cli_env, "CHURN_STORE__PATH": str(tmp_path / "store")}
    fired = CliRunner().invoke(app, ["report", "--data", str(demo_dir), "--out", str(out)], env=env)
    assert fired.exit_code == 0, fired.output
    assert "Trigger campaigns: measured lift" in out.read_text() and "cart_abandoned" in out.read_text()


def test_monitor_of_a_model_without_reference_exits_5(trained, demo_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from churnguard.cli import EXIT_NOT_MEASURED, app
    from churnguard.settings import Settings
    from training.tracking import log_training

    old = copy.copy(trained)
    old.model = copy.copy(trained.model)
    old.model.drift_reference = None  # as registered before references existed
    log_training(old, Settings(data_dir=tmp_path).mlflow)  # a registry of its own: version 1, champion
    result = CliRunner().invoke(app, ["monitor", "--data", str(demo_dir)], env={"CHURN_DATA_DIR": str(tmp_path)})
    assert result.exit_code == EXIT_NOT_MEASURED == 5, result.output
    assert "no drift reference" in result.output and "retrain" in result.output
    assert "predicted churn" in result.output  # the outcome check still ran
