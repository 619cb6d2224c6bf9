"""Terminal output: summaries as rich tables, progress for long work. Presentation only, no logic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.dataset import ValidationReport

console = Console(stderr=False, highlight=False)
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
def progress(description: str, total: int | None = None) -> Iterator[callable]:
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
