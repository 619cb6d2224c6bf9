"""The lifecycle report: one self-contained HTML page a retention team reads (``churn report``).

What is on the page, and where each number comes from:

* KPIs per month (charts and a table): ``features.kpis.lifecycle_facts``; every KPI's definition is printed from
  ``features.kpis.KPIS``, the same source as ``docs/kpis.md``.
* Customers per lifecycle stage at every month end, the month-over-month transition matrix and the monthly flows
  (lapsed, reactivated): the stage inputs at each month end (registry features, ``features.kpis``) put through
  the one stage rule function, ``lifecycle_stages`` of the scorecard. Its ``at_risk`` rule needs the model's churn
  probability. With a model (``StageScores``, filled by ``serving.health.build_model_report``) the last month
  end(s) are scored: the customers whose stage depends on the score (those the rules would place after
  ``reactivated``) get the model's probability, and the ones at or above the high tier threshold are ``at_risk``.
  Every other month end is *rule-only*: no customer can be ``at_risk`` there, those customers show under ``loyal``
  or ``active``, and the page marks those months. Without a model every month end is rule-only and the page says
  so.
* Cohort retention heatmap and the per-stage KPI table at ``as_of`` (its churn rate is the churn rate KPI of the
  last month, by the stage the customers were in at its start).
* Model health: a slot that a model-aware caller fills (``ReportSection``); without one the page says "no model".

Charts are Plotly with plotly.js inlined once, so the file works offline (no CDN) and stays under 10 MB.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.dataset import Dataset
from features.io import atomic_path
from features.kpis import (
    COHORT_DEFINITION,
    KPIS,
    STAGE_INPUT_COLUMNS,
    TERMS,
    LifecycleFacts,
    active_flags,
    lifecycle_facts,
    previous_rows,
)
from model import scorecard
from model.scorecard import STAGES, LifecycleRules, lifecycle_stages

FIRST_ORDER = "(first order)"  # the "from" row of customers whose first order falls in the month
NO_MODEL = (
    "No model: the model-health section (score distribution now vs at training, predicted vs observed churn, "
    "PSI per feature) needs a registered model and appears here once one is given to the report."
)
AT_RISK_NOTE = (
    "at_risk needs the model's churn probability; this report has no model score, so no customer is at_risk here "
    "and those customers appear as loyal or active, as the stage rules place them without a score."
)
RULE_ONLY = "rule-only"  # a month end without model scores: nobody can be at_risk there


@dataclass(frozen=True)
class StageScores:
    """The model's churn probability at some month ends, for the customers whose stage depends on it.

    ``scores``: ``customer_id``, ``as_of`` (one of ``month_ends``), ``churn_probability``; a customer at or above
    ``high_threshold`` is at_risk (if no earlier rule places them). Month ends not in ``month_ends`` are rule-only.
    """

    model_version: str
    high_threshold: float
    month_ends: tuple[datetime, ...]
    scores: pd.DataFrame


@dataclass(frozen=True)
class ReportSection:
    """A section another layer adds to the page (e.g. model health): a title and trusted HTML."""

    title: str
    html: str


@dataclass(frozen=True)
class LifecycleReport:
    facts: LifecycleFacts
    stage_counts: pd.DataFrame  # index: month end; columns: STAGES
    transitions: np.ndarray  # [month, from (FIRST_ORDER + STAGES), to (STAGES)]
    stage_table: pd.DataFrame  # per stage at as_of (see _stage_table)
    scores: StageScores | None = None  # None: every month end is rule-only
    model_health: ReportSection | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def as_of(self) -> datetime:
        return self.facts.as_of

    @property
    def has_model_scores(self) -> bool:
        return self.scores is not None and bool(self.scores.month_ends)

    def scored(self, month_end: datetime) -> bool:
        """Whether the stages at this month end used the model's score (else: rule-only, no at_risk)."""
        return self.scores is not None and month_end in self.scores.month_ends


def default_as_of(data: Dataset) -> datetime:
    """Midnight after the last transaction: the whole data, and month ends at midnights."""
    end = data.data_end
    return datetime(end.year, end.month, end.day) + timedelta(days=1)


def build_report(
    data: Dataset,
    *,
    as_of: datetime | date | None = None,
    horizon_days: int,
    rules: LifecycleRules | None = None,
    model_health: ReportSection | None = None,
    facts: LifecycleFacts | None = None,
    scores: StageScores | None = None,
) -> LifecycleReport:
    """Compute everything the page shows. ``facts``: the ``lifecycle_facts`` already computed for this as_of;
    ``scores``: the model's churn probability at some month ends (without: every month end rule-only)."""
    import time

    timings: dict[str, float] = {}
    t = time.perf_counter()
    if facts is None:
        when = as_of or default_as_of(data)
        when = when if isinstance(when, datetime) else datetime(when.year, when.month, when.day)
        facts = lifecycle_facts(data, when, horizon_days=horizon_days)
    timings["kpis"] = time.perf_counter() - t

    t = time.perf_counter()
    codes = stage_codes(facts, rules or LifecycleRules(), scores)
    timings["stages"] = time.perf_counter() - t

    t = time.perf_counter()
    n_months = len(facts.month_ends)
    period = facts.stage_inputs["period"].to_numpy()
    counts = np.bincount(period * len(STAGES) + codes, minlength=n_months * len(STAGES)).reshape(n_months, -1)
    stage_counts = pd.DataFrame(counts, index=pd.to_datetime(list(facts.month_ends)), columns=list(STAGES))
    prev = previous_rows(facts.stage_inputs)
    origin = np.where(prev >= 0, codes[np.maximum(prev, 0)] + 1, 0)  # 0: first order this month
    size_from, size_to = len(STAGES) + 1, len(STAGES)
    transitions = np.bincount(
        (period * size_from + origin) * size_to + codes, minlength=n_months * size_from * size_to
    ).reshape(n_months, size_from, size_to)
    timings["transitions"] = time.perf_counter() - t

    t = time.perf_counter()
    stage_table = _stage_table(facts, codes, period, prev)
    timings["stage_table"] = time.perf_counter() - t
    return LifecycleReport(facts, stage_counts, transitions, stage_table, scores, model_health, timings)


def score_dependent(facts: LifecycleFacts, rules: LifecycleRules, month_end: datetime) -> pa.Array:
    """The customers whose stage at ``month_end`` depends on the churn score: the rule function, given a score that
    always passes, places them at_risk (no earlier rule - lapsed, new, reactivated - takes them). They had an order
    and had not cancelled; everybody else's stage is the same with or without a model."""
    period = facts.month_ends.index(month_end)
    rows = facts.stage_inputs.filter(pc.equal(facts.stage_inputs["period"], period))
    frame = rows.select(list(STAGE_INPUT_COLUMNS)).to_pandas()
    stages = lifecycle_stages(
        frame, np.ones(len(frame)), horizon_days=facts.horizon_days, high_threshold=1.0, rules=rules
    )
    return rows["customer_id"].filter(pa.array(stages == "at_risk")).combine_chunks()


def stage_probabilities(facts: LifecycleFacts, rules: LifecycleRules, scores: StageScores | None) -> np.ndarray:
    """Each stage-input row's churn probability: the model's at the scored month ends for the customers whose stage
    depends on it, NaN elsewhere (NaN >= threshold is false: the at_risk rule never fires there)."""
    p = np.full(facts.stage_inputs.num_rows, np.nan)
    if scores is None:
        return p
    period = facts.stage_inputs["period"].to_numpy()
    ids = facts.stage_inputs["customer_id"]
    for end in scores.month_ends:
        at = np.flatnonzero(period == facts.month_ends.index(end))
        need = score_dependent(facts, rules, end)
        mine = scores.scores.loc[scores.scores["as_of"] == pd.Timestamp(end)]
        missing = pc.invert(pc.is_in(need, value_set=pa.array(mine["customer_id"].to_numpy(), pa.string())))
        if pc.any(missing).as_py():
            raise ValueError(
                f"{pc.sum(missing).as_py():,} customers whose stage at {end:%Y-%m-%d} depends on the churn score "
                f"have none (e.g. {pc.filter(need, missing)[0]})"
            )
        by_id = pd.Series(mine["churn_probability"].to_numpy(float), index=mine["customer_id"].to_numpy())
        p[at] = by_id.reindex(ids.take(pa.array(at)).to_numpy(zero_copy_only=False)).to_numpy(float)
    return p


def stage_codes(
    facts: LifecycleFacts,
    rules: LifecycleRules,
    scores: StageScores | None = None,
    rows_per_call: int = 1_000_000,
) -> np.ndarray:
    """Each stage-input row's lifecycle stage as an index into ``STAGES``, from the scorecard's one rule function,
    with the model's churn probability where ``scores`` has it (``stage_probabilities``). Called on slices, so the
    strings it returns never exist for all rows at once."""
    inputs = facts.stage_inputs.select(list(STAGE_INPUT_COLUMNS))
    p = stage_probabilities(facts, rules, scores)
    threshold = scores.high_threshold if scores is not None else 1.0
    lookup = {stage: i for i, stage in enumerate(STAGES)}
    codes = np.empty(inputs.num_rows, np.int64)
    for start in range(0, inputs.num_rows, rows_per_call):
        frame = inputs.slice(start, rows_per_call).to_pandas()
        stages = lifecycle_stages(
            frame,
            p[start : start + len(frame)],
            horizon_days=facts.horizon_days,
            high_threshold=threshold,
            rules=rules,
        )
        codes[start : start + len(frame)] = pd.Series(stages).map(lookup).to_numpy()
    return codes


def stage_history(facts: LifecycleFacts, rules: LifecycleRules, scores: StageScores | None = None) -> np.ndarray:
    """The stage names of ``stage_codes``."""
    return np.asarray(STAGES)[stage_codes(facts, rules, scores)]


def _stage_table(facts: LifecycleFacts, codes: np.ndarray, period: np.ndarray, prev: np.ndarray) -> pd.DataFrame:
    """Per stage: who is in it at as_of and what they did so far; the month's churn rate by the stage at its start.

    The stage-input rows of the last month end are the customers with an order, in the order of
    ``facts.customers`` (both follow the customer numbers of ``lifecycle_facts``).
    """
    last = period == len(facts.month_ends) - 1
    now = codes[last]
    totals = facts.customers
    if not facts.stage_inputs["customer_id"].filter(pa.array(last)).equals(totals["customer_id"]):
        raise AssertionError("stage inputs and customer totals are not aligned")
    orders = totals["orders"].to_numpy()
    k = len(STAGES)

    def per_stage(values: np.ndarray) -> np.ndarray:
        return np.bincount(now, weights=values, minlength=k)

    customers = np.bincount(now, minlength=k)
    n = np.maximum(customers, 1)
    table = pd.DataFrame(
        {
            "customers": customers,
            "share": customers / max(int(customers.sum()), 1),
            "orders_per_customer": per_stage(orders) / n,
            "average_order_value": per_stage(totals["order_value"].to_numpy()) / np.maximum(per_stage(orders), 1),
            "historic_clv": per_stage(totals["net_spend"].to_numpy()) / n,
            "repeat_customers": per_stage((orders >= 2).astype(float)) / n,
        },
        index=list(STAGES),
    )
    table.loc[customers == 0, table.columns[2:]] = np.nan
    # churn rate of the last month (the KPI's definition), by the stage at its start
    active = active_flags(facts.stage_inputs, facts.horizon_days)
    had = last & (prev >= 0)
    start_stage = codes[prev[had]]
    at_start = np.bincount(start_stage, minlength=k)
    churned = np.bincount(start_stage, weights=active[prev[had]] & ~active[had], minlength=k)
    rate = np.where(at_start > 0, churned / np.maximum(at_start, 1), np.nan)
    rate[STAGES.index("lapsed")] = np.nan  # lapsed customers cannot churn again
    table["churn_rate"] = rate
    return table


# ------------------------------------------------------------------------------------------------ rendering


def stage_definitions() -> list[tuple[str, str]]:
    """(stage, rule) rows from the scorecard's own docstring table: the page prints the rules from their source."""
    rows = re.findall(r"^\|\s*(\w+)\s*\|\s*(.+?)\s*\|\s*$", scorecard.__doc__ or "", flags=re.MULTILINE)
    return [(s, r) for s, r in rows if s in STAGES]


def render_html(report: LifecycleReport) -> str:
    import plotly.offline

    facts = report.facts
    figures = _figures(report)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>churnguard lifecycle report, as of {facts.as_of:%Y-%m-%d}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body><main>",
        f"<h1>Customer lifecycle report</h1><p class='meta'>As of {_when(facts.as_of)} &middot; churn horizon "
        f"H = {facts.horizon_days} days &middot; {len(facts.month_ends)} months from "
        f"{pd.Timestamp(facts.months['month_start'][0].as_py()):%B %Y} &middot; "
        f"{facts.customers.num_rows:,} customers with an order. Definitions are at the "
        "<a href='#definitions'>end of the page</a>.</p>",
        "<section id='kpis'><h2>KPIs per month</h2>",
        _div(figures["kpis"]),
        _month_table(facts),
        "</section>",
        "<section id='stages'><h2>Lifecycle stages over time</h2>",
        f"<p class='note at-risk-note'>{html.escape(scoring_note(report))}</p>",
        _div(figures["stages"]),
        _stage_counts_html(report),
        "<h3>Stage transitions, month over month</h3>",
        f"<p>Where the customers of each stage at {_end_label(report, -2)} were at {_end_label(report, -1)} "
        "(rows: from, columns: to; colour: share of the row).</p>",
        _div(figures["transitions"]),
        _div(figures["flows"]),
        "</section>",
        "<section id='cohorts'><h2>Cohort retention</h2>",
        f"<p>{html.escape(COHORT_DEFINITION)}</p>",
        _div(figures["cohorts"]),
        "</section>",
        "<section id='per-stage'><h2>KPIs per stage</h2>",
        _stage_table_html(report),
        "</section>",
        "<section id='model-health'><h2>Model health</h2>",
        report.model_health.html if report.model_health else f"<p class='no-model'>{html.escape(NO_MODEL)}</p>",
        "</section>",
        _definitions_html(facts),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def scoring_note(report: LifecycleReport) -> str:
    """What the stages at each month end rest on: the model's score or the rules alone (shown above the chart)."""
    if not report.has_model_scores:
        return AT_RISK_NOTE
    sc = report.scores
    assert sc is not None
    ends = report.facts.month_ends
    scored = [e for e in ends if report.scored(e)]
    rule_only = len(ends) - len(scored)
    text = (
        f"at_risk uses model {sc.model_version}'s churn probability (at or above the high tier threshold, "
        f"{sc.high_threshold:g}) at {_plural(len(scored), 'month end')}: {', '.join(_when(e) for e in scored)}."
    )
    if rule_only:
        text += (
            f" The other {_plural(rule_only, 'month end')} are rule-only (shaded and marked '{RULE_ONLY}'): no "
            "customer can be at_risk there, and those customers appear as loyal or active, as the stage rules place "
            "them without a score (setting report.scored_month_ends scores more month ends)."
        )
    return text


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _end_label(report: LifecycleReport, i: int) -> str:
    ends = report.facts.month_ends
    if len(ends) < -i:
        return "-"
    return _when(ends[i]) + ("" if report.scored(ends[i]) else f" ({RULE_ONLY})")


def _stage_counts_html(report: LifecycleReport) -> str:
    """The numbers behind the stage chart, each month end marked scored (model version) or rule-only."""
    counts = report.stage_counts
    head = "".join(f"<th>{html.escape(s)}</th>" for s in STAGES)
    rows = []
    for end, r in zip(reversed(report.facts.month_ends), counts.iloc[::-1].itertuples(index=False), strict=True):
        scored = report.scored(end)
        basis = f"model {report.scores.model_version}" if scored and report.scores else RULE_ONLY
        cells = "".join(
            "<td class='na'>-</td>" if s == "at_risk" and not scored else f"<td>{int(v):,}</td>"
            for s, v in zip(STAGES, r, strict=True)
        )
        rows.append(
            f"<tr class='{'scored' if scored else 'rule-only'}'><th>{_when(end)}</th>{cells}<td>{basis}</td></tr>"
        )
    return (
        "<details><summary>The numbers (latest month end first; at_risk: model score or rule-only)</summary>"
        f"<div class='scroll'><table class='stage-counts'><thead><tr><th>month end</th>{head}<th>at_risk from</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></details>"
    )


def write_report(report: LifecycleReport, out: Path) -> Path:
    text = render_html(report)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out)


def _when(t: datetime) -> str:
    return f"{t:%Y-%m-%d}" if (t.hour, t.minute, t.second) == (0, 0, 0) else f"{t:%Y-%m-%d %H:%M}"


def _div(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


_STAGE_COLOURS = {
    "new": "#4C78A8",
    "active": "#54A24B",
    "loyal": "#2E7D32",
    "at_risk": "#F58518",
    "lapsed": "#9D9D9D",
    "reactivated": "#B279A2",
}


def _figures(report: LifecycleReport) -> dict:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    facts = report.facts
    months = facts.months.to_pandas()
    x = months["month_start"]
    kpi_fig = make_subplots(rows=4, cols=2, subplot_titles=[k.label for k in KPIS], vertical_spacing=0.09)
    for i, k in enumerate(KPIS):
        y = months[k.name]
        kpi_fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=k.label,
                showlegend=False,
                hovertemplate=f"%{{x|%b %Y}}: %{{y:{_fmt(k.unit)}}}<extra>{k.label}</extra>",
            ),
            row=i // 2 + 1,
            col=i % 2 + 1,
        )
        if k.unit == "share":
            kpi_fig.update_yaxes(tickformat=".0%", row=i // 2 + 1, col=i % 2 + 1)
    kpi_fig.update_layout(height=900, margin={"t": 40, "b": 30, "l": 50, "r": 20})

    counts = report.stage_counts
    basis = [
        f"model {report.scores.model_version}" if report.scores and report.scored(e) else RULE_ONLY
        for e in facts.month_ends
    ]
    stages_fig = go.Figure()
    for stage in STAGES:
        if stage == "at_risk" and not report.has_model_scores:
            continue
        stages_fig.add_trace(
            go.Scatter(
                x=counts.index,
                y=counts[stage],
                name=stage,
                stackgroup="one",
                mode="lines",
                line={"color": _STAGE_COLOURS[stage]},
                customdata=basis,
                hovertemplate=f"{stage}: %{{y:,}} (%{{customdata}})<extra></extra>",
            )
        )
    rule_only = [e for e in facts.month_ends if not report.scored(e)]
    if report.has_model_scores and rule_only:  # the months whose stages could not include at_risk
        stages_fig.add_vrect(
            x0=rule_only[0],
            x1=rule_only[-1],
            fillcolor="#999",
            opacity=0.12,
            line_width=0,
            annotation_text=f"{RULE_ONLY}: no model score, no at_risk",
            annotation_position="top left",
        )
    stages_fig.update_layout(
        height=380, yaxis_title="customers at month end", margin={"t": 20, "b": 30}, hovermode="x unified"
    )

    last = report.transitions[-1]
    rows = [FIRST_ORDER, *STAGES]
    keep_rows = [i for i, r in enumerate(rows) if last[i].sum() > 0]
    keep_cols = [j for j, s in enumerate(STAGES) if s != "at_risk" or report.scored(facts.month_ends[-1])]
    matrix = last[np.ix_(keep_rows, keep_cols)]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    trans_fig = go.Figure(
        go.Heatmap(
            z=share,
            x=[STAGES[j] for j in keep_cols],
            y=[rows[i] for i in keep_rows],
            text=[[f"{v:,}" for v in row] for row in matrix],
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "share", "tickformat": ".0%"},
            hovertemplate="%{y} -> %{x}: %{text} customers (%{z:.1%} of the row)<extra></extra>",
        )
    )
    trans_fig.update_layout(
        height=380,
        xaxis_title="to (this month end)",
        yaxis_title="from (last month end)",
        yaxis={"autorange": "reversed"},
        margin={"t": 20, "b": 40},
    )

    code = {s: i for i, s in enumerate(STAGES)}
    lapsed_in = (
        report.transitions[:, 1:, code["lapsed"]].sum(axis=1)
        - report.transitions[:, 1 + code["lapsed"], code["lapsed"]]
    )
    # won back: lapsed at the last month end, any other stage now (a customer who orders twice in the month is
    # already past "reactivated": that stage only looks at the gap before the latest order)
    won_back = (
        report.transitions[:, 1 + code["lapsed"], :].sum(axis=1)
        - report.transitions[:, 1 + code["lapsed"], code["lapsed"]]
    )
    flows_fig = go.Figure(
        [
            go.Scatter(
                x=counts.index, y=lapsed_in, name="became lapsed", mode="lines+markers", line={"color": "#9D9D9D"}
            ),
            go.Scatter(
                x=counts.index,
                y=won_back,
                name="won back (lapsed -> any other stage)",
                mode="lines+markers",
                line={"color": "#B279A2"},
            ),
        ]
    )
    flows_fig.update_layout(
        height=300, yaxis_title="customers in the month", margin={"t": 20, "b": 30}, hovermode="x unified"
    )

    cohorts = facts.cohorts.to_pandas()
    grid = cohorts.pivot(index="cohort", columns="months_since", values="retention")
    sizes = cohorts.groupby("cohort")["customers"].first()
    labels = [f"{pd.Timestamp(c):%Y-%m} ({sizes[c]:,})" for c in grid.index]
    text = [[("" if pd.isna(v) else f"{v:.0%}") for v in row] for row in grid.to_numpy()]
    cohort_fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=list(grid.columns),
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Greens",
            zmin=0,
            zmax=1,
            colorbar={"title": "retained", "tickformat": ".0%"},
            hovertemplate="cohort %{y}, month %{x}: %{z:.1%}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    cohort_fig.update_layout(
        height=max(320, 22 * len(labels) + 120),
        xaxis_title="months since first order",
        yaxis={"autorange": "reversed", "title": "cohort (customers)"},
        margin={"t": 20, "b": 40},
    )
    return {"kpis": kpi_fig, "stages": stages_fig, "transitions": trans_fig, "flows": flows_fig, "cohorts": cohort_fig}


def _fmt(unit: str) -> str:
    return {"share": ".1%", "money": ",.2f", "count": ",d"}[unit]


def _cell(value: object, unit: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<td class='na'>-</td>"
    if unit == "share":
        return f"<td>{value:.1%}</td>"
    if unit == "money":
        return f"<td>{value:,.2f}</td>"
    return f"<td>{int(value):,}</td>"


def _month_table(facts: LifecycleFacts) -> str:
    months = facts.months.to_pylist()
    head = "".join(f"<th title='{html.escape(k.definition)}'>{html.escape(k.label)}</th>" for k in KPIS)
    rows = []
    for m in reversed(months):
        label = f"{m['month_start']:%Y-%m}" + (f" (to {_when(m['month_end'])})" if m["partial"] else "")
        rows.append(f"<tr><th>{label}</th>" + "".join(_cell(m[k.name], k.unit) for k in KPIS) + "</tr>")
    return (
        "<details open><summary>The numbers (latest month first)</summary><div class='scroll'>"
        f"<table class='kpi-table'><thead><tr><th>month</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div></details>"
    )


_STAGE_COLUMNS = (
    ("customers", "Customers", "count", "Customers in the stage at as_of."),
    ("share", "Share", "share", "Share of the customers with an order."),
    ("orders_per_customer", "Orders per customer", "money", "Orders before as_of, on average."),
    ("average_order_value", "Average order value", "money", "Their orders' value / number of orders, all time."),
    ("historic_clv", "Historic CLV", "money", "Net spend (purchases minus refunds) per customer, all time."),
    ("repeat_customers", "Repeat customers", "share", "Share with 2 or more orders."),
    (
        "churn_rate",
        "Churn rate (last month)",
        "share",
        "The churn rate KPI of the last month, by the stage the customers were in at its start: the share not "
        "active at its end. Not shown for lapsed customers (already churned).",
    ),
)


def _stage_table_html(report: LifecycleReport) -> str:
    table = report.stage_table
    head = "".join(f"<th title='{html.escape(d)}'>{html.escape(label)}</th>" for _, label, _, d in _STAGE_COLUMNS)
    rows = []
    for stage, r in table.iterrows():
        if stage == "at_risk" and not report.scored(report.as_of):
            cells = "<td class='na' colspan='7'>needs a model score</td>"
        else:
            cells = "".join(_cell(r[c], unit) for c, _, unit, _ in _STAGE_COLUMNS)
        rows.append(f"<tr><th>{stage}</th>{cells}</tr>")
    facts = report.facts
    start = _when(facts.month_ends[-2]) if len(facts.month_ends) > 1 else "-"
    window = (
        f"Stages at {_when(facts.as_of)}; the churn rate column follows the customers by their stage at {start}, "
        f"over the month to {_when(facts.as_of)}."
    )
    if report.scored(facts.as_of) and len(facts.month_ends) > 1 and not report.scored(facts.month_ends[-2]):
        window += (
            f" The stages at {start} are {RULE_ONLY} (no model score there): nobody was at_risk at the start, so the "
            "at_risk row has no churn rate and the customers who would have been count under loyal or active."
        )
    notes = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(d)}</li>" for _, label, _, d in _STAGE_COLUMNS)
    return (
        f"<p>{html.escape(window)}</p><div class='scroll'><table class='stage-table'><thead><tr><th>stage</th>{head}"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div><ul class='small'>{notes}</ul>"
    )


def _definitions_html(facts: LifecycleFacts) -> str:
    kpis = "".join(
        f"<tr><th>{html.escape(k.label)}</th><td><code>{k.name}</code></td><td>{html.escape(k.definition)}</td></tr>"
        for k in KPIS
    )
    terms = "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(d)}</li>" for t, d in TERMS)
    stages = "".join(f"<tr><th>{html.escape(s)}</th><td>{html.escape(r)}</td></tr>" for s, r in stage_definitions())
    return (
        "<section id='definitions'><h2>Definitions</h2>"
        f"<p>H = {facts.horizon_days} days. Every KPI uses only rows before the end of its month.</p>"
        f"<table class='defs'><thead><tr><th>KPI</th><th>column</th><th>definition</th></tr></thead>"
        f"<tbody>{kpis}</tbody></table><ul>{terms}</ul>"
        "<h3>Lifecycle stages (first rule that matches)</h3>"
        f"<table class='defs'><tbody>{stages}</tbody></table></section>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{margin-bottom:4px} .meta{color:#555;margin-top:0}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 18px;margin:18px 0}
table{border-collapse:collapse;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}
th{text-align:left;font-weight:600} td.na{color:#999;text-align:center} .scroll{overflow-x:auto}
table.defs td{text-align:left} .note,.no-model{background:#fff7e6;border-left:4px solid #f58518;padding:6px 10px}
.small{font-size:12px;color:#555} tr.rule-only td:last-child{color:#999;font-style:italic}
"""
