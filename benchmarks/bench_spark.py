"""DuckDB vs Spark local for the feature query: where (if anywhere) Spark on one machine catches up.

For each size: the demo business (generated once, cached under ``--out``), validated once, then ``build_features``
for every customer at the data end on both engines, in the same process and the same run:

* DuckDB (``DuckDBEngine``, all cores): best of ``--repeats`` runs (the first includes the one-off Ibis -> SQL
  compilation).
* Spark (``SparkEngine``, ``--master``, default ``local[2]``): the session start (JVM) once per process, reported
  apart; the first run of each size (writing the tables as Parquet for Spark + the query) and the best of the
  warm runs (tables already staged).

Ratios are Spark time / DuckDB time measured in this run, so they stay fair on a machine shared with other jobs
(the 1-minute load average before and after is printed and stored). Both outputs are compared column by column.

    uv run python benchmarks/bench_spark.py --customers 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import code_version, machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.customers.split(",")]

    from features.engines import DuckDBEngine
    from features.spark import SparkEngine

    duck = DuckDBEngine()
    spark = SparkEngine(master=args.master, conf=dict(_pairs(args.conf)))
    started = time.perf_counter()
    spark.session  # noqa: B018 - start the JVM and the session now, timed apart
    session_s = time.perf_counter() - started
    print(f"Spark session ({args.master}) started in {session_s:.1f} s", flush=True)

    rows = []
    try:
        for n in sizes:
            rows.append(_one_size(n, out, args, duck, spark))
    finally:
        spark.stop()
    result = {
        "machine": machine_info(),
        "code": code_version(),
        "master": args.master,
        "spark_session_start_s": round(session_s, 2),
        "sizes": rows,
    }
    (out / "spark.json").write_text(json.dumps(result, indent=2, default=str))
    table = _markdown(result)
    (out / "spark.md").write_text(table)
    print(table)


def _one_size(n: int, out: Path, args: argparse.Namespace, duck, spark) -> dict:
    from churnguard.demo import generate
    from features.build import build_features, entities_at
    from features.contract import now_utc
    from features.validate import load_dataset

    folder = out / f"spark_demo_{n}"
    if not (folder / "transactions.parquet").exists():
        print(f"generating {n:,} demo customers into {folder} ...", flush=True)
        generate(folder, customers=n, seed=args.seed, fmt="parquet")
    data, _ = load_dataset(folder, now=now_utc())
    as_of = (data.data_end + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    entities = entities_at(data, as_of)
    load_before = os.getloadavg()[0]
    print(
        f"{n:,} customers: {data.transactions.num_rows:,} transactions, {data.events.num_rows:,} events, "
        f"{entities.num_rows:,} entities at {as_of:%Y-%m-%d} (1-min load {load_before:.1f})",
        flush=True,
    )

    duck_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = build_features(data, entities, engine=duck)
        duck_times.append(time.perf_counter() - t)
    spark_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        b = build_features(data, entities, engine=spark)
        spark_times.append(time.perf_counter() - t)
    load_after = os.getloadavg()[0]

    diff, nulls = _compare(a, b)
    row = {
        "customers": n,
        "transactions": data.transactions.num_rows,
        "events": data.events.num_rows,
        "entities": entities.num_rows,
        "duckdb_s": round(min(duck_times), 3),
        "duckdb_runs_s": [round(x, 3) for x in duck_times],
        "spark_first_s": round(spark_times[0], 3),
        "spark_warm_s": round(min(spark_times[1:] or spark_times), 3),
        "spark_runs_s": [round(x, 3) for x in spark_times],
        "max_abs_diff": diff,
        "null_mismatches": nulls,
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(load_after, 2),
    }
    row["ratio_warm"] = round(row["spark_warm_s"] / row["duckdb_s"], 2)
    row["ratio_first"] = round(row["spark_first_s"] / row["duckdb_s"], 2)
    print(
        f"  DuckDB {row['duckdb_s']:.2f} s; Spark first {row['spark_first_s']:.2f} s, warm {row['spark_warm_s']:.2f} s "
        f"({row['ratio_warm']:.1f}x DuckDB); max |diff| {diff:.2g}, null mismatches {nulls}",
        flush=True,
    )
    return row


def _compare(a, b) -> tuple[float, int]:
    import numpy as np
    import pyarrow as pa

    if not a.schema.equals(b.schema) or a.num_rows != b.num_rows:
        raise AssertionError("DuckDB and Spark returned different tables")
    worst, nulls = 0.0, 0
    for name in a.column_names:
        x, y = a[name], b[name]
        nulls += int(np.sum(x.is_null().to_numpy(zero_copy_only=False) != y.is_null().to_numpy(zero_copy_only=False)))
        if pa.types.is_floating(x.type) or pa.types.is_integer(x.type):
            xv = x.to_numpy(zero_copy_only=False).astype(float)
            yv = y.to_numpy(zero_copy_only=False).astype(float)
            known = ~(np.isnan(xv) | np.isnan(yv))
            if known.any():
                worst = max(worst, float(np.max(np.abs(xv[known] - yv[known]))))
        elif not x.equals(y):
            raise AssertionError(f"column {name} differs")
    return worst, nulls


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Spark {result['master']} vs DuckDB, `build_features` at one as_of (every customer), "
        f"{m.get('cpus')} cores; Spark session start {result['spark_session_start_s']:.1f} s (once, not in the rows)",
        "",
        "| customers | transactions | events | DuckDB | Spark first (staging + query) | Spark warm | Spark / DuckDB "
        "(warm) | max abs diff | load before / after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["sizes"]:
        lines.append(
            f"| {r['customers']:,} | {r['transactions']:,} | {r['events']:,} | {r['duckdb_s']:.2f} s | "
            f"{r['spark_first_s']:.2f} s | {r['spark_warm_s']:.2f} s | {r['ratio_warm']:.1f}x | "
            f"{r['max_abs_diff']:.1g} | {r['load_1min_before']:.1f} / {r['load_1min_after']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    return [tuple(item.split("=", 1)) for item in items]  # type: ignore[misc]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", default="10000,100000", help="comma-separated sizes")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--conf", action="append", default=[], help="extra Spark conf key=value (repeatable)")
    p.add_argument("--repeats", type=int, default=2, help="runs per engine and size (best is reported)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
