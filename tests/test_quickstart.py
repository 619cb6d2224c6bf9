"""``churn quickstart``: the demo goes into the customer store, training and scoring read it from there, the
lifecycle report is written, and the last lines name a real customer to look up in the API."""

from __future__ import annotations

import re
from datetime import date, datetime

import pandas as pd
import pytest
from typer.testing import CliRunner

from churnguard.cli import app
from churnguard.quickstart import _check_store_holds_only_this_demo
from features.store import StoreSettings, ingest, open_store

runner = CliRunner()


@pytest.mark.slow
def test_quickstart_ingests_the_demo_and_scores_from_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = runner.invoke(app, ["quickstart", "--customers", "1500", "--seed", "5", "--capacity", "50"])
    assert r.exit_code == 0, r.output

    store = open_store(StoreSettings(), tmp_path, create=False)
    try:
        batches = store.batches()
        stored = store.dataset()
    finally:
        store.close()
    assert [b.source for b in batches] == [str((tmp_path / "demo").resolve())]
    assert stored.customer_ids().to_pylist()  # the demo is in the store the settings name

    lifecycle = tmp_path / "reports" / "lifecycle.html"
    assert lifecycle.is_file() and lifecycle.stat().st_size > 10_000
    assert str(lifecycle) in r.output.replace("\n", "")
    page = lifecycle.read_text()  # with the model just trained: its health, and at_risk at as_of
    assert "Population stability (PSI)" in page and "at_risk uses model churnguard/1&#x27;s churn probability" in page

    outreach = pd.read_csv(tmp_path / "outputs" / "outreach.csv")
    first = outreach.sort_values("rank")["customer_id"].iloc[0]
    curl = f'curl -H "Authorization: Bearer $KEY" \'http://127.0.0.1:3000/v1/customers/{first}/score?as_of='
    assert curl in r.output  # printed on one line, to be copied
    assert re.search(r"\d+ customers scored", r.output)
    assert (tmp_path / "outputs" / "row_rejects.csv").stat().st_size > 100  # the demo's messy rows, from the store


def test_quickstart_refuses_a_store_holding_other_data(tmp_path, monkeypatch):
    own = tmp_path / "own"
    own.mkdir()
    (own / "transactions.csv").write_text("customer_id,timestamp,amount\nA,2024-01-01,3\n")
    store = open_store(StoreSettings(), tmp_path)
    try:
        ingest(store, own, now=datetime(2026, 1, 1))
    finally:
        store.close()
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    r = runner.invoke(app, ["quickstart", "--customers", "500"])
    assert r.exit_code == 2, r.output
    assert "already holds other data" in r.output and str(own) in r.output
    assert not (tmp_path / "demo").exists()  # refused before anything was generated or written


def test_quickstart_refuses_the_demo_of_an_earlier_run_with_other_parameters(tmp_path):
    from churnguard.demo import generate

    demo = tmp_path / "demo"
    generate(demo, customers=200, seed=1, months=6, fmt="csv")
    store = open_store(StoreSettings(), tmp_path)
    try:
        ingest(store, demo, now=datetime(2026, 1, 1))
        same = {"customers": 200, "seed": 1, "start": date(2023, 1, 1), "months": 6}
        _check_store_holds_only_this_demo(store, demo, **same)  # the same demo again: fine, it adds nothing
        with pytest.raises(ValueError, match="holds the demo of an earlier quickstart .*customers 200, seed 1"):
            _check_store_holds_only_this_demo(store, demo, **{**same, "seed": 2})
    finally:
        store.close()
