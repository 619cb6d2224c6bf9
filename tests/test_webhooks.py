"""Webhook delivery of the trigger outbox against a real HTTP receiver on loopback (``http.server`` in a thread):
signatures checked with the Standard Webhooks reference implementation, retries with back-off, dead letter,
timeouts, control items never sent, delivered items never sent again; on both store backends."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from features.store import StoreSettings, open_store
from features.store.outbox import items_table, outbox_id
from serving.settings import DeliverySettings
from serving.webhooks import (
    EVENT_TYPE,
    DeliveryError,
    WebhookSender,
    backoff_s,
    deliver_once,
    payload,
    run_delivery,
    signature,
    single_deliverer,
)
from tests.postgres import new_database

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 24).decode()


class Receiver:
    """A CRM stand-in: records every request; answers by a per-call rule."""

    def __init__(self, answer):
        self.answer = answer  # (call number, request) -> (status, headers) or "hang"
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends hanging requests at teardown
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    n = len(receiver.requests)
                    request = {"headers": dict(self.headers.items()), "body": body}
                    receiver.requests.append(request)
                reply = receiver.answer(n, request)
                if reply == "hang":
                    receiver.release.wait(30)
                    return
                status, headers = reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        return [r["headers"]["webhook-id"] for r in self.requests]


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(answer):
        made.append(Receiver(answer))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(params=["embedded", "postgres"])
def store(request, tmp_path):
    if request.param == "embedded":
        settings = StoreSettings(path=tmp_path / "store")
    else:
        settings = StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "hooks"))
    s = open_store(settings, tmp_path)
    yield s
    s.close()


class Clock:
    """The scheduling clock, moved by hand (signature time stamps stay on the real clock)."""

    def __init__(self):
        self.now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        self.now += timedelta(seconds=seconds)


def fill(store, n: int, *, controls: int = 0, fired: datetime) -> list[str]:
    """n treated items then `controls` control items; returns the treated ids in outbox order."""
    rows = []
    for i in range(n + controls):
        customer, as_of = f"c{i:03d}", datetime(2025, 3, 1)
        rows.append(
            {
                "id": outbox_id("cart_abandoned", customer, as_of),
                "customer_id": customer,
                "rule": "cart_abandoned",
                "action": "cart_reminder",
                "fired_at": fired,
                "as_of": as_of,
                "fields": json.dumps({"hours_since_cart_add": 30.5 + i, "risk_tier": "high"}),
                "control": i >= n,
            }
        )
    store.add_outbox(items_table(rows))
    return [r["id"] for r in rows[:n]]


def settings(url: str, **kw) -> DeliverySettings:
    base = {"webhook_url": url, "secret": SECRET, "backoff_base_s": 30, "backoff_jitter": 0, "timeout_s": 5}
    return DeliverySettings(**{**base, **kw})


def outbox(store) -> dict[str, dict]:
    return {r["id"]: r for r in store.outbox_after(0, 10_000).to_pylist()}


def verify_all(receiver: Receiver, secret: str = SECRET) -> list[dict]:
    """Every request passes the reference verifier; returns the parsed bodies."""
    hook = Webhook(secret)
    return [hook.verify(r["body"], r["headers"]) for r in receiver.requests]


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.slow  # serves HTTP
def test_fails_first_then_delivers_with_backoff_and_valid_signatures(store, receivers):
    clock = Clock()
    ids = fill(store, 3, controls=2, fired=clock.now - timedelta(minutes=1))
    rx = receivers(lambda n, _: (500, {}) if n < 5 else (200, {}))  # the first 5 calls fail
    s = settings(rx.url, concurrency=1)

    first = deliver_once(store, s, clock=clock)
    assert (first.attempted, first.delivered, first.retrying) == (3, 0, 3)
    items = outbox(store)
    for i in ids:
        assert items[i]["state"] == "pending" and items[i]["attempts"] == 1
        assert items[i]["next_attempt_at"] == clock.now + timedelta(seconds=30)
        assert items[i]["last_error"].startswith("HTTP 500")
    assert deliver_once(store, s, clock=clock).attempted == 0  # nothing due yet
    clock.advance(30)
    second = deliver_once(store, s, clock=clock)  # calls 3, 4 fail, call 5 succeeds
    assert (second.attempted, second.delivered, second.retrying) == (3, 1, 2)
    retried = [i for i in ids if outbox(store)[i]["state"] == "pending"]
    assert all(outbox(store)[i]["next_attempt_at"] == clock.now + timedelta(seconds=60) for i in retried)
    clock.advance(60)
    assert deliver_once(store, s, clock=clock).delivered == 2
    items = outbox(store)
    assert all(items[i]["state"] == "delivered" and items[i]["next_attempt_at"] is None for i in ids)
    assert sorted(items[i]["attempts"] for i in ids) == [2, 3, 3]
    assert [items[i]["state"] for i in items if i not in ids] == ["control", "control"]

    bodies = verify_all(rx)  # raises on any bad signature
    assert len(bodies) == 8 and set(rx.ids()) == set(ids)  # only treated items, each until it succeeded
    body = bodies[-1]
    assert body["type"] == EVENT_TYPE
    assert set(body["data"]) == {"id", "seq", "customer_id", "rule", "action", "fired_at", "as_of", "fields"}
    assert body["data"]["fields"]["risk_tier"] == "high" and body["data"]["rule"] == "cart_abandoned"
    assert rx.requests[0]["headers"]["content-type"] == "application/json"

    # re-running delivery never sends a delivered item again
    clock.advance(10 * 86400)
    assert deliver_once(store, s, clock=clock).attempted == 0
    assert len(rx.requests) == 8


@pytest.mark.slow  # serves HTTP
def test_a_receiver_that_always_fails_dead_letters_after_max_attempts(store, receivers):
    clock = Clock()
    ids = fill(store, 2, fired=clock.now)
    rx = receivers(lambda n, _: (503, {}))
    s = settings(rx.url, max_attempts=4, backoff_base_s=10)
    waits = []
    for _ in range(10):
        before = clock.now
        result = deliver_once(store, s, clock=clock)
        if not result.attempted:
            break
        due = [r["next_attempt_at"] for r in outbox(store).values() if r["next_attempt_at"] is not None]
        if due:
            waits.append((max(due) - before).total_seconds())
            clock.now = max(due)
    items = outbox(store)
    assert all(items[i]["state"] == "dead" and items[i]["attempts"] == 4 for i in ids)
    assert all(items[i]["last_error"] == "HTTP 503: {}" and items[i]["next_attempt_at"] is None for i in ids)
    assert waits == [10, 20, 40]  # exponential back-off between the 4 attempts
    assert len(rx.requests) == 8
    assert deliver_once(store, s, clock=clock).attempted == 0  # dead items are not retried


@pytest.mark.slow  # serves HTTP
def test_a_hanging_receiver_times_out_as_a_failure_and_others_proceed(store, receivers):
    clock = Clock()
    ids = fill(store, 4, fired=clock.now)
    slow = outbox(store)[ids[1]]["customer_id"]
    rx = receivers(lambda n, req: "hang" if json.loads(req["body"])["data"]["customer_id"] == slow else (200, {}))
    s = settings(rx.url, timeout_s=0.5, concurrency=2)
    started = time.monotonic()
    result = deliver_once(store, s, clock=clock)
    elapsed = time.monotonic() - started
    assert (result.delivered, result.retrying) == (3, 1)
    assert elapsed < 3, elapsed  # one timeout, not a blocked pass
    hung = outbox(store)[ids[1]]
    assert hung["state"] == "pending" and hung["attempts"] == 1 and "timeout" in hung["last_error"]
    assert all(outbox(store)[i]["state"] == "delivered" for i in ids if i != ids[1])


@pytest.mark.slow  # serves HTTP
def test_a_dead_receiver_is_a_failure_too(store, receivers):
    rx = receivers(lambda n, _: (200, {}))
    url = rx.url
    rx.close()  # nothing listens there any more
    clock = Clock()
    ids = fill(store, 1, fired=clock.now)
    result = deliver_once(store, settings(url), clock=clock)
    assert result.retrying == 1
    assert "ConnectError" in outbox(store)[ids[0]]["last_error"]


@pytest.mark.slow  # serves HTTP
def test_retry_after_is_honoured_and_410_stops_delivery(store, receivers):
    clock = Clock()
    ids = fill(store, 1, fired=clock.now)
    rx = receivers(lambda n, _: (429, {"Retry-After": "600"}))
    deliver_once(store, settings(rx.url), clock=clock)
    assert outbox(store)[ids[0]]["next_attempt_at"] == clock.now + timedelta(seconds=600)  # longer than 30 s

    gone = receivers(lambda n, _: (410, {}))
    clock.advance(600)
    stop = threading.Event()
    with pytest.raises(DeliveryError, match="410 Gone"):
        run_delivery(store, settings(gone.url), stop=stop, clock=clock)
    assert len(gone.requests) == 1


@pytest.mark.slow  # serves HTTP
def test_run_delivery_in_a_thread_stops_when_asked(store, receivers):
    clock = Clock()
    ids = fill(store, 5, fired=clock.now)
    rx = receivers(lambda n, _: (204, {}))
    stop, passes = threading.Event(), []
    worker = threading.Thread(
        target=run_delivery,
        args=(store, settings(rx.url, batch=2, poll_interval_s=0.05)),
        kwargs={"stop": stop, "on_pass": passes.append, "clock": clock},
    )
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(p.delivered for p in passes) < 5:
        time.sleep(0.02)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert all(outbox(store)[i]["state"] == "delivered" for i in ids)
    assert sorted(rx.ids()) == sorted(ids)


@pytest.mark.slow  # serves HTTP
def test_rotation_signs_with_every_key_and_either_verifies(store, receivers):
    clock = Clock()
    fill(store, 1, fired=clock.now)
    rx = receivers(lambda n, _: (200, {}))
    deliver_once(store, settings(rx.url, previous_secrets=[OLD_SECRET]), clock=clock)
    assert len(rx.requests[0]["headers"]["webhook-signature"].split(" ")) == 2
    verify_all(rx, SECRET)
    verify_all(rx, OLD_SECRET)


@pytest.mark.slow  # serves HTTP
def test_a_tampered_body_or_wrong_secret_fails_verification(store, receivers):
    from standardwebhooks import WebhookVerificationError

    clock = Clock()
    fill(store, 1, fired=clock.now)
    rx = receivers(lambda n, _: (200, {}))
    deliver_once(store, settings(rx.url), clock=clock)
    request = rx.requests[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request["body"].replace(b"cart_abandoned", b"cart_abandonee"), request["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(request["body"], request["headers"])


def test_signature_matches_the_reference_implementation():
    """Our HMAC against the reference's own signing, on a fixed message."""
    body = b'{"type":"x","data":{"a":1}}'
    when = datetime(2026, 1, 2, 3, 4, 5)
    ts = int((when - datetime(1970, 1, 1)).total_seconds())
    ours = signature("msg_1", ts, body, [base64.b64decode(SECRET[6:])])
    assert ours == Webhook(SECRET).sign("msg_1", when, body.decode())


@pytest.mark.slow  # serves HTTP
def test_an_item_that_cannot_be_sent_fails_alone(store, receivers):
    clock = Clock()
    ids = fill(store, 2, fired=clock.now)
    rx = receivers(lambda n, _: (200, {}))
    sender = WebhookSender(settings(rx.url))
    send = sender.send
    sender.send = lambda item: send({**item, "fields": "{not json"} if item["id"] == ids[0] else item)
    result = deliver_once(store, settings(rx.url), sender=sender, clock=clock)
    sender.close()
    assert (result.delivered, result.retrying) == (1, 1)
    assert outbox(store)[ids[0]]["last_error"].startswith("cannot build the request")


def test_payload_is_minified_json_with_the_outbox_fields():
    item = {
        "id": "abc",
        "seq": 7,
        "customer_id": "c1",
        "rule": "risk_jump",
        "action": "personal_call",
        "fired_at": datetime(2025, 3, 1, 6),
        "as_of": datetime(2025, 3, 1),
        "fields": '{"risk_tier": "high", "prev_tier": "low"}',
        "attempts": 0,
    }
    body = payload(item)
    assert b" " not in body.replace(b"personal_call", b"")
    assert json.loads(body)["data"]["fired_at"] == "2025-03-01T06:00:00Z"


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    import random

    s = DeliverySettings(backoff_base_s=30, backoff_max_s=200, backoff_jitter=0)
    assert [backoff_s(k, s) for k in range(1, 6)] == [30, 60, 120, 200, 200]
    j = DeliverySettings(backoff_base_s=100, backoff_jitter=0.1)
    waits = [backoff_s(1, j, random.Random(i)) for i in range(200)]
    assert 90 <= min(waits) < 95 and 105 < max(waits) <= 110


def test_settings_refuse_bad_secrets_and_urls():
    with pytest.raises(ValidationError, match="whsec_"):
        DeliverySettings(secret="not-a-secret")
    with pytest.raises(ValidationError, match="24 to 64"):
        DeliverySettings(secret="whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ValidationError, match="http"):
        DeliverySettings(webhook_url="ftp://crm")
    with pytest.raises(ValueError, match="webhook_url"):
        WebhookSender(DeliverySettings(secret=SECRET))


def test_settings_refuse_a_lease_shorter_than_a_pass():
    # 100 items, 4 at a time, 15 s each at worst: 25 waves x 15 s = 375 s
    with pytest.raises(ValidationError, match="375"):
        DeliverySettings(lease_s=375, timeout_s=15, batch=100, concurrency=4)
    assert DeliverySettings(lease_s=376, timeout_s=15, batch=100, concurrency=4).lease == 376
    assert DeliverySettings(timeout_s=15, batch=100, concurrency=4).lease == 375 + 60  # unset: follows the pass


def test_one_deliverer_at_a_time(tmp_path):
    lock = tmp_path / "deliver.lock"
    with single_deliverer(lock), pytest.raises(DeliveryError, match="another"), single_deliverer(lock):
        pass
    with single_deliverer(lock):  # released
        pass


@pytest.mark.slow  # serves HTTP
def test_churn_deliver_once_and_its_errors(tmp_path, monkeypatch, receivers):
    from typer.testing import CliRunner

    from churnguard.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "data"))
    r = runner.invoke(app, ["deliver", "--once"])
    assert r.exit_code == 2 and "delivery.webhook_url" in r.output

    store = open_store(StoreSettings(), tmp_path / "data")
    ids = fill(store, 3, controls=1, fired=datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1))
    store.close()
    rx = receivers(lambda n, _: (500, {}) if n == 0 else (200, {}))
    monkeypatch.setenv("CHURN_DELIVERY__WEBHOOK_URL", rx.url)
    monkeypatch.setenv("CHURN_DELIVERY__SECRET", SECRET)
    monkeypatch.setenv("CHURN_DELIVERY__CONCURRENCY", "1")
    r = runner.invoke(app, ["deliver", "--once"])
    assert r.exit_code == 0, r.output
    assert "sent 3: 2 delivered, 1 to retry, 0 dead-lettered" in r.output and "HTTP 500" in r.output
    r = runner.invoke(app, ["deliver", "--once"])
    assert r.exit_code == 0 and "nothing due" in r.output  # the failed one waits for its back-off
    assert len(verify_all(rx)) == 3 and set(rx.ids()) <= set(ids)

    gone = receivers(lambda n, _: (410, {}))
    store = open_store(StoreSettings(), tmp_path / "data")
    store.mark_delivery(ids[0], "pending", 1, datetime(2020, 1, 1), "HTTP 500")  # due again
    store.close()
    r = runner.invoke(app, ["deliver", "--once", "--url", gone.url])
    assert r.exit_code == 3 and "410 Gone" in r.output


def test_retry_dead_moves_dead_letters_back_to_pending(store):
    clock = Clock()
    ids = fill(store, 3, controls=1, fired=clock.now)
    store.mark_delivery(ids[0], "dead", 14, None, "HTTP 503: {}")
    store.mark_delivery(ids[1], "dead", 14, None, "HTTP 500: {}")
    store.mark_delivery(ids[2], "delivered", 1, None, None)
    later = clock.now + timedelta(hours=1)
    assert store.retry_dead(later) == 2
    items = outbox(store)
    assert [(items[i]["state"], items[i]["attempts"], items[i]["next_attempt_at"]) for i in ids] == [
        ("pending", 0, later),
        ("pending", 0, later),
        ("delivered", 1, None),
    ]
    assert items[ids[0]]["last_error"] == "HTTP 503: {}"  # kept until the next attempt
    assert sorted(store.pending_deliveries(later, 10)["id"].to_pylist()) == sorted(ids[:2])
    assert [r["state"] for r in items.values()].count("control") == 1  # control items untouched
    assert store.retry_dead(later) == 0


def test_churn_deliver_retry_dead(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from churnguard.cli import app

    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    r = runner.invoke(app, ["deliver", "--retry-dead"])
    assert r.exit_code == 2 and "holds no transactions yet" in r.output  # no store there: nothing created
    store = open_store(StoreSettings(), tmp_path / "data")
    ids = fill(store, 2, fired=datetime(2025, 3, 1, 6))
    store.mark_delivery(ids[1], "dead", 14, None, "HTTP 500: {}")
    store.close()
    r = runner.invoke(app, ["deliver", "--retry-dead"])  # needs no webhook settings: a store operation
    assert r.exit_code == 0, r.output
    assert "1 dead-lettered item back to pending" in r.output
    store = open_store(StoreSettings(), tmp_path / "data")
    assert [(x["state"], x["attempts"]) for x in outbox(store).values()] == [("pending", 0), ("pending", 0)]
    store.close()
