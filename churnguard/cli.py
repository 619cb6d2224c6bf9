"""The ``churn`` command. Each subcommand builds the settings, calls one library function, prints a summary.

No logic lives only here: tests and notebooks call the same functions in ``features/``, ``training/`` and
``serving/``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from churnguard.console import console, err_console, print_validation
from churnguard.settings import Settings, load_settings

if TYPE_CHECKING:
    import pyarrow as pa

    from features.dataset import Dataset
    from features.registry import FeatureSpec

app = typer.Typer(
    name="churn",
    help="churnguard: who is about to leave, when, why, and what it is worth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        "-d",
        help="Input folder: transactions.{csv,parquet}, optional "
        "events.* and customers.*, optional churnguard.yaml column mapping.",
    ),
]
StoreDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Input folder (see `churn validate`), validated on the way in. Omitted: the customer store "
        "(`churn ingest`), read as ingested.",
    ),
]
MappingOpt = Annotated[
    Path | None, typer.Option("--mapping", help="Column mapping YAML (default: <data>/churnguard.yaml).")
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        help="Map a column: [table.]column=source, or "
        "column='expression', e.g. --map timestamp=invoice_date "
        "--map 'amount=quantity * price'.",
    ),
]


EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="duckdb or spark (default from settings: features.engine; the Spark master is features.spark_master).",
    ),
]

EXIT_BAD_INPUT = 2  # bad data, flags or settings: the user can fix the input
EXIT_UNAVAILABLE = 3  # a dependency (the model registry, the customer store) failed: nothing was changed
EXIT_DRIFT = 4  # churn monitor: a feature's or the score's PSI reached the alert threshold
EXIT_NOT_MEASURED = 5  # churn monitor: drift cannot be measured (a model without a training reference, no customer)


def friendly_errors(fn: F) -> F:
    """Expected failures end in one red line and an exit code, not a traceback: bad input or settings (2), a
    model that is missing or must be retrained (2), an empty customer store (2), an unreachable or broken
    registry or store (3)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from features.engines import EngineUnavailableError
        from features.store.settings import StoreError
        from model.churn_model import IncompatibleModelError
        from model.registry import ModelNotFoundError, RegistryError

        configure_process()
        try:
            return fn(*args, **kwargs)
        except (RegistryError, StoreError, EngineUnavailableError) as e:  # StoreError is a ValueError: caught first
            err_console.print(f"[red]error:[/red] {_one_line(e)}")
            raise typer.Exit(EXIT_UNAVAILABLE) from None
        except (ValueError, FileNotFoundError, ValidationError, ModelNotFoundError, IncompatibleModelError) as e:
            err_console.print(f"[red]error:[/red] {_one_line(e)}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as e:
            if not _is_store_connection_error(e):
                raise
            err_console.print(f"[red]error:[/red] the customer store: {_one_line(e)}")
            raise typer.Exit(EXIT_UNAVAILABLE) from None

    return wrapper  # type: ignore[return-value]


def _is_store_connection_error(e: Exception) -> bool:
    """A database driver's own error that reached us unwrapped (the store wraps the ones it expects)."""
    return type(e).__module__.split(".", 1)[0] in ("psycopg", "adbc_driver_manager", "adbc_driver_postgresql")


def configure_process() -> None:
    """Process-wide output settings, set here at the program's edge and nowhere in the library: MLflow's INFO
    chatter and the SQLAlchemy deprecation notice of its SQLite store are not news to our users."""
    import logging
    import warnings

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*noload.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow.*")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")


def _one_line(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        first = e.errors()[0]
        return f"setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _settings(**overrides: Any) -> Settings:
    """The settings with CLI flags as overrides (``None`` = flag not given)."""
    return load_settings(overrides)


def load_data(
    data: Path, mapping: Path | None, maps: list[str] | None, settings: Settings, *, verbose: bool = False
) -> tuple[Dataset, pa.Table]:
    """Every command that reads data validates it the same way and reports the counts."""
    from features.contract import now_utc
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


def command_data(
    data: Path | None,
    mapping: Path | None,
    maps: list[str] | None,
    settings: Settings,
    *,
    rejected_ids: bool = False,
) -> tuple[Dataset, pa.Array | pa.ChunkedArray | None]:
    """The data a command works on: the folder of ``--data``, validated and counted like every read of files, or
    without it the customer store, read as ingested (it was validated then, so not again).

    With ``rejected_ids`` also the customer ids of the rows validation rejected (this folder's, or every batch's
    in the store), so batch scoring can list customers whose every row was bad."""
    if data is not None:
        dataset, rejects = load_data(data, mapping, maps, settings)
        return dataset, rejects["customer_id"] if rejected_ids else None
    if mapping is not None or maps:
        raise ValueError("--mapping and --map apply to the files of --data; the store holds rows mapped at ingest")
    from features.store import EmptyStoreError, open_store

    store = open_store(settings.store, settings.data_dir, create=False)
    try:
        with console.status(f"reading the customer store at {store.location} ..."):
            dataset = store.dataset()
            ids = store.rejects()["customer_id"] if rejected_ids else None
    finally:
        store.close()
    if dataset.transactions.num_rows == 0:
        raise EmptyStoreError(store.location)
    console.print(
        f"[dim]customer store {store.location}: {dataset.transactions.num_rows:,} transactions, "
        f"{dataset.events.num_rows:,} events, {dataset.customers.num_rows:,} customer rows "
        f"(validated at ingest)[/dim]"
    )
    return dataset, ids


@contextmanager
def _counts_to_stderr(enabled: bool) -> Iterator[None]:
    """While reading data, the counts go to stderr (a command whose stdout is machine-readable)."""
    if not enabled:
        yield
        return
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None  # the console's own default again: sys.stdout, looked up at each print


@app.command()
@friendly_errors
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write the demo data into.")] = Path("data/demo"),
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day of the data.")] = datetime(
        2023, 1, 1
    ),
    months: Annotated[int, typer.Option(min=3, max=120, help="Months of history.")] = 24,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Write realistic demo data (retail + subscriptions, with a known share of messy rows)."""
    from churnguard.demo import generate as generate_demo

    if fmt not in ("csv", "parquet"):
        raise ValueError("--format must be csv or parquet")
    with console.status("generating demo data..."):
        summary = generate_demo(out, customers=customers, seed=seed, start=start.date(), months=months, fmt=fmt)
    console.print(f"wrote demo data for {summary.n_customers:,} customers to [bold]{out}[/bold]")
    for name, n in summary.rows.items():
        console.print(f"  {name}: {n:,} rows")
    for table, kinds in summary.messy.items():
        console.print(f"  injected messy {table} rows: " + ", ".join(f"{k}: {v:,}" for k, v in kinds.items() if v))


@app.command()
@friendly_errors
def validate(
    data: DataOpt,
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows (with file, row, reason) here, .csv or .parquet.")
    ] = None,
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
    data: StoreDataOpt = None,
    as_of: Annotated[
        list[datetime] | None, typer.Option(formats=DATE_FORMATS, help="Snapshot date; repeat for several snapshots.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Feature table to write (.parquet or .csv).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Print the feature registry and exit.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="With --list: print it as a Markdown table.")] = False,
    engine: EngineOpt = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Point-in-time features, one row per customer known before each as_of."""
    from features.build import build_features, entities_at
    from features.engines import make_engine
    from features.io import write_table
    from features.registry import FEATURE_SET, feature_registry

    settings = _settings(features={"engine": engine})
    if list_:
        if markdown:
            from features.registry import registry_markdown

            typer.echo(registry_markdown(settings.features.event_types), nl=False)
        else:
            _print_registry(feature_registry(settings.features.event_types), FEATURE_SET)
        return
    if not as_of or out is None:
        raise ValueError("--as-of and --out are required (or use --list)")
    dataset, _ = command_data(data, mapping, map_, settings)
    entities = entities_at(dataset, as_of)
    feature_engine = make_engine(settings.features)
    try:
        with console.status(
            f"computing features for {entities.num_rows:,} customer snapshots on {settings.features.engine}..."
        ):
            table = build_features(dataset, entities, event_types=settings.features.event_types, engine=feature_engine)
    finally:
        _stop(feature_engine)
    write_table(table, out)
    console.print(f"wrote {table.num_rows:,} rows x {table.num_columns - 2} features to [bold]{out}[/bold]")


@app.command()
@friendly_errors
def labels(
    as_of: Annotated[list[datetime], typer.Option(formats=DATE_FORMATS, help="Snapshot date; repeatable.")],
    out: Annotated[Path, typer.Option(help="Label table to write (.parquet or .csv).")],
    data: StoreDataOpt = None,
    horizon_days: Annotated[int | None, typer.Option(help="Churn horizon H in days (default from settings).")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Churn labels (no purchase in [as_of, as_of+H)) and survival targets for customers who bought before as_of."""
    from features.build import entities_at
    from features.io import write_table
    from features.labels import build_labels

    settings = _settings(labels={"horizon_days": horizon_days})
    horizon = settings.labels.horizon_days
    dataset, _ = command_data(data, mapping, map_, settings)
    table = build_labels(dataset, entities_at(dataset, as_of), horizon_days=horizon)
    write_table(table, out)
    churned = sum(table["churned"].to_pylist())
    console.print(
        f"wrote {table.num_rows:,} labels to [bold]{out}[/bold]; churn rate at {horizon} days: "
        f"{churned / max(table.num_rows, 1):.1%}"
    )


@app.command()
@friendly_errors
def train(
    data: StoreDataOpt = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Train as if today were this date: label windows end before it."),
    ] = None,
    horizon_days: Annotated[int | None, typer.Option(help="Churn horizon H in days (default from settings).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default from settings).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Registered model name (default from settings).")] = None,
    promote_: Annotated[
        bool,
        typer.Option(
            "--promote", help="Make it champion if it is at least as good as the current one on the same held-out data."
        ),
    ] = False,
    backtest: Annotated[
        bool, typer.Option(help="Also run the rolling-origin backtest of the selection fit (see `churn backtest`).")
    ] = False,
    engine: EngineOpt = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Train candidate models on rolling snapshots, evaluate out of time, log to MLflow, register the winner.

    With the spark engine the training snapshots' features are computed on Spark (the same definitions)."""
    from churnguard.console import print_comparison, progress
    from features.engines import make_engine
    from training.tracking import log_training, promote
    from training.train import train as train_model

    settings = _settings(
        labels={"horizon_days": horizon_days},
        mlflow={"experiment": experiment, "model_name": model_name},
        features={"engine": engine},
    )
    dataset, _ = command_data(data, mapping, map_, settings)
    feature_engine = make_engine(settings.features)
    try:
        with progress("training", total=None) as advance:
            result = train_model(
                dataset,
                settings.training,
                settings.labels,
                settings.features,
                as_of=as_of,
                progress=lambda n=1, d=None: advance(n, d),
                run_backtest=backtest,
                engine=feature_engine,
            )
    finally:
        _stop(feature_engine)
    print_comparison(result.evaluation)
    with console.status("logging to MLflow and registering the model..."):
        logged = log_training(result, settings.mlflow)
    name = settings.mlflow.model_name
    console.print(
        f"registered [bold]{name}[/bold] version {logged.version} as challenger"
        + (" and champion (first version)" if logged.became_champion else "")
    )
    console.print("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if promote_ and not logged.became_champion:
        decision = promote(settings.mlflow, data=dataset)
        console.print(("[green]" if decision.promoted else "[yellow]") + decision.reason)


@app.command(name="backtest")
@friendly_errors
def backtest_command(
    cutoff: Annotated[
        list[datetime],
        typer.Option(formats=DATE_FORMATS, help="Train on the rows before this date, judge the next H days; repeat."),
    ],
    data: StoreDataOpt = None,
    horizon_days: Annotated[int | None, typer.Option(help="Churn horizon H in days (default from settings).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for backtest.md/.csv/.json/.png (default <data_dir>/reports/backtest).")
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default from settings).")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Replay the production protocol at past cutoffs: train on what was known, score everyone, compare with what
    happened next; the production model next to the recency and RFM baselines."""
    from churnguard.console import print_backtest, progress
    from training.backtest import backtest

    settings = _settings(labels={"horizon_days": horizon_days}, mlflow={"experiment": experiment})
    dataset, _ = command_data(data, mapping, map_, settings)
    target = out or settings.data_dir / "reports" / "backtest"
    with progress("backtest", total=len(cutoff)) as advance:
        run = backtest(
            dataset,
            cutoff,
            settings.training,
            settings.labels,
            settings.features,
            settings.mlflow,
            target,
            progress=advance,
        )
    print_backtest(run.result)
    console.print(f"table and plot: [bold]{target}[/bold]; MLflow run {run.run_id}")


@app.command()
@friendly_errors
def evaluate(
    run_id: Annotated[str | None, typer.Option("--run", help="MLflow run id (default: the challenger's run).")] = None,
    version: Annotated[str | None, typer.Option(help="Registered model version instead of the challenger.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and plots (default <data_dir>/reports/...).")
    ] = None,
) -> None:
    """Print the held-out comparison table and write report.md with the plots."""
    from churnguard.console import print_comparison
    from training.report import fetch_evaluation, write_report

    settings = _settings()
    target = out or settings.data_dir / "reports" / (run_id or f"v{version}" if (run_id or version) else "challenger")
    evaluation, plots, label = fetch_evaluation(settings.mlflow, target / ".mlflow", run_id=run_id, version=version)
    print_comparison(evaluation, title=label)
    report = write_report(evaluation, plots, target, label)
    console.print(f"report: [bold]{report}[/bold]")


@app.command()
@friendly_errors
def promote(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Score champion and challenger on the challenger's held-out snapshot of this data."
        ),
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Registered model name (default from settings).")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Move the champion alias to the challenger only if it is at least as good on the same held-out data."""
    from training.tracking import promote as promote_model

    settings = _settings(mlflow={"model_name": model_name})
    dataset = load_data(data, mapping, map_, settings)[0] if data else None
    decision = promote_model(settings.mlflow, data=dataset)
    console.print(("[green]" if decision.promoted else "[yellow]") + decision.reason)


@app.command()
@friendly_errors
def score(
    out: Annotated[Path, typer.Option(help="Scorecards to write (.parquet or .csv), written atomically.")],
    data: StoreDataOpt = None,
    as_of: Annotated[
        datetime | None, typer.Option(formats=DATE_FORMATS, help="Score as of this date (default: now).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model URI (default models:/<name>@champion).")] = None,
    outreach_out: Annotated[Path | None, typer.Option(help="Ranked outreach list (.csv or .parquet).")] = None,
    capacity: Annotated[
        int | None, typer.Option(min=1, help="At most this many customers on the outreach list.")
    ] = None,
    budget: Annotated[float | None, typer.Option(min=0, help="At most this much action cost on the list.")] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Customers not scored, with the reason (default: <out>.rejected.csv).")
    ] = None,
    reasons: Annotated[str | None, typer.Option(help="top_reasons for: outreach (default), all, none.")] = None,
    engine: EngineOpt = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Score every customer known before as_of; write scorecards, the outreach list and the rejects.

    With the spark engine, --out is a folder of Parquet files partitioned by as_of_date."""
    from churnguard.console import print_batch_summary, progress
    from features.build import entities_at
    from features.contract import now_utc
    from serving.policy import load_policy
    from serving.scoring import score_batch, write_batch

    settings = _settings(
        scoring={"model_uri": model, "capacity": capacity, "budget": budget, "reasons": reasons},
        features={"engine": engine},
    )
    policy = load_policy(settings.scoring.policy_file)
    when = as_of or now_utc()
    rejects_path = rejects or out.with_name(out.stem + ".rejected.csv")
    scores_out: Path | None = out  # None: written already (streamed from the store, or by Spark)
    if data is None and settings.features.engine != "spark":  # the store, a chunk of customers at a time
        if mapping is not None or map_:
            raise ValueError("--mapping and --map apply to the files of --data; the store holds rows mapped at ingest")
        churn_model = _scoring_model(settings)
        result, scores_out = _score_store(settings, churn_model, policy, out, when), None
    else:
        dataset, rejected_ids = command_data(data, mapping, map_, settings, rejected_ids=True)
        churn_model = _scoring_model(settings)
        total = entities_at(dataset, when).num_rows
        if settings.features.engine == "spark":
            from features.engines import make_engine
            from serving.spark_scoring import score_batch_spark

            spark_engine = make_engine(settings.features)
            try:
                with progress(f"scoring as of {when:%Y-%m-%d} on Spark", total=total) as advance:
                    result = score_batch_spark(
                        dataset, churn_model, policy, settings.scoring, spark_engine, out, as_of=when,
                        invalid_customer_ids=rejected_ids, progress=advance,
                    )  # fmt: skip
            finally:
                _stop(spark_engine)
            scores_out = None
        else:
            with progress(f"scoring as of {when:%Y-%m-%d}", total=total) as advance:
                result = score_batch(
                    dataset, churn_model, policy, settings.scoring, as_of=when, invalid_customer_ids=rejected_ids,
                    progress=advance,
                )  # fmt: skip
    write_batch(result, scores_out, outreach_out if outreach_out else None, rejects_path)
    print_batch_summary(result, churn_model.model_version)
    console.print(
        f"scorecards: [bold]{out}[/bold]; not scored: [bold]{rejects_path}[/bold]"
        + (f"; outreach list: [bold]{outreach_out}[/bold]" if outreach_out else "")
    )


def _scoring_model(settings: Settings):
    from model.registry import load_model

    with console.status(f"loading {settings.model_uri} ..."):
        return load_model(settings.mlflow, settings.model_uri).with_overrides(
            tier_thresholds=settings.scoring.tier_thresholds
        )


def _score_store(settings: Settings, model, policy, out: Path, when: datetime):
    """``churn score`` without --data: the store read a chunk of customers at a time (``score_store``)."""
    from churnguard.console import progress
    from features.store import EmptyStoreError, open_store
    from serving.scoring import score_store

    store = open_store(settings.store, settings.data_dir, create=False)
    try:
        total = len(store.customer_ids())
        if total == 0:
            raise EmptyStoreError(store.location)
        rejected_ids = store.rejects()["customer_id"]
        console.print(
            f"[dim]customer store {store.location}: {total:,} customers, read "
            f"{settings.scoring.chunk_size:,} at a time (validated at ingest)[/dim]"
        )
        with progress(f"scoring as of {when:%Y-%m-%d}", total=total) as advance:
            return score_store(
                store, model, policy, settings.scoring, out, as_of=when, invalid_customer_ids=rejected_ids,
                progress=advance,
            )  # fmt: skip
    finally:
        store.close()


@app.command()
@friendly_errors
def quickstart(
    customers: Annotated[int, typer.Option(min=500, help="Demo customers to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    capacity: Annotated[int, typer.Option(min=1, help="At most this many customers on the outreach list.")] = 500,
) -> None:
    """The whole main job on demo data: generate, ingest into the store, train, evaluate, promote, score, outreach
    list, lifecycle report; ends with a curl to look a customer up in the API."""
    from churnguard.quickstart import run_quickstart

    run_quickstart(_settings(scoring={"capacity": capacity}), customers=customers, seed=seed)


@app.command()
@friendly_errors
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default from settings: 3000).")] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default: 127.0.0.1 without API keys, 0.0.0.0 with them)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Server processes (default: the machine's cores).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Registry URI to serve and follow (default models:/<name>@champion).")
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated", help="Listen on a non-loopback interface without API keys (prints a warning)."
        ),
    ] = False,
) -> None:
    """Serve the scoring API (BentoML, /v1 routes). It follows the registry alias: a promotion is served without
    a restart. The server replaces this process, so SIGTERM stops it cleanly."""
    from serving.launch import exec_server, plan_launch

    settings = _settings(
        serving={
            "port": port,
            "host": host,
            "workers": workers,
            "allow_unauthenticated": allow_unauthenticated or None,
        },
        scoring={"model_uri": model},
    )
    with console.status("checking the model registry..."):
        launch = plan_launch(
            settings.serving,
            settings.scoring,
            settings.mlflow,
            data_dir=settings.data_dir,
            model_uri=settings.model_uri,
        )
    for note in launch.notes:
        console.print(note)
    for warning in launch.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    what = launch.model_version or "the model packed in this bento"
    shown = "localhost" if launch.host in ("127.0.0.1", "0.0.0.0") else launch.host
    console.print(
        f"serving {what} on http://{shown}:{launch.port}/v1 (docs at /, health at /readyz); "
        f"following {settings.model_uri} every {settings.serving.reload_interval_s:g} s"
        if launch.model_version and settings.serving.reload_interval_s
        else f"serving {what} on http://{shown}:{launch.port}/v1 (docs at /, health at /readyz)"
    )
    exec_server(launch)


@app.command()
@friendly_errors
def bento(
    model: Annotated[str | None, typer.Option(help="Model URI (default models:/<name>@champion).")] = None,
) -> None:
    """Pack the champion model into BentoML's model store and build a bento from bentofile.yaml."""
    from serving.bento import build_bento

    settings = _settings(scoring={"model_uri": model})
    tag, bento_tag = build_bento(settings.mlflow, settings.model_uri)
    console.print(
        f"model {tag} imported; bento [bold]{bento_tag}[/bold] built. Container image: "
        f"`bentoml containerize {bento_tag}` (needs Docker)"
    )


def _stop(engine: object) -> None:
    """Stop a Spark session the command started (DuckDB needs nothing)."""
    stop = getattr(engine, "stop", None)
    if stop is not None:
        stop()


def _print_registry(specs: Sequence[FeatureSpec], feature_set: str) -> None:
    from rich.table import Table

    table = Table(title=f"Feature registry: {feature_set} ({len(specs)} features)", title_justify="left")
    for col in ("name", "dtype", "group", "description"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, s.dtype, s.group, s.description)
    console.print(table)


@app.command()
@friendly_errors
def ingest(data: DataOpt, mapping: MappingOpt = None, map_: MapOpt = None) -> None:
    """Validate a folder like `churn validate` and append its kept rows to the customer store, as one batch."""
    from features.contract import now_utc
    from features.mapping import load_mapping
    from features.store import ingest as ingest_into
    from features.store import open_store

    settings = _settings()
    store = open_store(settings.store, settings.data_dir)
    try:
        with console.status(f"validating {data} and writing to the store at {store.location} ..."):
            result = ingest_into(
                store,
                data,
                now=now_utc(),
                mapping=load_mapping(data, mapping, map_),
                reject_future=settings.validation.reject_future,
            )
    finally:
        store.close()
    print_validation(result.report, verbose=True)
    for name, added in result.added.items():
        line = f"  {name}: {added:,} added, {result.present[name]:,} already in the store"
        if name == "customers" and result.updated_customers:
            line += f", {result.updated_customers:,} updated"
        console.print(line)
    console.print(
        f"batch [bold]{result.batch_id}[/bold] committed to {store.location} ({result.rejected:,} rejected rows kept "
        "with it)"
    )


@app.command()
@friendly_errors
def triggers(
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Evaluate these files (default: the customer store's rows).")
    ] = None,
    as_of: Annotated[
        datetime | None, typer.Option(formats=DATE_FORMATS, help="Evaluate as of this date (default: now).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Export what this run fired (.csv or .parquet, with rule and control).")
    ] = None,
    rules: Annotated[Path | None, typer.Option(help="Trigger rules YAML (default from settings).")] = None,
    model: Annotated[str | None, typer.Option(help="Model URI (default models:/<name>@champion).")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Evaluate the customers POST /v1/events queues, as they come, until stopped (its own process: "
            "CHURN_SERVING__LIVE_TRIGGERS_WORKER=process), following the champion.",
        ),
    ] = False,
    queued: Annotated[
        bool, typer.Option("--queued", help="Evaluate the customers queued by POST /v1/events so far, then stop.")
    ] = False,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Evaluate the trigger rules for every customer and write each firing once to the store's outbox (or, with
    --follow / --queued, for the customers the API's POST /v1/events queued)."""
    from churnguard.console import print_trigger_run, progress
    from features.contract import now_utc
    from features.io import write_table
    from features.store import open_store
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.triggers import evaluate_triggers, items_for_export, load_triggers

    settings = _settings(scoring={"model_uri": model, "triggers_file": rules})
    policy = load_policy(settings.scoring.policy_file)
    trigger_rules = load_triggers(settings.scoring.triggers_file, policy=policy)
    if follow or queued:
        if data is not None or as_of is not None or out is not None:
            raise ValueError("--follow and --queued evaluate the store's queue now: no --data, --as-of or --out")
        from churnguard.live import evaluate_queue

        evaluate_queue(settings, trigger_rules, policy, follow=follow)
        return
    when = as_of or now_utc()
    dataset = load_data(data, mapping, map_, settings)[0] if data else None
    with console.status(f"loading {settings.model_uri} ..."):
        churn_model = load_model(settings.mlflow, settings.model_uri).with_overrides(
            tier_thresholds=settings.scoring.tier_thresholds
        )
    store = open_store(settings.store, settings.data_dir)
    try:
        with progress(f"evaluating triggers as of {when:%Y-%m-%d}", total=None) as advance:
            run = evaluate_triggers(
                dataset,
                churn_model,
                trigger_rules,
                store,
                when,
                policy=policy,
                chunk_size=settings.scoring.chunk_size,
                progress=advance,
            )
    finally:
        store.close()
    print_trigger_run(run, trigger_rules, store.location)
    if out is not None:
        write_table(items_for_export(run.items()), out)
        console.print(f"this run's firings: [bold]{out}[/bold] ({run.items().num_rows:,})")


@app.command()
@friendly_errors
def report(
    out: Annotated[Path, typer.Option(help="HTML file to write: one self-contained page that works offline.")],
    data: StoreDataOpt = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Report as of this date (default: the day after the last sale)."),
    ] = None,
    horizon_days: Annotated[int | None, typer.Option(help="Churn horizon H in days (default from settings).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model for the model-health section and the at_risk stage (default: the champion, when there is one)."
        ),
    ] = None,
    no_model: Annotated[
        bool, typer.Option("--no-model", help="No model: no health section, every month end's stages rule-only.")
    ] = False,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """The lifecycle KPI report: KPIs per month, stages over time and their transitions, cohorts, KPIs per stage,
    and the model's health (drift against training, predicted vs observed churn). With a model, the latest month
    ends' stages use its churn probability (at_risk; setting report.scored_month_ends)."""
    import dataclasses

    from serving.report import build_report, default_as_of, write_report

    settings = _settings(labels={"horizon_days": horizon_days}, scoring={"model_uri": model})
    dataset, _ = command_data(data, mapping, map_, settings)
    churn_model, missing = (None, None) if no_model else _report_model(settings, required=model is not None)
    with console.status("computing the lifecycle report..."):
        if churn_model is None:
            result = build_report(dataset, as_of=as_of, horizon_days=settings.labels.horizon_days)
        else:
            from serving.health import build_model_report

            result, _ = build_model_report(
                dataset,
                churn_model,
                as_of=as_of or default_as_of(dataset),
                horizon_days=settings.labels.horizon_days,
                monitor=settings.monitor,
                scored_month_ends=settings.report.scored_month_ends,
                lift=_campaign_lift(dataset, settings),
            )
    if missing is not None:
        result = dataclasses.replace(result, model_health=missing)
    path = write_report(result, out)
    console.print(
        f"lifecycle report as of {result.as_of:%Y-%m-%d}: [bold]{path}[/bold] ({path.stat().st_size / 1e6:.1f} MB, "
        f"{len(result.facts.month_ends)} months, {result.facts.customers.num_rows:,} customers with an order)"
    )


def _report_model(settings: Settings, *, required: bool) -> tuple[Any, Any]:
    """The report's model (the scoring settings' tier thresholds applied, as `churn score` does), or None and the
    section that says why there is none: without a champion (and no --model) the report says so."""
    from model.registry import ModelNotFoundError, load_model
    from serving.health import no_model_section

    try:
        with console.status(f"loading {settings.model_uri} ..."):
            churn_model = load_model(settings.mlflow, settings.model_uri)
    except ModelNotFoundError as e:
        if required:
            raise
        return None, no_model_section(f"No model: {_one_line(e)}.")
    return churn_model.with_overrides(tier_thresholds=settings.scoring.tier_thresholds), None


def _campaign_lift(dataset: Dataset, settings: Settings) -> Any:
    """The trigger campaigns' measured lift (as `churn lift` measures it) when the store's outbox holds firings;
    None when no store was ever written or nothing fired. A store that cannot be reached is an error."""
    from features.store import EmptyStoreError, open_store
    from serving.lift import measure_lift, read_firings
    from serving.policy import load_policy

    try:
        store = open_store(settings.store, settings.data_dir, create=False)
    except EmptyStoreError:
        return None
    try:
        firings = read_firings(store)
    finally:
        store.close()
    if firings.empty:
        return None
    policy = load_policy(settings.scoring.policy_file)
    return measure_lift(firings, dataset, horizon_days=settings.labels.horizon_days, policy=policy)


@app.command()
@friendly_errors
def monitor(
    data: StoreDataOpt = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Check as of this date (default: the day after the last sale)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model to check (default models:/<name>@champion).")] = None,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """For a scheduler: the model's health (PSI of every feature and of the score against training, predicted vs
    observed churn), logged to MLflow. Exit 0 when stable or at warn, 4 when a PSI reaches the alert threshold,
    5 when drift cannot be measured (a model without a training reference, no customer)."""
    from churnguard.console import print_health
    from model.monitoring import model_health
    from model.registry import load_model
    from serving.report import default_as_of
    from training.tracking import log_health

    settings = _settings(scoring={"model_uri": model})
    dataset, _ = command_data(data, mapping, map_, settings)
    when = as_of or default_as_of(dataset)
    with console.status(f"loading {settings.model_uri} ..."):
        churn_model = load_model(settings.mlflow, settings.model_uri)
    with console.status(f"model health of {churn_model.model_version} as of {when:%Y-%m-%d} ..."):
        health = model_health(dataset, churn_model, as_of=when, settings=settings.monitor)
    run_id = log_health(health, settings.mlflow)
    print_health(health)
    console.print(f"MLflow run {run_id} (experiment {settings.mlflow.experiment})")
    if health.no_reference:
        err_console.print(f"[red]no drift reference:[/red] model {health.model_version}: {health.no_reference}")
        raise typer.Exit(EXIT_NOT_MEASURED)
    worst = health.worst
    if worst is None:
        err_console.print(f"[red]drift not measured:[/red] no customer with an order before {when:%Y-%m-%d}")
        raise typer.Exit(EXIT_NOT_MEASURED)
    counts = f"{health.count('alert')} column(s) at alert, {health.count('warn')} at warn"
    where = f"model {health.model_version} as of {when:%Y-%m-%d} vs training snapshot {health.reference_as_of}"
    if health.status == "alert":
        err_console.print(
            f"[red]drift alert:[/red] {worst.name} PSI {worst.psi:.3f} >= {health.psi_alert:g} ({counts}; {where})"
        )
        raise typer.Exit(EXIT_DRIFT)
    if health.status == "warn":
        console.print(
            f"[yellow]drift warning:[/yellow] {worst.name} PSI {worst.psi:.3f} >= {health.psi_warn:g} "
            f"({counts}; {where})"
        )
    else:
        console.print(f"[green]stable:[/green] largest PSI {worst.psi:.3f} ({worst.name}; {where})")


@app.command()
@friendly_errors
def deliver(
    once: Annotated[bool, typer.Option("--once", help="One pass over the due items, then exit.")] = False,
    url: Annotated[str | None, typer.Option(help="Webhook URL (default: setting delivery.webhook_url).")] = None,
    retry_dead: Annotated[
        bool,
        typer.Option(
            "--retry-dead",
            help="Move every dead-lettered item back to pending (attempts reset, due now), print how many, exit; "
            "the next `churn deliver` sends them.",
        ),
    ] = False,
) -> None:
    """Push fired triggers (the store's outbox, control items excepted) to the CRM's webhook, signed as in the
    Standard Webhooks specification; failures are retried with exponential back-off, then dead-lettered. Runs
    apart from scoring and the API: a slow receiver only slows this process down."""
    import signal
    import threading

    from features.store import open_store
    from serving.webhooks import DeliveryError, PassResult, deliver_once, run_delivery, single_deliverer

    settings = _settings(delivery={"webhook_url": url})
    s = settings.delivery
    if retry_dead:
        from features.contract import now_utc

        store = open_store(settings.store, settings.data_dir, create=False)
        try:
            moved = store.retry_dead(now_utc())
        finally:
            store.close()
        console.print(f"{moved:,} dead-lettered item{'s' if moved != 1 else ''} back to pending in {store.location}")
        return
    if not s.webhook_url or s.secret is None:
        raise ValueError(
            "set delivery.webhook_url and delivery.secret "
            "(CHURN_DELIVERY__WEBHOOK_URL, CHURN_DELIVERY__SECRET=whsec_...)"
        )
    assert settings.serving.state_dir is not None
    store = open_store(settings.store, settings.data_dir)

    def report(result: PassResult) -> None:
        if result.attempted:
            console.print(
                f"{datetime.now():%H:%M:%S} sent {result.attempted:,}: {result.delivered:,} delivered, "
                f"{result.retrying:,} to retry, {result.dead:,} dead-lettered"
            )
        for error in result.errors[:5]:
            err_console.print(f"[yellow]  failed[/yellow] {error}")

    try:
        with single_deliverer(settings.serving.state_dir / "deliver.lock"):
            if once:
                result = deliver_once(store, s)
                report(result)
                if not result.attempted:
                    console.print("nothing due")
                if result.gone:
                    raise DeliveryError(f"{s.webhook_url} answered 410 Gone: it no longer accepts these webhooks")
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            console.print(f"delivering to {s.webhook_url} every {s.poll_interval_s:g} s (Ctrl-C to stop)")
            try:
                run_delivery(store, s, stop=stop, on_pass=report)
            except KeyboardInterrupt:
                console.print("stopped")
    except DeliveryError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    finally:
        store.close()


@app.command(name="lift")
@friendly_errors
def lift_command(
    fired_from: Annotated[
        datetime | None, typer.Option(formats=DATE_FORMATS, help="Firings evaluated on or after this date.")
    ] = None,
    fired_to: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Firings evaluated before the end of this day (or this time)."),
    ] = None,
    horizon_days: Annotated[
        int | None, typer.Option(min=1, help="Purchases within H days of a firing (default: the churn horizon).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON (nothing else on stdout).")] = False,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Read purchases from this folder (default: the store).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for lift.md/.json/.png (default <data_dir>/reports/lift).")
    ] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the table and plot to MLflow.")] = True,
    mapping: MappingOpt = None,
    map_: MapOpt = None,
) -> None:
    """Measured lift of each trigger rule: treated vs control among the customers it fired for, purchase rate,
    revenue and churn within H days, with 95 % intervals, and the observed save rate next to the policy's."""
    import json
    from datetime import time, timedelta

    from features.store import open_store
    from serving.lift import lift_metrics, measure_lift, read_firings, write_lift
    from serving.policy import load_policy

    settings = _settings()
    horizon = horizon_days or settings.labels.horizon_days
    if fired_to is not None and fired_to.time() == time(0):  # a date: the whole day
        fired_to = fired_to + timedelta(days=1)
    if fired_from and fired_to and fired_to <= fired_from:
        raise ValueError("--fired-to must be after --fired-from")
    policy = load_policy(settings.scoring.policy_file)
    with _counts_to_stderr(json_):  # with --json, stdout holds the JSON alone
        dataset, _ = command_data(data, mapping, map_, settings)
    if dataset.transactions.num_rows == 0:
        raise ValueError(f"no transactions to measure against in {data}")
    store = open_store(settings.store, settings.data_dir)
    try:
        firings = read_firings(store)
    finally:
        store.close()
    result = measure_lift(
        firings, dataset, horizon_days=horizon, policy=policy, fired_from=fired_from, fired_to=fired_to
    )
    target = out or settings.data_dir / "reports" / "lift"
    files = write_lift(result, target)
    run_id = None
    if mlflow:
        from training.tracking import log_lift

        params = {
            "horizon_days": horizon,
            "fired_from": fired_from,
            "fired_to": fired_to,
            "data_end": result.data_end,
            "firings": result.firings,
            "too_recent": result.too_recent,
        }
        run_id = log_lift(lift_metrics(result), params, files, settings.mlflow)
    where = f"table and plot: {target}" + (f"; MLflow run {run_id}" if run_id else "")
    if json_:
        typer.echo(json.dumps(result.to_dict()))
        err_console.print(f"[dim]{where}[/dim]")
        return
    from churnguard.console import print_lift

    if not result.rules:
        console.print(f"no firing to judge ({result.firings:,} in the range, {result.too_recent:,} too recent)")
    else:
        print_lift(result)
    console.print(where)


keys_app = typer.Typer(
    help="Named API keys in the keys file (serving.keys_file): add, revoke, list. The running service picks up "
    "each change within a second, no restart.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
KeysFileOpt = Annotated[
    Path | None, typer.Option("--file", help="The keys file (default: the serving.keys_file setting).")
]


def _keys_file(given: Path | None) -> Path:
    path = given or _settings().serving.keys_file
    if path is None:
        raise ValueError("no keys file: pass --file or set CHURN_SERVING__KEYS_FILE")
    return path


@keys_app.command("add")
@friendly_errors
def keys_add(
    name: Annotated[str, typer.Argument(help="The key's name (the CRM, a job...): letters, digits, - or _.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="score and/or events (repeat the flag; default both).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute for this key (default: the serving setting).")
    ] = None,
    file: KeysFileOpt = None,
) -> None:
    """Create a key: prints its token once (only its SHA-256 digest is kept in the file)."""
    from serving.auth import ALL_SCOPES, add_key

    path = _keys_file(file)
    token = add_key(path, name, scopes=tuple(scope or ALL_SCOPES), rate_limit_per_minute=rate_limit)
    typer.echo(token)
    err_console.print(f"key {name!r} added to {path}; the token above is shown only now: give it to the client")


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(name: Annotated[str, typer.Argument(help="The key to revoke.")], file: KeysFileOpt = None) -> None:
    """Revoke one key (403 from the service within a second); the others are untouched."""
    from serving.auth import revoke_key

    path = _keys_file(file)
    revoke_key(path, name)
    console.print(f"key {name!r} revoked in {path}")


@keys_app.command("list")
@friendly_errors
def keys_list(file: KeysFileOpt = None) -> None:
    """The keys in the file: name, scopes, rate limit, revoked (never a token: the file holds none)."""
    from serving.auth import load_keys_file

    path = _keys_file(file)
    for name, entry in load_keys_file(path).keys.items():
        limit = entry.rate_limit_per_minute or "default"
        state = "revoked" if entry.revoked else "active"
        typer.echo(f"{name}\t{state}\tscopes={','.join(entry.scopes)}\trate_limit_per_minute={limit}")


if __name__ == "__main__":
    app()
