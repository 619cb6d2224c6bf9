"""``churn score`` from the customer store, the whole job: streamed a chunk of customers at a time (what the
command does now) next to the same job over the whole store at once (the path before: ``store.dataset()`` into
``score_batch``), measured in the same run, on the same store and model, with equal outputs checked.

    uv run python benchmarks/bench_score_store.py --data DIR [--work DIR] [--model-customers 20000]
    uv run python benchmarks/bench_score_store.py --customers 100000          # generates the demo data first

Set-up, once per work folder and not timed: a demo business of ``--model-customers`` trained with ``churn train``
(the champion of the work folder's own registry, or of ``--model-dir``: another run's ``<work>/churn``), and
``--data`` ingested with ``churn ingest`` into the work folder's embedded store. Each measured run is a fresh
process (the CLI as a user runs it): wall seconds, CPU seconds (user + system), peak RSS (``ru_maxrss``), and the
peak of its anonymous memory (``RssAnon`` sampled every 50 ms), which leaves out the store's memory-mapped segment
pages: those count in RSS once read, but they are file pages the kernel drops when memory is short, so the
anonymous peak is what the job needs. ``--postgres`` uses a throwaway local PostgreSQL server
(``tests/postgres.py``) as the store, ingested afresh. Results go to ``<work>/score_store_<store>_<reasons>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import GIB, code_version, machine_info  # noqa: E402

CHURN = str(Path(sys.executable).with_name("churn"))
CAPACITY = 10_000


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.whole:
        _whole(args)
        return
    work = Path(args.work or ROOT / "benchmarks" / "out" / f"score_store_{args.customers or 'data'}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    # the model from another work folder's registry (--model-dir), the store always this folder's own
    env = {
        **os.environ,
        "CHURN_DATA_DIR": str(Path(args.model_dir).resolve() if args.model_dir else work / "churn"),
        "CHURN_STORE__PATH": str(work / "churn" / "store"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: modules compiled once, not on every start (~20 s)
    data = Path(args.data) if args.data else work / f"demo-{args.customers}"
    if not (data / "manifest.json").exists():
        _run([CHURN, "generate", "--customers", str(args.customers), "--format", "parquet", "--out", str(data)], env)
    manifest = json.loads((data / "manifest.json").read_text())
    if not args.postgres:
        _bench(args, work, env, data, manifest, "embedded")
        return
    from tests.postgres import postgres_cluster

    with postgres_cluster() as url:  # a throwaway local server (fsync off), the data ingested afresh
        _bench(args, work, {**env, "CHURN_STORE__URL": url}, data, manifest, "postgres")


def _bench(args: argparse.Namespace, work: Path, env: dict, data: Path, manifest: dict, backend: str) -> None:
    as_of = manifest["end"]  # the data end (exclusive): every customer is known
    _set_up(work, data, args.model_customers, env, train=not args.model_dir, marker=backend != "postgres")
    names = [n for n in args.runs.split(",") if n]  # none: the set-up only
    if not names:
        return
    results = {}
    out = work / "out"
    for name in names:
        scores = out / f"{name}.parquet"
        outputs = ["--out", str(scores), "--outreach-out", str(out / f"{name}_outreach.csv")]
        outputs += ["--rejects", str(out / f"{name}_rejected.csv")]
        common = ["--as-of", as_of, "--capacity", str(CAPACITY), "--reasons", args.reasons]
        if name == "streamed":
            command = [CHURN, "score", *outputs, *common]
        else:
            command = [sys.executable, __file__, "--whole", *outputs, *common]
        results[name] = _measure(command, env)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    check = _check(out, names)
    report = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "data": str(data),
        "customers": manifest["customers"],
        "rows": {k: v["rows"] for k, v in manifest["files"].items()},
        "as_of": as_of,
        "store": backend,
        "capacity": CAPACITY,
        "reasons": args.reasons,
        "runs": results,
        "outputs_equal": check,
        "machine": machine_info(),
        "code": code_version(),
    }
    (work / f"score_store_{backend}_{args.reasons}.json").write_text(json.dumps(report, indent=2))
    (work / f"score_store_{backend}_{args.reasons}.md").write_text(_markdown(report))
    print(_markdown(report))


def _set_up(work: Path, data: Path, model_customers: int, env: dict, *, train: bool, marker: bool) -> None:
    small = work / f"model-demo-{model_customers}"
    if train and not (work / "trained").exists():
        if not (small / "manifest.json").exists():
            generate = [CHURN, "generate", "--customers", str(model_customers), "--format", "parquet"]
            _run([*generate, "--out", str(small)], env)
        _run([CHURN, "train", "--data", str(small)], env)
        (work / "trained").touch()
    if not (ROOT / ".venv" / ".bench-compiled").exists():  # bytecode for every module, once: no run pays for it
        targets = [str(ROOT / p) for p in ("churnguard", "features", "model", "serving")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "1", *targets, str(Path(sys.prefix) / "lib")])
        (ROOT / ".venv" / ".bench-compiled").touch()
    if not marker or not (work / "ingested").exists():
        print(f"ingesting {data} ...", flush=True)
        print(f"ingest: {json.dumps(_measure([CHURN, 'ingest', '--data', str(data)], env))}", flush=True)
        if marker:
            (work / "ingested").touch()


def _run(command: list[str], env: dict) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def _measure(command: list[str], env: dict) -> dict:
    """Wall, CPU and peak memory of one fresh process (its own rusage, from ``wait4``)."""
    import tempfile

    load_before = os.getloadavg()[0]
    peaks = {"anon": 0, "file": 0}
    stop = threading.Event()
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)

        def sample() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while not stop.is_set():
                try:
                    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                    peaks["anon"] = max(peaks["anon"], int(fields["RssAnon"].split()[0]) * 1024)
                    peaks["file"] = max(peaks["file"], int(fields["RssFile"].split()[0]) * 1024)
                except (OSError, KeyError, ValueError):
                    pass
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),
        "peak_anon_gib": round(peaks["anon"] / GIB, 2),
        "peak_file_gib": round(peaks["file"] / GIB, 2),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def _check(out: Path, names: list[str]) -> bool | None:
    """The runs' files equal each other (scorecards read back; outreach and not-scored files byte for byte)."""
    import pyarrow.parquet as pq

    if len(names) < 2:
        return None
    first, *others = names
    for other in others:
        if not pq.read_table(out / f"{first}.parquet").equals(pq.read_table(out / f"{other}.parquet")):
            return False
        for suffix in ("_outreach.csv", "_rejected.csv"):
            if (out / f"{first}{suffix}").read_bytes() != (out / f"{other}{suffix}").read_bytes():
                return False
    return True


def _whole(args: argparse.Namespace) -> None:
    """The path before: the whole store read at once (``command_data``), then ``score_batch`` and ``write_batch``."""
    from churnguard.cli import command_data
    from churnguard.settings import load_settings
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.scoring import score_batch, write_batch

    settings = load_settings({"scoring": {"capacity": args.capacity, "reasons": args.reasons}})
    dataset, rejected_ids = command_data(None, None, None, settings, rejected_ids=True)
    model = load_model(settings.mlflow, settings.model_uri)
    policy = load_policy(settings.scoring.policy_file)
    result = score_batch(
        dataset, model, policy, settings.scoring, as_of=datetime.fromisoformat(args.as_of),
        invalid_customer_ids=rejected_ids,
    )  # fmt: skip
    write_batch(result, Path(args.out), Path(args.outreach_out), Path(args.rejects))


def _markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        f"`churn score` from the {report['store']} store, {report['customers']:,} customers "
        f"({rows['transactions']:,} transaction rows, {rows['events']:,} events in the files), as of "
        f"{report['as_of']}, outreach capacity {report['capacity']:,}, top_reasons for: {report['reasons']}; "
        f"outputs equal: {report['outputs_equal']}",
        "",
        "| run | wall s | CPU s | peak RSS GiB | peak anonymous GiB | load before -> after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_gib']} | {r['peak_anon_gib']} | "
            f"{r['load_1min_before']} -> {r['load_1min_after']} |"
        )
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="Demo data folder (parquet or csv) to ingest and score.")
    p.add_argument("--customers", type=int, default=100_000, help="Without --data: generate this many customers.")
    p.add_argument("--work", help="Work folder (data dir, store, outputs).")
    p.add_argument("--model-customers", type=int, default=20_000)
    p.add_argument("--model-dir", help="Use the champion of this data dir (another run's <work>/churn): no training.")
    p.add_argument("--postgres", action="store_true", help="A throwaway PostgreSQL store instead of the embedded one.")
    p.add_argument("--runs", default="streamed,whole", help="streamed and/or whole, in this order ('': set-up only).")
    # the --whole child
    p.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--outreach-out", help=argparse.SUPPRESS)
    p.add_argument("--rejects", help=argparse.SUPPRESS)
    p.add_argument("--as-of", help=argparse.SUPPRESS)
    p.add_argument("--capacity", type=int, default=CAPACITY, help=argparse.SUPPRESS)
    p.add_argument(
        "--reasons", default="outreach", help="top_reasons for: outreach (the default of churn score), all, none."
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
