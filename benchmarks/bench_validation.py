"""Validation benchmark: ``load_dataset`` on CSV and Parquet against the time it takes just to read the same files.

    uv run python benchmarks/bench_validation.py [--customers 1000000] [--out benchmarks/out]
    uv run python benchmarks/bench_validation.py --customers 100000,300000,1000000   # cost against size

Generates (once, cached under ``--out``) the demo business as CSV (``demo_csv_<N>_seed<S>/``) and as Parquet
(``demo_<N>_seed<S>/``, shared with the other benchmarks) with ``churnguard.demo.generate``, then runs every stage in
a fresh Python subprocess, so that its peak memory (the child's ``ru_maxrss``) is its own:

* ``read_csv``          the floor: ``pyarrow.csv.read_csv`` of the three CSV files, default options (type
                        inference), the way anyone reads a CSV into Arrow;
* ``read_csv_text``     the read validation itself does (``features.validate.read_file``: every column as text);
* ``duckdb_csv``        DuckDB ``read_csv`` of the same files into Arrow;
* ``read_parquet``      the Parquet floor: ``pyarrow.parquet.read_table`` of the three files;
* ``validate_csv``      ``features.validate.load_dataset`` on the CSV folder: seconds (and per table, from its
                        progress messages), peak RSS, the clean tables' Arrow bytes, rows kept and rejected;
* ``validate_parquet``  the same on the Parquet folder;
* ``before_csv`` / ``before_parquet`` (only when asked with ``--stages``): the same call with
  ``features/validate.py`` as it is on ``--before-ref`` (default ``main``), loaded from git into this process;
* ``same_as_before`` (only when asked): both versions on both folders in one process; the clean tables (row order
  included), the rejects (raw text included) and the report must be equal.

Targets (issue "scale", items 1 and 5): CSV validation <= 3x ``read_csv`` in the same run; Parquet validation
faster than CSV validation; peak RSS of validation <= 2x the clean tables' Arrow bytes. With several sizes the
report adds the log-log slope of seconds and peak RSS against input rows (1 = linear).
Results: ``<out>/validation.md`` and ``<out>/validation.json``; one machine, other work on it skews the seconds
(the 1-minute load average before/after each stage is in the table), the ratios are within one run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the sys.path set-up
    GIB,
    child,
    code_version,
    cpu,
    machine_info,
    maxrss,
    requested_stages,
    run_stage,
    run_stages,
    stage_parser,
    wait_for_idle,
    write_report,
)

NOW = datetime(2026, 1, 1)  # the run's clock for validation: later rows (year ~2099) are rejects
TABLES = ("transactions", "events", "customers")
STAGES = ("read_csv", "read_csv_text", "duckdb_csv", "read_parquet", "validate_csv", "validate_parquet")
OPTIONAL_STAGES = ("before_csv", "before_parquet", "same_as_before")
TARGETS = {"csv_over_read": 3.0, "peak_over_clean": 2.0}


# --------------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__, STAGES + OPTIONAL_STAGES)
    p.set_defaults(stages=",".join(STAGES))
    for action in p._actions:  # the shared --customers takes one size; here it takes a list
        if action.dest == "customers":
            action.type, action.default = str, "1000000"
            action.help = "one size or a comma-separated list, e.g. 100000,300000,1000000"
    p.add_argument("--before-ref", default="main", help="git ref whose features/validate.py the before_* stages run")
    args = p.parse_args(argv)
    if args.stage:
        # pyarrow imports pandas on its first conversion or Parquet read: import it here, outside every timing
        # (several seconds where bytecode is not cached, which would otherwise land in whichever stage is first)
        import pandas  # noqa: F401

        run_stage(args.stage, json.loads(args.spec), args.result, STAGE_FUNCTIONS)
        return
    out = Path(args.out)
    sizes = [int(s) for s in str(args.customers).split(",") if s]
    stages = requested_stages(args.stages, STAGES + OPTIONAL_STAGES)
    idle = wait_for_idle(enabled=not args.no_wait and max(sizes) >= 500_000)
    runs = {}
    for customers in sizes:
        work = out / "work" / f"validation_{customers}"
        work.mkdir(parents=True, exist_ok=True)
        dirs = {fmt: demo_data(out, customers, args.seed, fmt, args.regenerate) for fmt in ("csv", "parquet")}
        spec = {"csv": str(dirs["csv"]), "parquet": str(dirs["parquet"]), "before_ref": args.before_ref}
        previous = work / "results.json"
        results = json.loads(previous.read_text()) if previous.exists() else {}
        results = {k: dict(v, cached=True) for k, v in results.items() if k not in stages}
        print(f"== {customers:,} customers", flush=True)
        run_stages(__file__, [s for s in STAGES + OPTIONAL_STAGES if s in stages], spec, work, results, _headline)
        runs[customers] = {"data": spec, "stages": results, "summary": summarise(results)}
    report = {
        "machine": machine_info(),
        "code": code_version(),
        "config": {"sizes": sizes, "seed": args.seed, "now": str(NOW), "idle_wait": idle},
        "runs": runs,
        "slopes": slopes(runs),
        "targets": TARGETS,
    }
    write_report(out, "validation", report, to_markdown(report))


def demo_data(out: Path, customers: int, seed: int, fmt: str, regenerate: bool) -> Path:
    """``<out>/demo_<N>_seed<S>/`` (Parquet, as the other benchmarks) or ``demo_csv_<N>_seed<S>/``, made once."""
    data_dir = out / (f"demo_{customers}_seed{seed}" if fmt == "parquet" else f"demo_csv_{customers}_seed{seed}")
    manifest = data_dir / "manifest.json"
    if manifest.exists() and not regenerate:
        m = json.loads(manifest.read_text())
        if m.get("customers") == customers and m.get("seed") == seed and m.get("format") == fmt:
            return data_dir
    print(f"generating demo data: {customers:,} customers, {fmt} -> {data_dir}", flush=True)
    (out / "work").mkdir(parents=True, exist_ok=True)
    spec = {"data": str(data_dir), "customers": customers, "seed": seed, "format": fmt}
    child(__file__, "generate", spec, out / "work" / f"generate_{fmt}_{customers}.json")
    return data_dir


def _headline(name: str, r: dict) -> str:
    return f"{r['seconds']:.1f} s, peak RSS {r['process_maxrss_bytes'] / GIB:.2f} GiB"


# --------------------------------------------------------------------------------------------- children


def stage_generate(spec: dict) -> dict:
    from churnguard.demo import generate

    started = time.perf_counter()
    generate(
        Path(spec["data"]),
        customers=spec["customers"],
        seed=spec["seed"],
        fmt=spec["format"],
        progress=lambda m: print(f"  {m}", flush=True),
    )
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": maxrss()}


def _files(folder: str, suffix: str) -> list[Path]:
    return [Path(folder) / f"{t}{suffix}" for t in TABLES if (Path(folder) / f"{t}{suffix}").exists()]


def _read_stage(read, paths: list[Path]) -> dict:
    """Read every file (kept until the end, as validation keeps its tables), timed per file."""
    tables, per_file = [], {}
    t0, c0 = time.perf_counter(), cpu()
    for path in paths:
        t = time.perf_counter()
        tables.append(read(path))
        per_file[path.stem] = time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu() - c0,
        "per_file_s": per_file,
        "rows": sum(t.num_rows for t in tables),
        "arrow_bytes": sum(t.nbytes for t in tables),
        "input_bytes": sum(p.stat().st_size for p in paths),
        "peak_rss_bytes": maxrss(),
    }


def stage_read_csv(spec: dict) -> dict:
    import pyarrow.csv as pacsv

    return _read_stage(pacsv.read_csv, _files(spec["csv"], ".csv"))


def stage_read_csv_text(spec: dict) -> dict:
    from features.validate import read_file

    return _read_stage(read_file, _files(spec["csv"], ".csv"))


def stage_duckdb_csv(spec: dict) -> dict:
    from features.duck import connect

    con = connect()

    def read(path: Path):
        return con.sql(f"SELECT * FROM read_csv('{path}')").to_arrow_table()

    return _read_stage(read, _files(spec["csv"], ".csv"))


def stage_read_parquet(spec: dict) -> dict:
    import pyarrow.parquet as pq

    return _read_stage(pq.read_table, _files(spec["parquet"], ".parquet"))


def _validate(load_dataset, folder: str) -> dict:
    marks: list[tuple[str, float]] = []
    t0, c0 = time.perf_counter(), cpu()
    kwargs = {"progress": lambda m: marks.append((m, time.perf_counter() - t0))}
    try:
        data, rejects = load_dataset(Path(folder), now=NOW, **kwargs)
    except TypeError:  # an earlier version without progress messages
        data, rejects = load_dataset(Path(folder), now=NOW)
    seconds = time.perf_counter() - t0
    per_table = {}
    for i, (message, at) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else None
        per_table[message.split()[1]] = (end - at) if end is not None else None  # the last one includes the summary
    assert data.report is not None
    return {
        "seconds": seconds,
        "cpu_s": cpu() - c0,
        "per_table_s": per_table,
        "peak_rss_bytes": maxrss(),
        "clean_bytes": sum(t.nbytes for t in (data.transactions, data.events, data.customers)),
        "input_bytes": sum(Path(t.source).stat().st_size for t in data.report.tables),
        "rows_read": data.report.rows_read,
        "rows_kept": {t.name: t.rows_kept for t in data.report.tables},
        "rejected": {t.name: t.rejected for t in data.report.tables},
        "rejects_rows": rejects.num_rows,
        "n_customers": data.report.n_customers,
    }


def stage_validate_csv(spec: dict) -> dict:
    from features.validate import load_dataset

    return _validate(load_dataset, spec["csv"])


def stage_validate_parquet(spec: dict) -> dict:
    from features.validate import load_dataset

    return _validate(load_dataset, spec["parquet"])


def _before_module(ref: str):
    """``features/validate.py`` as of ``ref``, as a module (its imports resolve to this checkout's packages)."""
    import subprocess
    import types

    source = subprocess.run(
        ["git", "show", f"{ref}:features/validate.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("validate_before")
    module.__file__ = f"{ref}:features/validate.py"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own code from git
    return module


def stage_before_csv(spec: dict) -> dict:
    return dict(_validate(_before_module(spec["before_ref"]).load_dataset, spec["csv"]), ref=spec["before_ref"])


def stage_before_parquet(spec: dict) -> dict:
    return dict(_validate(_before_module(spec["before_ref"]).load_dataset, spec["parquet"]), ref=spec["before_ref"])


def stage_same_as_before(spec: dict) -> dict:
    from features.validate import load_dataset

    before = _before_module(spec["before_ref"]).load_dataset
    out: dict = {"ref": spec["before_ref"]}
    t0 = time.perf_counter()
    for fmt in ("csv", "parquet"):
        folder = Path(spec[fmt])
        old, old_rejects = before(folder, now=NOW)
        new, new_rejects = load_dataset(folder, now=NOW)
        out[fmt] = {
            **{name: getattr(old, name).equals(getattr(new, name)) for name in TABLES},
            "rejects": old_rejects.equals(new_rejects),
            "report": old.report == new.report,
            "rows_kept": new.report.rows_kept,
            "rows_rejected": new_rejects.num_rows,
        }
        del old, old_rejects, new, new_rejects
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = 0.0
    return out


STAGE_FUNCTIONS = {
    "generate": stage_generate,
    "read_csv": stage_read_csv,
    "read_csv_text": stage_read_csv_text,
    "duckdb_csv": stage_duckdb_csv,
    "read_parquet": stage_read_parquet,
    "validate_csv": stage_validate_csv,
    "validate_parquet": stage_validate_parquet,
    "before_csv": stage_before_csv,
    "before_parquet": stage_before_parquet,
    "same_as_before": stage_same_as_before,
}


# --------------------------------------------------------------------------------------------- reporting


def summarise(st: dict) -> dict:
    out: dict = {}
    for fmt in ("csv", "parquet"):
        v = st.get(f"validate_{fmt}")
        if v:
            out[f"{fmt}_peak_over_clean"] = v["process_maxrss_bytes"] / v["clean_bytes"]
            out[f"{fmt}_peak_ok"] = out[f"{fmt}_peak_over_clean"] <= TARGETS["peak_over_clean"]
    if "validate_csv" in st:
        v = st["validate_csv"]["seconds"]
        for floor in ("read_csv", "read_csv_text", "duckdb_csv"):
            if floor in st:
                out[f"csv_over_{floor}"] = v / st[floor]["seconds"]
        if "csv_over_read_csv" in out:
            out["csv_time_ok"] = out["csv_over_read_csv"] <= TARGETS["csv_over_read"]
    if "validate_parquet" in st:
        v = st["validate_parquet"]["seconds"]
        if "read_parquet" in st:
            out["parquet_over_read_parquet"] = v / st["read_parquet"]["seconds"]
        if "validate_csv" in st:
            out["parquet_over_csv"] = v / st["validate_csv"]["seconds"]
            out["parquet_faster_ok"] = v < st["validate_csv"]["seconds"]
    for fmt in ("csv", "parquet"):
        before, after = st.get(f"before_{fmt}"), st.get(f"validate_{fmt}")
        if before and after:
            out[f"{fmt}_speedup_over_before"] = before["seconds"] / after["seconds"]
            out[f"{fmt}_same_counts_as_before"] = (
                before["rows_kept"] == after["rows_kept"] and before["rejected"] == after["rejected"]
            )
    return out


def slopes(runs: dict) -> dict:
    """Least-squares slope of log(seconds) and log(peak RSS) against log(rows read), per validation stage."""
    out: dict = {}
    if len(runs) < 2:
        return out
    for stage in ("validate_csv", "validate_parquet", "read_csv", "read_parquet"):
        points = [r["stages"][stage] for r in runs.values() if stage in r["stages"]]
        rows = [p.get("rows_read", p.get("rows")) for p in points]
        if len(points) < 2 or not all(rows):
            continue
        out[stage] = {
            "seconds": _slope(rows, [p["seconds"] for p in points]),
            "peak_rss": _slope(rows, [p["process_maxrss_bytes"] for p in points]),
        }
    return out


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def to_markdown(r: dict) -> str:
    m, code = r["machine"], r["code"]
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    load = lambda x: "-".join(f"{v:.1f}" for v in x.get("loadavg_1min", []))  # noqa: E731
    lines = [
        "# Validation benchmark: `load_dataset` against reading the same files",
        "",
        f"Machine: {m.get('cpus_usable')} usable cores ({m.get('cpu_model', '?')}), {m.get('ram_gib', '?')} GiB RAM; "
        f"Python {m['python']}, DuckDB {m.get('duckdb')}, pyarrow {m.get('pyarrow')}. Code: commit {code['commit']}"
        + (f" + uncommitted edits ({code['diff_sha1']})" if code["uncommitted_files"] else "")
        + ".",
        "",
    ]
    for customers, run in r["runs"].items():
        st, s = run["stages"], run["summary"]
        v = st.get("validate_csv") or st.get("validate_parquet") or {}
        lines += [
            f"## {int(customers):,} demo customers" + (f" ({v['rows_read']:,} rows read per format)" if v else ""),
            "",
            "| stage | seconds | CPU s | peak RSS GiB | 1-min load | notes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        notes = {
            "read_csv": "floor: `pyarrow.csv.read_csv`, default options",
            "read_csv_text": "the all-text read validation does",
            "duckdb_csv": "DuckDB `read_csv` into Arrow",
            "read_parquet": "floor: `pyarrow.parquet.read_table`",
            "validate_csv": "`load_dataset`, CSV",
            "validate_parquet": "`load_dataset`, Parquet",
            "before_csv": "`load_dataset` before this change, CSV",
            "before_parquet": "`load_dataset` before this change, Parquet",
        }
        for name in STAGES + OPTIONAL_STAGES:
            if name not in st or name == "same_as_before":
                continue
            x = st[name]
            extra = notes[name]
            if name.startswith(("validate", "before")):
                extra += (
                    f"; clean tables {gib(x['clean_bytes'])} GiB, peak / clean "
                    f"{x['process_maxrss_bytes'] / x['clean_bytes']:.2f}x; "
                    + ", ".join(f"{k} {t:.1f} s" for k, t in x.get("per_table_s", {}).items() if t is not None)
                )
            if x.get("cached"):
                extra += " (cached from an earlier run)"
            lines.append(
                f"| {name} | {x['seconds']:.1f} | {x['cpu_s']:.1f} | {gib(x['process_maxrss_bytes'])} | {load(x)} "
                f"| {extra} |"
            )
        lines.append("")
        verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
        if "csv_over_read_csv" in s:
            others = [
                f"/ {label} {s[key]:.2f}x"
                for key, label in (
                    ("csv_over_read_csv_text", "all-text read"),
                    ("csv_over_duckdb_csv", "DuckDB `read_csv`"),
                )
                if key in s
            ]
            lines.append(
                f"- CSV validation / `read_csv` **{s['csv_over_read_csv']:.2f}x** (target <= "
                f"{TARGETS['csv_over_read']:.0f}x: {verdict(s['csv_time_ok'])})"
                + ("; " + "; ".join(others) if others else "")
                + "."
            )
        if "parquet_over_csv" in s:
            lines.append(
                f"- Parquet validation / CSV validation {s['parquet_over_csv']:.2f}x (faster: "
                f"{verdict(s['parquet_faster_ok'])})"
                + (
                    f"; / `read_table` {s['parquet_over_read_parquet']:.2f}x."
                    if "parquet_over_read_parquet" in s
                    else "."
                )
            )
        for fmt in ("csv", "parquet"):
            if f"{fmt}_peak_over_clean" in s:
                lines.append(
                    f"- {fmt} peak RSS / clean Arrow bytes {s[f'{fmt}_peak_over_clean']:.2f}x (target <= "
                    f"{TARGETS['peak_over_clean']:.0f}x: {verdict(s[f'{fmt}_peak_ok'])})."
                )
            if f"{fmt}_speedup_over_before" in s:
                lines.append(
                    f"- {fmt}: {s[f'{fmt}_speedup_over_before']:.1f}x faster than before; same kept rows and "
                    f"rejects per reason: {'yes' if s[f'{fmt}_same_counts_as_before'] else '**NO**'}."
                )
        if "same_as_before" in st:
            x = st["same_as_before"]
            for fmt in ("csv", "parquet"):
                checks = {k: v for k, v in x[fmt].items() if isinstance(v, bool)}
                verdict_eq = (
                    "yes" if all(checks.values()) else "**NO**: " + ", ".join(k for k, v in checks.items() if not v)
                )
                lines.append(
                    f"- {fmt}: output equal to `{x['ref']}` (clean tables in the same row order, rejects with raw "
                    f"text, report): {verdict_eq} ({x[fmt]['rows_kept']:,} rows kept, {x[fmt]['rows_rejected']:,} "
                    "rejected)."
                )
        lines.append("")
    if r["slopes"]:
        lines += ["## Cost against size (log-log slope against rows read; 1 = linear)", ""]
        lines += ["| stage | seconds | peak RSS |", "|---|---:|---:|"]
        for stage, sl in r["slopes"].items():
            lines.append(f"| {stage} | {sl['seconds']:.2f} | {sl['peak_rss']:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
