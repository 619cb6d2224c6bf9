"""Lifecycle report benchmark: the KPI computation and the whole ``churn report`` at 1M demo customers.

    uv run churn generate --out benchmarks/out/demo-1m --customers 1000000 --format parquet   # once
    uv run python benchmarks/bench_report.py [--data benchmarks/out/demo-1m] [--out benchmarks/out]

Every stage runs in a fresh Python subprocess, so each peak memory (the child's ``ru_maxrss``) is its own:

* ``baseline``  ``pyarrow.parquet.read_table`` of the transactions file: the floor any report over them pays;
* ``load``      ``load_dataset`` (read + validate every file); the clean tables are kept as Arrow IPC;
* ``kpis``      ``features.kpis.lifecycle_facts`` on the clean tables: monthly KPIs, cohorts, the stage inputs at
                every month end and per-customer totals (peak RSS sampled during the call, and for the process);
* ``report``    ``serving.report.build_report`` + ``write_report`` on the clean tables, with its parts
                (KPIs, stages, transitions, per-stage table incl. observed churn labels, rendering) and the file size;
* ``cli``       the whole command, ``churn report --data DIR --out FILE`` in one process, as a user runs it
                (interpreter start, imports, load + validate, report, write), without a model (``--no-model``);
* ``store``     the commands as a user runs them from the customer store with a model: ``churn ingest --data DIR``
                into a fresh data dir (timed, but not part of the report's target), then ``churn report --out
                FILE`` (no ``--data``: it reads the store) with the champion of a model trained by ``churn train``
                on a smaller demo business (``--model-customers``, default 20,000; set-up, trained once into
                ``<out>/work/report_model_<N>_seed<seed>/`` and reused, or ``--model-data-dir``: a data dir whose
                registry already holds a champion): the model-health section, and at_risk at the scored month
                ends (``report.scored_month_ends``). Each command is its own process: wall, CPU, peak RSS;
* ``scoring``   what at_risk costs, on the store and model of the ``store`` stage (in one process, wall and CPU
                seconds of each call): ``lifecycle_facts``; ``model_health`` alone (the health section); the same
                with ``also_score`` = the customers whose stage at as_of depends on the score (the report's pass);
                one earlier month end's ``build_features`` + ``predict_proba`` for its score-dependent customers
                (what each further ``report.scored_month_ends`` adds).

Results: ``<out>/report.md`` and ``<out>/report.json``. Targets (issue 13): the report for 1M customers in at
most 60 s, the HTML file at most 10 MB. Runs at 1M wait for an idle machine first (``--no-wait`` to skip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the sys.path set-up
    GIB,
    RssSampler,
    code_version,
    load_stage,
    machine_info,
    maxrss,
    previous_results,
    read_clean,
    requested_stages,
    run_stage,
    run_stages,
    stage_parser,
    wait_for_idle,
    write_report,
)

STAGES = ("baseline", "load", "kpis", "report", "cli", "store", "scoring")
TARGETS = {"report_seconds": 60.0, "html_bytes": 10_000_000}
HORIZON_DAYS = 90
NOW = datetime(2030, 1, 1)  # the demo's rows "after now" are rejected against the real clock in the CLI too


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__, STAGES)
    p.add_argument("--data", default=str(ROOT / "benchmarks" / "out" / "demo-1m"), help="demo data folder")
    p.add_argument(
        "--model-customers", type=int, default=20_000, help="demo customers the store stage's model learns from"
    )
    p.add_argument("--model-data-dir", help="store stage: a data dir whose MLflow registry holds the champion to use")
    args = p.parse_args(argv)
    if args.stage:
        run_stage(args.stage, json.loads(args.spec), args.result, STAGE_FUNCTIONS)
        return
    out = Path(args.out)
    data_dir = Path(args.data)
    if not (data_dir / "transactions.parquet").exists():
        print(f"generating {args.customers:,} demo customers into {data_dir}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "churnguard.cli", "generate", "--out", str(data_dir), "--customers",
             str(args.customers), "--format", "parquet", "--seed", str(args.seed)],
            cwd=ROOT, check=True,
        )  # fmt: skip
    work = out / "work" / f"report_{data_dir.name}"
    work.mkdir(parents=True, exist_ok=True)
    stages = requested_stages(args.stages, STAGES)
    if {"kpis", "report"} & set(stages) and "load" not in stages and not (work / "clean").exists():
        stages.insert(0, "load")
    spec = {"data": str(data_dir), "clean": str(work / "clean"), "html": str(work / "report.html"), "work": str(work)}
    if {"store", "scoring"} & set(stages):
        spec["model_data_dir"] = args.model_data_dir or str(_model(out, args.model_customers, args.seed))
    results = previous_results(work, STAGES, stages)
    idle = wait_for_idle(enabled=not args.no_wait)
    run_stages(__file__, [s for s in STAGES if s in stages], spec, work, results, _headline)
    report = {
        "machine": machine_info(),
        "code": code_version(),
        "config": {
            "data_dir": str(data_dir),
            "horizon_days": HORIZON_DAYS,
            "idle_wait": idle,
            "model_data_dir": spec.get("model_data_dir"),
        },
        "stages": results,
        "targets": TARGETS,
    }
    write_report(out, "report", report, to_markdown(report))


# --------------------------------------------------------------------------------------------- stages


def stage_baseline(spec: dict) -> dict:
    import pyarrow.parquet as pq

    t = time.perf_counter()
    table = pq.read_table(Path(spec["data"]) / "transactions.parquet")
    return {"read_s": time.perf_counter() - t, "rows": table.num_rows, "peak_rss_bytes": maxrss()}


def stage_load(spec: dict) -> dict:
    return load_stage(Path(spec["data"]), NOW, Path(spec["clean"]))


def stage_kpis(spec: dict) -> dict:
    from features.kpis import lifecycle_facts
    from serving.report import default_as_of

    data, _ = read_clean(Path(spec["clean"]))
    as_of = default_as_of(data)
    with RssSampler() as rss:
        t = time.perf_counter()
        facts = lifecycle_facts(data, as_of, horizon_days=HORIZON_DAYS)
        end = time.perf_counter()
    return {
        "kpis_s": end - t,
        "peak_rss_during_bytes": rss.peak(t, end),
        "peak_rss_bytes": maxrss(),
        "months": len(facts.month_ends),
        "stage_input_rows": facts.stage_inputs.num_rows,
        "customers_with_an_order": facts.customers.num_rows,
        "as_of": str(as_of),
    }


def stage_report(spec: dict) -> dict:
    from serving.report import build_report, render_html

    data, _ = read_clean(Path(spec["clean"]))
    with RssSampler() as rss:
        t = time.perf_counter()
        result = build_report(data, horizon_days=HORIZON_DAYS)
        built = time.perf_counter()
        page = render_html(result)
        rendered = time.perf_counter()
        Path(spec["html"]).write_text(page, encoding="utf-8")
        end = time.perf_counter()
    return {
        "build_s": built - t,
        "parts_s": result.timings,
        "render_s": rendered - built,
        "write_s": end - rendered,
        "report_s": end - t,
        "html_bytes": Path(spec["html"]).stat().st_size,
        "peak_rss_during_bytes": rss.peak(t, end),
        "peak_rss_bytes": maxrss(),
    }


def stage_cli(spec: dict) -> dict:
    from churnguard.cli import app

    out = Path(spec["html"]).with_name("report-cli.html")
    t = time.perf_counter()
    app(["report", "--data", spec["data"], "--out", str(out), "--no-model"], standalone_mode=False)
    return {"command_s": time.perf_counter() - t, "html_bytes": out.stat().st_size, "peak_rss_bytes": maxrss()}


def stage_store(spec: dict) -> dict:
    """``churn ingest`` into a fresh data dir, then ``churn report`` from that store with the model's registry."""
    data_dir = Path(spec["work"]) / "store_data_dir"
    shutil.rmtree(data_dir, ignore_errors=True)
    model_dir = Path(spec["model_data_dir"]).resolve()
    env = _churn_env(data_dir)
    ingest = _command(["ingest", "--data", spec["data"]], env)
    out = data_dir / "report.html"
    env.update(
        CHURN_MLFLOW__TRACKING_URI=f"sqlite:///{model_dir / 'mlflow.db'}",
        CHURN_MLFLOW__ARTIFACT_ROOT=str(model_dir / "mlartifacts"),
    )
    report = _command(["report", "--out", str(out)], env)
    page = out.read_text(encoding="utf-8")
    report.update(html_bytes=out.stat().st_size, model_health="id='model-health'" in page and "psi-table" in page)
    report["at_risk_scored"] = "at_risk uses model" in page
    store_bytes = sum(f.stat().st_size for f in (data_dir / "store").rglob("*") if f.is_file())
    return {"ingest": ingest, "report": report, "store_bytes": store_bytes, "peak_rss_bytes": maxrss()}


def stage_scoring(spec: dict) -> dict:
    import pyarrow as pa

    from churnguard.settings import Settings
    from features.build import ENTITY_SCHEMA, build_features
    from features.kpis import lifecycle_facts
    from features.store import open_store
    from model.monitoring import model_health
    from model.registry import load_model
    from serving.report import default_as_of, score_dependent

    model_dir = Path(spec["model_data_dir"]).resolve()
    settings = Settings(
        data_dir=Path(spec["work"]) / "store_data_dir",
        mlflow={
            "tracking_uri": f"sqlite:///{model_dir / 'mlflow.db'}",
            "artifact_root": str(model_dir / "mlartifacts"),
        },
    )
    store = open_store(settings.store, settings.data_dir, create=False)
    data = store.dataset()
    store.close()
    model = load_model(settings.mlflow, settings.model_uri)
    out: dict = {}

    def timed(name: str, fn):
        wall, cpu_s = time.perf_counter(), time.process_time()
        result = fn()
        out[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu_s}
        print(f"  {name}: {out[name]}", flush=True)
        return result

    warm = pa.table({"customer_id": data.customers["customer_id"][:10], "as_of": [default_as_of(data)] * 10})
    build_features(data, warm.cast(ENTITY_SCHEMA), event_types=model.event_types)  # compile once, outside the timings
    facts = timed("lifecycle_facts", lambda: lifecycle_facts(data, default_as_of(data), horizon_days=HORIZON_DAYS))
    need = score_dependent(facts, model.lifecycle, facts.as_of)
    timed("health_alone", lambda: model_health(data, model, as_of=facts.as_of, settings=settings.monitor))
    timed(
        "health_with_at_risk_scores",
        lambda: model_health(data, model, as_of=facts.as_of, settings=settings.monitor, also_score=need),
    )
    end = facts.month_ends[-2]
    earlier = score_dependent(facts, model.lifecycle, end)
    entities = pa.table(
        {"customer_id": earlier, "as_of": pa.array([end] * len(earlier), ENTITY_SCHEMA.field("as_of").type)}
    ).cast(ENTITY_SCHEMA)
    timed(
        "one_earlier_month_end",
        lambda: model.classifier.predict_proba(
            build_features(data, entities, event_types=model.event_types).to_pandas()
        ),
    )
    out.update(
        score_dependent_at_as_of=len(need),
        score_dependent_earlier=len(earlier),
        health_sample=settings.monitor.max_customers,
        customers_with_an_order=facts.customers.num_rows,
        peak_rss_bytes=maxrss(),
    )
    return out


def _churn_env(data_dir: Path) -> dict[str, str]:
    drop = ("MLFLOW_TRACKING_URI",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURN_") and k not in drop}
    return {**env, "CHURN_DATA_DIR": str(data_dir)}


def _command(args: list[str], env: dict[str, str]) -> dict:
    """One ``churn`` command in its own process: wall, CPU (user + system), peak RSS, load before and after."""
    cmd = [sys.executable, "-m", "churnguard.cli", *args]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return {
        "command": "churn " + " ".join(args),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "loadavg_1min": [load, os.getloadavg()[0]],
    }


def _model(out: Path, customers: int, seed: int) -> Path:
    """A data dir whose registry holds a champion trained by ``churn train`` on a ``customers`` demo business
    (set-up, not measured; trained once and reused)."""
    model_dir = (out / "work" / f"report_model_{customers}_seed{seed}").resolve()
    done = model_dir / "trained.ok"
    if done.exists():
        print(f"using the model trained earlier in {model_dir}", flush=True)
        return model_dir
    demo = model_dir / "demo"
    if not (demo / "manifest.json").exists():
        subprocess.run(
            [sys.executable, "-m", "churnguard.cli", "generate", "--out", str(demo), "--customers", str(customers),
             "--format", "parquet", "--seed", str(seed)],
            cwd=ROOT, check=True,
        )  # fmt: skip
    print(f"training the report's model on {customers:,} demo customers (set-up) ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "churnguard.cli", "train", "--data", str(demo)],
        cwd=ROOT, env=_churn_env(model_dir), check=True,
    )  # fmt: skip
    done.write_text(datetime.now().isoformat())
    return model_dir


STAGE_FUNCTIONS = {
    "baseline": stage_baseline,
    "load": stage_load,
    "kpis": stage_kpis,
    "report": stage_report,
    "cli": stage_cli,
    "store": stage_store,
    "scoring": stage_scoring,
}


# --------------------------------------------------------------------------------------------- output


def _headline(name: str, r: dict) -> str:
    peak = f"peak RSS {r['process_maxrss_bytes'] / GIB:.2f} GiB"
    if name == "scoring":
        return ", ".join(f"{k} CPU {v['cpu_s']:.1f} s" for k, v in r.items() if isinstance(v, dict))
    if name == "store":
        i, rep = r["ingest"], r["report"]
        return (
            f"ingest {i['wall_s']:.1f} s (CPU {i['cpu_s']:.1f} s, {i['peak_rss_bytes'] / GIB:.2f} GiB); report "
            f"{rep['wall_s']:.1f} s (CPU {rep['cpu_s']:.1f} s, {rep['peak_rss_bytes'] / GIB:.2f} GiB, "
            f"{rep['html_bytes'] / 1e6:.1f} MB)"
        )
    seconds = {"baseline": "read_s", "load": "load_s", "kpis": "kpis_s", "report": "report_s", "cli": "command_s"}
    return f"{r[seconds[name]]:.1f} s (process {r['process_wall_s']:.1f} s), {peak}"


def to_markdown(report: dict) -> str:
    s = report["stages"]
    m = report["machine"]

    def row(label: str, stage: str, key: str, note: str = "") -> str:
        if stage not in s:
            return f"| {label} | - | - | - | not run |"
        r = s[stage]
        load = "/".join(f"{x:.1f}" for x in r.get("loadavg_1min", []))
        return (
            f"| {label} | {r[key]:.1f} | {r['process_wall_s']:.1f} | {r['process_maxrss_bytes'] / GIB:.2f} | "
            f"{load} | {note} |"
        )

    lines = [
        f"Lifecycle report benchmark ({m.get('cpus_usable')} cores, {m.get('cpu_model', '?')}, "
        f"{m.get('ram_gib', '?')} GiB; commit {report['code']['commit']}; data {report['config']['data_dir']})",
        "",
        "| stage | seconds | process s | peak RSS GiB | load avg before/after | note |",
        "|---|---:|---:|---:|---|---|",
        row("baseline: `pyarrow.parquet.read_table` (transactions)", "baseline", "read_s"),
        row("`load_dataset` (read + validate all files)", "load", "load_s"),
        row("`lifecycle_facts` (KPIs, cohorts, stage inputs)", "kpis", "kpis_s"),
    ]
    if "report" in s:
        r = s["report"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["parts_s"].items())
        lines.append(
            row("`build_report` + render + write", "report", "report_s",
                f"{parts}, render {r['render_s']:.1f}, write {r['write_s']:.1f}; {r['html_bytes'] / 1e6:.1f} MB")
        )  # fmt: skip
    if "cli" in s:
        lines.append(row("`churn report --data DIR --no-model` (whole command)", "cli", "command_s",
                         f"{s['cli']['html_bytes'] / 1e6:.1f} MB"))  # fmt: skip
    if "store" in s:
        for key, label in (("ingest", "`churn ingest --data DIR` (fresh data dir; not in the target)"),
                           ("report", "**`churn report --out FILE` from the store, with the model**")):  # fmt: skip
            c = s["store"][key]
            load = "/".join(f"{x:.1f}" for x in c["loadavg_1min"])
            note = f"CPU {c['cpu_s']:.1f} s"
            if key == "report":
                note += f"; {c['html_bytes'] / 1e6:.1f} MB; model health {'yes' if c['model_health'] else 'NO'}"
                note += f", at_risk scored {'yes' if c['at_risk_scored'] else 'NO'}"
            lines.append(f"| {label} | {c['wall_s']:.1f} | {c['wall_s']:.1f} | {c['peak_rss_bytes'] / GIB:.2f} | "
                         f"{load} | {note} |")  # fmt: skip
    if "scoring" in s:
        sc = s["scoring"]
        lines += [
            "",
            f"What at_risk costs (`scoring`: {sc['customers_with_an_order']:,} customers with an order; "
            f"{sc['score_dependent_at_as_of']:,} whose stage at as_of depends on the score, "
            f"{sc['score_dependent_earlier']:,} at the month end before; health sample {sc['health_sample']:,}):",
            "",
            "| call | wall s | CPU s |",
            "|---|---:|---:|",
        ]
        for key, label in (
            ("lifecycle_facts", "`lifecycle_facts` (context)"),
            ("health_alone", "`model_health` (the health section alone)"),
            ("health_with_at_risk_scores", "`model_health(also_score=...)` (the report's pass: + at_risk at as_of)"),
            ("one_earlier_month_end", "one earlier month end (each further `report.scored_month_ends`)"),
        ):
            lines.append(f"| {label} | {sc[key]['wall_s']:.1f} | {sc[key]['cpu_s']:.1f} |")
    if "baseline" in s:
        base = s["baseline"]["read_s"]
        ratios = []
        for stage, key in (("kpis", "kpis_s"), ("report", "report_s"), ("cli", "command_s")):
            if stage in s:
                ratios.append(f"{stage} / baseline = {s[stage][key] / base:.1f}x")
        if "store" in s:
            ratios.append(f"store report / baseline = {s['store']['report']['wall_s'] / base:.1f}x")
        lines += ["", "; ".join(ratios)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
