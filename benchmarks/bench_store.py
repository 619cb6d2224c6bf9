"""Customer store benchmark: ``churn ingest`` against ``churn validate`` of the same files, in the same run.

    uv run churn generate --out benchmarks/out/demo-1m --customers 1000000      # once, ~1 minute
    uv run python benchmarks/bench_store.py [--data benchmarks/out/demo-1m] [--backend embedded|postgres]

Every stage runs in a fresh process, so each peak RSS is its own:

* ``validate``   ``churn validate --data DIR`` as a whole process (the baseline);
* ``ingest``     ``churn ingest --data DIR`` into an empty store, as a whole process;
* ``ingest2``    the same files again: 0 rows added, time;
* ``read``       ``store.dataset()`` (the whole store as a ``Dataset``), then one DuckDB scan of every column, next
                 to ``load_dataset`` of the files (read + validate: what every batch command does without a store);
* ``single``     ``store.rows_for([id])`` for random customers: p50 / p99 over ``--calls`` calls;
* ``append``     ``store.append(...)`` of one new transaction for a random customer: p50 / p99 over ``--calls``;
                 then ``rows_for`` again with the appended rows in the store.

``--backend postgres`` starts a throwaway PostgreSQL server (``tests/postgres.py``, durable settings) for the run.
Results: ``<out>/store_<backend>.md`` and ``.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    GIB,
    code_version,
    machine_info,
    maxrss,
    run_stage,
    stage_parser,
    write_report,
)

STAGES = ("validate", "ingest", "ingest2", "read", "single", "append")
NOW = datetime(2026, 1, 1)


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__, STAGES)
    p.add_argument("--data", default=str(ROOT / "benchmarks" / "out" / "demo-1m"))
    p.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    p.add_argument("--calls", type=int, default=1000)
    args = p.parse_args(argv)
    if args.stage:
        run_stage(args.stage, json.loads(args.spec), args.result, STAGE_FUNCTIONS)
        return
    out, data = Path(args.out), Path(args.data)
    work = out / "work" / f"store_{args.backend}"
    stages = [s for s in args.stages.split(",") if s]
    if "ingest" in stages:  # a fresh, empty store; other stages reuse the last run's
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if not (data / "transactions.csv").exists() and not (data / "transactions.parquet").exists():
        subprocess.run(_churn("generate", "--out", str(data), "--customers", str(args.customers)), check=True)
    manifest = json.loads((data / "manifest.json").read_text())
    if args.backend == "postgres":
        from tests.postgres import postgres_cluster

        server = postgres_cluster(durable=True)
    else:
        server = nullcontext(None)
    previous = out / f"store_{args.backend}.json"
    results: dict[str, dict] = {}
    if previous.exists() and set(STAGES) - set(stages):  # a partial run keeps the other stages' last results
        results = {k: dict(v, cached=True) for k, v in json.loads(previous.read_text())["stages"].items()}
    with server as url:
        env = {**os.environ, "CHURN_DATA_DIR": str(work), "CHURN_STORE__URL": url or ""}
        if not url:
            env.pop("CHURN_STORE__URL")
        spec = {"data": str(data), "work": str(work), "url": url, "calls": args.calls, "seed": args.seed}
        for stage in STAGES:
            if stage not in stages:
                continue
            print(f"[{stage}] ...", flush=True)
            if stage in ("validate", "ingest", "ingest2"):
                command = "ingest" if stage.startswith("ingest") else "validate"
                results[stage] = _whole_process(_churn(command, "--data", str(data)), env, work / f"{stage}.log")
            else:
                results[stage] = _stage_process(stage, spec, work, env)
            print(f"[{stage}] {json.dumps(_short(results[stage]))}", flush=True)
    report = {
        "machine": machine_info(),
        "code": code_version(),
        "config": {"data": str(data), "backend": args.backend, "calls": args.calls, "rows": manifest["files"]},
        "loadavg_1min_end": os.getloadavg()[0],
        "stages": results,
    }
    write_report(out, f"store_{args.backend}", report, _markdown(report))


def _churn(*args: str) -> list[str]:
    return [sys.executable, "-m", "churnguard.cli", *args]


def _whole_process(cmd: list[str], env: dict, log: Path) -> dict:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    text = log.read_text()
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "loadavg_1min": [load, os.getloadavg()[0]],
        "summary": [line.strip() for line in text.splitlines() if "already in the store" in line or "batch " in line],
    }


def _stage_process(stage: str, spec: dict, work: Path, env: dict) -> dict:
    result = work / f"{stage}.json"
    cmd = [sys.executable, __file__, "--stage", stage, "--spec", json.dumps(spec), "--result", str(result)]
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed")
    out = json.loads(result.read_text())
    out["process_peak_rss_bytes"] = usage.ru_maxrss * 1024
    out["loadavg_1min"] = [load, os.getloadavg()[0]]
    return out


def _short(r: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if not isinstance(v, dict | list)}


# --------------------------------------------------------------------------------------------- stages (children)


def _store(spec: dict):
    from features.store import StoreSettings, open_store

    settings = StoreSettings(url=spec["url"]) if spec["url"] else StoreSettings()
    return open_store(settings, Path(spec["work"]))


def stage_read(spec: dict) -> dict:
    from features.duck import connect
    from features.validate import load_dataset

    store = _store(spec)
    t = time.perf_counter()
    data = store.dataset()
    dataset_s = time.perf_counter() - t
    con = connect()
    t = time.perf_counter()
    for name in ("transactions", "events", "customers"):
        table = getattr(data, name)
        con.register("t", table)
        touch_all = ", ".join(f'max("{c}")' for c in table.column_names)  # reads every value of every column
        con.sql(f"SELECT {touch_all} FROM t").fetchall()
        con.unregister("t")
    scan_s = time.perf_counter() - t
    rss_store = maxrss()
    del data
    t = time.perf_counter()
    files, _ = load_dataset(Path(spec["data"]), now=NOW)
    load_s = time.perf_counter() - t
    return {
        "dataset_s": dataset_s,
        "first_scan_s": scan_s,
        "load_dataset_s": load_s,
        "rows": [files.transactions.num_rows, files.events.num_rows, files.customers.num_rows],
        "peak_rss_after_store_read_bytes": rss_store,
    }


def _percentiles(samples: list[float]) -> dict:
    import numpy as np

    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def stage_single(spec: dict) -> dict:
    store = _store(spec)
    ids = store.customer_ids().to_pylist()
    rng = random.Random(spec["seed"])
    for i in rng.sample(ids, 50):  # warm-up
        store.rows_for([i])
    import pyarrow as pa

    from features.build import ENTITY_SCHEMA, build_features
    from features.engines import SQLiteEngine

    engine = SQLiteEngine()  # the API's engine for one customer
    times, with_features, rows = [], [], 0
    for i in rng.sample(ids, spec["calls"]):
        t = time.perf_counter()
        data = store.rows_for([i])
        times.append(time.perf_counter() - t)
        build_features(data, pa.table({"customer_id": [i], "as_of": [NOW]}, schema=ENTITY_SCHEMA), engine=engine)
        with_features.append(time.perf_counter() - t)
        rows += data.transactions.num_rows + data.events.num_rows
    return {
        **_percentiles(times),
        "with_features": _percentiles(with_features),
        "customers": len(ids),
        "mean_rows_per_customer": rows / spec["calls"],
    }


def stage_append(spec: dict) -> dict:
    store = _store(spec)
    ids = store.customer_ids().to_pylist()
    rng = random.Random(spec["seed"] + 1)
    fresh = random.Random(time.time_ns())  # amounts unlike any earlier run's: an earlier run's rows are stored
    times = []
    for n, i in enumerate(rng.sample(ids, spec["calls"] + 50)):
        row = {"customer_id": i, "timestamp": datetime(2025, 12, 31, 12, 0, n % 60), "amount": fresh.random()}
        t = time.perf_counter()
        result = store.append(transactions=[row])
        elapsed = time.perf_counter() - t
        assert result.added["transactions"] == 1
        if n >= 50:
            times.append(elapsed)
    retry = store.append(transactions=[row])
    assert retry.added["transactions"] == 0
    after = []
    for i in rng.sample(ids, min(spec["calls"], 500)):
        t = time.perf_counter()
        store.rows_for([i])
        after.append(time.perf_counter() - t)
    return {**_percentiles(times), "rows_for_after_appends": _percentiles(after)}


STAGE_FUNCTIONS = {"read": stage_read, "single": stage_single, "append": stage_append}


# --------------------------------------------------------------------------------------------- report


def _markdown(report: dict) -> str:
    s = report["stages"]
    rows = report["config"]["rows"]
    lines = [
        f"# Customer store ({report['config']['backend']}): "
        f"{rows['transactions']['rows']:,} transaction rows, {rows['events']['rows']:,} events, "
        f"{rows['customers']['rows']:,} customers",
        "",
        "| stage | time | peak RSS | vs baseline |",
        "|---|---:|---:|---|",
    ]
    base = s.get("validate", {}).get("wall_s")

    def ratio(x: float) -> str:
        return f"{x / base:.2f}x `churn validate`" if base else ""

    if "validate" in s:
        v = s["validate"]
        lines.append(f"| `churn validate` (baseline) | {v['wall_s']:.1f} s | {v['peak_rss_bytes'] / GIB:.2f} GiB | |")
    for name, label in (("ingest", "`churn ingest`, empty store"), ("ingest2", "`churn ingest` again (0 added)")):
        if name in s:
            r = s[name]
            lines.append(
                f"| {label} | {r['wall_s']:.1f} s | {r['peak_rss_bytes'] / GIB:.2f} GiB | {ratio(r['wall_s'])} |"
            )
    if "read" in s:
        r = s["read"]
        lines.append(
            f"| `store.dataset()` / + first read of every value | {r['dataset_s']:.2f} s / "
            f"{r['dataset_s'] + r['first_scan_s']:.2f} s | | `load_dataset` of the files: {r['load_dataset_s']:.1f} s |"
        )
    if "single" in s:
        r = s["single"]
        lines.append(
            f"| `rows_for([id])`, {r['customers']:,} customers | p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
            f"| | {r['mean_rows_per_customer']:.0f} rows per customer |"
        )
        f = r["with_features"]
        lines.append(
            f"| `rows_for([id])` + `build_features` (SQLite engine, as the API) | p50 {f['p50_ms']:.2f} ms, "
            f"p99 {f['p99_ms']:.2f} ms | | |"
        )
    if "append" in s:
        r = s["append"]
        a = r["rows_for_after_appends"]
        lines.append(
            f"| `append` one transaction | p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms | | then `rows_for` "
            f"p50 {a['p50_ms']:.2f} ms, p99 {a['p99_ms']:.2f} ms |"
        )
    for name in ("ingest", "ingest2"):
        if name in s:
            lines += ["", f"{name}: " + "; ".join(s[name]["summary"])]
    lines += [
        "",
        f"1-min load average at the end: {report['loadavg_1min_end']:.2f} (2 cores; other jobs may be running)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
