"""How cost grows with the business: the same commands at 100k, 300k, 1M and 3M demo customers.

    uv run python benchmarks/bench_scaling.py [--sizes 100000,300000,1000000,3000000] [--out benchmarks/out]

For each size, each step is a whole ``churn`` process as a user runs it (wall time, CPU time and the process's own
peak RSS from ``os.wait4``), next to the floor measured in the same run:

* ``read``      the floor: ``pyarrow.parquet.read_table`` of the three demo files, nothing else;
* ``ingest``    ``churn ingest --data DIR`` into a fresh embedded store (read + validate + write);
* ``features``  ``churn features --as-of DATE --out FILE`` from the store (one as_of, every customer known);
* ``score``     ``churn score --as-of DATE --out FILE`` from the store with the champion (scorecards, outreach list
                with reasons for its customers, not-scored list).

The model is trained once on a 20,000-customer demo (``churn train --promote``; set-up, not measured). The demo data
is generated once per size (Parquet, seed 42) under ``<out>/scaling/``. Growth is reported as the slope of
log(time) and log(peak memory) against log(customers) between consecutive sizes and over all sizes (least
squares): 1.0 is linear, the target. Results: ``<out>/scaling.md`` and ``<out>/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import code_version, machine_info, run_process, write_report  # noqa: E402

AS_OF = "2025-01-01"
MODEL_CUSTOMERS = 20_000
STEPS = ("read", "ingest", "features", "score")
READ = (
    "import pyarrow.parquet as pq, sys; from pathlib import Path; "
    "print(sum(pq.read_table(p).num_rows for p in Path(sys.argv[1]).glob('*.parquet')))"
)


def slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(v, 1e-9)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,300000,1000000,3000000")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    p.add_argument("--steps", default=",".join(STEPS))
    p.add_argument(
        "--keep-previous", action="store_true", help="add the sizes of the last run's scaling.json not measured now"
    )
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    steps = [s for s in args.steps.split(",") if s]
    root = args.out / "scaling"
    churn = [sys.executable, "-m", "churnguard.cli"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("CHURN_", "MLFLOW_"))}
    model_env = {**base_env, "CHURN_DATA_DIR": str(root / "model")}  # MLflow registry shared by every size

    def demo(n: int) -> Path:
        folder = root / f"demo-{n}"
        if not (folder / "manifest.json").exists():
            print(f"generating {n:,} demo customers into {folder} ...", flush=True)
            gen = [*churn, "generate", "--out", str(folder), "--customers", str(n), "--format", "parquet"]
            subprocess.run(gen, env=base_env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return folder

    if not (root / "model" / "trained").exists():
        print(f"training the model on {MODEL_CUSTOMERS:,} customers (set-up) ...", flush=True)
        train = [*churn, "train", "--data", str(demo(MODEL_CUSTOMERS)), "--promote"]
        subprocess.run(train, env=model_env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        (root / "model" / "trained").touch()

    results: dict[int, dict[str, dict]] = {}
    for n in sizes:
        folder = demo(n)
        work = root / f"work-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = {**model_env, "CHURN_STORE__PATH": str(work / "store")}
        commands = {
            "read": [sys.executable, "-c", READ, str(folder)],
            "ingest": [*churn, "ingest", "--data", str(folder)],
            "features": [*churn, "features", "--as-of", AS_OF, "--out", str(work / "features.parquet")],
            "score": [*churn, "score", "--as-of", AS_OF, "--out", str(work / "scores.parquet")],
        }
        results[n] = {}
        for step in STEPS:
            if step not in steps and step != "ingest":  # the later steps read the store
                continue
            results[n][step] = run_process(commands[step], env)
            print(f"{n:>9,} {step:<8} {results[n][step]}", flush=True)
        shutil.rmtree(work / "store", ignore_errors=True)  # 3M stores are large; the numbers are kept

    previous = args.out / "scaling.json"
    if args.keep_previous and previous.exists():  # sizes measured in an earlier run join the table, flagged
        for n, steps_done in json.loads(previous.read_text())["results"].items():
            if int(n) not in results:
                results[int(n)] = {k: dict(v, earlier_run=True) for k, v in steps_done.items()}
        sizes = sorted(results)
    report = {"sizes": sizes, "results": results, "machine": machine_info(), "code": code_version()}
    write_report(args.out, "scaling", report, to_markdown(sizes, results, steps))


def to_markdown(sizes: list[int], results: dict[int, dict[str, dict]], steps: list[str]) -> str:
    head = "| customers | " + " | ".join(f"{s}: wall s / CPU s / peak GiB" for s in steps) + " | 1-min load |"
    rows = [head, "|" + "---|" * (len(steps) + 2)]
    for n in sizes:
        r = results[n]
        loads = [v["load_before"] for v in r.values()]
        cells = [f"{r[s]['wall_s']} / {r[s]['cpu_s']} / {r[s]['peak_rss_gib']}" for s in steps]
        earlier = " (earlier run)" if any(v.get("earlier_run") for v in r.values()) else ""
        rows.append(f"| {n:,}{earlier} | " + " | ".join(cells) + f" | {min(loads)}-{max(loads)} |")
    if len(sizes) >= 2:
        for label, key in (("slope of log time", "wall_s"), ("slope of log peak memory", "peak_rss_gib")):
            cells = [f"{slope(sizes, [results[n][s][key] for n in sizes]):.2f}" for s in steps]
            rows.append(f"| {label} (all sizes) | " + " | ".join(cells) + " | |")
        for a, b in zip(sizes, sizes[1:], strict=False):
            cells = [f"{slope([a, b], [results[a][s]['wall_s'], results[b][s]['wall_s']]):.2f}" for s in steps]
            rows.append(f"| time slope {a:,} -> {b:,} | " + " | ".join(cells) + " | |")
    ratio = [f"{s}: " + ", ".join(f"{results[n][s]['wall_s'] / results[n]['read']['wall_s']:.1f}x" for n in sizes)
             for s in steps if s != "read" and "read" in steps]  # fmt: skip
    return (
        "Cost against size, whole processes (slope 1.0 = linear)\n\n"
        + "\n".join(rows)
        + ("\n\nEach step / the read floor of the same size: " + "; ".join(ratio) if ratio else "")
    )


if __name__ == "__main__":
    main()
