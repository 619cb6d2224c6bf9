"""Store-route latency: ``GET /v1/customers/{id}/score`` and ``POST /v1/events`` for one customer, one client,
against the bare BentoML booster service measured in the same run (``benchmarks/bare_service.py``).

    uv run python benchmarks/bench_api_store.py [--customers 100000] [--backend embedded|postgres|both]
                                                [--requests 1000] [--out benchmarks/out] [--port 3721]

1. The demo business of ``--customers`` customers (``churnguard.demo.generate``, cached under ``<out>``) is
   ingested into a store of its own (embedded under ``<out>/store_<N>``, kept between runs; PostgreSQL: a
   throwaway server with the server's default durability, from ``tests/postgres.py``), timed.
2. The model: the champion ``benchmarks/bench_api.py`` trains on a 5,000-customer demo (the store's size does not
   change the model's cost).
3. Our service as ``churn serve`` starts it (one worker, an API key, the rate limiter and request ids on the path),
   then, sequential keep-alive requests from one client:
   * ``GET /v1/customers/{id}/score`` at now, with reasons and with ``reasons=false``, cycling through 500 random
     stored customers (a different customer on each request, so no cache of one customer helps);
   * ``POST /v1/events``: one new transaction and one new event for one customer (new rows each time: a write
     on every request), then the same body again (a retry: nothing added);
   * the bare booster on a ready feature row, in the same run.
Output: ``<out>/api_store.md`` and ``<out>/api_store.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import BENCH_KEY, prepare, serve, stop  # noqa: E402

NOW = datetime(2026, 1, 1)


def demo(out: Path, customers: int) -> Path:
    from churnguard.demo import generate

    folder = out / f"demo_store_{customers}"
    if not (folder / "manifest.json").exists():
        print(f"generating {customers:,} demo customers ...", flush=True)
        generate(folder, customers=customers, seed=11, fmt="parquet")
    return folder


def fill(settings, data_dir: Path, folder: Path) -> dict:
    """Ingest the demo into the store unless it holds it already; (seconds, rows, customers)."""
    from features.store import ingest, open_store

    store = open_store(settings, data_dir)
    try:
        if store.batches():
            return {"ingest_s": None, "note": "store filled by an earlier run"}
        print(f"ingesting {folder} into {store.location} ...", flush=True)
        t = time.perf_counter()
        result = ingest(store, folder, now=NOW)
        return {"ingest_s": round(time.perf_counter() - t, 1), "added": result.added}
    finally:
        store.close()


def sample_ids(settings, data_dir: Path, n: int = 500) -> list[str]:
    from features.store import open_store

    store = open_store(settings, data_dir)
    try:
        ids = store.customer_ids().to_pylist()
    finally:
        store.close()
    return random.Random(5).sample(ids, min(n, len(ids)))


def timed(n: int, call: Callable[[int], httpx.Response], warm: int = 50) -> dict:
    for i in range(warm):
        call(i).raise_for_status()
    latencies = []
    for i in range(n):
        t = time.perf_counter()
        r = call(warm + i)
        latencies.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    a = np.array(latencies)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
        "n": n,
    }


def measure_store_routes(port: int, ids: list[str], n: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    out: dict = {}
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as client:
        out["GET /v1/customers/{id}/score"] = timed(
            n, lambda i: client.get(f"{base}/v1/customers/{ids[i % len(ids)]}/score")
        )
        out["GET /v1/customers/{id}/score?reasons=false"] = timed(
            n, lambda i: client.get(f"{base}/v1/customers/{ids[i % len(ids)]}/score", params={"reasons": "false"})
        )
        start = datetime(2025, 12, 31)
        customer = ids[0]
        run = uuid.uuid4().hex[:8]  # new rows on every run, even in a store kept from an earlier one

        def event_body(i: int) -> dict:
            when = (start - timedelta(seconds=i)).isoformat()
            order = f"bench-{run}-{i}"
            return {
                "transactions": [{"customer_id": customer, "timestamp": when, "amount": 10.0, "order_id": order}],
                "events": [{"customer_id": customer, "timestamp": when, "event_type": "session"}],
            }

        def post_new(i: int) -> httpx.Response:
            r = client.post(f"{base}/v1/events", json=event_body(i))
            if r.status_code == 200 and r.json()["added"]["transactions"] != 1:
                raise RuntimeError(f"expected one new row, got {r.json()}")
            return r

        out["POST /v1/events (1 transaction + 1 event, new)"] = timed(n, post_new)
        same = event_body(0)
        out["POST /v1/events (the same body again: adds 0)"] = timed(
            n, lambda i: client.post(f"{base}/v1/events", json=same)
        )
        check = client.get(f"{base}/v1/customers/{customer}/score").json()
        out["after"] = {"customer": customer, "scored": bool(check.get("scores"))}
    return out


def run_backend(name: str, store_env: dict[str, str], settings, args, data_dir: str, folder: Path) -> dict:
    result: dict = {"store": fill(settings, Path(data_dir), folder)}
    ids = sample_ids(settings, Path(data_dir))
    port = args.port
    proc, cold = serve("ours", port, data_dir, args.out, env=store_env, log=args.out / f"api_store_{name}.log")
    try:
        result["cold_start_s"] = cold
        result.update(measure_store_routes(port, ids, args.requests))
    finally:
        stop(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--backend", choices=["embedded", "postgres", "both"], default="embedded")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--port", type=int, default=3721, help="our service's port; the bare one listens on the next")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from features.store import StoreSettings

    _, row, data_dir = prepare(args.out)
    folder = demo(args.out, args.customers)
    results: dict = {
        "machine": {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
        "customers": args.customers,
        "requests": args.requests,
    }
    backends = ["embedded", "postgres"] if args.backend == "both" else [args.backend]
    for name in backends:
        if name == "embedded":
            path = args.out / f"store_{args.customers}"
            results[name] = run_backend(
                name, {"CHURN_STORE__PATH": str(path)}, StoreSettings(path=path), args, data_dir, folder
            )
        else:
            from tests.postgres import postgres_cluster

            with postgres_cluster(durable=True) as url:
                results[name] = run_backend(
                    name, {"CHURN_STORE__URL": url}, StoreSettings(url=url), args, data_dir, folder
                )
        print(json.dumps(results[name], indent=1), flush=True)
    bare_port = args.port + 1
    bare, cold = serve("benchmarks.bare_service:BareBooster", bare_port, data_dir, args.out)
    try:
        with httpx.Client(timeout=30) as client:
            bare_url = f"http://127.0.0.1:{bare_port}/predict"
            results["bare"] = {
                **timed(args.requests, lambda i: client.post(bare_url, json={"features": row})),
                "cold_start_s": cold,
            }
    finally:
        stop(bare)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]

    base = results["bare"]
    lines = [
        f"# Store routes ({args.customers:,} demo customers in the store; {args.requests:,} sequential keep-alive "
        "requests per row, one client)",
        "",
        f"Machine: {os.cpu_count()} cores, shared with other jobs; 1-minute load average "
        f"{results['machine']['load_average_at_start']:.1f} at start, {results['machine']['load_average_at_end']:.1f} "
        "at the end.",
        "",
        "| store | route | p50 ms | p99 ms | mean ms | p50 / bare | p99 / bare |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in backends:
        ingest_s = results[name]["store"].get("ingest_s")
        for route, r in results[name].items():
            if isinstance(r, dict) and "p50_ms" in r:
                lines.append(
                    f"| {name} | {route} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | "
                    f"{r['p50_ms'] / base['p50_ms']:.1f}x | {r['p99_ms'] / base['p99_ms']:.1f}x |"
                )
        if ingest_s is not None:
            lines.append(f"| {name} | (ingest of the demo, {ingest_s:.0f} s) | | | | | |")
    lines.append(
        f"| - | bare BentoML + LightGBM booster | {base['p50_ms']:.1f} | {base['p99_ms']:.1f} | "
        f"{base['mean_ms']:.1f} | 1.0x | 1.0x |"
    )
    text = "\n".join(lines) + "\n"
    (args.out / "api_store.md").write_text(text)
    (args.out / "api_store.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
