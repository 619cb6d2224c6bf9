"""Batch commands from the customer store against the same commands on the files (``--data``), in the same run.

    uv run python benchmarks/bench_store_commands.py [--customers 100000] [--format csv|parquet]
                                                     [--commands features,labels,report]

Generates the demo business (CSV by default, as exports usually come; cached under
``<out>/demo_store_cmd_<N>_<fmt>/``), ingests it into a fresh embedded store with ``churn ingest`` (timed), then runs
each command twice as a whole ``churn`` process, alternating: once with ``--data DIR`` (read + validate the files:
the baseline) and once without (the store, read as ingested). Each process reports its own wall time, CPU time and
peak RSS (``os.wait4``). The outputs of both runs are compared (equal tables), so a speed-up never hides a different
answer. ``churn features`` is also set against the idiomatic pandas script as a whole process
(``python -m benchmarks.pandas_reference``: read the files with pandas, drop bad rows and duplicates, the same 68
features by groupby/merge, write Parquet; its values are checked equal within 1e-6). Results:
``<out>/store_commands.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import code_version, machine_info, run_process, write_report  # noqa: E402

AS_OF = "2024-10-01"
COMMANDS = {
    "features": ["features", "--as-of", AS_OF, "--out", "{out}/features.parquet"],
    "labels": ["labels", "--as-of", "2024-06-01", "--out", "{out}/labels.parquet"],
    "report": ["report", "--out", "{out}/report.html"],
}


def same_output(a: Path, b: Path) -> bool:
    if a.suffix == ".html":
        return a.stat().st_size > 0 and b.stat().st_size > 0  # the page embeds no run-specific numbers to compare
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    keys = [(k, "ascending") for k in ("customer_id", "as_of") if k in ta.column_names]
    return ta.sort_by(keys).equals(tb.sort_by(keys))


def close_output(a: Path, b: Path, tolerance: float = 1e-6) -> bool:
    """The same customers and columns, nulls in the same places, numbers within ``tolerance`` (the pandas script
    sums in another order)."""
    import numpy as np
    import pandas as pd

    x, y = pd.read_parquet(a), pd.read_parquet(b)
    if list(x.columns) != list(y.columns) or not x["customer_id"].equals(y["customer_id"]):
        return False
    for column in x.columns.drop(["customer_id", "as_of"]):
        u, v = x[column].to_numpy(float), y[column].to_numpy(float)
        if not (np.isnan(u) == np.isnan(v)).all() or np.nanmax(np.abs(u - v), initial=0) > tolerance:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--commands", default="features,labels,report")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = p.parse_args(argv)
    commands = [c for c in args.commands.split(",") if c]
    demo = args.out / f"demo_store_cmd_{args.customers}_{args.format}"
    work = args.out / "work" / "store_commands"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "CHURN_DATA_DIR": str(work / "data"),
        "CHURN_STORE__PATH": str(work / "store"),
    }
    churn = [sys.executable, "-m", "churnguard.cli"]
    if not (demo / "manifest.json").exists():
        print(f"generating {args.customers:,} demo customers into {demo} ...", flush=True)
        subprocess.run(
            [*churn, "generate", "--out", str(demo), "--customers", str(args.customers), "--format", args.format],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    results: dict[str, dict] = {"ingest": run_process([*churn, "ingest", "--data", str(demo)], env)}
    print(f"ingest: {results['ingest']}", flush=True)
    for name in commands:
        for source in ("files", "store"):
            out = work / f"{name}_{source}"
            out.mkdir()
            argv = [*churn, *(a.format(out=out) for a in COMMANDS[name])]
            if source == "files":
                argv += ["--data", str(demo)]
            results[f"{name}_{source}"] = run_process(argv, env)
            print(f"{name} from the {source}: {results[f'{name}_{source}']}", flush=True)
        produced = next((work / f"{name}_files").iterdir())
        results[f"{name}_equal"] = same_output(produced, work / f"{name}_store" / produced.name)
        if name == "features":
            out = work / "features_pandas"
            out.mkdir()
            script = [sys.executable, "-m", "benchmarks.pandas_reference", "--data", str(demo), "--as-of", AS_OF]
            script += ["--out", str(out / produced.name)]
            results["features_pandas"] = run_process(script, {**env, "PYTHONPATH": str(ROOT)})
            results["features_pandas_equal"] = close_output(produced, out / produced.name)
            print(f"features, pandas script: {results['features_pandas']}", flush=True)

    rows = [
        "| command | from the files (`--data`): wall s / CPU s / peak GiB | from the store | files / store (wall) "
        "| outputs equal | load before -> after |",
        "|---|---:|---:|---:|---|---|",
    ]
    i = results["ingest"]
    rows.append(
        f"| `churn ingest` (once, validates) | | {i['wall_s']} / {i['cpu_s']} / {i['peak_rss_gib']} | | | "
        f"{i['load_before']} -> {i['load_after']} |"
    )
    for name in commands:
        f, s = results[f"{name}_files"], results[f"{name}_store"]
        rows.append(
            f"| `churn {name}` | {f['wall_s']} / {f['cpu_s']} / {f['peak_rss_gib']} | {s['wall_s']} / {s['cpu_s']} / "
            f"{s['peak_rss_gib']} | {f['wall_s'] / s['wall_s']:.2f}x | {results[f'{name}_equal']} | "
            f"{f['load_before']} -> {s['load_after']} |"
        )
    if "features_pandas" in results:
        p_, s_ = results["features_pandas"], results["features_store"]
        rows.append(
            f"| pandas script, whole process (read, clean, same features) | {p_['wall_s']} / {p_['cpu_s']} / "
            f"{p_['peak_rss_gib']} | | pandas / `churn features` from the store: "
            f"**{p_['wall_s'] / s_['wall_s']:.2f}x** "
            f"(target >= 3x) | {results['features_pandas_equal']} (within 1e-6) | {p_['load_before']} -> "
            f"{p_['load_after']} |"
        )
    markdown = (
        f"Batch commands from the store vs the files, {args.customers:,} demo customers ({args.format})\n\n"
        + "\n".join(rows)
    )
    report = {
        "customers": args.customers,
        "format": args.format,
        "results": results,
        "machine": machine_info(),
        "code": code_version(),
    }
    write_report(args.out, "store_commands", report, markdown)


if __name__ == "__main__":
    main()
