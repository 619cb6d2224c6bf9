"""``churn quickstart``: the whole main job on demo data, through the same library calls as the single commands.

generate -> validate -> train (candidates, evaluation, MLflow registry) -> evaluation report -> promote ->
batch scoring -> outreach list -> trigger rules into the store's outbox. Everything lands under ``<data_dir>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from churnguard.console import console, print_batch_summary, print_comparison, print_validation, progress
from churnguard.settings import Settings


@dataclass(frozen=True)
class QuickstartResult:
    demo_dir: Path
    report: Path
    scores: Path
    outreach: Path
    rejected: Path
    model_version: str


def run_quickstart(
    settings: Settings, *, customers: int = 20_000, seed: int = 42, months: int = 24
) -> QuickstartResult:
    from churnguard.demo import generate
    from features.contract import now_utc
    from features.io import write_table
    from features.validate import load_dataset
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.scoring import score_batch, write_batch
    from training.report import fetch_evaluation, write_report
    from training.tracking import log_training, promote
    from training.train import train

    root = settings.data_dir
    demo_dir = root / "demo"
    start = date(2023, 1, 1)
    step = _steps(8)

    step("generating demo data")
    summary = generate(demo_dir, customers=customers, seed=seed, start=start, months=months, fmt="csv")
    console.print(
        f"  {summary.n_customers:,} customers, " + ", ".join(f"{k} {v:,} rows" for k, v in summary.rows.items())
    )

    step("validating")
    data, rejects = load_dataset(demo_dir, now=now_utc(), reject_future=settings.validation.reject_future)
    print_validation(data.report)
    row_rejects = root / "outputs" / "row_rejects.csv"
    write_table(rejects, row_rejects)

    step("training (rolling snapshots, out-of-time holdout, candidates, survival and value models)")
    with progress("training") as advance:
        result = train(
            data,
            settings.training,
            settings.labels,
            settings.features,
            progress=lambda n=1, d=None: advance(n, d),
        )
    logged = log_training(result, settings.mlflow)
    console.print(
        f"  registered {settings.mlflow.model_name} v{logged.version}"
        + (" (first version: champion)" if logged.became_champion else "")
    )

    step("evaluation report")
    evaluation, plots, label = fetch_evaluation(
        settings.mlflow, root / "reports" / f"v{logged.version}" / ".mlflow", version=logged.version
    )
    print_comparison(evaluation, title=label)
    report = write_report(evaluation, plots, root / "reports" / f"v{logged.version}", label)

    step("promotion gate")
    decision = promote(settings.mlflow, data=data)
    console.print(("  [green]" if decision.promoted else "  [yellow]") + decision.reason)

    step("batch scoring and the outreach list")
    as_of = datetime.combine(data.data_end.date(), datetime.min.time())
    model = load_model(settings.mlflow, settings.model_uri)
    with progress(f"scoring as of {as_of:%Y-%m-%d}") as advance:
        batch = score_batch(
            data,
            model,
            load_policy(settings.scoring.policy_file),
            settings.scoring,
            as_of=as_of,
            invalid_customer_ids=rejects["customer_id"],
            progress=advance,
        )
    outputs = root / "outputs"
    scores, outreach, rejected = outputs / "scores.parquet", outputs / "outreach.csv", outputs / "not_scored.csv"
    write_batch(batch, scores, outreach, rejected)
    print_batch_summary(batch, model.model_version)

    step("trigger rules: a week ago (the baseline for risk jumps), then today")
    from churnguard.console import print_trigger_run
    from features.store import open_store
    from serving.triggers import evaluate_triggers, load_triggers

    policy = load_policy(settings.scoring.policy_file)
    rules = load_triggers(settings.scoring.triggers_file, policy=policy)
    store = open_store(settings.store, root)
    outbox = store.location
    try:
        for when in (as_of - timedelta(days=7), as_of):
            run = evaluate_triggers(
                data, model, rules, store, when, policy=policy, chunk_size=settings.scoring.chunk_size
            )
            print_trigger_run(run, rules, store.location)
    finally:
        store.close()

    step("done")
    console.print(f"""
  demo data        {demo_dir}
  rejected rows    {row_rejects}
  report           {report}
  scorecards       {scores}
  outreach list    {outreach}
  not scored       {rejected}
  trigger outbox   the store at {outbox} (`churn triggers`; pull: GET /v1/outbox)

  MLflow UI:       uv run mlflow ui --backend-store-uri {settings.tracking_uri}
  scoring API:     uv run churn serve        (then POST http://localhost:{settings.serving.port}/v1/score)
""")
    return QuickstartResult(demo_dir, report, scores, outreach, rejected, model.model_version)


def _steps(total: int):
    state = {"n": 0}

    def step(title: str) -> None:
        state["n"] += 1
        console.rule(f"[bold]{state['n']}/{total} {title}")

    return step
