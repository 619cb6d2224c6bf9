"""Feature benchmark: churnguard ``build_features`` (Ibis -> DuckDB) against the pandas reference.

    uv run python benchmarks/bench_features.py [--customers 1000000] [--snapshots 6] [--out benchmarks/out]
                                               [--demo DIR]

Generates (once, cached under ``--out``) the demo business with ``churnguard.demo.generate`` as Parquet, or reads
an existing demo folder (``--demo``, only read; its manifest gives the customer count), then runs every stage in a
fresh Python subprocess, so that its peak memory (its ``ru_maxrss``) is its own:

* ``cg_1`` / ``cg_n``   churnguard at 1 as_of (the data end: every customer is known) and at ``--snapshots``
                         monthly as_of dates ending there;
* ``pd_1`` / ``pd_n``   the pandas reference on the same entities (``--pandas-snapshots k`` measures only the
                         last k dates and extrapolates the time, labelled as such);
* ``single``            the API path: one customer with ~50 transaction lines and ~100 events, p50 / p99 over
                         ``--calls`` sequential calls after warm-up: churnguard on the API's ``SQLiteEngine`` and on
                         ``DuckDBEngine(threads=1)`` (the same compiled definitions), and the pandas reference.

Each batch stage reports load + validation time (``features.validate.load_dataset``), entity selection time,
feature time (churnguard: without the one-off Ibis -> SQL compilation, reported apart; pandas: including the
Arrow -> pandas conversion, reported apart) and peak RSS. Both implementations' outputs are compared column by
column (max abs / rel difference, null mismatches). Results go to ``<out>/features.md`` and ``features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import GIB, cpu, load_stage, machine_info, maxrss, read_clean, rss_now  # noqa: E402

# issue 12 at 1M customers: one as_of <= 6 s and <= 3 GiB peak, six as_of <= 25 s (one query for every date)
TARGETS = {"cg_1_seconds": 6.0, "cg_1_peak_gib": 3.0, "cg_n_seconds": 25.0, "speedup": 5.0, "single_p99_ms": 15.0}


# --------------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.stage:
        _run_stage(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    stages = args.stages.split(",")

    data_dir, generation = _demo_data(args, out)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    end = date.fromisoformat(manifest["end"])
    dates = [_add_months(end, -k) for k in range(args.snapshots - 1, -1, -1)]
    pd_dates = dates[-args.pandas_snapshots :] if args.pandas_snapshots else dates
    now = datetime(end.year, end.month, end.day)
    print(
        f"data: {data_dir} ({manifest['files']['transactions']['rows']:,} transaction rows, "
        f"{manifest['files']['events']['rows']:,} events, {manifest['customers']:,} customers)",
        flush=True,
    )

    clean = work / "clean"
    if "load" in stages or not (clean / "transactions.arrow").exists():
        print("[load] features.validate.load_dataset ...", flush=True)
        results_load = _child(args, "load", data=data_dir, now=now, clean=clean, result=work / "load.json")
        print(
            f"[load] {results_load['load_s']:.1f} s, peak RSS {results_load['peak_rss_bytes'] / GIB:.2f} GiB",
            flush=True,
        )
    else:
        results_load = json.loads((work / "load.json").read_text())
        results_load["cached"] = True

    plan = {
        "cg_1": ("churnguard", [dates[-1]]),
        "cg_n": ("churnguard", dates),
        "pd_1": ("pandas", [dates[-1]]),
        "pd_n": ("pandas", pd_dates),
    }
    results: dict[str, dict] = {}
    for name, (impl, stage_dates) in plan.items():
        if name not in stages:
            continue
        print(f"[{name}] {impl} at {len(stage_dates)} as_of ...", flush=True)
        results[name] = _child(
            args,
            name,
            impl=impl,
            clean=clean,
            dates=stage_dates,
            result=work / f"{name}.json",
            features=work / f"{name}.parquet",
        )
        r = results[name]
        print(
            f"[{name}] {r['entities']:,} entities: features {r['features_s']:.2f} s, "
            f"peak RSS {r['peak_rss_bytes'] / GIB:.2f} GiB",
            flush=True,
        )

    checks = {}
    for cg, pd_ in (("cg_1", "pd_1"), ("cg_n", "pd_n")):
        if cg in results and pd_ in results:
            print(f"[compare] {cg} vs {pd_} ...", flush=True)
            checks[f"{cg} vs {pd_}"] = _child(
                args,
                "compare",
                left=work / f"{cg}.parquet",
                right=work / f"{pd_}.parquet",
                result=work / f"cmp_{cg}.json",
            )
    if "single" in stages:
        print("[single] one customer, sequential calls ...", flush=True)
        results["single"] = _child(args, "single", result=work / "single.json")

    report = {
        "machine": machine_info(),
        "config": {
            "customers": args.customers,
            "seed": args.seed,
            "snapshots": args.snapshots,
            "pandas_snapshots": args.pandas_snapshots or args.snapshots,
            "as_of_dates": [str(d) for d in dates],
            "data_dir": str(data_dir),
            "data_rows": {k: v["rows"] for k, v in manifest["files"].items()},
            "generation_s": generation,
        },
        "load": results_load,
        "stages": results,
        "speedup": _speedups(results, args.snapshots),
        "value_checks": checks,
        "targets": TARGETS,
    }
    md = to_markdown(report)
    (out / "features.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "features.md").write_text(md)
    print()
    print(md)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--snapshots", type=int, default=6, help="monthly as_of dates of the multi-as_of stages")
    p.add_argument(
        "--pandas-snapshots",
        type=int,
        default=0,
        help="run pandas on only the last k dates and extrapolate (default: all, measured)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--calls", type=int, default=1000, help="sequential calls of the single-customer stage")
    p.add_argument("--threads", type=int, default=0, help="DuckDB threads, batch stages (default: all)")
    p.add_argument(
        "--stages",
        default="load,cg_1,cg_n,pd_1,pd_n,single",
        help="comma-separated subset (without 'load' the cached validated data is reused)",
    )
    p.add_argument("--regenerate", action="store_true", help="ignore cached demo data")
    p.add_argument("--demo", help="an existing demo folder (Parquet + manifest.json) to read instead of generating")
    # internal: run one stage in this (child) process
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--clean", help=argparse.SUPPRESS)
    p.add_argument("--now", help=argparse.SUPPRESS)
    p.add_argument("--dates", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--left", help=argparse.SUPPRESS)
    p.add_argument("--right", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(args: argparse.Namespace, stage: str, *, result: Path, **options) -> dict:
    """Run one stage in a fresh interpreter; return its JSON result (plus the parent-side wall time)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stage",
        stage,
        "--result",
        str(result),
        "--customers",
        str(args.customers),
        "--seed",
        str(args.seed),
        "--calls",
        str(args.calls),
        "--threads",
        str(args.threads),
    ]
    for key, value in options.items():
        if key == "dates":
            value = ",".join(str(d) for d in value)
        cmd += [f"--{key}", str(value)]
    result.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}): {' '.join(cmd)}")
    out = json.loads(result.read_text())
    out["process_wall_s"] = time.perf_counter() - started
    out["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine skews timings
    out["process_maxrss_bytes"] = usage.ru_maxrss * 1024  # whole child, incl. writing its output
    return out


def _demo_data(args: argparse.Namespace, out: Path) -> tuple[Path, float | None]:
    if args.demo:  # a given folder: read only, its manifest says how many customers
        data_dir = Path(args.demo)
        if not (data_dir / "manifest.json").exists():
            raise SystemExit(f"--demo {data_dir}: no manifest.json (a folder written by churnguard.demo.generate)")
        args.customers = json.loads((data_dir / "manifest.json").read_text())["customers"]
        print(f"using the demo data in {data_dir}", flush=True)
        return data_dir, None
    data_dir = out / f"demo_{args.customers}_seed{args.seed}"
    manifest = data_dir / "manifest.json"
    if manifest.exists() and not args.regenerate:
        m = json.loads(manifest.read_text())
        wanted = {"customers": args.customers, "seed": args.seed, "format": "parquet"}
        if all(m.get(k) == v for k, v in wanted.items()):
            print(f"using cached demo data in {data_dir}", flush=True)
            return data_dir, None
    print(f"generating demo data: {args.customers:,} customers -> {data_dir}", flush=True)
    result = out / "work" / "generate.json"
    r = _child(args, "generate", result=result, data=data_dir)
    return data_dir, r["generate_s"]


# --------------------------------------------------------------------------------------------- children


def _run_stage(args: argparse.Namespace) -> None:
    stage = args.stage
    if stage == "generate":
        out = stage_generate(Path(args.data), args.customers, args.seed)
    elif stage == "load":
        out = load_stage(Path(args.data), datetime.fromisoformat(args.now), Path(args.clean))
    elif stage in ("cg_1", "cg_n", "pd_1", "pd_n"):
        dates = [date.fromisoformat(d) for d in args.dates.split(",")]
        out = stage_batch(args.impl, Path(args.clean), dates, Path(args.features), args.threads or None)
    elif stage == "compare":
        out = compare_outputs(Path(args.left), Path(args.right))
    elif stage == "single":
        out = stage_single(args.calls)
    else:
        raise SystemExit(f"unknown stage {stage}")
    Path(args.result).write_text(json.dumps(out, indent=2, default=str))


def stage_generate(data_dir: Path, customers: int, seed: int) -> dict:
    from churnguard.demo import generate

    started = time.perf_counter()
    generate(data_dir, customers=customers, seed=seed, fmt="parquet", progress=lambda m: print(f"  {m}", flush=True))
    return {"generate_s": time.perf_counter() - started, "peak_rss_bytes": maxrss()}


def stage_batch(impl: str, clean: Path, dates: list[date], features_path: Path, threads: int | None) -> dict:
    import pyarrow.parquet as pq

    from features.build import build_features, compiled_sql, entities_at
    from features.engines import DuckDBEngine as FeatureEngine
    from features.registry import DEFAULT_EVENT_TYPES

    out: dict = {"impl": impl, "as_of": [str(d) for d in dates]}
    t = time.perf_counter()
    data, _ = read_clean(clean)
    out["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    entities = entities_at(data, [datetime(d.year, d.month, d.day) for d in dates])
    out["entities_s"] = time.perf_counter() - t
    out["entities"] = entities.num_rows
    out["rss_before_features_bytes"] = rss_now()

    if impl == "churnguard":
        t = time.perf_counter()
        compiled_sql(tuple(DEFAULT_EVENT_TYPES), "duckdb", len(dates) == 1)
        out["compile_s"] = time.perf_counter() - t
        engine = FeatureEngine(threads=threads)
        t, c = time.perf_counter(), cpu()
        table = build_features(data, entities, engine=engine)
        out["features_s"], out["features_cpu_s"] = time.perf_counter() - t, cpu() - c
    else:
        from benchmarks.pandas_reference import pandas_features, to_frames

        t, c = time.perf_counter(), cpu()
        frames = to_frames(data)
        out["to_pandas_s"] = time.perf_counter() - t
        del data
        ent = entities.to_pandas()
        t = time.perf_counter()
        frame = pandas_features(frames, ent)
        out["compute_s"] = time.perf_counter() - t
        out["features_s"] = out["to_pandas_s"] + out["compute_s"]
        out["features_cpu_s"] = cpu() - c
        out["per_as_of_s"] = out["compute_s"] / len(dates)
    out["peak_rss_bytes"] = maxrss()
    out["output_rows"] = table.num_rows if impl == "churnguard" else len(frame)

    if impl == "churnguard":
        pq.write_table(table, features_path)
    else:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), features_path)
    return out


def compare_outputs(left: Path, right: Path) -> dict:
    """Column-by-column comparison of two feature files (rows matched on customer_id, as_of)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = ["customer_id", "as_of"]
    lk, rk = pq.read_table(left, columns=keys), pq.read_table(right, columns=keys)
    # the right side may cover only some as_of dates (--pandas-snapshots): align on the keys
    li = lk.append_column("__l", pa.array(np.arange(lk.num_rows, dtype=np.int64)))
    ri = rk.append_column("__r", pa.array(np.arange(rk.num_rows, dtype=np.int64)))
    pairs = li.join(ri, keys, join_type="inner").sort_by("__r")
    lpos, rpos = pairs["__l"].to_numpy(), pairs["__r"].to_numpy()
    names = [n for n in pq.read_schema(left).names if n not in keys]
    out: dict = {"rows_left": lk.num_rows, "rows_right": rk.num_rows, "rows_matched": len(lpos), "columns": {}}
    worst_abs, worst_rel, mismatches = 0.0, 0.0, 0
    for name in names:
        a = pq.read_table(left, columns=[name])[name].to_numpy(zero_copy_only=False)[lpos].astype("float64")
        b = pq.read_table(right, columns=[name])[name].to_numpy(zero_copy_only=False)[rpos].astype("float64")
        a_null, b_null = np.isnan(a), np.isnan(b)
        null_mismatch = int((a_null != b_null).sum())
        both = ~a_null & ~b_null
        diff = np.abs(a[both] - b[both])
        scale = np.abs(a[both])
        rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
        max_abs, max_rel = float(diff.max(initial=0.0)), float(rel.max(initial=0.0))
        bad = int((~np.isclose(b[both], a[both], rtol=1e-9, atol=1e-9)).sum()) + null_mismatch
        out["columns"][name] = {
            "max_abs": max_abs,
            "max_rel": max_rel,
            "null_mismatch": null_mismatch,
            "rows_differing": bad,
        }
        worst_abs, worst_rel, mismatches = max(worst_abs, max_abs), max(worst_rel, max_rel), mismatches + bad
    out.update(
        max_abs=worst_abs,
        max_rel=worst_rel,
        rows_differing=mismatches,
        equal=mismatches == 0 and len(lpos) == rk.num_rows,
    )
    return out


def single_customer_records(as_of: datetime, seed: int = 7) -> tuple[list[dict], list[dict], list[dict]]:
    """One customer with ~50 transaction lines (orders, a refund) and ~100 engagement events before as_of."""
    import random
    from datetime import timedelta

    rng = random.Random(seed)
    cid = "api-customer"
    txs: list[dict] = []
    while len(txs) < 50:
        when = as_of - timedelta(days=rng.uniform(0, 700), seconds=rng.randint(0, 86_399))
        order = f"o{len(txs)}"
        for _ in range(min(rng.randint(1, 4), 50 - len(txs))):
            txs.append(
                {
                    "customer_id": cid,
                    "timestamp": when,
                    "amount": round(rng.uniform(5, 120), 2),
                    "order_id": order,
                    "product_id": f"p{rng.randint(1, 300)}",
                    "category": rng.choice(["home", "toys", "books"]),
                    "channel": rng.choice(["web", "app"]),
                }
            )
    txs[-1] = dict(txs[-1], amount=-txs[-1]["amount"])  # a refund
    from features.registry import DEFAULT_EVENT_TYPES

    types = list(DEFAULT_EVENT_TYPES)
    evs = [
        {"customer_id": cid, "event_type": rng.choice(types), "timestamp": as_of - timedelta(days=rng.uniform(0, 365))}
        for _ in range(100)
    ]
    cus = [{"customer_id": cid, "signup_date": as_of - timedelta(days=720), "churn_date": None}]
    return txs, evs, cus


def stage_single(calls: int) -> dict:
    import numpy as np

    from benchmarks.pandas_reference import pandas_features
    from features.build import as_entities, build_features
    from features.dataset import Dataset
    from features.engines import DuckDBEngine, SQLiteEngine

    as_of = datetime(2025, 1, 1)
    txs, evs, cus = single_customer_records(as_of)
    data = Dataset.from_records(txs, evs, cus)
    entities = as_entities([txs[0]["customer_id"]], as_of)
    engine = SQLiteEngine()  # what the API uses for a request of this size
    duckdb_engine = DuckDBEngine(threads=1)
    entities_pd = entities.to_pandas()

    def churnguard() -> object:
        return build_features(data, entities, engine=engine)

    def churnguard_from_records() -> object:
        return build_features(Dataset.from_records(txs, evs, cus), entities, engine=engine)

    def churnguard_duckdb() -> object:
        return build_features(data, entities, engine=duckdb_engine)

    def pandas() -> object:
        return pandas_features(data, entities_pd)

    out: dict = {"transactions": len(txs), "events": len(evs), "calls": calls}
    for name, fn in (
        ("churnguard", churnguard),
        ("churnguard_incl_from_records", churnguard_from_records),
        ("churnguard_duckdb", churnguard_duckdb),
        ("pandas", pandas),
    ):
        for _ in range(max(20, calls // 20)):  # warm-up
            fn()
        ms = np.empty(calls)
        for i in range(calls):
            t = time.perf_counter()
            fn()
            ms[i] = (time.perf_counter() - t) * 1000
        out[name] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max()),
        }
    a = churnguard().to_pandas()
    b = pandas()
    diffs = []
    for col in a.columns[2:]:
        x, y = float(a[col].iloc[0]), float(b[col].iloc[0])
        if not (x == y or (x != x and y != y) or abs(x - y) <= 1e-9 * max(1.0, abs(x))):
            diffs.append(col)
    out["values_equal"] = not diffs
    out["differing_columns"] = diffs
    out["peak_rss_bytes"] = maxrss()
    return out


# --------------------------------------------------------------------------------------------- reporting


def _speedups(results: dict, snapshots: int) -> dict:
    out = {}
    for cg, pd_ in (("cg_1", "pd_1"), ("cg_n", "pd_n")):
        if cg in results and pd_ in results:
            c, p = results[cg], results[pd_]
            scale = len(c["as_of"]) / len(p["as_of"])  # > 1 when pandas ran on fewer dates (extrapolated)
            out[f"{pd_}/{cg}"] = {
                "ratio": (p["to_pandas_s"] + p["compute_s"] * scale) / c["features_s"],
                "ratio_excl_to_pandas": p["compute_s"] * scale / c["features_s"],
                "extrapolated": scale != 1,
            }
    return out


def to_markdown(r: dict) -> str:
    m, cfg, st = r["machine"], r["config"], r["stages"]
    lines = [
        "# Feature benchmark: churnguard vs pandas reference",
        "",
        f"Machine: {m.get('cpus_usable')} usable cores ({m.get('cpu_model', '?')}), "
        f"{m.get('ram_gib', '?')} GiB RAM; "
        f"Python {m['python']}, DuckDB {m['duckdb']}, pandas {m['pandas']}.",
        f"Data: demo business, {cfg['customers']:,} customers (seed {cfg['seed']}), "
        f"{cfg['data_rows']['transactions']:,} transaction rows, {cfg['data_rows']['events']:,} events; "
        f"as_of dates {', '.join(cfg['as_of_dates'])}."
        + (f" Generation took {cfg['generation_s']:.0f} s." if cfg.get("generation_s") else ""),
        "",
        "| stage | as_of | entities | features s | CPU s | peak RSS GiB | RSS before GiB | 1-min load avg "
        "| target | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    ld = r["load"]
    lines.insert(
        -2,
        f"Load + validate (`load_dataset`, own process): **{ld['load_s']:.1f} s**, peak RSS "
        f"{ld['peak_rss_bytes'] / GIB:.2f} GiB; clean dataset "
        f"{ld['dataset_bytes'] / GIB:.2f} GiB in Arrow, {ld['rows']['rejected']:,} rows rejected"
        + (" (cached from an earlier run)." if ld.get("cached") else "."),
    )
    lines.insert(-2, "")
    labels = {
        "cg_1": "churnguard, 1 as_of",
        "cg_n": f"churnguard, {cfg['snapshots']} as_of",
        "pd_1": "pandas, 1 as_of",
        "pd_n": f"pandas, {cfg['snapshots']} as_of",
    }
    for key, label in labels.items():
        if key not in st:
            continue
        s = st[key]
        target, ok = "", ""
        if key == "cg_1":
            target = f"< {TARGETS['cg_1_seconds']:.0f} s, < {TARGETS['cg_1_peak_gib']:.0f} GiB"
            ok = _ok(s["features_s"] < TARGETS["cg_1_seconds"] and s["peak_rss_bytes"] / GIB < TARGETS["cg_1_peak_gib"])
        elif key == "cg_n":
            target = f"< {TARGETS['cg_n_seconds']:.0f} s"
            ok = _ok(s["features_s"] < TARGETS["cg_n_seconds"])
        feat = f"{s['features_s']:.2f}"
        if key == "pd_n" and len(s["as_of"]) != cfg["snapshots"]:
            est = s["to_pandas_s"] + s["compute_s"] * cfg["snapshots"] / len(s["as_of"])
            feat = f"{feat} ({len(s['as_of'])} as_of measured; **~{est:.0f} extrapolated**)"
            label += f" (measured {len(s['as_of'])})"
        load = "-".join(f"{x:.1f}" for x in s.get("loadavg_1min", []))
        lines.append(
            f"| {label} | {len(s['as_of'])} | {s['entities']:,} | {feat} | "
            f"{s['features_cpu_s']:.1f} | "
            f"{s['peak_rss_bytes'] / GIB:.2f} | {s['rss_before_features_bytes'] / GIB:.2f} | "
            f"{load} | "
            f"{target} | {ok} |"
        )
    lines.append("")
    notes = [
        "features s: wall time of the feature computation only; CPU s: its CPU time over all threads "
        "(DuckDB uses every core, pandas one); peak RSS: the stage process's ru_maxrss, which "
        "includes the resident clean dataset (RSS before = after reading it and selecting entities)."
    ]
    for key in ("cg_1", "cg_n"):
        if key in st:
            s = st[key]
            notes.append(
                f"{labels[key]}: + {s['compile_s']:.2f} s one-off Ibis->SQL compile "
                f"(not in features s); entity selection {s['entities_s']:.2f} s."
            )
    for key in ("pd_1", "pd_n"):
        if key in st:
            s = st[key]
            notes.append(
                f"{labels[key]}: features s = {s['to_pandas_s']:.2f} s Arrow->pandas + {s['compute_s']:.2f} s compute."
            )
    for name, sp in r["speedup"].items():
        lines_ = f"Speed-up {name} (same run): **{sp['ratio']:.1f}x**"
        lines_ += f" (excl. Arrow->pandas: {sp['ratio_excl_to_pandas']:.1f}x)"
        if sp["extrapolated"]:
            lines_ += " - pandas time extrapolated from fewer as_of dates"
        ok = _ok(sp["ratio"] >= TARGETS["speedup"])
        notes.append(f"{lines_}; target >= {TARGETS['speedup']:.0f}x {ok}.")
    for name, c in r["value_checks"].items():
        verdict = "**equal**" if c["equal"] else f"**DIFFERENT** ({c['rows_differing']:,} differing values)"
        notes.append(
            f"Values {name}: {verdict} over {c['rows_matched']:,} rows x {len(c['columns'])} "
            "features; "
            f"max abs diff {c['max_abs']:.3g}, max rel diff {c['max_rel']:.3g}."
        )
        bad = {k: v for k, v in c["columns"].items() if v["rows_differing"]}
        for k, v in list(bad.items())[:10]:
            notes.append(
                f"  - {k}: {v['rows_differing']} rows, max abs {v['max_abs']:.3g}, null mismatches {v['null_mismatch']}"
            )
    lines += [f"- {n}" for n in notes]
    if "single" in st:
        s = st["single"]
        lines += [
            "",
            f"Single customer (API path): {s['transactions']} transaction lines, {s['events']} events, "
            f"{s['calls']:,} sequential calls after warm-up.",
            "",
            "| implementation | p50 ms | p99 ms | mean ms | target |",
            "|---|---:|---:|---:|---|",
        ]
        for name, label in (
            ("churnguard", "churnguard build_features, SQLiteEngine (the API's engine)"),
            ("churnguard_incl_from_records", "  same, incl. Dataset.from_records"),
            ("churnguard_duckdb", "churnguard build_features, DuckDBEngine(threads=1)"),
            ("pandas", "pandas reference"),
        ):
            x = s[name]
            target = (
                f"p99 < {TARGETS['single_p99_ms']:.0f} ms {_ok(x['p99_ms'] < TARGETS['single_p99_ms'])}"
                if name == "churnguard"
                else ""
            )
            lines.append(f"| {label} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['mean_ms']:.2f} | {target} |")
        lines.append("")
        equal = "yes" if s["values_equal"] else s["differing_columns"]
        lines.append(f"- Single-customer values equal: {equal}.")
    return "\n".join(lines) + "\n"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    return date(d.year + y, m + 1, min(d.day, 28))


if __name__ == "__main__":
    main()
