"""Store-route latency: ``GET /v1/customers/{id}/score`` and ``POST /v1/events`` for one customer, one client,
against the bare BentoML booster service measured in the same run (``benchmarks/bare_service.py``).

    uv run python benchmarks/bench_api_store.py [--customers 100000] [--backend embedded|postgres|both]
                                                [--requests 1000] [--out benchmarks/out] [--port 3721]
                                                [--baseline DIR]

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
   * the bare booster on a ready feature row, in the same run;
   * with ``--baseline DIR``: the same routes on the service as another checkout's code runs it (same store, same
     model), each request interleaved with ours, so both see the same machine (a before/after in one run).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import BENCH_KEY, prepare, serve, stop  # noqa: E402
from benchmarks.common import latency_stats  # noqa: E402

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
    return timed_side_by_side(n, {"one": call}, warm)["one"]


def timed_side_by_side(n: int, calls: dict[str, Callable[[int], httpx.Response]], warm: int = 50) -> dict:
    """``timed`` for several services at once, their requests interleaved (the order alternating), so a change in
    the machine's load falls on each of them alike."""
    names = list(calls)
    for i in range(warm):
        for name in names:
            calls[name](i).raise_for_status()
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            r = calls[name](warm + i)
            latencies[name].append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
    return {name: latency_stats(v) for name, v in latencies.items()}


def measure_store_routes(ports: dict[str, int], ids: list[str], n: int) -> dict[str, dict]:
    """Each route on each service (``ports``: name -> port), interleaved; results by service name."""
    out: dict[str, dict] = {name: {} for name in ports}
    start = datetime(2025, 12, 31)
    customer = ids[0]
    run = uuid.uuid4().hex[:8]  # new rows on every run, even in a store kept from an earlier one
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as client:

        def event_body(name: str, i: int) -> dict:
            when = (start - timedelta(seconds=i)).isoformat()
            order = f"bench-{run}-{name}-{i}"
            return {
                "transactions": [{"customer_id": customer, "timestamp": when, "amount": 10.0, "order_id": order}],
                "events": [{"customer_id": customer, "timestamp": when, "event_type": "session"}],
            }

        def post_new(name: str, i: int) -> httpx.Response:
            r = client.post(f"http://127.0.0.1:{ports[name]}/v1/events", json=event_body(name, i))
            if r.status_code == 200 and r.json()["added"]["transactions"] != 1:
                raise RuntimeError(f"expected one new row, got {r.json()}")
            return r

        def lookup(name: str, i: int, **params: str) -> httpx.Response:
            return client.get(f"http://127.0.0.1:{ports[name]}/v1/customers/{ids[i % len(ids)]}/score", params=params)

        same = {name: event_body(name, 0) for name in ports}
        routes: dict[str, Callable[[str, int], httpx.Response]] = {
            "GET /v1/customers/{id}/score": lookup,
            "GET /v1/customers/{id}/score?reasons=false": lambda name, i: lookup(name, i, reasons="false"),
            "POST /v1/events (1 transaction + 1 event, new)": post_new,
            "POST /v1/events (the same body again: adds 0)": lambda name, i: client.post(
                f"http://127.0.0.1:{ports[name]}/v1/events", json=same[name]
            ),
        }
        for route, call in routes.items():
            measured = timed_side_by_side(n, {name: (lambda i, name=name, call=call: call(name, i)) for name in ports})
            for name, stats in measured.items():
                out[name][route] = stats
        for name, port in ports.items():
            check = client.get(f"http://127.0.0.1:{port}/v1/customers/{customer}/score").json()
            out[name]["after"] = {"customer": customer, "scored": bool(check.get("scores"))}
    return out


def run_backend(name: str, store_env: dict[str, str], settings, args, data_dir: str, folder: Path) -> dict:
    result: dict = {"store": fill(settings, Path(data_dir), folder)}
    ids = sample_ids(settings, Path(data_dir))
    procs = {}
    try:
        ports = {"ours": args.port}
        procs["ours"], result["cold_start_s"] = serve(
            "ours", args.port, data_dir, args.out, env=store_env, log=args.out / f"api_store_{name}.log"
        )
        if args.baseline:
            ports["baseline"] = args.port + 2
            procs["baseline"], result["baseline_cold_start_s"] = serve(
                "ours",
                ports["baseline"],
                data_dir,
                args.out,
                env=store_env,
                log=args.out / f"api_store_{name}_baseline.log",
                code=args.baseline,
            )
        measured = measure_store_routes(ports, ids, args.requests)
        result.update(measured["ours"])
        if args.baseline:
            result["baseline"] = measured["baseline"]
    finally:
        for proc in procs.values():
            stop(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--backend", choices=["embedded", "postgres", "both"], default="embedded")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--port", type=int, default=3721, help="our service's port; the bare one listens on the next")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also serve this checkout's code (e.g. `git archive main | tar -x -C DIR`) on --port + 2, on the same "
        "store and model, its requests interleaved with ours: a before/after in one run",
    )
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
        for label, measured in ((name, results[name]), (f"{name}, baseline code", results[name].get("baseline", {}))):
            for route, r in measured.items():
                if isinstance(r, dict) and "p50_ms" in r:
                    lines.append(
                        f"| {label} | {route} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | "
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
