"""Model-health benchmark: what ``churn monitor`` (and the report's model-health section) costs, against the
scoring pass it watches, measured in the same run.

    uv run python benchmarks/bench_monitor.py [--customers 100000] [--max-training-rows 100000] [--out DIR]

Stages, in one process on one validated demo dataset (generated once into ``<out>/demo-<n>``):

* ``train``      ``training.train.train`` with the default settings but at most ``--max-training-rows`` snapshot
                 rows (the model is only the subject here; its time is context);
* ``reference``  ``training.drift.drift_reference`` on the reference snapshot again: what recording the drift
                 reference adds to training;
* ``baseline``   the floor of a scoring run: ``build_features`` for every customer at as_of + the classifier's
                 ``predict_proba`` on the scorable rows;
* ``health``     ``model.monitoring.model_health`` at as_of (default settings: a sample of at most 200,000
                 customers per date; drift at as_of, predicted vs observed at as_of - H).

Wall and CPU seconds per stage and the ratio health / baseline go to ``<out>/monitor.md`` and ``monitor.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import code_version, machine_info  # noqa: E402 - after the sys.path set-up


def timed(results: dict, name: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    results[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    print(f"{name}: {results[name]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--max-training-rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "monitor")
    args = parser.parse_args()

    import os

    from churnguard.demo import generate
    from churnguard.settings import Settings
    from features.build import build_features, entities_at
    from features.validate import load_dataset
    from model.monitoring import model_health
    from training.drift import drift_reference, reference_date
    from training.train import train

    args.out.mkdir(parents=True, exist_ok=True)
    demo = args.out / f"demo-{args.customers}"
    if not (demo / "transactions.parquet").exists():
        print(f"generating {args.customers:,} demo customers into {demo} ...", flush=True)
        generate(demo, customers=args.customers, seed=42, fmt="parquet")
    settings = Settings(
        data_dir=args.out / "data",
        mlflow={"tracking_uri": None},
        training={"max_training_rows": args.max_training_rows, "production_max_rows": args.max_training_rows},
    )
    results: dict = {}
    data, _ = timed(results, "load", lambda: load_dataset(demo, now=datetime(2030, 1, 1)))
    result = timed(results, "train", lambda: train(data, settings.training, settings.labels, settings.features))
    model, production = result.model, result.production
    when = reference_date(production.fit_dates, production.calibration_dates)
    rows = result.frame.at([when])
    timed(results, "reference", lambda: drift_reference(rows, production.classifier, when))
    end = data.data_end
    as_of = datetime(end.year, end.month, end.day) + timedelta(days=1)

    def baseline():
        feats = build_features(data, entities_at(data, as_of), event_types=model.event_types).to_pandas()
        scorable = feats[feats["frequency"] >= 1]
        return model.classifier.predict_proba(scorable)

    timed(results, "baseline", baseline)
    health = timed(results, "health", lambda: model_health(data, model, as_of=as_of, settings=settings.monitor))
    ratio = {
        "health_over_baseline_wall": round(results["health"]["wall_s"] / results["baseline"]["wall_s"], 2),
        "reference_over_train_wall": round(results["reference"]["wall_s"] / results["train"]["wall_s"], 4),
    }
    report = {
        "customers": args.customers,
        "max_training_rows": args.max_training_rows,
        "reference_rows": len(rows),
        "health_customers": health.customers,
        "health_status": health.status,
        "worst": health.worst.name if health.worst else None,
        "worst_psi": health.worst.psi if health.worst else None,
        "loadavg_at_end": os.getloadavg()[0],
        "stages": results,
        "ratios": ratio,
        "machine": machine_info(),
        "code": code_version(),
    }
    (args.out / "monitor.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# Model-health benchmark, {args.customers:,} demo customers",
        "",
        "| stage | wall s | CPU s |",
        "|---|---|---|",
        *(f"| {k} | {v['wall_s']} | {v['cpu_s']} |" for k, v in results.items()),
        "",
        f"health / baseline (wall): {ratio['health_over_baseline_wall']}; reference / train (wall): "
        f"{ratio['reference_over_train_wall']}; reference rows {len(rows):,}; health on {health.customers:,} "
        f"customers: {health.status} (worst {report['worst']} {report['worst_psi']:.3f}); "
        f"1-min load average at the end {report['loadavg_at_end']:.1f}",
    ]
    (args.out / "monitor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
