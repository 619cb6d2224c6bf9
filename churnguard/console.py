"""Terminal output: summaries as rich tables, progress for long work. Presentation only, no logic."""

from __future__ import annotations

import sys  # noqa: E402
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.dataset import ValidationReport

if TYPE_CHECKING:
    from model.monitoring import ModelHealth
    from serving.lift import LiftResult
    from serving.scoring import BatchResult
    from training.backtest import BacktestResult
    from training.evaluation import Evaluation

# piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_validation(report: ValidationReport, *, verbose: bool = True) -> None:
    """Rows read / kept / rejected per table and reason, then customers, dates and events per type."""
    if not verbose:
        console.print(
            f"[dim]validated: {report.rows_read:,} rows read, {report.rows_kept:,} kept, "
            f"{report.rows_rejected:,} rejected; {report.n_customers:,} customers[/dim]"
        )
        return
    table = Table(title="Validation", title_justify="left")
    for col in ("table", "source", "read", "kept", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("read", "kept", "rejected") else "left")
    for t in report.tables:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(t.rejected.items(), key=lambda kv: -kv[1]))
        table.add_row(t.name, t.source, f"{t.rows_read:,}", f"{t.rows_kept:,}", f"{t.rows_rejected:,}", reasons or "-")
    console.print(table)
    if report.first_timestamp:
        console.print(
            f"customers: {report.n_customers:,}   transactions from {report.first_timestamp:%Y-%m-%d %H:%M} "
            f"to {report.last_timestamp:%Y-%m-%d %H:%M}"
        )
    if report.events_per_type:
        console.print("events per type: " + ", ".join(f"{k}: {v:,}" for k, v in report.events_per_type.items()))
    ignored = [f"{t.name}: {', '.join(t.ignored_columns)}" for t in report.tables if t.ignored_columns]
    if ignored:
        console.print("[dim]columns not in the contract (ignored): " + "; ".join(ignored) + "[/dim]")


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int, str | None], None]]:
    """A progress bar; yields ``advance(n=1, description=None)``."""
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}" if total else ""),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def print_comparison(evaluation: Evaluation, title: str = "Held-out comparison") -> None:
    """Candidates side by side on the held-out snapshot; the best value of each metric in bold."""
    from training.report import LOWER_IS_BETTER, METRIC_ORDER, comparison_rows

    rows = comparison_rows(evaluation)
    best = {m: (min if m in LOWER_IS_BETTER else max)(r[m] for r in rows) for m in METRIC_ORDER}
    table = Table(
        title=f"{title}: snapshot {evaluation.holdout_as_of}, {evaluation.n_holdout:,} customers, "
        f"churn rate {evaluation.holdout_churn_rate:.1%}",
        title_justify="left",
    )
    table.add_column("model")
    table.add_column("role")
    for m in METRIC_ORDER:
        table.add_column(m + (" ↓" if m in LOWER_IS_BETTER else " ↑"), justify="right")
    for r in rows:
        cells = [f"[bold]{r[m]:.4f}[/bold]" if r[m] == best[m] else f"{r[m]:.4f}" for m in METRIC_ORDER]
        table.add_row(r["model"], r["role"], *cells)
    console.print(table)
    console.print(f"[green]{evaluation.selection}[/green]")
    s = evaluation.survival
    if s:
        console.print(
            f"survival: concordance {s['survival_concordance']:.3f}, integrated Brier {s['survival_ibs']:.4f}; "
            "churned by 30/60/90 days observed "
            + "/".join(f"{s[f'survival_churned_by_{t}d_observed']:.2f}" for t in (30, 60, 90))
            + " vs predicted "
            + "/".join(f"{s[f'survival_churned_by_{t}d_predicted']:.2f}" for t in (30, 60, 90))
        )
    v = evaluation.value
    if v:
        console.print(
            f"value: Spearman {v['value_spearman']:.3f} with spend in the window, "
            f"predicted/actual {v['value_ratio_predicted_to_actual']:.2f}"
        )
    rates = [f"{d} {r:.1%}" for d, r in evaluation.snapshot_churn_rates.items()]
    if rates:
        shown = rates if len(rates) <= 8 else [*rates[:3], "...", *rates[-4:]]
        trend = evaluation.churn_rate_trend
        console.print(
            f"churn rate per snapshot ({len(rates)}): "
            + ", ".join(shown)
            + (f"; trend {trend['per_30_days']:+.1%} per 30 days" if trend else "")
        )
    if evaluation.production:
        console.print(f"production fit: {evaluation.production['description']}")
    for w in evaluation.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def print_backtest(result: BacktestResult) -> None:
    """Per cutoff, each model's metrics on the customers judged there; then the mean over cutoffs."""
    from training.backtest import LOWER_IS_BETTER, METRICS

    table = Table(title=f"Backtest of the production protocol (H = {result.horizon_days} days)", title_justify="left")
    for col in ("cutoff", "model", "judged", "churn rate"):
        table.add_column(col, justify="left" if col in ("cutoff", "model") else "right")
    shown = [m for m in METRICS if m != "observed"]
    for m in shown:
        arrow = "" if m == "mean_predicted" else (" ↓" if m in LOWER_IS_BETTER else " ↑")
        table.add_column(m + arrow, justify="right")
    by_cutoff: dict[str, list[dict]] = {}
    for r in result.rows():
        by_cutoff.setdefault(r["cutoff"], []).append(r)
    for rows in by_cutoff.values():
        best = {m: (min if m in LOWER_IS_BETTER else max)(r[m] for r in rows) for m in shown if m != "mean_predicted"}
        for r in rows:
            cells = [f"[bold]{r[m]:.4f}[/bold]" if m in best and r[m] == best[m] else f"{r[m]:.4f}" for m in shown]
            table.add_row(r["cutoff"], r["model"], f"{r['n']:,}", f"{r['churn_rate']:.3f}", *cells)
    for model, m in result.mean().items():
        table.add_row("mean", model, "", "", *[f"{m[k]:.4f}" for k in shown])
    console.print(table)
    for cutoff, why in result.refused.items():
        console.print(f"[yellow]cutoff {cutoff} refused:[/yellow] {why}")
    for c in result.cutoffs:
        console.print(
            f"[dim]{c.cutoff}: winner {c.winner} (held out {c.selection_holdout}); "
            f"{c.production.get('description', '')}[/dim]"
        )


def print_batch_summary(result: BatchResult, model_version: str) -> None:
    s = result.summary
    console.print(
        f"model {model_version}: [bold]{s.customers_scored:,}[/bold] customers scored, "
        f"{s.customers_rejected:,} not scored = {result.n_input_customers:,} input customers "
        f"[green](accounted for)[/green]"
    )
    for reason, n in s.rejected_by_reason.items():
        console.print(f"  not scored: {n:,}  {reason}")
    console.print("risk tiers: " + ", ".join(f"{t} {v:.1%}" for t, v in s.share_per_tier.items()))
    console.print("stages: " + ", ".join(f"{t} {v:.1%}" for t, v in s.share_per_stage.items()))
    console.print(f"total value at risk: {s.total_value_at_risk:,.0f}")
    console.print(
        f"outreach: {s.outreach_size:,} customers ({s.outreach_control:,} held out as control), expected value "
        f"saved {s.outreach_expected_value_saved:,.0f}; actions: "
        + ", ".join(f"{a} {n:,}" for a, n in s.actions.items())
    )
    if 0 < s.outreach_explained < s.outreach_size:
        console.print(
            f"top_reasons for the first {s.outreach_explained:,} of the {s.outreach_size:,} on the list "
            "(scoring.reasons_limit; --capacity or CHURN_SCORING__REASONS_LIMIT to change)"
        )
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def print_health(health: ModelHealth, *, rows: int = 15) -> None:
    """The model-health summary: the outcome check, then the PSI of the score and the most shifted features."""
    colour = {"ok": "green", "warn": "yellow", "alert": "red"}
    o = health.outcome
    if o is not None:
        auc = f", AUC {o.roc_auc:.3f}" if o.roc_auc is not None else ""
        console.print(
            f"window {o.window_start:%Y-%m-%d} to {o.window_end:%Y-%m-%d}: predicted churn {o.predicted:.1%}, "
            f"observed {o.observed:.1%} ({o.customers:,} customers{auc}, Brier {o.brier:.4f})"
            + (" [dim](in-sample: the model learned from this window)[/dim]" if o.in_sample else "")
        )
    for note in health.notes:
        console.print(f"[dim]{note}[/dim]")
    if health.no_reference:
        return
    table = Table(
        title=f"PSI against the training snapshot {health.reference_as_of} ({health.customers:,} customers today; "
        f"warn >= {health.psi_warn:g}, alert >= {health.psi_alert:g})",
        title_justify="left",
    )
    for col in ("column", "PSI", "status"):
        table.add_column(col, justify="right" if col == "PSI" else "left")
    columns = sorted(health.columns, key=lambda c: -c.psi)
    shown = columns[:rows]
    if health.score is not None and health.score not in shown:
        shown.append(health.score)
    for c in shown:
        state = "[dim]not judged (grows with history)[/dim]" if c.expected else f"[{colour[c.status]}]{c.status}[/]"
        table.add_row(c.name, f"{c.psi:.3f}", state)
    console.print(table)
    rest = [c for c in columns if c not in shown]
    if rest:
        console.print(f"[dim]{len(rest)} more columns, PSI at most {rest[0].psi:.3f}[/dim]")


def print_lift(result: LiftResult) -> None:
    """The lift table: a rule's lift is green when its whole interval is above 0, red when below."""
    from serving.lift import NUMERIC_COLUMNS, STACKED_COLUMNS, table_caption, table_notes, table_rows

    table = Table(
        title=f"Measured lift of the trigger rules (within {result.horizon_days} days of firing, treated vs control)",
        title_justify="left",
    )
    for i, col in enumerate(STACKED_COLUMNS):
        table.add_column(col, justify="right" if i in NUMERIC_COLUMNS else "left", no_wrap=True)
    for r, row in zip(result.rules, table_rows(result, stacked=True), strict=True):
        if r.ci_low is not None and r.ci_low > 0:
            row[3] = f"[green]{row[3]}[/green]"
        elif r.ci_high is not None and r.ci_high < 0:
            row[3] = f"[red]{row[3]}[/red]"
        table.add_row(*row, end_section=True)
    console.print(table)
    for note in table_notes(result):
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"[dim]{table_caption(result)}[/dim]")


def print_trigger_run(run: Any, rules: Any, location: str) -> None:
    """Per rule: matched, held back by the cool-down or the contact cap, fired (of which control)."""
    table = Table(title=f"triggers as of {run.as_of:%Y-%m-%d %H:%M}", title_justify="left")
    for col in ("rule", "action", "matched", "cool-down", "capped", "fired", "of which control"):
        table.add_column(col, justify="left" if col in ("rule", "action") else "right")
    for name, c in run.rules.items():
        values = (c.matched, c.cooldown, c.capped, c.fired, c.control)
        table.add_row(name, rules.rules[name].action, *(f"{v:,}" for v in values))
    console.print(table)
    console.print(
        f"{run.customers_evaluated:,} customers evaluated, {run.prospects_evaluated:,} prospects on the event-only "
        f"rules ({run.customers_not_evaluated:,} not evaluated); "
        f"{run.added:,} new outbox items in {location}"
    )
