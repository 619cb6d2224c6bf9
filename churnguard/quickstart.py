"""``churn quickstart``: the whole main job on demo data, through the same library calls as the single commands.

generate -> ingest into the customer store (validation, rejects kept with the batch) -> train from the store
(candidates, evaluation, MLflow registry) -> evaluation report -> promote -> batch scoring from the store ->
outreach list -> lifecycle report -> trigger rules into the store's outbox. Everything lands under
``<data_dir>/`` (the store too, unless ``CHURN_STORE__URL`` names a PostgreSQL database), and the last lines say
how to look a customer up in the API.

The store is the one the settings name, so ``churn serve`` and the commands without ``--data`` see the demo
afterwards. Quickstart only ever puts its own demo there: a store holding anything else, or the demo of an earlier
quickstart with other parameters, is refused before anything is written (re-running with the same parameters adds
nothing: ingests are idempotent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from churnguard.console import console, print_batch_summary, print_comparison, print_validation, progress
from churnguard.settings import Settings

if TYPE_CHECKING:
    from features.store import Store


@dataclass(frozen=True)
class QuickstartResult:
    demo_dir: Path
    report: Path
    scores: Path
    outreach: Path
    rejected: Path
    model_version: str
    store: str
    lifecycle_report: Path
    lookup_customer_id: str
    lookup_curl: str


def run_quickstart(
    settings: Settings, *, customers: int = 20_000, seed: int = 42, months: int = 24
) -> QuickstartResult:
    from churnguard.demo import generate
    from features.contract import now_utc
    from features.io import write_table
    from features.store import ingest, open_store
    from model.registry import load_model
    from serving.health import build_model_report
    from serving.policy import load_policy
    from serving.report import default_as_of
    from serving.report import write_report as write_lifecycle_report
    from serving.scoring import score_batch, write_batch
    from training.report import fetch_evaluation, write_report
    from training.tracking import log_training, promote
    from training.train import train

    root = settings.data_dir
    demo_dir = (root / "demo").resolve()
    start = date(2023, 1, 1)
    step = _steps(9)

    store = open_store(settings.store, root)
    try:
        _check_store_holds_only_this_demo(store, demo_dir, customers=customers, seed=seed, start=start, months=months)

        step("generating demo data")
        summary = generate(demo_dir, customers=customers, seed=seed, start=start, months=months, fmt="csv")
        console.print(
            f"  {summary.n_customers:,} customers, " + ", ".join(f"{k} {v:,} rows" for k, v in summary.rows.items())
        )

        step(f"validating and ingesting into the customer store ({store.location})")
        ingested = ingest(store, demo_dir, now=now_utc(), reject_future=settings.validation.reject_future)
        print_validation(ingested.report)
        console.print(
            f"  batch {ingested.batch_id}: "
            + ", ".join(f"{name} {n:,} added" for name, n in ingested.added.items())
            + f" ({sum(ingested.present.values()):,} rows already in the store)"
        )
        row_rejects = root / "outputs" / "row_rejects.csv"
        write_table(store.rejects(ingested.batch_id), row_rejects)
        data = store.dataset()  # read as ingested: validated once, on the way in
        invalid_ids = store.rejects()["customer_id"]
    finally:
        store.close()

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
            invalid_customer_ids=invalid_ids,
            progress=advance,
        )
    outputs = root / "outputs"
    scores, outreach, rejected = outputs / "scores.parquet", outputs / "outreach.csv", outputs / "not_scored.csv"
    write_batch(batch, scores, outreach, rejected)
    print_batch_summary(batch, model.model_version)

    step("lifecycle report")
    with console.status("computing the lifecycle KPIs and the model's health..."):
        lifecycle, _ = build_model_report(
            data,
            model.with_overrides(tier_thresholds=settings.scoring.tier_thresholds),
            as_of=default_as_of(data),
            horizon_days=settings.labels.horizon_days,
            monitor=settings.monitor,
            scored_month_ends=settings.report.scored_month_ends,
        )
        lifecycle_path = write_lifecycle_report(lifecycle, root / "reports" / "lifecycle.html")
    console.print(
        f"  as of {lifecycle.as_of:%Y-%m-%d}: {len(lifecycle.facts.month_ends)} months, "
        f"{lifecycle_path.stat().st_size / 1e6:.1f} MB"
    )

    step("trigger rules: a week ago (the baseline for risk jumps), then today")
    from churnguard.console import print_trigger_run
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
    ranked = batch.outreach if len(batch.outreach) else batch.scores.sort_values("value_at_risk", ascending=False)
    customer_id = str(ranked["customer_id"].iloc[0])
    curl = (
        f'curl -H "Authorization: Bearer $KEY" '
        f"'http://127.0.0.1:{settings.serving.port}/v1/customers/{quote(customer_id, safe='')}/score"
        f"?as_of={as_of:%Y-%m-%d}'"  # the date the batch scored at: the same scorecard
    )
    console.print(f"""
  demo data        {demo_dir}
  customer store   {store.location}
  rejected rows    {row_rejects}
  report           {report}
  lifecycle report {lifecycle_path}
  scorecards       {scores}
  outreach list    {outreach}
  not scored       {rejected}
  trigger outbox   the store at {outbox} (`churn triggers`; pull: GET /v1/outbox)

  MLflow UI:       uv run mlflow ui --backend-store-uri {settings.tracking_uri}
  scoring API:     uv run churn serve        (without API keys it listens on 127.0.0.1 only)
  one customer (the top of the outreach list), from the store, as of the batch's date:
""")
    # plain print: the console would wrap a long line, and this one is meant to be copied
    print(f"  {curl}\n", flush=True)
    return QuickstartResult(
        demo_dir,
        report,
        scores,
        outreach,
        rejected,
        model.model_version,
        store.location,
        lifecycle_path,
        customer_id,
        curl,
    )


def _check_store_holds_only_this_demo(
    store: Store, demo_dir: Path, *, customers: int, seed: int, start: date, months: int
) -> None:
    """Quickstart writes into the configured store, so it refuses one that holds anything but this very demo."""
    ingests = [b for b in store.batches() if b.kind == "ingest"]
    if not ingests:
        return
    how = "remove it, or point CHURN_DATA_DIR (or CHURN_STORE__PATH / CHURN_STORE__URL) somewhere else"
    foreign = sorted({b.source for b in ingests if b.source != str(demo_dir)})
    if foreign:
        raise ValueError(
            f"the customer store at {store.location} already holds other data ({', '.join(foreign)}); "
            f"quickstart only puts its demo into an empty store: {how}"
        )
    manifest = demo_dir / "manifest.json"
    before = json.loads(manifest.read_text()) if manifest.is_file() else {}
    wanted = {"customers": customers, "seed": seed, "start": start.isoformat(), "months": months}
    if {k: before.get(k) for k in wanted} != wanted:
        had = ", ".join(f"{k} {before.get(k)}" for k in wanted)
        raise ValueError(
            f"the customer store at {store.location} holds the demo of an earlier quickstart ({had}), not this "
            f"one; the two would mix: {how}"
        )


def _steps(total: int):
    state = {"n": 0}

    def step(title: str) -> None:
        state["n"] += 1
        console.rule(f"[bold]{state['n']}/{total} {title}")

    return step
