"""API under load: 100 concurrent clients for 60 s against one client, same server, same run.

    uv run python benchmarks/bench_load.py [--clients 100] [--seconds 60] [--baseline-seconds 30] [--workers N]
                                           [--one-worker] [--out benchmarks/out]

The server is started the way `churn serve` starts it (``serving.launch.plan_launch``; workers default to the
machine's cores, an API key, the rate limiter and request ids on every request) on 127.0.0.1. Every client sends
the same single-customer POST /v1/score (~50 transactions, ~100 events, reasons on) in a loop on its own
keep-alive connection until the deadline: a bounded script, loopback only, that stops by itself. Reported per
phase: requests, errors (anything but a 200, or a transport error), throughput, p50 / p99 / max latency, and the
throughput ratio of the load phase to the single client (target: >= 1.6x on 2 cores, 0 errors).
``--one-worker`` adds the same load against a one-worker server, for comparison with round 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import BENCH_KEY, prepare, serve, stop  # noqa: E402


async def _client(url: str, body: bytes, deadline: float, latencies: list[float], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                r = await client.post(url, content=body)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append((time.perf_counter() - t) * 1000)


def run_phase(url: str, body: dict, clients: int, seconds: float) -> dict:
    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client(url, payload, deadline, latencies, errors) for _ in range(clients)))
        return time.perf_counter() - start

    load_before = os.getloadavg()[0]
    elapsed = asyncio.run(main())
    a = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests_ok": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(np.max(a)),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=None, help="default: the machine's cores, as churn serve")
    parser.add_argument("--threads", type=int, default=None, help="request threads per worker (serving.threads)")
    parser.add_argument("--one-worker", action="store_true", help="also load a one-worker server")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    body, _, data_dir = prepare(args.out)
    workers = args.workers or os.cpu_count() or 1
    url = "http://127.0.0.1:3721/v1/score"
    results: dict = {"machine": {"cores": os.cpu_count()}, "workers": workers, "threads": args.threads}
    proc, cold = serve(
        "ours", 3721, data_dir, args.out, workers=workers, log=args.out / "load_server.log", threads=args.threads
    )
    try:
        results["cold_start_s"] = cold
        run_phase(url, body, 1, 5)  # warm every worker's connection pool and caches
        run_phase(url, body, args.clients, 5)
        print(f"one client, {args.baseline_seconds:g} s ...", flush=True)
        results["one client"] = run_phase(url, body, 1, args.baseline_seconds)
        print(f"{args.clients} clients, {args.seconds:g} s ...", flush=True)
        results[f"{args.clients} clients"] = run_phase(url, body, args.clients, args.seconds)
    finally:
        stop(proc)
    if args.one_worker:
        proc, _ = serve(
            "ours", 3722, data_dir, args.out, workers=1, log=args.out / "load_server_1w.log", threads=args.threads
        )
        try:
            run_phase("http://127.0.0.1:3722/v1/score", body, args.clients, 5)
            print(f"{args.clients} clients on one worker, {args.seconds:g} s ...", flush=True)
            results[f"{args.clients} clients, 1 worker"] = run_phase(
                "http://127.0.0.1:3722/v1/score", body, args.clients, args.seconds
            )
        finally:
            stop(proc)

    base = results["one client"]["throughput_rps"]
    lines = [
        f"# API under load (POST /v1/score, one customer with {len(body['customers'][0]['transactions'])} "
        f"transactions + {len(body['customers'][0]['events'])} events, reasons on; {workers} workers, "
        f"{args.threads or 'default'} threads each)",
        "",
        f"Machine: {os.cpu_count()} cores; server cold start {cold:.1f} s. 1-minute load average before/after each "
        "phase is in the table: other jobs sharing the CPU lower every number, the ratio stays comparable.",
        "",
        "| phase | seconds | requests ok | errors | req/s | x one client | p50 ms | p99 ms | max ms | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        if isinstance(r, dict) and "throughput_rps" in r:
            lines.append(
                f"| {name} | {r['seconds']:.0f} | {r['requests_ok']:,} | {r['errors']} | {r['throughput_rps']:.1f} | "
                f"{r['throughput_rps'] / base:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | "
                f"{r['loadavg_1min_before']:.1f} -> {r['loadavg_1min_after']:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    (args.out / "load.md").write_text(text)
    (args.out / "load.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
