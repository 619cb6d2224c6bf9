"""Batch scoring benchmark: ``score_batch`` + ``write_batch`` on the demo business, seconds and peak memory.

    uv run python benchmarks/bench_scoring.py [--customers 1000000] [--model-customers 50000] [--out benchmarks/out]

A model is trained once on a smaller demo business (``--model-customers``, its own cached data) and logged to a
throw-away MLflow store under ``--out``; then, on the big one, every stage runs in a fresh Python subprocess so
that its peak memory (the child's ``ru_maxrss``) is its own:

* ``model``          train + ``log_training`` on the small data (set-up, not a target);
* ``load``           ``load_dataset`` of the big data (read + validate); the clean tables are kept as Arrow IPC;
* ``features``       ``entities_at`` + ``build_features`` for every customer at once (the feature share of scoring);
* ``score``          ``load_model`` (champion), ``score_batch(reasons="none", capacity=10,000)``, ``write_batch`` to
                     Parquet: the target. Inside ``score_batch`` the library functions are wrapped with timers
                     (features, Arrow -> pandas, classifier, survival, value, policy, outreach, accounting);
* ``outreach``       ``score_batch(reasons="outreach")``: the extra seconds for the outreach list's top_reasons;
* ``reasons_all``    ``score_batch`` with ``reasons="none"`` and ``"all"`` on a random slice of ``--slice``
                     customers: the cost of TreeSHAP reasons for everybody, per customer and extrapolated per million;
* ``baseline``       LightGBM ``booster.predict`` on the same feature matrix (the rows ``score`` scores);
* ``check``          row accounting (scored + rejected == distinct customer ids in the raw input files) and the
                     written files read back (rows, columns, unique ids, no missing scores).

Results go to ``<out>/scoring.md`` and ``<out>/scoring.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_training import NOW, demo_data, fresh_settings  # noqa: E402
from benchmarks.common import (  # noqa: E402 - after the sys.path set-up
    GIB,
    Marks,
    RssSampler,
    code_version,
    cpu,
    load_stage,
    machine_info,
    maxrss,
    previous_results,
    read_clean,
    requested_stages,
    rss_now,
    run_stage,
    run_stages,
    stage_parser,
    wait_for_idle,
    write_report,
)

TARGETS = {"scoring_seconds": 60.0}
STAGES = ("model", "load", "features", "score", "outreach", "reasons_all", "baseline", "check")
CAPACITY = 10_000
CHUNK_SIZE = 100_000


# --------------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.stage:
        run_stage(args.stage, json.loads(args.spec), args.result, STAGE_FUNCTIONS)
        return
    out = Path(args.out)
    work = out / "work" / f"scoring_{args.customers}"
    work.mkdir(parents=True, exist_ok=True)
    stages = requested_stages(args.stages, STAGES)

    model_data, model_generation = demo_data(out, args.model_customers, args.seed, args.regenerate)
    data_dir, generation = demo_data(out, args.customers, args.seed, args.regenerate)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    as_of = datetime.fromisoformat(manifest["end"])  # the data end (exclusive): every customer is known
    print(
        f"data: {data_dir} ({manifest['files']['transactions']['rows']:,} transaction rows, "
        f"{manifest['files']['events']['rows']:,} events, {manifest['customers']:,} customers); "
        f"model trained on {model_data}; as_of {as_of:%Y-%m-%d}",
        flush=True,
    )

    spec = {
        "data": str(data_dir),
        "model_data": str(model_data),
        "clean": str(work / "clean"),
        "work": str(work),
        "mlflow_dir": str(work / "mlflow"),
        "as_of": as_of.isoformat(),
        "capacity": args.capacity,
        "chunk_size": args.chunk_size,
        "slice": args.slice,
        "seed": args.seed,
    }
    results = previous_results(work, STAGES, stages)
    needs_model = {"score", "outreach", "reasons_all", "baseline"} & set(stages)
    if needs_model and "model" not in stages and not (work / "mlflow" / "mlflow.db").exists():
        stages.insert(0, "model")
    if (
        needs_model | {"features"} & set(stages)
        and "load" not in stages
        and not (work / "clean" / "transactions.arrow").exists()
    ):
        stages.insert(0, "load")
    if "model" in stages:  # set-up on the small data: no need for an idle machine
        run_stages(__file__, ["model"], spec, work, results, _headline)
    idle = wait_for_idle(enabled=not args.no_wait and args.customers >= 500_000)
    run_stages(__file__, [n for n in STAGES[1:] if n in stages], spec, work, results, _headline)

    report = {
        "machine": machine_info(),
        "code": code_version(),
        "config": {
            "customers": args.customers,
            "model_customers": args.model_customers,
            "seed": args.seed,
            "as_of": str(as_of),
            "now": str(NOW),
            "capacity": args.capacity,
            "chunk_size": args.chunk_size,
            "slice": args.slice,
            "data_dir": str(data_dir),
            "data_rows": {k: v["rows"] for k, v in manifest["files"].items()},
            "generation_s": generation,
            "model_generation_s": model_generation,
            "idle_wait": idle,
        },
        "stages": results,
        "summary": summarise(results),
        "targets": TARGETS,
    }
    write_report(out, "scoring", report, to_markdown(report))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = stage_parser(__doc__, STAGES)
    p.add_argument("--model-customers", type=int, default=50_000, help="demo customers the model is trained on")
    p.add_argument("--capacity", type=int, default=CAPACITY, help="outreach list size")
    p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="score_batch chunk size")
    p.add_argument("--slice", type=int, default=50_000, help="customers of the reasons='all' stage")
    return p.parse_args(argv)


def _headline(name: str, r: dict) -> str:
    peak = f"peak RSS {r['process_maxrss_bytes'] / GIB:.2f} GiB"
    if name == "model":
        return f"train {r['train_s']:.1f} s, log {r['log_s']:.1f} s, winner {r['winner']}, {peak}"
    if name == "load":
        return f"{r['load_s']:.1f} s, {peak}"
    if name == "features":
        return (
            f"{r['entities']:,} entities: entities_at {r['entities_s']:.1f} s, features {r['features_s']:.1f} s, {peak}"
        )
    if name in ("score", "outreach"):
        w = f", write {r['write_s']:.1f} s" if "write_s" in r else ""
        return f"score_batch {r['score_batch_s']:.1f} s{w}, {r['scored']:,} scored, {peak}"
    if name == "reasons_all":
        return (
            f"{r['scored']:,} scored: none {r['none_s']:.1f} s, all {r['all_s']:.1f} s; "
            f"TreeSHAP {r['contributions_ms_per_customer']:.2f} ms/customer, {peak}"
        )
    if name == "baseline":
        return f"booster.predict {r['predict_s']:.2f} s on {r['rows']:,} rows, {peak}"
    if name == "check":
        return "all checks passed" if r["ok"] else f"FAILED: {r['failed']}"
    return peak


# --------------------------------------------------------------------------------------------- instrumentation


class Timers:
    """Wall and CPU seconds spent inside wrapped library functions (nested calls count in both)."""

    def __init__(self) -> None:
        self.totals: dict[str, dict] = {}
        self._patched: list[tuple[object, str, object, bool]] = []

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*a, **kw):
            t, c = time.perf_counter(), cpu()
            try:
                return fn(*a, **kw)
            finally:
                entry = self.totals.setdefault(name, {"s": 0.0, "cpu_s": 0.0, "calls": 0})
                entry["s"] += time.perf_counter() - t
                entry["cpu_s"] += cpu() - c
                entry["calls"] += 1

        return timed

    def patch(self, owner, attr: str, name: str, replacement=None) -> None:
        """Replace ``owner.attr`` by a timed version (or by ``replacement``); :meth:`restore` undoes it."""
        if not hasattr(owner, attr):
            return
        original = getattr(owner, attr)
        self._patched.append((owner, attr, vars(owner).get(attr), attr in vars(owner)))
        setattr(owner, attr, replacement or self.wrap(name, original))

    def restore(self) -> None:
        for owner, attr, original, own in reversed(self._patched):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # an instance attribute over the class's method
        self._patched.clear()


class _TimedTable:
    """A ``build_features`` result whose ``to_pandas`` is timed; anything else goes to the Arrow table."""

    def __init__(self, table, timers: Timers) -> None:
        self._table, self._timers = table, timers

    def to_pandas(self, *a, **kw):
        return self._timers.wrap("features.to_pandas", self._table.to_pandas)(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._table, name)


def instrument(model, timers: Timers) -> None:
    """Time the parts of ``score_batch`` without changing what it does."""
    import serving.scoring as scoring
    from serving.policy import Policy

    build = getattr(scoring, "build_features", None)
    if build is not None:
        timed_build = timers.wrap("features.build_features", build)
        timers.patch(scoring, "build_features", "", lambda *a, **kw: _TimedTable(timed_build(*a, **kw), timers))
    for attr, name in (
        ("entities_at", "entities_at"),
        ("select_outreach", "policy.select_outreach"),
        ("_explain", "outreach reasons (_explain)"),
        ("_not_known_yet", "accounting.rejected"),
        ("_only_invalid", "accounting.rejected"),
        ("_count_input", "accounting.count"),
        ("_summary", "summary"),
    ):
        timers.patch(scoring, attr, name)
    timers.patch(Policy, "assign", "policy.assign")
    timers.patch(model, "score", "model.score")
    timers.patch(model, "reasons", "model.reasons")
    timers.patch(model.classifier, "predict_proba", "model.classifier")
    timers.patch(model.classifier, "contributions", "model.reasons.treeshap")
    timers.patch(model.survival, "predict", "model.survival")
    timers.patch(model.value, "predict", "model.value")


# --------------------------------------------------------------------------------------------- children


def stage_model(spec: dict) -> dict:
    from features.validate import load_dataset
    from training.tracking import log_training
    from training.train import train

    settings = fresh_settings(Path(spec["mlflow_dir"]), wipe=True)
    t = time.perf_counter()
    data, _ = load_dataset(Path(spec["model_data"]), now=NOW)
    out: dict = {"load_s": time.perf_counter() - t, "customers": data.customers.num_rows}
    t = time.perf_counter()
    result = train(
        data, settings.training, settings.labels, settings.features, plot_dir=Path(spec["work"]) / "model_plots"
    )
    out["train_s"], out["timings"] = time.perf_counter() - t, dict(result.timings)
    t = time.perf_counter()
    logged = log_training(result, settings.mlflow)
    out["log_s"] = time.perf_counter() - t
    ev = result.evaluation
    out.update(
        version=logged.version,
        champion=logged.became_champion,
        winner=ev.winner,
        winner_description=ev.winner_description,
        holdout_auc=ev.candidates[ev.winner].get("roc_auc"),
        peak_rss_bytes=maxrss(),
    )
    return out


def stage_load(spec: dict) -> dict:
    return load_stage(Path(spec["data"]), NOW, Path(spec["clean"]))


def stage_features(spec: dict) -> dict:
    """Every customer's features in one ``build_features`` call (``score_batch`` does it in chunks)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.build import build_features, entities_at

    work = Path(spec["work"])
    data, _ = read_clean(Path(spec["clean"]))
    as_of = datetime.fromisoformat(spec["as_of"])
    out: dict = {"rss_before_bytes": rss_now()}
    t = time.perf_counter()
    entities = entities_at(data, as_of)
    out["entities_s"], out["entities"] = time.perf_counter() - t, entities.num_rows
    # warm-up: the one-off Ibis -> SQL compilation and DuckDB start (score_batch pays them in its first chunk)
    t = time.perf_counter()
    build_features(data, entities.slice(0, 10))
    out["warmup_s"] = time.perf_counter() - t
    with RssSampler() as sampler:
        t, c = time.perf_counter(), cpu()
        table = build_features(data, entities)
        out["features_s"], out["features_cpu_s"] = time.perf_counter() - t, cpu() - c
        t = time.perf_counter()
        frame = table.to_pandas()
        out["to_pandas_s"] = time.perf_counter() - t
    out["peak_rss_sampled_bytes"] = max((r for _, r in sampler.samples), default=0)
    out["peak_rss_bytes"] = maxrss()
    out["feature_table_bytes"], out["frame_bytes"] = table.nbytes, int(frame.memory_usage(deep=True).sum())
    out["prospects"] = int((frame["frequency"].to_numpy() < 1).sum())
    del frame
    # chunked, as score_batch does it: the time of the first chunks (each runs the query over all the data)
    chunk = spec["chunk_size"]
    times = []
    for start in range(0, min(entities.num_rows, 3 * chunk), chunk):
        t = time.perf_counter()
        build_features(data, entities.slice(start, chunk))
        times.append(time.perf_counter() - t)
    out["chunk_s"] = times
    out["chunks"] = int(np.ceil(entities.num_rows / chunk))
    pq.write_table(table.filter(pc.greater_equal(table["frequency"], 1)), work / "features.parquet")
    return out


def stage_score(spec: dict, reasons: str = "none", write: bool = True) -> dict:
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.scoring import score_batch, write_batch
    from serving.settings import ScoringSettings

    work = Path(spec["work"])
    settings = fresh_settings(Path(spec["mlflow_dir"]), wipe=False)
    t = time.perf_counter()
    data, rejects = read_clean(Path(spec["clean"]))
    out: dict = {"read_clean_s": time.perf_counter() - t, "rss_before_bytes": rss_now()}
    t = time.perf_counter()
    model = load_model(settings.mlflow)
    policy = load_policy()
    out["load_model_s"] = time.perf_counter() - t
    out["model_version"], out["classifier"] = model.model_version, model.classifier.name
    timers = Timers()
    instrument(model, timers)
    marks = Marks()
    with RssSampler() as sampler:
        result = score_batch(
            data,
            model,
            policy,
            ScoringSettings(chunk_size=spec["chunk_size"], capacity=spec["capacity"], reasons=reasons),
            as_of=datetime.fromisoformat(spec["as_of"]),
            invalid_customer_ids=rejects,
            progress=marks.progress,
        )
        marks.mark("end")
        out["score_batch_s"] = marks.items[-1]["t"] - marks.items[0]["t"]
        out["score_batch_cpu_s"] = marks.items[-1]["cpu"] - marks.items[0]["cpu"]
        out["peak_rss_score_batch_bytes"] = maxrss()
        if write:
            paths = {
                "scores": work / "scores.parquet",
                "outreach": work / "outreach.parquet",
                "rejects": work / "rejects.parquet",
            }
            t, c = time.perf_counter(), cpu()
            write_batch(result, paths["scores"], paths["outreach"], paths["rejects"])
            out["write_s"], out["write_cpu_s"] = time.perf_counter() - t, cpu() - c
            out["files_bytes"] = {k: p.stat().st_size for k, p in paths.items()}
    out["peak_rss_bytes"] = maxrss()
    out["peak_rss_sampled_bytes"] = max((r for _, r in sampler.samples), default=0)
    out["parts"] = timers.totals
    chunk_marks = [m for m in marks.items if m["label"].startswith("+")]
    out["chunk_s"] = [b["t"] - a["t"] for a, b in zip([marks.items[0], *chunk_marks], chunk_marks, strict=False)]
    out["scored"], out["rejected"] = len(result.scores), len(result.rejected)
    out["input_customers"], out["outreach"] = result.n_input_customers, len(result.outreach)
    out["summary"], out["warnings"] = asdict(result.summary), result.warnings
    out["results_bytes"] = int(result.scores.memory_usage(deep=True).sum())
    with_reasons = result.scores["top_reasons"].map(len) > 0
    out["scores_with_reasons"] = int(with_reasons.sum())
    out["outreach_with_reasons"] = (
        int((result.outreach["top_reasons"].map(len) > 0).sum()) if len(result.outreach) else 0
    )
    return out


def stage_outreach(spec: dict) -> dict:
    return stage_score(spec, reasons="outreach", write=False)


def stage_reasons_all(spec: dict) -> dict:
    """reasons='none' then 'all' on the same random slice of customers (same process, warmed up)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from features.build import build_features, entities_at
    from features.dataset import Dataset
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.scoring import score_batch
    from serving.settings import ScoringSettings

    settings = fresh_settings(Path(spec["mlflow_dir"]), wipe=False)
    data, _ = read_clean(Path(spec["clean"]))
    as_of = datetime.fromisoformat(spec["as_of"])
    ids = entities_at(data, as_of)["customer_id"]
    rng = np.random.default_rng(spec["seed"])
    pick = np.sort(rng.choice(len(ids), size=min(spec["slice"], len(ids)), replace=False))
    chosen = ids.take(pa.array(pick))
    part = Dataset(
        **{
            name: getattr(data, name).filter(pc.is_in(getattr(data, name)["customer_id"], chosen))
            for name in ("transactions", "events", "customers")
        }
    )
    del data
    model, policy = load_model(settings.mlflow), load_policy()
    build_features(part, entities_at(part, as_of).slice(0, 10), event_types=model.event_types)  # warm-up
    out: dict = {"slice_customers": len(chosen)}
    for reasons in ("none", "all"):
        timers = Timers()
        instrument(model, timers)
        t, c = time.perf_counter(), cpu()
        scoring = ScoringSettings(chunk_size=spec["chunk_size"], capacity=spec["capacity"], reasons=reasons)
        result = score_batch(part, model, policy, scoring, as_of=as_of)
        out[f"{reasons}_s"], out[f"{reasons}_cpu_s"] = time.perf_counter() - t, cpu() - c
        out[f"{reasons}_parts"] = timers.totals
        timers.restore()
        out["scored"] = len(result.scores)
        out[f"{reasons}_with_reasons"] = int((result.scores["top_reasons"].map(len) > 0).sum())
    n = out["scored"]
    shap = out["all_parts"].get("model.reasons.treeshap", {"s": float("nan")})
    reasons_total = out["all_parts"].get("model.reasons", {"s": float("nan")})
    out["contributions_s"], out["reasons_s"] = shap["s"], reasons_total["s"]
    out["contributions_ms_per_customer"] = 1000 * shap["s"] / n
    out["reasons_ms_per_customer"] = 1000 * reasons_total["s"] / n
    out["extra_s"] = out["all_s"] - out["none_s"]
    out["extra_s_per_million_extrapolated"] = out["extra_s"] / n * 1_000_000
    out["reasons_s_per_million_extrapolated"] = reasons_total["s"] / n * 1_000_000
    out["peak_rss_bytes"] = maxrss()
    return out


def stage_baseline(spec: dict) -> dict:
    """LightGBM booster.predict on the feature matrix of the scored customers: the least a scoring job must do."""
    import numpy as np
    import pyarrow.parquet as pq

    from model.registry import load_model

    settings = fresh_settings(Path(spec["mlflow_dir"]), wipe=False)
    model = load_model(settings.mlflow)
    clf = model.classifier
    members = [clf, *getattr(clf, "members", [])]
    lgbm = next((m for m in members if hasattr(m, "booster")), None)
    features = lgbm.features if lgbm is not None else clf.features
    t = time.perf_counter()
    table = pq.read_table(Path(spec["work"]) / "features.parquet", columns=features)
    out: dict = {"read_s": time.perf_counter() - t, "rows": table.num_rows, "features": len(features)}
    t = time.perf_counter()
    x = np.column_stack([table[f].to_numpy(zero_copy_only=False).astype("float64") for f in features])
    out["to_numpy_s"] = time.perf_counter() - t
    del table
    out["rss_before_bytes"] = rss_now()
    t, c = time.perf_counter(), cpu()
    if lgbm is not None:
        p = lgbm.booster_.predict(x, num_iteration=lgbm.best_iteration_)
        out["what"] = f"LightGBM booster.predict, {lgbm.best_iteration_} trees"
    else:  # the winner has no trees: its own probabilities are the floor
        import pandas as pd

        p = clf.predict_proba(pd.DataFrame(x, columns=features))
        out["what"] = f"{clf.name}.predict_proba (the champion has no LightGBM booster)"
    out["predict_s"], out["predict_cpu_s"] = time.perf_counter() - t, cpu() - c
    out["mean_raw"] = float(np.mean(p))
    out["peak_rss_bytes"] = maxrss()
    return out


def stage_check(spec: dict) -> dict:
    """Row accounting against the raw input files, and the written files read back."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from serving.scoring import SCORECARD_COLUMNS

    work, data = Path(spec["work"]), Path(spec["data"])
    raw = [
        pq.read_table(data / f"{n}.parquet", columns=["customer_id"])["customer_id"]
        for n in ("transactions", "events", "customers")
    ]
    input_ids = pc.unique(pc.drop_null(pa.chunked_array([c for col in raw for c in col.chunks], pa.string())))
    scores = pq.read_table(work / "scores.parquet")
    rejects = pq.read_table(work / "rejects.parquet")
    outreach = pq.read_table(work / "outreach.parquet")
    score_ids, reject_ids = scores["customer_id"].cast(pa.string()), rejects["customer_id"].cast(pa.string())
    scored_stage = json.loads((work / "score.json").read_text())
    num_rows_meta = pq.ParquetFile(work / "scores.parquet").metadata.num_rows
    probability = scores["churn_probability"]
    checks = {
        "scored + rejected == input customers (raw files)": scores.num_rows + rejects.num_rows == len(input_ids),
        "score_batch's own count == input customers (raw files)": scored_stage["input_customers"] == len(input_ids),
        "scores file rows == scored in score_batch": scores.num_rows == scored_stage["scored"] == num_rows_meta,
        "rejects file rows == rejected in score_batch": rejects.num_rows == scored_stage["rejected"],
        "scores columns == SCORECARD_COLUMNS": scores.column_names == list(SCORECARD_COLUMNS),
        "customer ids unique in scores": len(pc.unique(score_ids)) == scores.num_rows,
        "customer ids unique in rejects": len(pc.unique(reject_ids)) == rejects.num_rows,
        "scored and rejected disjoint": not pc.any(pc.is_in(score_ids, reject_ids)).as_py(),
        "every input customer scored or rejected": pc.all(
            pc.is_in(input_ids, pa.chunked_array([*score_ids.chunks, *reject_ids.chunks], pa.string()))
        ).as_py(),
        "no missing churn_probability / risk_tier / action": all(
            scores[c].null_count == 0 for c in ("churn_probability", "risk_tier", "recommended_action")
        ),
        "churn_probability in [0, 1]": pc.min(probability).as_py() >= 0 and pc.max(probability).as_py() <= 1,
        "outreach rows == min(capacity, customers worth contacting), all of them scored": outreach.num_rows
        == min(spec["capacity"], pc.sum(pc.greater(scores["expected_value_saved"], 0)).as_py() or 0)
        and pc.all(pc.is_in(outreach["customer_id"].cast(pa.string()), score_ids)).as_py(),
    }
    failed = [k for k, v in checks.items() if not v]
    return {
        "input_customers_raw": len(input_ids),
        "scores_rows": scores.num_rows,
        "rejects_rows": rejects.num_rows,
        "outreach_rows": outreach.num_rows,
        "rejected_by_reason": {r["values"]: r["counts"] for r in pc.value_counts(rejects["reason"]).to_pylist()},
        "checks": checks,
        "failed": failed,
        "ok": not failed,
        "peak_rss_bytes": maxrss(),
    }


STAGE_FUNCTIONS = {
    "model": stage_model,
    "load": stage_load,
    "features": stage_features,
    "score": stage_score,
    "outreach": stage_outreach,
    "reasons_all": stage_reasons_all,
    "baseline": stage_baseline,
    "check": stage_check,
}


# --------------------------------------------------------------------------------------------- reporting


def summarise(st: dict) -> dict:
    out: dict = {}
    if "score" in st:
        s = st["score"]
        out["scoring_s"] = s["score_batch_s"] + s["write_s"]
        out["scoring_ok"] = out["scoring_s"] < TARGETS["scoring_seconds"]
        if "load" in st:
            out["job_s"] = st["load"]["load_s"] + s["load_model_s"] + out["scoring_s"]
        if "baseline" in st:
            out["ratio_scoring_over_predict"] = out["scoring_s"] / st["baseline"]["predict_s"]
        if "outreach" in st:
            o = st["outreach"]
            out["outreach_extra_s"] = o["score_batch_s"] - s["score_batch_s"]
            out["outreach_explain_s"] = o["parts"].get("outreach reasons (_explain)", {}).get("s")
    return out


def to_markdown(r: dict) -> str:
    m, cfg, st, s, code = r["machine"], r["config"], r["stages"], r["summary"], r["code"]
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    load = lambda x: "-".join(f"{v:.1f}" for v in x.get("loadavg_1min", []))  # noqa: E731
    cached = lambda x: " (cached from an earlier run)" if x.get("cached") else ""  # noqa: E731
    lines = [
        f"# Batch scoring benchmark: `score_batch` on {cfg['customers']:,} demo customers",
        "",
        f"Machine: {m.get('cpus_usable')} usable cores ({m.get('cpu_model', '?')}), {m.get('ram_gib', '?')} GiB RAM; "
        f"Python {m['python']}, DuckDB {m.get('duckdb')}, LightGBM {m.get('lightgbm')}, MLflow {m.get('mlflow')}.",
        f"Code: commit {code['commit']}"
        + (
            f" with uncommitted edits in {', '.join(code['uncommitted_files'])} (diff sha1 {code['diff_sha1']})"
            if code["uncommitted_files"]
            else ""
        )
        + ".",
        f"Data: demo business, {cfg['customers']:,} customers (seed {cfg['seed']}), "
        f"{cfg['data_rows']['transactions']:,} transaction rows, {cfg['data_rows']['events']:,} events; "
        f"as_of {cfg['as_of'][:10]}; outreach capacity {cfg['capacity']:,}; chunks of {cfg['chunk_size']:,}.",
    ]
    if "model" in st:
        x = st["model"]
        lines.append(
            f"Model: trained on {cfg['model_customers']:,} demo customers ({x['train_s']:.0f} s, logged in "
            f"{x['log_s']:.0f} s to a throw-away MLflow store): {x['winner_description']}, holdout AUC "
            f"{x['holdout_auc']:.3f}{cached(x)}."
        )
    idle = cfg.get("idle_wait", {})
    if idle.get("waited") is False:
        lines.append(f"Started without waiting for an idle machine (1-min load {idle['loadavg_1min_at_start']:.2f}).")
    elif idle:
        lines.append(
            f"Started on an idle machine (1-min load {idle['loadavg_1min_at_start']:.2f} after waiting "
            f"{idle['waited_s']} s)."
            if idle.get("idle")
            else f"**Machine not idle**: gave up waiting after {idle['waited_s']} s (1-min load "
            f"{idle['loadavg_1min_at_start']:.2f})."
        )
    lines += [
        "",
        "| stage | seconds | CPU s | peak RSS GiB | 1-min load avg | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    if "load" in st:
        x = st["load"]
        lines.append(
            f"| load + validate (`load_dataset`) | {x['load_s']:.1f} | {x['load_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | own process, not in the target; "
            f"{x['rows']['rejected']:,} rows rejected{cached(x)} |"
        )
    if "features" in st:
        x = st["features"]
        lines.append(
            f"| features only: `build_features`, all customers in one call | {x['features_s']:.1f} | "
            f"{x['features_cpu_s']:.1f} | {gib(x['process_maxrss_bytes'])} | {load(x)} | own process; "
            f"{x['entities']:,} entities (`entities_at` {x['entities_s']:.1f} s apart); Arrow -> pandas "
            f"{x['to_pandas_s']:.1f} s apart; first 100k-chunks "
            f"{', '.join(f'{v:.1f}' for v in x['chunk_s'])} s each{cached(x)} |"
        )
    if "score" in st:
        x = st["score"]
        p = x["parts"]
        g = lambda k: p.get(k, {}).get("s", 0.0)  # noqa: E731
        lines.append(
            f'| **scoring: `score_batch(reasons="none")`** | **{x["score_batch_s"]:.1f}** | '
            f"{x['score_batch_cpu_s']:.1f} | {gib(x['peak_rss_score_batch_bytes'])} | {load(x)} | "
            f"{x['scored']:,} scored, {x['rejected']:,} rejected, outreach {x['outreach']:,}{cached(x)} |"
        )
        parts = [
            ("entities_at", "entities_at"),
            (
                "features.build_features",
                f"features (`build_features`, {p.get('features.build_features', {}).get('calls', 0)} chunks)",
            ),
            ("features.to_pandas", "features Arrow -> pandas"),
            ("model.score", "model (`ChurnModel.score`)"),
            ("model.classifier", "  of which classifier"),
            ("model.survival", "  of which survival"),
            ("model.value", "  of which value"),
            ("policy.assign", "policy actions"),
            ("policy.select_outreach", "outreach list"),
            ("accounting", "accounting (rejects, input count)"),
        ]
        accounted = 0.0
        for key, label in parts:
            v = g("accounting.rejected") + g("accounting.count") if key == "accounting" else g(key)
            cpu_s = p.get(key, {}).get("cpu_s") if key != "accounting" else None
            if not label.startswith("  "):
                accounted += v
            lines.append(
                f"| &nbsp;&nbsp;{label.strip()} | {v:.1f} | {'' if cpu_s is None else f'{cpu_s:.1f}'} | "
                f"| | {'inside model.score' if label.startswith('  ') else ''} |"
            )
        lines.append(f"| &nbsp;&nbsp;other (concat, summary, glue) | {x['score_batch_s'] - accounted:.1f} | | | | |")
        lines.append(
            f"| **writing: `write_batch` to Parquet** | **{x['write_s']:.1f}** | {x['write_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | | scores {x['files_bytes']['scores'] / 2**20:.0f} MiB, "
            f"outreach + rejects {(x['files_bytes']['outreach'] + x['files_bytes']['rejects']) / 2**20:.0f} "
            "MiB |"
        )
        ok = "yes" if s["scoring_ok"] else "**NO**"
        lines.append(
            f"| **scorecards without reasons (score_batch + write)** | **{s['scoring_s']:.1f}** | | "
            f"**{gib(x['process_maxrss_bytes'])}** | | target < {TARGETS['scoring_seconds']:.0f} s: {ok} |"
        )
    if "outreach" in st:
        x = st["outreach"]
        lines.append(
            f'| `score_batch(reasons="outreach")` | {x["score_batch_s"]:.1f} | {x["score_batch_cpu_s"]:.1f} | '
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | {x['outreach_with_reasons']:,} outreach customers "
            f"explained{cached(x)} |"
        )
        lines.append(
            f"| &nbsp;&nbsp;extra for outreach reasons | **{s['outreach_extra_s']:.1f}** | | | | difference "
            f"of the two runs; `_explain` itself measured {s['outreach_explain_s'] or 0:.1f} s "
            f"(TreeSHAP and reason texts for the {x['outreach_with_reasons']:,} outreach customers, from the feature "
            "rows kept while scoring) |"
        )
    if "reasons_all" in st:
        x = st["reasons_all"]
        lines.append(
            f'| reasons for everybody, {x["scored"]:,}-customer slice: `reasons="none"` / `"all"` | '
            f"{x['none_s']:.1f} / {x['all_s']:.1f} | {x['none_cpu_s']:.1f} / {x['all_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | random slice of {x['slice_customers']:,} "
            f"customers{cached(x)} |"
        )
        lines.append(
            f"| &nbsp;&nbsp;reasons for everybody, **extrapolated** per 1M scored | "
            f"**~{x['extra_s_per_million_extrapolated']:.0f}** | | | | extrapolated linearly from the "
            f"slice: ({x['all_s']:.1f} - {x['none_s']:.1f}) s / {x['scored']:,} x 1M; TreeSHAP "
            f"**{x['contributions_ms_per_customer']:.2f} ms per customer** (`reasons` incl. text "
            f"{x['reasons_ms_per_customer']:.2f} ms) |"
        )
    if "baseline" in st:
        x = st["baseline"]
        ratio = (
            f"scoring / baseline = **{s['ratio_scoring_over_predict']:.1f}x**"
            if "ratio_scoring_over_predict" in s
            else ""
        )
        lines.append(
            f"| baseline: {x['what']} on the same {x['rows']:,} x {x['features']} matrix | "
            f"{x['predict_s']:.2f} | {x['predict_cpu_s']:.1f} | {gib(x['process_maxrss_bytes'])} | "
            f"{load(x)} | {ratio}; matrix ready in memory (Parquet -> numpy {x['to_numpy_s']:.1f} s not "
            f"counted){cached(x)} |"
        )
    lines.append("")
    notes = [
        "seconds: wall time of the call; CPU s: user + system time of all threads over it; peak RSS: the stage "
        "process's `ru_maxrss` (for score_batch: at its end, before writing), which includes the resident "
        "clean dataset. Parts of score_batch are timed by wrapping the library functions it calls (nested "
        "parts are indented)."
    ]
    if "score" in st and "load" in st:
        x = st["score"]
        notes.append(
            f"The whole job as `churn score` runs it: load + validate {st['load']['load_s']:.1f} s + "
            f"`load_model` {x['load_model_s']:.1f} s + scoring {s['scoring_s']:.1f} s = **{s['job_s']:.0f} s**."
        )
        chunks = x.get("chunk_s", [])
        if chunks:
            notes.append(f"score_batch per 100k-chunk (s): {', '.join(f'{v:.1f}' for v in chunks)}.")
        if x.get("warnings"):
            notes.append(f"score_batch warnings: {'; '.join(x['warnings'])}")
    if "check" in st:
        c = st["check"]
        verdict = "**all passed**" if c["ok"] else f"**FAILED**: {', '.join(c['failed'])}"
        notes.append(
            f"Checks: {verdict}. {c['input_customers_raw']:,} distinct customer ids in the raw files = "
            f"{c['scores_rows']:,} scored + {c['rejects_rows']:,} rejected ("
            + ", ".join(f"{v:,} {k}" for k, v in c["rejected_by_reason"].items())
            + f"); checked: {'; '.join(c['checks'])}."
        )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
