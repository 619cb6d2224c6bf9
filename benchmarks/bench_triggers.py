"""Batch trigger evaluation benchmark: ``evaluate_triggers`` over the demo business next to batch scoring alone.

    uv run python benchmarks/bench_triggers.py [--customers 100000] [--model-customers 20000] [--out benchmarks/out]

One process, in this order (the machine is shared: the baseline runs in the same process, minutes apart):

* ``generate``   the demo business (cached under ``<out>/triggers_demo_<N>_seed<seed>/``; ``--regenerate``);
* ``model``      a model trained on a smaller demo business (set-up, not timed against anything; kept as
                 ``<out>/triggers_model_<N>_seed<seed>.pkl`` for the next run);
* ``load``       ``load_dataset`` of the big data (read + validate; not part of either figure);
* ``baseline``   ``score_batch`` with ``reasons="none"``: scoring alone, the same chunks (``--chunk-size``);
* ``first``      ``evaluate_triggers`` into a fresh embedded store at as_of - 7 days (every customer's first
                 evaluation: all evaluation state inserted);
* ``daily``      ``evaluate_triggers`` at as_of (a day's run on a store with state and firings: the target);
* ``rerun``      the same evaluation again (nothing new may fire).

Inside the evaluations the library calls are timed: scoring (``score_dataset``), history facts, rule selection
(cool-downs, cap, control draw, item building) and the store's commits. Results go to ``<out>/triggers.md`` and
``<out>/triggers.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import GIB, code_version, cpu, machine_info, maxrss, write_report  # noqa: E402

NOW = datetime(2026, 1, 1)
TARGET_S_PER_MILLION = 60.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--model-customers", type=int, default=20_000)
    p.add_argument("--chunk-size", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--regenerate", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from features.validate import load_dataset
    from serving.policy import load_policy
    from serving.scoring import score_batch
    from serving.settings import ScoringSettings
    from serving.triggers import load_triggers

    stages: dict[str, dict] = {}
    data_dir, gen_s = _demo(out, args.customers, args.seed, args.regenerate)
    model_dir, _ = _demo(out, args.model_customers, args.seed, args.regenerate)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    as_of = datetime.fromisoformat(manifest["end"])

    with _stage(stages, "model"):
        model = _train(model_dir, out / f"triggers_model_{args.model_customers}_seed{args.seed}.pkl")
    with _stage(stages, "load"):
        data, rejects = load_dataset(data_dir, now=NOW)
    policy = load_policy()
    rules = load_triggers(policy=policy)

    with _stage(stages, "baseline") as r:
        settings = ScoringSettings(reasons="none", chunk_size=args.chunk_size)
        batch = score_batch(data, model, policy, settings, as_of=as_of, invalid_customer_ids=rejects["customer_id"])
        r["scored"] = len(batch.scores)
    del batch

    store_dir = out / "work" / f"triggers_store_{args.customers}"
    shutil.rmtree(store_dir, ignore_errors=True)
    from features.store import StoreSettings, open_store

    store = open_store(StoreSettings(path=store_dir), out)
    for name, when in (("first", as_of - timedelta(days=7)), ("daily", as_of), ("rerun", as_of)):
        with _stage(stages, name) as r:
            run, timers = _evaluate(data, model, rules, store, when, policy, args.chunk_size)
            r.update(
                evaluated=run.customers_evaluated,
                fired=run.items().num_rows,
                added=run.added,
                control=int(sum(c.control for c in run.rules.values())),
                per_rule={n: c.fired for n, c in run.rules.items()},
                parts=timers,
            )
        print(f"  {name}: {r['s']:.1f} s, fired {r['fired']:,} ({r['per_rule']})", flush=True)
    store.close()
    outbox_rows = stages["first"]["added"] + stages["daily"]["added"]
    catalog = store_dir / "catalog.sqlite"
    report = {
        "machine": machine_info(),
        "code": code_version(),
        "loadavg_end": os.getloadavg(),
        "config": {
            "customers": args.customers,
            "model_customers": args.model_customers,
            "chunk_size": args.chunk_size,
            "as_of": str(as_of),
            "data_rows": {k: v["rows"] for k, v in manifest["files"].items()},
            "generation_s": gen_s,
        },
        "stages": stages,
        "summary": {
            "daily_over_scoring": stages["daily"]["s"] / stages["baseline"]["s"],
            "daily_s_per_million": stages["daily"]["s"] * 1e6 / args.customers,
            "outbox_rows": outbox_rows,
            "catalog_mib": catalog.stat().st_size / 2**20 if catalog.exists() else None,
        },
        "targets": {"s_per_million": TARGET_S_PER_MILLION},
    }
    write_report(out, "triggers", report, _markdown(report))


def _demo(out: Path, customers: int, seed: int, regenerate: bool) -> tuple[Path, float | None]:
    from churnguard.demo import generate

    data_dir = out / f"triggers_demo_{customers}_seed{seed}"
    if (data_dir / "manifest.json").exists() and not regenerate:
        print(f"using cached demo data in {data_dir}", flush=True)
        return data_dir, None
    print(f"generating demo data: {customers:,} customers -> {data_dir}", flush=True)
    t = time.perf_counter()
    generate(data_dir, customers=customers, seed=seed, fmt="parquet")
    return data_dir, time.perf_counter() - t


def _train(model_dir: Path, cached: Path):
    """The model, trained once per (model customers, seed) and kept beside the data (set-up, not measured)."""
    import pickle

    if cached.exists():
        print(f"using the model trained earlier: {cached}", flush=True)
        return pickle.loads(cached.read_bytes())
    from churnguard.settings import Settings
    from features.validate import load_dataset
    from training.train import train

    data, _ = load_dataset(model_dir, now=NOW)
    settings = Settings(mlflow={"tracking_uri": None})
    model = train(data, settings.training, settings.labels, settings.features).model
    cached.write_bytes(pickle.dumps(model))
    return model


class _stage:
    """Wall and CPU seconds of one stage, with the process's peak RSS so far."""

    def __init__(self, stages: dict, name: str) -> None:
        self.stages, self.name, self.r = stages, name, {}

    def __enter__(self) -> dict:
        print(f"{self.name} ... (1-min load {os.getloadavg()[0]:.1f})", flush=True)
        self.t, self.c = time.perf_counter(), cpu()
        return self.r

    def __exit__(self, *exc) -> None:
        self.r.update(s=time.perf_counter() - self.t, cpu_s=cpu() - self.c, maxrss_gib=maxrss() / GIB)
        self.r["loadavg_1min_after"] = os.getloadavg()[0]
        self.stages[self.name] = self.r
        if exc[0] is None:
            print(f"  {self.name}: {self.r['s']:.1f} s wall, {self.r['cpu_s']:.1f} s CPU", flush=True)


def _evaluate(data, model, rules, store, when, policy, chunk_size):
    """``evaluate_triggers`` with its parts timed (the module's functions wrapped for the call)."""
    import serving.triggers as triggers

    totals: dict[str, float] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    originals = {n: getattr(triggers, n) for n in ("score_dataset", "history_facts", "_select", "entities_at")}
    for n, fn in originals.items():
        setattr(triggers, n, timed(n, fn))

    class Timed:
        def __getattr__(self, name):
            attr = getattr(store, name)
            return timed(f"store.{name}", attr) if callable(attr) else attr

    try:
        run = triggers.evaluate_triggers(data, model, rules, Timed(), when, policy=policy, chunk_size=chunk_size)
    finally:
        for n, fn in originals.items():
            setattr(triggers, n, fn)
    return run, {k: round(v, 2) for k, v in totals.items()}


def _markdown(report: dict) -> str:
    s, c, m = report["stages"], report["config"], report["summary"]
    rows = [
        "| stage | seconds | CPU s | peak RSS GiB | fired (control) | 1-min load after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("load", "baseline", "first", "daily", "rerun"):
        r = s[name]
        fired = f"{r['fired']:,} ({r['control']:,})" if "fired" in r else ""
        rows.append(
            f"| {name} | {r['s']:.1f} | {r['cpu_s']:.1f} | {r['maxrss_gib']:.2f} | {fired} | "
            f"{r['loadavg_1min_after']:.1f} |"
        )
    parts = "; ".join(f"{k} {v:.1f} s" for k, v in s["daily"]["parts"].items())
    return (
        f"# Trigger evaluation, {c['customers']:,} demo customers (as_of {c['as_of']}, chunks of {c['chunk_size']:,})"
        "\n\n" + "\n".join(rows) + "\n\n"
        f"daily run / scoring alone: {m['daily_over_scoring']:.2f}x; {m['daily_s_per_million']:.0f} s per million "
        f"customers at this rate (target {report['targets']['s_per_million']:.0f} s)\n\n"
        f"daily run's parts: {parts}\n\n"
        f"per rule (daily): {s['daily']['per_rule']}\n\n"
        f"outbox rows after two days: {m['outbox_rows']:,}; catalog {m['catalog_mib'] or 0:.1f} MiB\n"
    )


if __name__ == "__main__":
    main()
