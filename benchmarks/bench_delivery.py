"""Webhook delivery throughput: ``deliver_once`` over an outbox against bare signed POSTs, in the same run.

    uv run python benchmarks/bench_delivery.py [--items 2000] [--latency-ms 0 --latency-ms 50] [--concurrency 1 4]

A receiver on loopback (``http.server``, one thread per request, in this process) answers 204 after
``--latency-ms``. For each latency and concurrency:

* ``baseline``  the same signed bodies POSTed with the same ``WebhookSender`` from a thread pool, no store: the
                ceiling set by HTTP and signing (after 100 warm-up requests);
* ``deliver``   ``deliver_once`` passes over a fresh embedded store holding ``--items`` pending items until none
                is due: reading due items, sending, and recording each outcome (one store transaction per item).

Reports items per second and ``deliver / baseline``. Sender and receiver share this process and the machine's cores.
Results: ``<out>/delivery.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import code_version, machine_info, write_report  # noqa: E402
from features.store import StoreSettings, open_store  # noqa: E402
from features.store.outbox import items_table, outbox_id  # noqa: E402
from serving.settings import DeliverySettings  # noqa: E402
from serving.webhooks import WebhookSender, deliver_once  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


def receiver(latency_s: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            if latency_s:
                time.sleep(latency_s)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hooks"


def items(n: int, fired: datetime) -> list[dict]:
    rows = []
    for i in range(n):
        customer, as_of = f"c{i:07d}", datetime(2025, 3, 1)
        rows.append(
            {
                "id": outbox_id("cart_abandoned", customer, as_of),
                "customer_id": customer,
                "rule": "cart_abandoned",
                "action": "cart_reminder",
                "fired_at": fired,
                "as_of": as_of,
                "fields": json.dumps({"hours_since_cart_add": 30.5, "risk_tier": "high"}),
                "control": False,
            }
        )
    return rows


def baseline(settings: DeliverySettings, rows: list[dict]) -> float:
    sender = WebhookSender(settings)
    full = [{**r, "seq": i + 1, "attempts": 0} for i, r in enumerate(rows)]
    with ThreadPoolExecutor(settings.concurrency) as pool:  # warm-up: connections, threads, code paths
        list(pool.map(sender.send, full[:100]))
    started = time.perf_counter()
    with ThreadPoolExecutor(settings.concurrency) as pool:
        results = list(pool.map(sender.send, full))
    elapsed = time.perf_counter() - started
    sender.close()
    assert all(a.ok for a in results), [a.error for a in results if not a.ok][:3]
    return elapsed


def deliver(settings: DeliverySettings, rows: list[dict], folder: Path) -> float:
    store = open_store(StoreSettings(path=folder), folder)
    store.add_outbox(items_table(rows))
    sender = WebhookSender(settings)
    started = time.perf_counter()
    delivered = 0
    while True:
        result = deliver_once(store, settings, sender=sender)
        delivered += result.delivered
        if not result.attempted:
            break
    elapsed = time.perf_counter() - started
    sender.close()
    store.close()
    assert delivered == len(rows), delivered
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, action="append")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    latencies = args.latency_ms or [0.0, 50.0]
    args.out.mkdir(parents=True, exist_ok=True)
    fired = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
    rows = items(args.items, fired)
    results = []
    for latency in latencies:
        server, url = receiver(latency / 1000)
        for c in args.concurrency:
            settings = DeliverySettings(webhook_url=url, secret=SECRET, concurrency=c, batch=500, timeout_s=30)
            base = baseline(settings, rows)
            with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
                took = deliver(settings, rows, Path(tmp))
            row = {
                "latency_ms": latency,
                "concurrency": c,
                "items": len(rows),
                "baseline_items_per_s": len(rows) / base,
                "deliver_items_per_s": len(rows) / took,
                "ratio": base / took,
            }
            print(row, flush=True)
            results.append(row)
        server.shutdown()
        server.server_close()
    lines = [
        "| receiver latency | concurrency | items | bare signed POSTs (items/s) | deliver_once (items/s) "
        "| deliver / bare |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['latency_ms']:g} ms | {r['concurrency']} | {r['items']:,} | {r['baseline_items_per_s']:,.0f} | "
        f"{r['deliver_items_per_s']:,.0f} | {r['ratio']:.2f} |"
        for r in results
    ]
    report = {"results": results, "machine": machine_info(), "code": code_version()}
    write_report(args.out, "delivery", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
