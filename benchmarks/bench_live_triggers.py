"""What live trigger evaluation adds to ``POST /v1/events``: the route's latency with ``serving.live_triggers`` on
against off, in the same run, on the same store; and how long a firing takes to reach the outbox.

    uv run python benchmarks/bench_live_triggers.py [--customers 100000] [--requests 1000] [--out benchmarks/out]

1. The demo business of ``--customers`` customers in an embedded store (``benchmarks/bench_api_store.py``: the same
   cached demo and store), the champion ``benchmarks/bench_api.py`` trains.
2. Two services as ``churn serve`` starts them (one worker each, on the same store): one with live evaluation off,
   one with it on (its background worker evaluates every customer a request touched).
3. Sequential keep-alive ``POST /v1/events`` from one client, each one new transaction + one new event for a
   different stored customer (cycling through 500: every request queues a customer, so the worker is busy all
   along, the worst case for the request threads it shares the process with). In alternating blocks, off, on,
   off, on, ``--requests / 2`` each; before each block the live worker's backlog is drained (``/readyz``).
4. Lag: 20 times, a new customer with a purchase 20 days ago and a ``cart_add`` 30 hours ago is posted to the
   live service, and ``GET /v1/outbox`` polled until its ``cart_abandoned`` item is there.
``--worker process``: the live service only queues (``serving.live_triggers_worker = process``) and a
``churn triggers --follow`` process of its own evaluates, as a deployment that keeps evaluation off the API runs it.
Output: ``<out>/live_triggers.md`` and ``<out>/live_triggers.json`` (``live_triggers_process.*`` with
``--worker process``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import BENCH_KEY, prepare, serve, stop  # noqa: E402
from benchmarks.bench_api_store import demo, fill, sample_ids  # noqa: E402
from benchmarks.common import latency_stats  # noqa: E402

OFF, ON = 3731, 3732


def backlog(client: httpx.Client) -> int:
    return client.get(f"http://127.0.0.1:{ON}/readyz").json()["pending_evaluations"]


def drain(client: httpx.Client, timeout_s: float = 600) -> float:
    """Seconds until the live worker's queue is empty."""
    t = time.perf_counter()
    while backlog(client) > 0:
        if time.perf_counter() - t > timeout_s:
            raise RuntimeError("the live worker did not drain its queue")
        time.sleep(0.05)
    return time.perf_counter() - t


def measure(ids: list[str], n: int, spaced: int) -> dict:
    run = uuid.uuid4().hex[:8]  # new rows on every run, even in a store kept from an earlier one
    start = datetime(2025, 12, 31)
    counter = iter(range(10**9))

    def body() -> dict:
        i = next(counter)
        customer, when = ids[i % len(ids)], (start - timedelta(seconds=i)).isoformat()
        return {
            "transactions": [{"customer_id": customer, "timestamp": when, "amount": 10.0, "order_id": f"b-{run}-{i}"}],
            "events": [{"customer_id": customer, "timestamp": when, "event_type": "session"}],
        }

    latencies: dict[str, list[float]] = {"off": [], "on": [], "off, spaced": [], "on, spaced": []}
    drains = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as client:
        for port in (OFF, ON):  # warm-up, both
            for _ in range(30):
                client.post(f"http://127.0.0.1:{port}/v1/events", json=body()).raise_for_status()
        for mode in ("off", "on", "off", "on"):
            drains.append(drain(client))
            port = ON if mode == "on" else OFF
            for _ in range(n // 2):
                payload = body()
                t = time.perf_counter()
                r = client.post(f"http://127.0.0.1:{port}/v1/events", json=payload)
                latencies[mode].append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                if r.json()["added"]["transactions"] != 1:
                    raise RuntimeError(f"expected one new row, got {r.json()}")
        backlog_after_on = backlog(client)
        drains.append(drain(client))
        # one request at a time into an idle worker: what the request path itself pays (the queue row)
        for mode in ("off", "on", "off", "on"):
            port = ON if mode == "on" else OFF
            for _ in range(spaced // 2):
                payload = body()
                t = time.perf_counter()
                r = client.post(f"http://127.0.0.1:{port}/v1/events", json=payload)
                latencies[f"{mode}, spaced"].append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                time.sleep(0.05)
                drain(client)  # the worker done with it (about serving.live_triggers_delay_s later)
        lag = []
        for i in range(20):
            cid = f"bench-live-{run}-{i}"
            now = datetime.utcnow()
            bought, cart = (now - timedelta(days=20)).isoformat(), (now - timedelta(hours=30)).isoformat()
            payload = {
                "transactions": [{"customer_id": cid, "timestamp": bought, "amount": 30.0}],
                "events": [{"customer_id": cid, "timestamp": cart, "event_type": "cart_add"}],
            }
            cursor = _last_seq(client)
            t = time.perf_counter()
            client.post(f"http://127.0.0.1:{ON}/v1/events", json=payload).raise_for_status()
            while not any(
                item["customer_id"] == cid
                for item in client.get(
                    f"http://127.0.0.1:{ON}/v1/outbox", params={"after": cursor, "limit": 100}
                ).json()["items"]
            ):
                if time.perf_counter() - t > 60:
                    raise RuntimeError("no firing within 60 s")
                time.sleep(0.005)
            lag.append((time.perf_counter() - t) * 1000)
    return {
        "POST /v1/events, live triggers off": latency_stats(latencies["off"]),
        "POST /v1/events, live triggers on": latency_stats(latencies["on"]),
        "POST /v1/events into an idle worker, live triggers off": latency_stats(latencies["off, spaced"]),
        "POST /v1/events into an idle worker, live triggers on": latency_stats(latencies["on, spaced"]),
        "backlog after the last on block": backlog_after_on,
        "drain_s before each block and at the end": [round(d, 2) for d in drains],
        "lag POST -> outbox item (ms)": latency_stats(lag),
    }


def _last_seq(client: httpx.Client) -> int:
    cursor = 0
    while True:
        page = client.get(f"http://127.0.0.1:{ON}/v1/outbox", params={"after": cursor, "limit": 1000}).json()
        cursor = page["next_after"]
        if not page["has_more"]:
            return cursor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--spaced", type=int, default=400, help="Requests one at a time into an idle worker.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--worker", choices=("service", "process"), default="service")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from features.store import StoreSettings

    _, _, data_dir = prepare(args.out)
    folder = demo(args.out, args.customers)
    path = args.out / f"store_{args.customers}"
    settings = StoreSettings(path=path)
    results: dict = {
        "machine": {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
        "customers": args.customers,
        "requests": args.requests,
        "store": fill(settings, Path(data_dir), folder),
    }
    ids = sample_ids(settings, Path(data_dir))
    env = {"CHURN_STORE__PATH": str(path)}
    off, _ = serve("ours", OFF, data_dir, args.out, env={**env, "CHURN_SERVING__LIVE_TRIGGERS": "false"},
                   log=args.out / "live_triggers_off.log")  # fmt: skip
    try:
        on_env = {**env, "CHURN_SERVING__LIVE_TRIGGERS": "true", "CHURN_SERVING__LIVE_TRIGGERS_WORKER": args.worker}
        on, _ = serve("ours", ON, data_dir, args.out, env=on_env, log=args.out / "live_triggers_on.log")
        follower = None
        if args.worker == "process":  # the evaluation in a process of its own, as `churn triggers --follow` runs
            environ = {k: v for k, v in os.environ.items() if not k.startswith("CHURN_")}
            environ.update({"CHURN_DATA_DIR": str(data_dir), **on_env})
            with open(args.out / "live_triggers_follow.log", "w") as log:
                follower = subprocess.Popen(
                    [sys.executable, "-m", "churnguard.cli", "triggers", "--follow"],
                    cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
        try:
            results.update(measure(ids, args.requests, args.spaced))
        finally:
            stop(on)
            if follower is not None:
                stop(follower)
    finally:
        stop(off)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    off_r, on_r = results["POST /v1/events, live triggers off"], results["POST /v1/events, live triggers on"]
    lag = results["lag POST -> outbox item (ms)"]
    off_s = results["POST /v1/events into an idle worker, live triggers off"]
    on_s = results["POST /v1/events into an idle worker, live triggers on"]

    def row(name: str, r: dict) -> list[str]:
        return [f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['max_ms']:.1f} |"]

    def added(off: dict, on: dict) -> list[str]:
        return [
            f"| added by live evaluation | {on['p50_ms'] - off['p50_ms']:+.1f} | {on['p99_ms'] - off['p99_ms']:+.1f} "
            f"| {on['mean_ms'] - off['mean_ms']:+.1f} | |"
        ]

    lines = [
        f"# Live trigger evaluation and POST /v1/events ({args.customers:,} demo customers, embedded store; "
        f"{args.requests:,} sequential requests, alternating blocks; evaluated in: "
        f"{'the service' if args.worker == 'service' else 'a churn triggers --follow process'})",
        "",
        f"Machine: {os.cpu_count()} cores, shared with other jobs; 1-minute load average "
        f"{results['machine']['load_average_at_start']:.1f} at start, {results['machine']['load_average_at_end']:.1f} "
        "at the end.",
        "",
        "| POST /v1/events | p50 ms | p99 ms | mean ms | max ms |",
        "|---|---:|---:|---:|---:|",
        *row("back to back, live triggers off", off_r),
        *row("back to back, live triggers on", on_r),
        *added(off_r, on_r),
        *row(f"one at a time into an idle worker ({args.spaced // 2:,} each), off", off_s),
        *row("one at a time into an idle worker, on", on_s),
        *added(off_s, on_s),
        "",
        f"Lag from POST to the cart_abandoned item in the outbox (20 new customers, one at a time): p50 "
        f"{lag['p50_ms']:.0f} ms, max {lag['max_ms']:.0f} ms. Backlog after the last live block: "
        f"{results['backlog after the last on block']} customers.",
    ]
    text = "\n".join(lines) + "\n"
    name = "live_triggers" if args.worker == "service" else "live_triggers_process"
    (args.out / f"{name}.md").write_text(text)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
