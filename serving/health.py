"""The model-health section of the lifecycle report, from ``model.monitoring.ModelHealth``.

Three parts: the churn score's distribution today next to the one the model recorded at training, predicted vs
observed churn on the last window whose outcome is known (overall and per score decile), and the PSI of the score
and of every feature the model reads, with its status against the thresholds. The numbers are the ones
``churn monitor`` logs to MLflow; this module only lays them out.

``build_model_report`` is the report with a model: the health section, and the model's churn probability for the
lifecycle stages at the last ``scored_month_ends`` month ends (``at_risk``). The scores at as_of come out of the
health section's own scoring pass at as_of (``model_health(also_score=...)``); only earlier month ends cost a
feature query of their own (one for all of them).
"""

from __future__ import annotations

import html
import time
from datetime import datetime

import pandas as pd
import pyarrow as pa

from features.build import ENTITY_SCHEMA, build_features
from features.dataset import Dataset
from features.kpis import lifecycle_facts
from model.churn_model import ChurnModel
from model.drift import EPSILON
from model.monitoring import ColumnDrift, ModelHealth, model_health
from model.settings import MonitorSettings
from serving.lift import TABLE_COLUMNS, LiftResult, table_caption, table_notes, table_rows
from serving.report import LifecycleReport, ReportSection, StageScores, build_report, score_dependent

TITLE = "Model health"
PSI_DEFINITION = (
    "PSI (population stability index) compares the share of customers in each bin today (a) with the share at "
    "training (e), over the bins recorded at training (deciles of the training rows; nulls in a bin of their own; "
    f"categories by value): PSI = sum of (a - e) x ln(a / e), shares below {EPSILON:g} counted as {EPSILON:g}."
)
STATUS_TEXT = {"ok": "stable", "warn": "moderate shift", "alert": "major shift"}


def health_section(health: ModelHealth, lift: LiftResult | None = None) -> ReportSection:
    """The report's model-health section (trusted HTML with its Plotly charts), with the campaign lift table of
    ``churn lift`` when triggers have fired (``lift``: the measured result, None when nothing fired)."""
    parts = [f"<style>{_CSS}</style>", _summary(health)]
    if health.no_reference:
        parts.append(f"<p class='no-reference note'>No drift reference: {html.escape(health.no_reference)}.</p>")
    else:
        parts += ["<h3>Churn score: today vs at training</h3>", _div(_score_figure(health))]
    parts.append("<h3>Predicted vs observed churn</h3>")
    parts.append(_outcome(health))
    if not health.no_reference:
        parts += ["<h3>Population stability (PSI)</h3>", _psi_table(health)]
    parts += [f"<p class='small'>{html.escape(note)}</p>" for note in health.notes]
    if lift is not None:
        parts += ["<h3>Trigger campaigns: measured lift</h3>", lift_table_html(lift)]
    return ReportSection(TITLE, "\n".join(parts))


def build_model_report(
    data: Dataset,
    model: ChurnModel,
    *,
    as_of: datetime,
    horizon_days: int,
    monitor: MonitorSettings,
    scored_month_ends: int,
    lift: LiftResult | None = None,
) -> tuple[LifecycleReport, ModelHealth]:
    """The lifecycle report with ``model``: its health section, and at_risk in the stages of the last
    ``scored_month_ends`` month ends (the model's lifecycle rules and high tier threshold, as its scorecard)."""
    t = time.perf_counter()
    facts = lifecycle_facts(data, as_of, horizon_days=horizon_days)
    kpis_s = time.perf_counter() - t
    rules = model.lifecycle
    ends = facts.month_ends[-scored_month_ends:]
    t = time.perf_counter()
    health = model_health(
        data, model, as_of=facts.as_of, settings=monitor, also_score=score_dependent(facts, rules, facts.as_of)
    )
    health_s = time.perf_counter() - t
    assert health.scores is not None
    parts = [health.scores.assign(as_of=pd.Timestamp(facts.as_of))]
    t = time.perf_counter()
    earlier = [(end, score_dependent(facts, rules, end)) for end in ends[:-1]]
    if earlier:
        entities = pa.concat_tables(
            pa.table({"customer_id": ids, "as_of": pa.array([end] * len(ids), ENTITY_SCHEMA.field("as_of").type)})
            for end, ids in earlier
        ).cast(ENTITY_SCHEMA)
        rows = build_features(data, entities, event_types=model.event_types).to_pandas()
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": rows["customer_id"].to_numpy(),
                    "as_of": pd.to_datetime(rows["as_of"]),
                    "churn_probability": model.classifier.predict_proba(rows) if len(rows) else [],
                }
            )
        )
    earlier_s = time.perf_counter() - t
    scores = StageScores(
        model_version=model.model_version,
        high_threshold=float(model.tier_thresholds[1]),
        month_ends=tuple(ends),
        scores=pd.concat(parts, ignore_index=True),
    )
    report = build_report(
        data,
        horizon_days=horizon_days,
        rules=rules,
        facts=facts,
        scores=scores,
        model_health=health_section(health, lift),
    )
    report.timings.update(kpis=kpis_s, model_health=health_s, earlier_scores=earlier_s)
    return report, health


def lift_table_html(result: LiftResult) -> str:
    """The lift table of ``churn lift`` (the same columns and cells), its caption and notes, as HTML."""
    if not result.rules:
        return (
            f"<p class='note lift'>No firing to judge yet: {result.firings:,} in the range, {result.too_recent:,} "
            f"too recent (a firing is judged {result.horizon_days} days after it).</p>"
        )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table_rows(result)
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table_notes(result))
    return (
        f"<table class='lift'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p class='small'>{html.escape(table_caption(result))}</p>"
        + (f"<ul class='small'>{notes}</ul>" if notes else "")
    )


def no_model_section(reason: str) -> ReportSection:
    return ReportSection(TITLE, f"<p class='no-model'>{html.escape(reason)}</p>")


def _summary(h: ModelHealth) -> str:
    worst = h.worst
    if h.no_reference:
        verdict = "drift not measured (no reference)"
    else:
        verdict = f"<span class='psi-{h.status}'>{h.status}</span>" + (
            f": the largest PSI is {worst.psi:.3f} ({html.escape(worst.name)})" if worst else ""
        )
    reference = (
        f"training reference: the snapshot of {h.reference_as_of} ({h.reference_rows:,} customers)"
        if h.reference_as_of
        else "no training reference"
    )
    return (
        f"<p class='health-summary'>Model <b>{html.escape(h.model_version)}</b> as of {h.as_of:%Y-%m-%d} "
        f"(H = {h.horizon_days} days): {verdict}. {h.customers:,} customers today (with an order and not "
        f"cancelled); {reference}. Thresholds: PSI &ge; {h.psi_warn:g} warn, &ge; {h.psi_alert:g} alert.</p>"
    )


def _score_figure(h: ModelHealth):
    import plotly.graph_objects as go

    score = h.score
    assert score is not None
    fig = go.Figure(
        [
            go.Bar(x=score.bins, y=score.training, name=f"at training ({h.reference_as_of})", marker_color="#9D9D9D"),
            go.Bar(x=score.bins, y=score.current, name=f"today ({h.as_of:%Y-%m-%d})", marker_color="#4C78A8"),
        ]
    )
    mean_then = f"{h.training_mean_score:.1%}" if h.training_mean_score is not None else "-"
    fig.update_layout(
        barmode="group",
        height=340,
        yaxis={"title": "share of customers", "tickformat": ".0%"},
        xaxis_title=f"churn probability bin (mean today {h.mean_score:.1%}, at training {mean_then}; "
        f"PSI {score.psi:.3f})",
        margin={"t": 20, "b": 60},
        legend={"orientation": "h", "y": 1.1},
    )
    return fig


def _outcome(h: ModelHealth) -> str:
    o = h.outcome
    if o is None:
        return "<p class='note'>No window with a known outcome before as_of.</p>"
    import plotly.graph_objects as go

    auc = f"{o.roc_auc:.3f}" if o.roc_auc is not None else "-"
    sample = (
        "<p class='note'>In-sample: the model learned from (part of) this window's labels, so this comparison "
        "flatters it; an out-of-sample check needs a window that ends after the model's training.</p>"
        if o.in_sample
        else ""
    )
    table = (
        "<table class='outcome'><tbody>"
        f"<tr><th>window</th><td>{o.window_start:%Y-%m-%d} to {o.window_end:%Y-%m-%d}</td></tr>"
        f"<tr><th>customers scored at its start</th><td>{o.customers:,}</td></tr>"
        f"<tr><th>predicted churn (mean probability)</th><td>{o.predicted:.1%}</td></tr>"
        f"<tr><th>observed churn</th><td>{o.observed:.1%}</td></tr>"
        f"<tr><th>ROC AUC</th><td>{auc}</td></tr><tr><th>Brier score</th><td>{o.brier:.4f}</td></tr>"
        "</tbody></table>"
    )
    if not o.deciles:
        return sample + table
    pred = [d["predicted"] for d in o.deciles]
    obs = [d["observed"] for d in o.deciles]
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "#999"}),
            go.Scatter(
                x=pred,
                y=obs,
                mode="lines+markers",
                name="score deciles",
                line={"color": "#F58518"},
                text=[f"{int(d['n']):,} customers" for d in o.deciles],
                hovertemplate="predicted %{x:.1%}, observed %{y:.1%} (%{text})<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        height=340,
        xaxis={"title": "predicted churn (mean of the decile)", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"title": "observed churn", "tickformat": ".0%", "range": [0, 1]},
        margin={"t": 20, "b": 40},
    )
    return sample + f"<div class='outcome-grid'><div>{table}</div><div>{_div(fig)}</div></div>"


def _psi_table(h: ModelHealth) -> str:
    rows = []
    for c in h.columns:
        rows.append(_psi_row(c))
    expected = [c.name for c in h.columns if c.expected]
    note = (
        "<p class='small'>Not judged (grow with the length of the history, so they shift by construction between "
        f"training and today; setting monitor.expected_drift): {html.escape(', '.join(expected))}.</p>"
        if expected
        else ""
    )
    return (
        f"<p class='small'>{html.escape(PSI_DEFINITION)} Below {h.psi_warn:g}: stable; {h.psi_warn:g} to "
        f"{h.psi_alert:g}: moderate shift (warn); {h.psi_alert:g} and above: major shift (alert). Features the "
        "model reads; the season features (a function of the date alone) are left out.</p>"
        "<div class='scroll psi-scroll'><table class='psi-table'><thead><tr><th>column</th><th>PSI</th>"
        "<th>status</th><th>largest change</th></tr></thead><tbody>" + "".join(rows) + f"</tbody></table></div>{note}"
    )


def _psi_row(c: ColumnDrift) -> str:
    moves = sorted(zip(c.bins, c.training, c.current, strict=True), key=lambda t: -abs(t[2] - t[1]))
    label, before, now = moves[0] if moves else ("-", 0.0, 0.0)
    shown = "expected" if c.expected else c.status
    status_text = "not judged" if c.expected else STATUS_TEXT[c.status]
    return (
        f"<tr class='psi-{shown}'><th>{html.escape(c.name)}</th><td>{c.psi:.3f}</td>"
        f"<td class='status'>{shown} ({status_text})</td>"
        f"<td>{html.escape(label)}: {before:.1%} &rarr; {now:.1%}</td></tr>"
    )


def _div(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


_CSS = """
.psi-ok .status,span.psi-ok{color:#2E7D32} .psi-warn .status,span.psi-warn{color:#b26a00;font-weight:600}
.psi-alert .status,span.psi-alert{color:#c62828;font-weight:700} .psi-expected .status{color:#777}
.psi-scroll{max-height:480px;overflow-y:auto} .outcome-grid{display:grid;grid-template-columns:1fr 2fr;gap:16px}
table.psi-table td:last-child{text-align:left}
"""
