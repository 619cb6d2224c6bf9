"""Training benchmark: ``train`` end to end on the demo business, seconds and peak memory per stage.

    uv run python benchmarks/bench_training.py [--customers 1000000] [--out benchmarks/out]

Generates (once, cached under ``--out``) the demo business with ``churnguard.demo.generate`` as Parquet, then runs
every stage in a fresh Python subprocess, so that its peak memory (the child's ``ru_maxrss``) is its own:

* ``load``      ``features.validate.load_dataset`` (read + validate); the clean tables are kept as Arrow IPC;
* ``train``     ``training.train.train`` on the clean data (6 snapshots by default): the per-stage timings it
                returns (features, classifier, survival, evaluation), the CPU seconds and the highest sampled RSS
                of each stage, and the process peak;
* ``log``       ``training.tracking.log_training`` (MLflow on SQLite in a throw-away data dir under ``--out``),
                then ``load_model`` of the champion (what scoring does at start-up, reported apart);
* ``baseline``  the minimal baseline on the *same* training matrix (the fit and validation rows ``train`` built):
                one early-stopped LightGBM fit with the configured tree size (no tree-size search, no calibration,
                no other candidates), then the LightGBM candidate exactly as ``train`` fits it;
* ``e2e``       load + train + log in one process, the way ``churn train`` runs: its wall time and peak RSS.

Results go to ``<out>/training.md`` and ``<out>/training.json``. ``bench_scoring.py`` reuses the helpers here.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the sys.path set-up
    GIB,
    Marks,
    RssSampler,
    child,
    code_version,
    cpu,
    dir_bytes,
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

NOW = datetime(2026, 1, 1)  # the run's clock for validation: later rows (year ~2099) are rejects
TARGETS = {"total_seconds": 300.0, "peak_gib": 8.0}
STAGES = ("load", "train", "log", "baseline", "e2e")
TRAIN_STAGES = ("features", "classifier", "survival", "evaluation", "production", "plots")
# progress messages of training.train.train that open each stage (features opens with the call itself)
STAGE_MARKERS = {
    "classifier": "candidate classifiers",
    "survival": "survival model",
    "evaluation": "evaluating",
    "production": "production fit",
    "plots": "drawing the plots",
}


# --------------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.stage:
        run_stage(args.stage, json.loads(args.spec), args.result, STAGE_FUNCTIONS)
        return
    out = Path(args.out)
    work = out / "work" / f"training_{args.customers}"
    work.mkdir(parents=True, exist_ok=True)
    stages = requested_stages(args.stages, STAGES)

    data_dir, generation = demo_data(out, args.customers, args.seed, args.regenerate)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    print(
        f"data: {data_dir} ({manifest['files']['transactions']['rows']:,} transaction rows, "
        f"{manifest['files']['events']['rows']:,} events, {manifest['customers']:,} customers)",
        flush=True,
    )
    idle = wait_for_idle(enabled=not args.no_wait and args.customers >= 500_000)

    clean, mlflow_dir = work / "clean", work / "mlflow"
    spec = {"data": str(data_dir), "clean": str(clean), "work": str(work), "mlflow_dir": str(mlflow_dir)}
    if "train" in stages and "load" not in stages and not (clean / "transactions.arrow").exists():
        stages.insert(0, "load")
    results = previous_results(work, STAGES, stages)
    run_stages(__file__, [n for n in STAGES if n in stages], spec, work, results, _headline)

    report = {
        "machine": machine_info(),
        "code": code_version(),
        "config": {
            "customers": args.customers,
            "seed": args.seed,
            "data_dir": str(data_dir),
            "now": str(NOW),
            "data_rows": {k: v["rows"] for k, v in manifest["files"].items()},
            "generation_s": generation,
            "idle_wait": idle,
        },
        "stages": results,
        "summary": summarise(results),
        "targets": TARGETS,
    }
    write_report(out, "training", report, to_markdown(report))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = stage_parser(__doc__, STAGES)
    return p.parse_args(argv)


def _headline(name: str, r: dict) -> str:
    peak = f"peak RSS {r['process_maxrss_bytes'] / GIB:.2f} GiB"
    if name == "load":
        return f"{r['load_s']:.1f} s, {peak}"
    if name == "train":
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
        return f"{r['train_s']:.1f} s ({parts}), {peak}"
    if name == "log":
        return f"log_training {r['log_s']:.1f} s, load_model {r['load_model_s']:.1f} s, {peak}"
    if name == "baseline":
        return f"bare LightGBM {r['bare_s']:.1f} s, LightGBM candidate {r['candidate_s']:.1f} s, {peak}"
    if name == "e2e":
        return f"{r['total_s']:.1f} s ({r['load_s']:.1f} + {r['train_s']:.1f} + {r['log_s']:.1f}), {peak}"
    return peak


# --------------------------------------------------------------------------------------------- shared helpers


def demo_data(out: Path, customers: int, seed: int, regenerate: bool = False) -> tuple[Path, float | None]:
    """The cached demo business ``<out>/demo_<N>_seed<seed>/`` (generated in a child process when missing)."""
    data_dir = out / f"demo_{customers}_seed{seed}"
    manifest = data_dir / "manifest.json"
    if manifest.exists() and not regenerate:
        m = json.loads(manifest.read_text())
        wanted = {"customers": customers, "seed": seed, "format": "parquet"}
        if all(m.get(k) == v for k, v in wanted.items()):
            print(f"using cached demo data in {data_dir}", flush=True)
            return data_dir, None
    print(f"generating demo data: {customers:,} customers -> {data_dir}", flush=True)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    spec = {"data": str(data_dir), "customers": customers, "seed": seed}
    r = child(__file__, "generate", spec, work / f"generate_{customers}.json")
    return data_dir, r["generate_s"]


def fresh_settings(mlflow_dir: Path, wipe: bool):
    """Settings whose MLflow store is SQLite in ``mlflow_dir`` (wiped first when ``wipe``)."""
    from churnguard.settings import Settings

    if wipe and mlflow_dir.exists():
        shutil.rmtree(mlflow_dir)
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=mlflow_dir)
    expected = f"sqlite:///{(mlflow_dir / 'mlflow.db').resolve()}"
    if settings.tracking_uri != expected:
        raise SystemExit(
            f"MLflow would log to {settings.tracking_uri}, not the benchmark's {expected}: "
            "unset CHURN_MLFLOW__TRACKING_URI / churnguard.toml overrides"
        )
    return settings


# --------------------------------------------------------------------------------------------- children


def stage_generate(spec: dict) -> dict:
    from churnguard.demo import generate

    started = time.perf_counter()
    generate(
        Path(spec["data"]),
        customers=spec["customers"],
        seed=spec["seed"],
        fmt="parquet",
        progress=lambda m: print(f"  {m}", flush=True),
    )
    return {"generate_s": time.perf_counter() - started, "peak_rss_bytes": maxrss()}


def stage_load(spec: dict) -> dict:
    return load_stage(Path(spec["data"]), NOW, Path(spec["clean"]))


def stage_train(spec: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.train import train

    work = Path(spec["work"])
    settings = fresh_settings(Path(spec["mlflow_dir"]), wipe=False)
    t = time.perf_counter()
    data, _ = read_clean(Path(spec["clean"]))
    out: dict = {"read_clean_s": time.perf_counter() - t, "rss_before_train_bytes": rss_now()}

    marks = Marks()
    with RssSampler() as sampler:
        result = train(
            data,
            settings.training,
            settings.labels,
            settings.features,
            plot_dir=work / "plots",
            progress=marks.progress,
        )
        marks.mark("end")
    out["train_s"] = marks.items[-1]["t"] - marks.items[0]["t"]
    out["train_cpu_s"] = marks.items[-1]["cpu"] - marks.items[0]["cpu"]
    out["peak_rss_bytes"] = maxrss()
    out["timings"] = dict(result.timings)
    out["peak_rss_mb_reported"] = dict(result.peak_rss_mb)  # train's own: ru_maxrss so far at each stage end
    out["per_stage"] = _split_stages(marks, sampler)
    out["progress"] = [{"label": m["label"], "at_s": round(m["t"] - marks.items[0]["t"], 2)} for m in marks.items]
    ev = result.evaluation
    out["params"] = dict(result.params)
    out["frame"] = {
        "rows": len(result.frame.frame),
        "columns": result.frame.frame.shape[1],
        "bytes": int(result.frame.frame.memory_usage(deep=True).sum()),
        "labelled_per_snapshot": result.frame.labelled_counts,
    }
    out["evaluation"] = {
        "winner": ev.winner,
        "winner_description": ev.winner_description,
        "n_holdout": ev.n_holdout,
        "holdout_churn_rate": ev.holdout_churn_rate,
        "candidates": {k: {m: v[m] for m in ("roc_auc", "log_loss") if m in v} for k, v in ev.candidates.items()},
        "backtest_rows": len(ev.backtest),
    }

    # inputs of the later stages: the whole result (log), the training matrix (baseline)
    t = time.perf_counter()
    with open(work / "train_result.pkl", "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    out["pickle_s"] = time.perf_counter() - t
    out["pickle_bytes"] = (work / "train_result.pkl").stat().st_size
    plan = result.frame.plan
    features = [f for f in result.frame.feature_names if plan.uses_season or not f.startswith("season_")]
    for part in ("fit", "validation"):
        df = result.frame.part(part)[[*features, "churned"]]
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), work / f"{part}.parquet")
    out["matrix"] = {
        "features": features,
        "fit_rows": int(result.params["n_fit_rows"]),
        "validation_rows": int(result.params["n_validation_rows"]),
    }
    return out


def _split_stages(marks: Marks, sampler: RssSampler) -> dict:
    """CPU seconds and the highest sampled RSS of each train stage, cut at its opening progress message."""
    start, end = marks.items[0], marks.items[-1]
    bounds = {"features": start}
    for stage, marker in STAGE_MARKERS.items():
        hit = next((m for m in marks.items if marker in m["label"]), None)
        if hit is None:
            return {}
        bounds[stage] = hit
    order = list(bounds)
    out = {}
    for i, stage in enumerate(order):
        a, b = bounds[stage], bounds[order[i + 1]] if i + 1 < len(order) else end
        out[stage] = {
            "wall_s": b["t"] - a["t"],
            "cpu_s": b["cpu"] - a["cpu"],
            "peak_rss_sampled_bytes": sampler.peak(a["t"], b["t"]),
        }
    return out


def stage_log(spec: dict) -> dict:
    from model.registry import load_model
    from training.tracking import log_training

    work = Path(spec["work"])
    mlflow_dir = Path(spec["mlflow_dir"])
    settings = fresh_settings(mlflow_dir, wipe=True)
    t = time.perf_counter()
    with open(work / "train_result.pkl", "rb") as f:
        result = pickle.load(f)
    out: dict = {"unpickle_s": time.perf_counter() - t, "rss_before_log_bytes": rss_now()}
    t, c = time.perf_counter(), cpu()
    logged = log_training(result, settings.mlflow)
    out["log_s"], out["log_cpu_s"] = time.perf_counter() - t, cpu() - c
    out["peak_rss_bytes"] = maxrss()
    out["version"], out["became_champion"] = logged.version, logged.became_champion
    out["artifacts_bytes"] = dir_bytes(settings.mlflow.artifact_root)
    pkl = sorted(settings.mlflow.artifact_root.rglob("python_model.pkl"))
    out["model_pickle_bytes"] = pkl[0].stat().st_size if pkl else None
    del result
    t = time.perf_counter()
    model = load_model(settings.mlflow)
    out["load_model_s"] = time.perf_counter() - t
    out["loaded_version"] = model.model_version
    return out


def stage_baseline(spec: dict) -> dict:
    """The minimal baseline on the same training matrix, then the LightGBM candidate as ``train`` fits it."""
    import pandas as pd

    from churnguard.settings import Settings
    from training.candidates import TARGET, _fit_booster, _x, fit_lightgbm

    work = Path(spec["work"])
    cfg = Settings(data_dir=Path(spec["mlflow_dir"])).training
    features = json.loads((work / "train.json").read_text())["matrix"]["features"]
    t = time.perf_counter()
    fit, val = pd.read_parquet(work / "fit.parquet"), pd.read_parquet(work / "validation.parquet")
    out: dict = {
        "read_s": time.perf_counter() - t,
        "fit_rows": len(fit),
        "validation_rows": len(val),
        "features": len(features),
        "rss_before_bytes": rss_now(),
    }

    # bare: one early-stopped booster on all fit rows, validation rows for early stopping, configured tree size
    t, c = time.perf_counter(), cpu()
    bare = _fit_booster(
        _x(fit, features),
        fit[TARGET].to_numpy(),
        _x(val, features),
        val[TARGET].to_numpy(),
        cfg.lgbm_num_leaves,
        cfg.lgbm_min_child_samples,
        cfg,
        None,
    )
    out["bare_s"], out["bare_cpu_s"] = time.perf_counter() - t, cpu() - c
    out["bare_trees"] = int(bare.best_iteration_ or cfg.lgbm_n_estimators)
    out["bare_peak_rss_bytes"] = maxrss()
    del bare
    # the candidate as trained: tree-size search on a sample (3 fits), the final fit, calibration
    t, c = time.perf_counter(), cpu()
    cand = fit_lightgbm(fit, val, features, cfg)
    out["candidate_s"], out["candidate_cpu_s"] = time.perf_counter() - t, cpu() - c
    out["candidate_description"] = cand.description
    out["peak_rss_bytes"] = maxrss()
    return out


def stage_e2e(spec: dict) -> dict:
    """What ``churn train`` does in one process: load + validate, train, log (peak RSS of all of it)."""
    from features.validate import load_dataset
    from training.tracking import log_training
    from training.train import train

    work = Path(spec["work"])
    settings = fresh_settings(Path(spec["mlflow_dir"]) / "e2e", wipe=True)
    out: dict = {}
    t = time.perf_counter()
    data, _ = load_dataset(Path(spec["data"]), now=NOW)
    out["load_s"] = time.perf_counter() - t
    out["rss_after_load_bytes"], out["peak_after_load_bytes"] = rss_now(), maxrss()
    t = time.perf_counter()
    result = train(data, settings.training, settings.labels, settings.features, plot_dir=work / "plots_e2e")
    out["train_s"] = time.perf_counter() - t
    out["timings"] = dict(result.timings)
    t = time.perf_counter()
    log_training(result, settings.mlflow)
    out["log_s"] = time.perf_counter() - t
    out["total_s"] = out["load_s"] + out["train_s"] + out["log_s"]
    out["peak_rss_bytes"] = maxrss()
    return out


STAGE_FUNCTIONS = {
    "generate": stage_generate,
    "load": stage_load,
    "train": stage_train,
    "log": stage_log,
    "baseline": stage_baseline,
    "e2e": stage_e2e,
}


# --------------------------------------------------------------------------------------------- reporting


def summarise(st: dict) -> dict:
    out: dict = {}
    if not all(k in st for k in ("load", "train", "log")):
        return out
    ld, tr, lg = st["load"], st["train"], st["log"]
    total = ld["load_s"] + tr["train_s"] + lg["log_s"]
    peak = max(ld["process_maxrss_bytes"], tr["process_maxrss_bytes"], lg["process_maxrss_bytes"])
    out.update(
        total_s=total,
        peak_bytes=peak,
        total_ok=total < TARGETS["total_seconds"],
        peak_ok=peak / GIB < TARGETS["peak_gib"],
    )
    if "e2e" in st:
        e = st["e2e"]
        out.update(
            e2e_total_s=e["total_s"],
            e2e_peak_bytes=e["process_maxrss_bytes"],
            e2e_total_ok=e["total_s"] < TARGETS["total_seconds"],
            e2e_peak_ok=e["process_maxrss_bytes"] / GIB < TARGETS["peak_gib"],
        )
    if "baseline" in st:
        b = st["baseline"]
        out["ratio_train_over_bare"] = tr["train_s"] / b["bare_s"]
        out["ratio_total_over_bare"] = total / b["bare_s"]
        out["ratio_classifier_over_bare"] = tr["timings"]["classifier"] / b["bare_s"]
        out["ratio_candidate_over_bare"] = b["candidate_s"] / b["bare_s"]
    return out


def to_markdown(r: dict) -> str:
    m, cfg, st, s = r["machine"], r["config"], r["stages"], r["summary"]
    code = r["code"]
    lines = [
        f"# Training benchmark: `train` on {cfg['customers']:,} demo customers",
        "",
        f"Machine: {m.get('cpus_usable')} usable cores ({m.get('cpu_model', '?')}), {m.get('ram_gib', '?')} GiB RAM; "
        f"Python {m['python']}, DuckDB {m.get('duckdb')}, LightGBM {m.get('lightgbm')}, MLflow {m.get('mlflow')}, "
        f"lifelines {m.get('lifelines')}.",
        f"Code: commit {code['commit']}"
        + (
            f" with uncommitted edits in {', '.join(code['uncommitted_files'])} (diff sha1 {code['diff_sha1']})"
            if code["uncommitted_files"]
            else ""
        )
        + ".",
        f"Data: demo business, {cfg['customers']:,} customers (seed {cfg['seed']}), "
        f"{cfg['data_rows']['transactions']:,} transaction rows, {cfg['data_rows']['events']:,} events."
        + (f" Generation took {cfg['generation_s']:.0f} s." if cfg.get("generation_s") else ""),
        _idle_line(cfg.get("idle_wait", {})),
        "",
        "| stage | seconds | CPU s | peak RSS GiB | 1-min load avg | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    load = lambda x: "-".join(f"{v:.1f}" for v in x.get("loadavg_1min", []))  # noqa: E731
    cached = lambda x: " (cached from an earlier run)" if x.get("cached") else ""  # noqa: E731
    if "load" in st:
        x = st["load"]
        lines.append(
            f"| load + validate (`load_dataset`) | {x['load_s']:.1f} | {x['load_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | own process; clean data "
            f"{gib(x['dataset_bytes'])} GiB in Arrow, {x['rows']['rejected']:,} rows rejected{cached(x)} |"
        )
    if "train" in st:
        x = st["train"]
        per = x.get("per_stage", {})
        labels = {
            "features": "snapshot features + labels",
            "classifier": "4 candidates (LightGBM + search, 2 logistic, blend)",
            "survival": "Weibull AFT + value model (selection)",
            "evaluation": "holdout metrics",
            "production": "production fit: winner, survival and value refitted on the freshest labels",
            "plots": "evaluation plots",
        }
        for name in TRAIN_STAGES:
            p = per.get(name, {})
            cpu_s = f"{p['cpu_s']:.1f}" if p else ""
            peak = gib(p["peak_rss_sampled_bytes"]) if p else ""
            lines.append(
                f"| train: {name} | {x['timings'].get(name, float('nan')):.1f} | {cpu_s} | {peak} | | {labels[name]} |"
            )
        ev = x["evaluation"]
        lines.append(
            f"| **train** (`train`, sum of the above) | **{x['train_s']:.1f}** | {x['train_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | own process, dataset resident "
            f"({gib(x['rss_before_train_bytes'])} GiB before); {x['frame']['rows']:,} snapshot rows; "
            f"winner {ev['winner']}{cached(x)} |"
        )
    if "log" in st:
        x = st["log"]
        lines.append(
            f"| logging (`log_training`) | {x['log_s']:.1f} | {x['log_cpu_s']:.1f} | "
            f"{gib(x['process_maxrss_bytes'])} | {load(x)} | own process (train result unpickled first, "
            f"{x['unpickle_s']:.1f} s, not counted); artifacts {x['artifacts_bytes'] / 2**20:.0f} MiB, "
            f"model pickle {(x['model_pickle_bytes'] or 0) / 2**20:.1f} MiB{cached(x)} |"
        )
    if s:
        ok = "yes" if s["total_ok"] and s["peak_ok"] else "**NO**"
        lines.append(
            f"| **total** (load + train + logging) | **{s['total_s']:.1f}** | | "
            f"**{gib(s['peak_bytes'])}** (max of the stages) | | target < "
            f"{TARGETS['total_seconds']:.0f} s and < {TARGETS['peak_gib']:.0f} GiB: {ok} |"
        )
    if "e2e" in st:
        x = st["e2e"]
        ok = "yes" if s.get("e2e_total_ok") and s.get("e2e_peak_ok") else "**NO**"
        lines.append(
            f"| one process, like `churn train` (load + train + log) | {x['total_s']:.1f} | "
            f"{x['process_cpu_s']:.1f} | {gib(x['process_maxrss_bytes'])} | {load(x)} | "
            f"{x['load_s']:.1f} + {x['train_s']:.1f} + {x['log_s']:.1f} s; target: {ok}{cached(x)} |"
        )
    lines.append("")
    notes = [
        "seconds: wall time of the call itself (`train`'s per-stage timings as it returns them); CPU s: user + "
        "system time of all threads in that window; peak RSS: for a train stage the highest RSS sampled every "
        "0.1 s inside it, otherwise the stage process's `ru_maxrss` (which includes the resident dataset).",
        "The stage processes read the validated tables from Arrow IPC files and pass the train result on as a "
        "pickle: those hand-overs are benchmark plumbing and not counted in seconds (they are in the JSON).",
    ]
    if "train" in st:
        x = st["train"]
        notes.append(
            "train's own `peak_rss_mb` (ru_maxrss so far at each stage end): "
            + ", ".join(f"{k} {v / 1024:.2f} GiB" for k, v in x["peak_rss_mb_reported"].items())
            + "."
        )
        snaps = [p for p in x["progress"] if p["label"].startswith("features for snapshot")]
        if snaps:
            prev, parts = 0.0, []
            for p in snaps:
                parts.append(f"{p['at_s'] - prev:.1f}")
                prev = p["at_s"]
            notes.append(
                "features stage, seconds per snapshot (the first includes `entities_at` + labels for all "
                f"dates): {', '.join(parts)}."
            )
        ev = x["evaluation"]
        cand = "; ".join(
            f"{k} AUC {v.get('roc_auc', float('nan')):.3f} / log loss {v.get('log_loss', float('nan')):.4f}"
            for k, v in ev["candidates"].items()
        )
        notes.append(
            f"Model: {ev['winner_description']}; holdout {ev['n_holdout']:,} customers, churn rate "
            f"{ev['holdout_churn_rate']:.3f}; {cand}. Fit rows {x['matrix']['fit_rows']:,}, "
            f"validation rows {x['matrix']['validation_rows']:,}, {len(x['matrix']['features'])} features."
        )
    if "log" in st:
        x = st["log"]
        notes.append(
            f"`load_model` of the champion in the log process (what scoring pays at start-up): "
            f"{x['load_model_s']:.1f} s."
        )
    lines += [f"- {n}" for n in notes]
    if "baseline" in st:
        b = st["baseline"]
        lines += [
            "",
            f"Baseline, same run, same training matrix ({b['fit_rows']:,} fit rows x {b['features']} features, "
            f"{b['validation_rows']:,} validation rows for early stopping):",
            "",
            "| baseline | seconds | CPU s | peak RSS GiB | notes |",
            "|---|---:|---:|---:|---|",
            f"| bare LightGBM: one early-stopped fit | {b['bare_s']:.1f} | {b['bare_cpu_s']:.1f} | "
            f"{gib(b['bare_peak_rss_bytes'])} | configured tree size, {b['bare_trees']} trees; no tree-size search, "
            "no calibration, no other candidate, no features (the matrix is given) |",
            f"| LightGBM candidate as `train` fits it | {b['candidate_s']:.1f} | {b['candidate_cpu_s']:.1f} | "
            f"{gib(b['process_maxrss_bytes'])} | {b['candidate_description']} (3 search fits on <= 100k "
            "fit rows + final "
            "fit + calibration) |",
            "",
        ]
        if s:
            lines.append(
                f"- Ratios: `train` / bare LightGBM **{s['ratio_train_over_bare']:.1f}x**; total (load + "
                f"train + logging) / bare **{s['ratio_total_over_bare']:.1f}x**; classifier stage / bare "
                f"{s['ratio_classifier_over_bare']:.1f}x; LightGBM candidate / bare "
                f"{s['ratio_candidate_over_bare']:.1f}x."
            )
    return "\n".join(lines) + "\n"


def _idle_line(idle: dict) -> str:
    if not idle:
        return ""
    if idle.get("waited") is False:
        return f"Started without waiting for an idle machine (1-min load {idle['loadavg_1min_at_start']:.2f})."
    if idle.get("idle"):
        return (
            f"Started on an idle machine (1-min load {idle['loadavg_1min_at_start']:.2f} after waiting "
            f"{idle['waited_s']} s)."
        )
    return (
        f"**Machine not idle**: gave up waiting after {idle['waited_s']} s, 1-min load "
        f"{idle['loadavg_1min_at_start']:.2f} at start."
    )


if __name__ == "__main__":
    main()
