"""Helpers shared by the benchmark scripts: machine and code identification, waiting for an idle machine,
CPU / memory probes, and the validated demo data kept as Arrow IPC between stage processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def wait_for_idle(
    enabled: bool = True, threshold: float = 0.8, interval: float = 30.0, give_up: float = 1200.0
) -> dict:
    """Wait until the 1-minute load average is below ``threshold`` on two checks ``interval`` apart."""
    load = os.getloadavg()[0]
    if not enabled:
        return {"waited": False, "loadavg_1min_at_start": load}
    started, below = time.monotonic(), 0
    while True:
        load = os.getloadavg()[0]
        below = below + 1 if load < threshold else 0
        if below >= 2:
            out = {"waited_s": round(time.monotonic() - started), "idle": True, "loadavg_1min_at_start": load}
            print(f"machine idle (1-min load {load:.2f}) after {out['waited_s']} s", flush=True)
            return out
        if time.monotonic() - started > give_up:
            out = {"waited_s": round(time.monotonic() - started), "idle": False, "loadavg_1min_at_start": load}
            print(f"gave up waiting for an idle machine: 1-min load {load:.2f}; running anyway", flush=True)
            return out
        print(
            f"  waiting for an idle machine: 1-min load {load:.2f} (need < {threshold} twice, {interval:.0f} s apart)",
            flush=True,
        )
        time.sleep(interval)


def machine_info() -> dict:
    import platform
    from importlib.metadata import version

    info: dict = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in ("duckdb", "pandas", "pyarrow", "lightgbm", "mlflow", "lifelines", "scikit-learn", "ibis-framework"):
        with contextlib.suppress(Exception):  # informational only
            info[package] = version(package)
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        info["ram_gib"] = round(total_kib * 1024 / GIB, 1)
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
    except (OSError, StopIteration):
        pass
    return info


def code_version() -> dict:
    """The commit, and which files had uncommitted edits (others work in this checkout) with a hash of the diff."""
    import hashlib

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("benchmarks/")]
    diff = git("diff", "HEAD", "--", ".", ":(exclude)benchmarks")
    return {
        "root": str(ROOT),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_files": dirty,
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
    }


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_now() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class RssSampler:
    """Samples this process's resident memory every ``interval`` s, so each stage of one call gets its own peak."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_now()))
            self._stop.wait(self.interval)

    def peak(self, start: float, end: float) -> int:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0)


class Marks:
    """Wall clock and CPU time at each progress message (``train`` and ``score_batch`` both report progress)."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.mark("start")

    def mark(self, label: str) -> None:
        self.items.append({"label": label, "t": time.perf_counter(), "cpu": cpu()})

    def progress(self, n: int = 1, desc: str | None = None) -> None:
        self.mark(desc or f"+{n}")


def write_clean(data, rejects, clean: Path) -> None:
    """Keep the validated tables (and the rejected rows' customer ids) as Arrow IPC for the later stages."""
    import pyarrow as pa

    clean.mkdir(parents=True, exist_ok=True)
    tables = {
        "transactions": data.transactions,
        "events": data.events,
        "customers": data.customers,
        "rejects": pa.table({"customer_id": rejects["customer_id"]}),
    }
    for name, table in tables.items():
        with pa.OSFile(str(clean / f"{name}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)  # keeps the chunking load_dataset produced (DuckDB scans chunks in parallel)


def read_clean(clean: Path):
    """(Dataset, rejected rows' customer ids) as written by :func:`write_clean`."""
    import pyarrow as pa

    from features.dataset import Dataset

    tables = {}
    for name in ("transactions", "events", "customers", "rejects"):
        with pa.OSFile(str(clean / f"{name}.arrow"), "rb") as source:
            tables[name] = pa.ipc.open_file(source).read_all()
    rejects = tables.pop("rejects")["customer_id"]
    return Dataset(**tables), rejects


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def load_stage(data_dir: Path, now: datetime, clean: Path) -> dict:
    """``load_dataset`` (read + validate), timed; the clean tables are kept as Arrow IPC for the later stages."""
    from features.validate import load_dataset

    t, c = time.perf_counter(), cpu()
    data, rejects = load_dataset(data_dir, now=now)
    out: dict = {
        "load_s": time.perf_counter() - t,
        "load_cpu_s": cpu() - c,
        "peak_rss_bytes": maxrss(),
        "rows": {
            "transactions": data.transactions.num_rows,
            "events": data.events.num_rows,
            "customers": data.customers.num_rows,
            "rejected": rejects.num_rows,
        },
        "dataset_bytes": sum(t.nbytes for t in (data.transactions, data.events, data.customers)),
    }
    write_clean(data, rejects, clean)
    return out


def stage_parser(doc: str, stages: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options every staged benchmark shares; the script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--stages",
        default=",".join(stages),
        help="comma-separated subset of " + ",".join(stages) + " (others keep their last results)",
    )
    p.add_argument("--regenerate", action="store_true", help="ignore cached demo data")
    p.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine (1M runs wait)")
    # internal: run one stage in this (child) process
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def write_report(out: Path, name: str, report: dict, markdown: str) -> None:
    """``<out>/<name>.json`` (everything) and ``<out>/<name>.md`` (the table), and the table on stdout."""
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print()
    print(markdown)


# --------------------------------------------------------------------------------------------- stage processes


def child(script: str, stage: str, spec: dict, result: Path) -> dict:
    """Run one stage in a fresh interpreter; return its JSON result plus wall time, CPU, load and peak RSS."""
    cmd = [
        sys.executable,
        str(Path(script).resolve()),
        "--stage",
        stage,
        "--spec",
        json.dumps(spec, default=str),
        "--result",
        str(result),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # MLflow goes to our temp dir
    result.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {stage} failed (exit {code}): {' '.join(cmd)}")
    out = json.loads(result.read_text())
    out["process_wall_s"] = time.perf_counter() - started
    out["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    out["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine skews timings
    out["process_maxrss_bytes"] = usage.ru_maxrss * 1024  # whole child, incl. writing its output
    return out


def run_stage(stage: str, spec: dict, result: str, functions: dict) -> None:
    if stage not in functions:
        raise SystemExit(f"unknown stage {stage}")
    out = functions[stage](spec)
    Path(result).write_text(json.dumps(out, indent=2, default=str))


def requested_stages(text: str, known: tuple[str, ...]) -> list[str]:
    stages = [s for s in text.split(",") if s]
    unknown = set(stages) - set(known)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(known)}")
    return stages


def previous_results(work: Path, known: tuple[str, ...], stages: list[str]) -> dict[str, dict]:
    """A partial run keeps the other stages' last results (flagged ``cached``)."""
    previous = work / "results.json"
    if not previous.exists() or not set(known) - set(stages):
        return {}
    return {k: dict(v, cached=True) for k, v in json.loads(previous.read_text()).items() if k not in stages}


def run_stages(
    script: str,
    names: list[str],
    spec: dict,
    work: Path,
    results: dict[str, dict],
    headline: Callable[[str, dict], str],
) -> None:
    """Each stage in its own process, in order; results are saved after each so an interrupted run can resume."""
    for name in names:
        print(f"[{name}] ...", flush=True)
        results[name] = child(script, name, spec, work / f"{name}.json")
        print(f"[{name}] {headline(name, results[name])}", flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


def run_process(argv: list[str], env: dict[str, str]) -> dict:
    """One whole process (a ``churn`` command, a script) from the repository root: wall seconds, CPU seconds, its
    own peak RSS (``os.wait4``) and the 1-minute load average before and after; its output is kept for errors."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{output.decode(errors='replace')[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    """p50, p99, mean and max of request latencies in milliseconds, and how many there were."""
    import numpy as np

    a = np.asarray(latencies_ms, dtype=float)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
        "n": len(a),
    }
