"""API latency: single-customer POST /v1/score (~50 transactions, ~100 events) against a bare BentoML service that
only runs the LightGBM booster on a ready feature row, 1,000 sequential keep-alive requests each, same run.

    uv run python benchmarks/bench_api.py [--requests 1000] [--out benchmarks/out]

Our service runs as `churn serve` starts it (``serving.launch.plan_launch``: `python -m bentoml serve`, an API key,
the rate limiter and request ids on the path), one worker here so both services get the same share of the
machine; the bare one with `bentoml serve`. Both use the same champion model (trained here on demo data into a
private MLflow store). Reported: cold start to /readyz, p50 / p99 / mean latency, and the p50 ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import latency_stats  # noqa: E402


def prepare(out: Path) -> tuple[dict, list[float | None], str]:
    """Demo data, a trained champion, and one request: a customer with ~50 transactions and ~100 events."""
    import pyarrow.compute as pc

    from churnguard.demo import generate
    from churnguard.settings import Settings
    from features.build import as_entities, build_features
    from features.validate import load_dataset
    from training.tracking import log_training
    from training.train import train

    demo = out / "api_demo"
    if not (demo / "manifest.json").exists():
        generate(demo, customers=5000, seed=11, fmt="parquet")
    data, _ = load_dataset(demo, now=datetime(2026, 1, 1))
    settings = Settings(data_dir=out / "api_store")
    if not (settings.data_dir / "mlflow.db").exists():
        result = train(data, settings.training, settings.labels, settings.features, run_backtest=False)
        log_training(result, settings.mlflow)

    as_of = datetime(2024, 12, 1)
    tx_counts = pc.value_counts(data.transactions["customer_id"]).to_pylist()
    customer = min(tx_counts, key=lambda c: abs(c["counts"] - 50))["values"]

    def rows(t, cols):
        records = t.filter(pc.equal(t["customer_id"], customer)).select(cols).to_pylist()
        return [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items() if v is not None}
            for r in records
        ]

    transactions = rows(
        data.transactions, ["timestamp", "amount", "order_id", "quantity", "product_id", "category", "channel"]
    )[:50]
    events = rows(data.events, ["timestamp", "event_type"])
    events = (events * (100 // max(len(events), 1) + 1))[:100] if events else []
    body = {
        "customers": [{"customer_id": customer, "transactions": transactions, "events": events}],
        "as_of": as_of.date().isoformat(),
    }
    feats = build_features(data, as_entities([customer], as_of)).to_pylist()[0]
    from model.registry import load_model

    model = load_model(settings.mlflow)
    row = [feats[f] for f in model.classifier.features]
    return body, row, str(settings.data_dir.resolve())


BENCH_KEY = "bench-key"


def serve(
    target: str,
    port: int,
    data_dir: str,
    out: Path,
    workers: int = 1,
    log: Path | None = None,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    code: Path = ROOT,
) -> tuple[subprocess.Popen, float]:
    """Our service exactly as `churn serve` launches it (with an API key); the bare service with `bentoml serve`.
    ``code``: the checkout whose code is served (e.g. a baseline's, for a before/after in one run)."""
    from churnguard.settings import Settings
    from serving.launch import plan_launch

    overrides = {
        "port": port,
        "host": "127.0.0.1",
        "workers": workers,
        "api_keys": {"bench": BENCH_KEY},
        "rate_limit_per_minute": 10_000_000,
        "rate_limit_burst": 10_000,
    }
    settings = Settings(data_dir=Path(data_dir), serving=overrides)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHURN_")}
    environ["CHURN_SERVING__API_KEYS"] = json.dumps({"bench": BENCH_KEY})
    environ["CHURN_SERVING__RATE_LIMIT_PER_MINUTE"] = "10000000"
    environ["CHURN_SERVING__RATE_LIMIT_BURST"] = "10000"
    environ["BENTOML_HOME"] = str(out / "api_bentoml")
    if threads:
        environ["CHURN_SERVING__THREADS"] = str(threads)
    environ.update(env or {})  # e.g. the customer store's settings (benchmarks/bench_api_store.py)
    plan = plan_launch(
        settings.serving,
        settings.scoring,
        settings.mlflow,
        data_dir=settings.data_dir,
        model_uri=settings.model_uri,
        environ=environ,
    )
    argv = plan.argv if target == "ours" else [*plan.argv[:4], target, *plan.argv[5:]]
    start = time.perf_counter()
    sink = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(argv, cwd=code, env=plan.env, stdout=sink, stderr=subprocess.STDOUT)
    for _ in range(6000):
        if proc.poll() is not None:
            raise RuntimeError(f"{target} exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{target} did not become ready")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM: BentoML stops its workers and frees the port (tests/test_served.py checks it)."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(url: str, body: dict, n: int) -> dict:
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as client:
        for _ in range(50):
            client.post(url, json=body).raise_for_status()
        latencies = []
        for _ in range(n):
            t = time.perf_counter()
            r = client.post(url, json=body)
            latencies.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
    return latency_stats(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    body, row, data_dir = prepare(args.out)
    results: dict = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "request": {
            "transactions": len(body["customers"][0]["transactions"]),
            "events": len(body["customers"][0]["events"]),
        },
    }
    ours, ours_start = serve("ours", 3711, data_dir, args.out)
    try:
        results["churnguard /v1/score (with reasons)"] = {
            **measure("http://127.0.0.1:3711/v1/score", body, args.requests),
            "cold_start_s": ours_start,
        }
        results["churnguard /v1/score (reasons=false)"] = measure(
            "http://127.0.0.1:3711/v1/score", {**body, "reasons": False}, args.requests
        )
    finally:
        stop(ours)
    bare, bare_start = serve("benchmarks.bare_service:BareBooster", 3712, data_dir, args.out)
    try:
        results["bare BentoML + LightGBM booster"] = {
            **measure("http://127.0.0.1:3712/predict", {"features": row}, args.requests),
            "cold_start_s": bare_start,
        }
    finally:
        stop(bare)
    base = results["bare BentoML + LightGBM booster"]["p50_ms"]
    lines = [
        f"# API latency ({args.requests:,} sequential requests, keep-alive; "
        f"{results['request']['transactions']} transactions + {results['request']['events']} events)",
        "",
        f"Machine: {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}.",
        "",
        "| service | p50 ms | p99 ms | mean ms | p50 / bare | cold start s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if "p50_ms" in r:
            lines.append(
                f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | "
                f"{r['p50_ms'] / base:.1f}x | {r.get('cold_start_s', float('nan')):.1f} |"
            )
    text = "\n".join(lines) + "\n"
    (args.out / "api.md").write_text(text)
    (args.out / "api.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
