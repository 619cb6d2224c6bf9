"""The ``churn`` command. Each subcommand builds the settings, calls one library function, prints a summary.

No logic lives only here: tests and notebooks call the same functions in ``features/``, ``training/`` and
``serving/``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from churnguard.console import console, err_console, print_validation
from churnguard.settings import Settings, load_settings, now_utc

app = typer.Typer(
    name="churn",
    help="churnguard: who is about to leave, when, why, and what it is worth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]

DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Input folder: transactions.{csv,parquet}, optional "
                                       "events.* and customers.*, optional churnguard.yaml column mapping.")]
MappingOpt = Annotated[Path | None, typer.Option("--mapping", help="Column mapping YAML (default: <data>/churnguard.yaml).")]
MapOpt = Annotated[list[str] | None, typer.Option("--map", help="Map a column: [table.]column=source, or "
                                                  "column='expression', e.g. --map timestamp=invoice_date "
                                                  "--map 'amount=quantity * price'.")]


def friendly_errors(fn: F) -> F:
    """Expected failures (bad input, bad settings) end in one red line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, ValidationError) as e:
            err_console.print(f"[red]error:[/red] {_one_line(e)}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _one_line(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        first = e.errors()[0]
        return f"setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _settings() -> Settings:
    return load_settings()


def load_data(data: Path, mapping: Path | None, maps: list[str] | None, settings: Settings, *, verbose: bool = False):
    """Every command that reads data validates it the same way and reports the counts."""
    from features.mapping import load_mapping
    from features.validate import load_dataset

    dataset, rejects = load_dataset(
        data,
        now=now_utc(),
        mapping=load_mapping(data, mapping, maps),
        reject_future=settings.validation.reject_future,
    )
    assert dataset.report is not None
    print_validation(dataset.report, verbose=verbose)
    return dataset, rejects


@app.command()
@friendly_errors
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write the demo data into.")] = Path("data/demo"),
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day of the data.")] = datetime(2023, 1, 1),
    months: Annotated[int, typer.Option(min=3, max=120, help="Months of history.")] = 24,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Write realistic demo data (retail + subscriptions, with a known share of messy rows)."""
    from features.demo import generate as generate_demo

    if fmt not in ("csv", "parquet"):
        raise ValueError("--format must be csv or parquet")
    with console.status("generating demo data..."):
        summary = generate_demo(out, customers=customers, seed=seed, start=start.date(), months=months, fmt=fmt)
    console.print(f"wrote demo data for {summary.n_customers:,} customers to [bold]{out}[/bold]")
    for name, n in summary.rows.items():
        console.print(f"  {name}: {n:,} rows")
    console.print("  injected messy rows: " + ", ".join(f"{k}: {v:,}" for k, v in summary.messy.items()))


@app.command()
@friendly_errors
def validate(
    data: DataOpt,
    rejects: Annotated[Path | None, typer.Option(help="Write rejected rows (with file, row, reason) here, "
                                                 ".csv or .parquet.")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Check an input folder against the data contract; report what was kept and what was rejected, and why."""
    from features.io import write_table

    settings = _settings()
    _, rejected = load_data(data, mapping, map_, settings, verbose=True)
    if rejects is not None:
        write_table(rejected, rejects)
        console.print(f"rejected rows written to [bold]{rejects}[/bold] ({rejected.num_rows:,})")


@app.command()
@friendly_errors
def features(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Input folder (see `churn validate`).")] = None,
    as_of: Annotated[list[datetime] | None, typer.Option(formats=DATE_FORMATS, help="Snapshot date; repeat for "
                                                          "several snapshots.")] = None,
    out: Annotated[Path | None, typer.Option(help="Feature table to write (.parquet or .csv).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Print the feature registry and exit.")] = False,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Point-in-time features, one row per customer known before each as_of."""
    from features.build import build_features, entities_at
    from features.io import write_table
    from features.registry import FEATURE_SET, feature_registry

    settings = _settings()
    if list_:
        _print_registry(feature_registry(settings.features.event_types), FEATURE_SET)
        return
    if data is None or not as_of or out is None:
        raise ValueError("--data, --as-of and --out are required (or use --list)")
    dataset, _ = load_data(data, mapping, map_, settings)
    entities = entities_at(dataset, as_of)
    with console.status(f"computing features for {entities.num_rows:,} customer snapshots..."):
        table = build_features(dataset, entities, event_types=settings.features.event_types)
    write_table(table, out)
    console.print(f"wrote {table.num_rows:,} rows x {table.num_columns - 2} features to [bold]{out}[/bold]")


@app.command()
@friendly_errors
def labels(
    data: DataOpt,
    as_of: Annotated[list[datetime], typer.Option(formats=DATE_FORMATS, help="Snapshot date; repeatable.")],
    out: Annotated[Path, typer.Option(help="Label table to write (.parquet or .csv).")],
    horizon_days: Annotated[int | None, typer.Option(help="Churn horizon H in days (default from settings).")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Churn labels (no purchase in [as_of, as_of+H)) and survival targets for customers who bought before as_of."""
    from features.build import entities_at
    from features.io import write_table
    from features.labels import build_labels

    settings = _settings()
    horizon = horizon_days or settings.labels.horizon_days
    dataset, _ = load_data(data, mapping, map_, settings)
    table = build_labels(dataset, entities_at(dataset, as_of), horizon_days=horizon)
    write_table(table, out)
    churned = sum(table["churned"].to_pylist())
    console.print(f"wrote {table.num_rows:,} labels to [bold]{out}[/bold]; churn rate at {horizon} days: "
                  f"{churned / max(table.num_rows, 1):.1%}")


def _print_registry(specs, feature_set: str) -> None:
    from rich.table import Table

    table = Table(title=f"Feature registry: {feature_set} ({len(specs)} features)", title_justify="left")
    for col in ("name", "dtype", "group", "description"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, s.dtype, s.group, s.description)
    console.print(table)



if __name__ == "__main__":
    app()
