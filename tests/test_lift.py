"""Measured campaign lift (``serving/lift.py``, ``churn lift``): outcome windows by hand, a known treatment effect
injected into the purchases after firing is recovered within its interval, no effect gives an interval around 0,
and the intervals cover the truth about 95 % of the time."""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnguard.cli import app
from features.dataset import Dataset
from features.store import StoreSettings, ingest, open_store
from features.store.outbox import items_table, outbox_id
from serving.lift import compare, measure_lift, revenue_p_value
from serving.policy import load_policy

runner = CliRunner()
T = datetime(2024, 3, 1)
H = 30
JSON_KEYS = {"rule", "action", "treated", "control", "treated_rate", "control_rate", "lift", "ci_low", "ci_high"}


def firing(customer: str, as_of: datetime, control: bool, rule: str = "inactive_past_usual_gap") -> dict:
    return {"customer_id": customer, "rule": rule, "action": "winback_discount", "as_of": as_of, "control": control}


def test_outcome_windows_by_hand():
    """purchase = a line >= 0 in [as_of, as_of + H) (a free order too, a refund not), revenue net, a cancellation
    in the window is churn; repeats count once, firings whose window is not over are left out."""
    d = lambda n: T + timedelta(days=n)  # noqa: E731
    tx = [
        {"customer_id": "a", "timestamp": d(5), "amount": 30.0},  # bought
        {"customer_id": "b", "timestamp": d(-1), "amount": 50.0},  # before the firing: does not count
        {"customer_id": "b", "timestamp": d(3), "amount": -10.0},  # a refund is not a purchase
        {"customer_id": "c", "timestamp": d(1), "amount": 0.0},  # a free order is an order
        {"customer_id": "c", "timestamp": d(H), "amount": 99.0},  # the window's end is excluded
        {"customer_id": "d", "timestamp": d(0), "amount": 20.0},  # at as_of: inside
        {"customer_id": "e", "timestamp": d(2), "amount": 15.0},  # bought, then cancelled
        {"customer_id": "z", "timestamp": d(200), "amount": 1.0},  # data end
    ]
    customers = [{"customer_id": "e", "churn_date": d(10)}]
    data = Dataset.from_records(tx, customers=customers)
    firings = pd.DataFrame(
        [
            firing("a", T, False),
            firing("b", T, False),
            firing("c", T, False),
            firing("d", T, True),
            firing("e", T, True),
            firing("a", d(40), False),  # a repeat of the rule for a: counted once, at the first firing
            firing("g", d(180), False),  # its window runs past the data end
        ]
    )
    r = measure_lift(firings, data, horizon_days=H, policy=load_policy())
    assert (r.firings, r.too_recent, r.repeats) == (7, 1, 1)
    (rule,) = r.rules
    assert (rule.treated, rule.control) == (3, 2)
    assert rule.treated_rate == pytest.approx(2 / 3) and rule.control_rate == 1.0
    assert rule.lift == pytest.approx(2 / 3 - 1)
    assert rule.treated_revenue == pytest.approx((30 - 10 + 0) / 3) and rule.control_revenue == pytest.approx(17.5)
    assert rule.treated_churn_rate == pytest.approx(1 / 3) and rule.control_churn_rate == pytest.approx(0.5)
    assert rule.observed_save_rate == pytest.approx(1 / 3)
    assert rule.assumed_save_rate == 0.12  # winback_discount in serving/policy.yaml
    assert "wide interval" in rule.note and "revenue interval too narrow" in rule.note

    later = measure_lift(firings, data, horizon_days=H, fired_from=d(1))
    assert later.firings == 2  # a's repeat, judged alone: no control, so no lift
    assert [(x.treated, x.control, x.lift, x.note) for x in later.rules] == [
        (1, 0, None, "no control firings: lift cannot be measured")
    ]
    earlier = measure_lift(firings, data, horizon_days=H, fired_to=d(1))
    assert earlier.firings == 5

    # the report's model-health section shows the same table (issue: report + triggers)
    from serving.health import lift_table_html
    from serving.lift import table_rows

    page = lift_table_html(r)
    assert page.count("<tr>") == 2 and "inactive_past_usual_gap" in page
    assert all(html.escape(cell) in page for cell in table_rows(r)[0])
    assert "No firing to judge" in lift_table_html(measure_lift(firings.iloc[6:], data, horizon_days=H))


def test_revenue_p_value_is_the_exact_permutation_test_on_small_groups():
    # 3 + 3 customers: 20 ways to split them; only this split and its mirror are as extreme -> p = 2 / 20
    assert revenue_p_value(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(0.1)
    # difference -1: the splits whose treated sum is 10 or 11 (6 of 20) are less extreme -> p = 14 / 20
    assert revenue_p_value(np.array([1.0, 5.0, 3.0]), np.array([4.0, 2.0, 6.0])) == pytest.approx(0.7)


def simulate(n: int, p: float, d: float, seed: int, control_share: float = 0.3, rule: str = "r") -> tuple:
    """Customers with one order before their firing; after it, treated buy with probability p + d, controls p.
    Returns (transactions, firings, true revenue difference)."""
    rng = np.random.default_rng(seed)
    days, hours = rng.integers(0, 120, n), rng.integers(0, 24, n)
    as_of = [T + timedelta(days=int(k), hours=int(h)) for k, h in zip(days, hours, strict=True)]
    control = rng.random(n) < control_share
    buys = rng.random(n) < np.where(control, p, p + d)
    tx, firings = [], []
    for i in range(n):
        cid = f"{rule}-{i:05d}"
        tx.append({"customer_id": cid, "timestamp": as_of[i] - timedelta(days=20), "amount": 40.0})
        firings.append(firing(cid, as_of[i], bool(control[i]), rule))
        if buys[i]:
            when = as_of[i] + timedelta(days=float(rng.uniform(0, H - 0.01)))
            tx.append({"customer_id": cid, "timestamp": when, "amount": float(rng.gamma(2.0, 30.0))})
    return tx, firings, d * 60.0


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    """The rate and revenue intervals, on 300 simulated campaigns of 400 customers: coverage near 95 %."""
    rng = np.random.default_rng(5)
    p, d, n = 0.3, 0.1, 400
    hits = {"lift": 0, "revenue": 0, "zero": 0}
    reps = 300
    for _ in range(reps):
        control = rng.random(n) < 0.3
        buys = rng.random(n) < np.where(control, p, p + d)
        revenue = np.where(buys, rng.gamma(2.0, 30.0, n), 0.0)
        g = pd.DataFrame({"control": control, "purchased": buys, "revenue": revenue, "churned": ~buys})
        r = compare("r", "a", g, None)
        hits["lift"] += r.ci_low <= d <= r.ci_high
        hits["revenue"] += r.revenue_ci_low <= d * 60 <= r.revenue_ci_high
        hits["zero"] += r.ci_low <= 0 <= r.ci_high
    assert 0.92 <= hits["lift"] / reps <= 0.98, hits
    assert 0.92 <= hits["revenue"] / reps <= 0.98, hits
    # not so wide that a real effect stays invisible: here d is about 2 standard errors, so about half exclude 0
    assert hits["zero"] / reps < 0.7, hits


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A data dir whose store holds a synthetic business and a hand-made outbox: rule `inactive_past_usual_gap`
    with a true lift of +10 points, rule `post_purchase_loyalty` with none."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "data"))
    tx_a, f_a, _ = simulate(3000, p=0.25, d=0.10, seed=11, rule="inactive_past_usual_gap")
    tx_b, f_b, _ = simulate(2000, p=0.40, d=0.0, seed=12, rule="post_purchase_loyalty")
    tx = [*tx_a, *tx_b, {"customer_id": "end", "timestamp": datetime(2024, 12, 31), "amount": 1.0}]
    data = tmp_path / "business"
    data.mkdir()
    pd.DataFrame(tx).to_csv(data / "transactions.csv", index=False)
    store = open_store(StoreSettings(), tmp_path / "data")
    try:
        ingest(store, data, now=datetime(2025, 1, 1))
        items = [
            {
                **f,
                "id": outbox_id(f["rule"], f["customer_id"], f["as_of"]),
                "action": "winback_discount" if f["rule"] == "inactive_past_usual_gap" else "loyalty_invitation",
                "fired_at": f["as_of"] + timedelta(minutes=5),
                "fields": "{}",
            }
            for f in [*f_a, *f_b]
        ]
        assert store.add_outbox(items_table(items)) == 5000
    finally:
        store.close()
    return tmp_path


@pytest.mark.slow
def test_churn_lift_recovers_an_injected_effect_and_prints_the_specified_json(project):
    r = runner.invoke(app, ["lift", "--horizon-days", str(H), "--json", "--no-mlflow"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rules = {x["rule"]: x for x in out["rules"]}
    assert set(rules) == {"inactive_past_usual_gap", "post_purchase_loyalty"}
    for x in rules.values():
        assert set(x) >= JSON_KEYS
        assert x["lift"] == pytest.approx(x["treated_rate"] - x["control_rate"])
    a, b = rules["inactive_past_usual_gap"], rules["post_purchase_loyalty"]
    assert a["treated"] + a["control"] == 3000 and b["treated"] + b["control"] == 2000
    assert a["ci_low"] <= 0.10 <= a["ci_high"] and a["ci_low"] > 0  # recovered, and distinguishable from 0
    assert abs(a["lift"] - 0.10) < 0.05
    assert b["ci_low"] <= 0 <= b["ci_high"]  # no effect: the interval covers 0
    assert a["assumed_save_rate"] == 0.12 and b["assumed_save_rate"] == 0.04
    assert a["delivered"] == 0  # nothing was pushed: intention to treat still counts them as treated
    assert (project / "data" / "reports" / "lift" / "lift.png").stat().st_size > 10_000

    # purchases from the files instead of the store: the same answer, and stdout is still JSON alone
    r = runner.invoke(app, ["lift", "--horizon-days", str(H), "--json", "--no-mlflow", "--data", "business"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rules"] == out["rules"]


@pytest.mark.slow
def test_churn_lift_table_and_mlflow_run(project, test_settings, monkeypatch):
    monkeypatch.setenv("CHURN_MLFLOW__TRACKING_URI", test_settings.mlflow.tracking_uri)  # the session's store
    monkeypatch.setenv("CHURN_MLFLOW__ARTIFACT_ROOT", str(test_settings.mlflow.artifact_root))
    r = runner.invoke(app, ["lift", "--horizon-days", str(H), "--fired-from", "2024-03-01", "--fired-to", "2024-05-31"])
    assert r.exit_code == 0, r.output
    assert "Measured lift" in r.output and "inactive_past_usual_gap" in r.output
    run_id = r.output.strip().split("MLflow run ")[-1].split()[0]
    from churnguard.settings import load_settings
    from model.registry import mlflow_client

    client = mlflow_client(load_settings().mlflow)
    run = client.get_run(run_id)
    assert run.data.params["kind"] == "lift"
    assert "inactive_past_usual_gap.winback_discount.lift" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run_id, "lift")}
    assert logged == {"lift/lift.md", "lift/lift.json", "lift/lift.png"}
    files = json.loads((project / "data" / "reports" / "lift" / "lift.json").read_text())
    assert files["fired_to"] == "2024-06-01T00:00:00"  # --fired-to names a day: the whole day counts
    assert files["firings"] < 5000


def test_churn_lift_without_transactions_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "data"))
    r = runner.invoke(app, ["lift", "--json", "--no-mlflow"])
    assert r.exit_code == 2 and "no transactions" in r.output
