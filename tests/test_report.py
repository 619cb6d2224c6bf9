"""The lifecycle report: stages come from the scorecard's one rule function, the page is self-contained, and it
renders in a real browser (headless Chromium) with every chart drawn and no script error."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from features.build import build_features, entities_at
from features.kpis import KPIS, lifecycle_facts
from model.scorecard import STAGES, LifecycleRules, lifecycle_stages
from serving.report import (
    FIRST_ORDER,
    NO_MODEL,
    ReportSection,
    build_report,
    default_as_of,
    render_html,
    stage_definitions,
    stage_history,
    write_report,
)
from tests.test_pandas_reference import random_dataset

CHROMIUM = Path("/usr/bin/chromium")
CHART_IDS = ("kpis", "stages", "transitions", "flows", "cohorts")


@pytest.fixture(scope="module")
def small_report():
    return build_report(random_dataset(3, n_customers=60), as_of=datetime(2024, 3, 1), horizon_days=90)


@pytest.fixture(scope="module")
def demo_report(demo_data):
    data, _ = demo_data
    return build_report(data, horizon_days=90)


def test_stages_are_the_scorecard_rules_on_the_registry_features() -> None:
    """Every month end: the report's stage of each customer = lifecycle_stages on build_features, no score."""
    data = random_dataset(5, n_customers=60)
    facts = lifecycle_facts(data, datetime(2024, 3, 1), horizon_days=90)
    ours = pd.DataFrame(
        {
            "customer_id": facts.stage_inputs["customer_id"].to_pylist(),
            "as_of": facts.stage_inputs["as_of"].to_pylist(),
            "ours": stage_history(facts, LifecycleRules()),
        }
    )
    features = build_features(data, entities_at(data, list(facts.month_ends)))
    features = features.filter(pc.greater(features["frequency"], 0)).to_pandas()
    features["theirs"] = lifecycle_stages(
        features, np.full(len(features), np.nan), horizon_days=90, high_threshold=0.5, rules=LifecycleRules()
    )
    both = ours.merge(features[["customer_id", "as_of", "theirs"]], on=["customer_id", "as_of"], how="outer")
    assert len(both) == len(ours) == len(features)
    assert (both["ours"] == both["theirs"]).all()
    assert set(both["ours"]) - {"at_risk"} >= {"new", "lapsed"}  # the fixture reaches several stages
    assert "at_risk" not in set(both["ours"])  # no model score, no at_risk


def test_active_customers_are_the_customers_not_lapsed(demo_report) -> None:
    counts = demo_report.stage_counts
    active = demo_report.facts.months["active_customers"].to_numpy()
    assert np.array_equal(active, counts.drop(columns="lapsed").sum(axis=1).to_numpy())


def test_transitions_add_up(demo_report) -> None:
    counts = demo_report.stage_counts.to_numpy()
    moves = demo_report.transitions  # [month, from (first order + stages), to]
    assert np.array_equal(moves.sum(axis=1), counts)  # everybody at a month end came from somewhere
    assert np.array_equal(moves[1:, 1:, :].sum(axis=2), counts[:-1])  # everybody a month earlier went somewhere
    new = demo_report.facts.months["new_customers"].to_numpy()
    assert np.array_equal(moves[:, 0, :].sum(axis=1), new)  # the first-order row holds the month's new customers
    lapsed, reactivated = STAGES.index("lapsed"), STAGES.index("reactivated")
    assert moves[:, 1 + lapsed, reactivated].sum() > 0  # the demo has win-backs


def test_stage_table(demo_report) -> None:
    table = demo_report.stage_table
    facts = demo_report.facts
    last = demo_report.stage_counts.iloc[-1]
    assert table["customers"].to_dict() == last.to_dict()
    totals = facts.customers.to_pandas()
    assert table["customers"].sum() == len(totals)
    # customer-weighted means add back up to the totals of everybody
    assert (table["orders_per_customer"] * table["customers"]).sum() == pytest.approx(totals["orders"].sum())
    assert (table["historic_clv"] * table["customers"]).sum() == pytest.approx(totals["net_spend"].sum())
    # the month's churn rate, split by the stage at its start, adds back up to the churn rate KPI
    months = facts.months.to_pylist()[-1]
    at_start = demo_report.transitions[-1, 1:, :].sum(axis=1)  # customers per stage at the start of the month
    churned = np.nansum(table["churn_rate"].to_numpy() * at_start)
    lapsed_at_start = STAGES.index("lapsed")
    assert np.isnan(table.loc["lapsed", "churn_rate"])
    assert churned == pytest.approx(months["churned"])
    assert at_start.sum() - at_start[lapsed_at_start] == months["active_at_start"]


def test_page_is_self_contained_and_defines_everything(demo_report) -> None:
    import plotly.offline

    page = render_html(demo_report)
    assert len(page.encode()) < 10_000_000
    library = plotly.offline.get_plotlyjs()
    assert page.count(library) == 1  # plotly.js inlined once
    ours = page.replace(library, "")
    assert "<script src" not in ours and "<link" not in ours and "@import" not in ours
    assert page.count("Plotly.newPlot") == len(CHART_IDS)
    for k in KPIS:
        assert k.definition in page.replace("&#x27;", "'")
    rules = stage_definitions()
    assert {s for s, _ in rules} == set(STAGES)
    assert NO_MODEL in page
    assert "needs a model score" in page and FIRST_ORDER in page


def test_model_health_slot(small_report) -> None:
    from dataclasses import replace

    page = render_html(replace(small_report, model_health=ReportSection("Model health", "<p id='mh'>PSI ok</p>")))
    assert "<p id='mh'>PSI ok</p>" in page and NO_MODEL not in page


def test_default_as_of_is_the_midnight_after_the_data(demo_data) -> None:
    data, _ = demo_data
    end = data.data_end
    assert default_as_of(data) == datetime(end.year, end.month, end.day) + pd.Timedelta(days=1)


def test_cli_writes_the_report(demo_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from churnguard.cli import app

    out = tmp_path / "report.html"
    env = {"CHURN_DATA_DIR": str(tmp_path / "empty")}  # a registry without a champion
    result = CliRunner().invoke(
        app, ["report", "--data", str(demo_dir), "--out", str(out), "--as-of", "2024-07-01"], env=env
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "As of 2024-07-01" in page
    assert "No model: no model behind models:/churnguard@champion" in page
    skipped = CliRunner().invoke(app, ["report", "--data", str(demo_dir), "--out", str(out), "--no-model"], env=env)
    assert skipped.exit_code == 0 and NO_MODEL in out.read_text()
    bad = CliRunner().invoke(
        app, ["report", "--data", str(demo_dir), "--out", str(out), "--as-of", "2010-01-01", "--no-model"]
    )
    assert bad.exit_code == 2 and "no purchase before as_of" in bad.output


# ------------------------------------------------------------------------------------------------ browser


def _launch(playwright):
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs the Debian package 'chromium')")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[
            "--no-sandbox",  # we run as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


class _Browser:
    """One headless Chromium page that records console errors, page errors and any non-local request."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        local = ("file:", "data:", "blob:")
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(local) else self.errors.append(f"request: {r.url}"))


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = _launch(p)
        yield lambda: _Browser(chromium.new_page(viewport={"width": 1280, "height": 900}))
        chromium.close()


@pytest.mark.slow
def test_report_renders_in_chromium(demo_report, browser, tmp_path) -> None:
    page_file = write_report(demo_report, tmp_path / "report.html")
    b = browser()
    page = b.page
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(CHART_IDS)}")
    charts = page.query_selector_all(".js-plotly-plot")
    assert len(charts) == len(CHART_IDS)
    for chart in charts:
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200
        # drawn traces: lines/markers, filled areas or heatmap images
        assert chart.query_selector_all("g.trace, g.hm image, .heatmaplayer image")
    assert len(charts[0].query_selector_all("g.trace.scatter")) == len(KPIS)  # one panel per KPI
    assert "Churn rate" in page.locator("#definitions").inner_text()
    assert page.locator(".no-model").is_visible()
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert not b.errors, b.errors
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
def test_the_browser_check_sees_script_errors(browser, tmp_path) -> None:
    """The harness above would notice a broken page: a script error and a remote request are both recorded."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction()</script><img src='http://127.0.0.1:9/x.png'></body>")
    b = browser()
    b.page.goto(broken.resolve().as_uri(), wait_until="load")
    b.page.wait_for_timeout(200)
    b.page.close()
    assert any("undefinedFunction" in e for e in b.errors), b.errors
    assert any("127.0.0.1:9" in e for e in b.errors), b.errors


@pytest.mark.slow
def test_report_with_model_health_renders_in_chromium(demo_report, trained, demo_data, browser, tmp_path) -> None:
    """The report with a model: the model-health section's two charts draw too (seven in all), its PSI table
    shows, the stage chart has at_risk with the rule-only months shaded, and no script errs."""
    from model.settings import MonitorSettings
    from serving.health import build_model_report

    data, _ = demo_data
    report, health = build_model_report(
        data, trained.model, as_of=demo_report.as_of, horizon_days=90, monitor=MonitorSettings(), scored_month_ends=1
    )
    assert report.stage_counts["at_risk"].iloc[-1] > 0 and report.stage_counts["at_risk"].iloc[:-1].sum() == 0
    page_file = write_report(report, tmp_path / "report.html")
    b = browser()
    page = b.page
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    charts = len(CHART_IDS) + 2  # the score distribution and predicted vs observed per decile
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}")
    plots = page.query_selector_all("#model-health .js-plotly-plot")
    assert len(plots) == 2
    for chart in plots:
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200
        assert chart.query_selector_all("g.trace")
    rows = page.locator("#model-health table.psi-table tbody tr")
    assert rows.count() == len(health.columns)
    assert page.locator("#model-health").get_by_text("Population stability (PSI)").is_visible()
    assert page.locator(".no-model").count() == 0
    stages = page.locator("#stages")
    assert stages.locator(".legendtext", has_text="at_risk").count() == 1
    assert stages.get_by_text("rule-only: no model score, no at_risk").is_visible()  # the shaded months' label
    assert stages.locator("table.stage-counts tr.rule-only").count() == len(report.facts.month_ends) - 1
    stages.screenshot(path=str(tmp_path / "stages.png"))
    page.locator("#model-health").screenshot(path=str(tmp_path / "health.png"))
    page.close()
    assert not b.errors, b.errors
