"""Live trigger evaluation (``serving/live_triggers.py``) on both store backends, with the hand-made model: rows
appended for the API queue their customers in the same transaction; the worker drains them into the outbox with the
batch's ids; leftovers of a dead worker are drained once their claim runs out; two workers never fire twice; a batch
run afterwards fires nothing twice; the worker thread wakes on notify and stops."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta

import pytest

from features.store import StoreSettings
from features.store.outbox import outbox_id
from serving.customers import StoreHandle
from serving.live_triggers import LEASE_S, Drained, LiveTriggers
from serving.policy import load_policy
from serving.triggers import evaluate_customers, evaluate_triggers, load_triggers
from tests.conftest import ev, tx
from tests.hand_model import hand_model
from tests.postgres import new_database

NOW = datetime(2024, 6, 1, 9, 30)
POLICY = load_policy()
RULES = load_triggers(policy=POLICY)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def at(delta: timedelta) -> str:
    return (NOW - delta).isoformat()


@pytest.fixture(params=["embedded", "postgres"])
def settings(request, tmp_path):
    if request.param == "embedded":
        return StoreSettings(path=tmp_path / "store")
    return StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "live"))


@pytest.fixture
def handle(settings, tmp_path):
    h = StoreHandle(settings, tmp_path)
    yield h
    h.close()


def worker(handle: StoreHandle, now: datetime = NOW, **kw) -> LiveTriggers:
    return LiveTriggers(handle, hand_model, RULES, POLICY, clock=lambda: now, **kw)


def cart_customer(cid: str) -> dict:
    """A customer who bought 20 days ago (low risk) and left a cart 30 hours ago: cart_abandoned, nothing else."""
    return {"transactions": [tx(cid, at(20 * DAY), 30.0)], "events": [ev(cid, at(30 * HOUR), "cart_add")]}


def outbox(handle: StoreHandle) -> list[dict]:
    return handle.run(lambda s: s.outbox_after(0, 1000)).to_pylist()


def test_appended_customers_are_evaluated_with_the_batch_ids(handle):
    result = handle.run(lambda s: s.append(**cart_customer("a"), evaluate=True))
    assert result.queued == 1
    assert worker(handle).drain().customers == 1
    (item,) = outbox(handle)
    assert (item["customer_id"], item["rule"], item["id"]) == (
        "a",
        "cart_abandoned",
        outbox_id("cart_abandoned", "a", NOW),
    )
    assert json.loads(item["fields"])["hours_since_cart_add"] == 30.0 and item["as_of"] == NOW
    assert handle.run(lambda s: s.pending_evaluations()) == 0
    # the same request again stores nothing and queues nothing; a new row queues the customer again, and its
    # evaluation fires nothing new (same id the same day, and the cool-down)
    assert handle.run(lambda s: s.append(**cart_customer("a"), evaluate=True)).queued == 0
    handle.run(lambda s: s.append(events=[ev("a", at(HOUR), "session")], evaluate=True))
    assert worker(handle, NOW + HOUR).drain() == Drained(customers=1, fired=0)
    assert len(outbox(handle)) == 1
    # and the day's batch run afterwards fires nothing twice
    store = handle.run(lambda s: s)
    batch = evaluate_triggers(None, hand_model(), RULES, store, NOW + 2 * HOUR, policy=POLICY)
    assert batch.rules["cart_abandoned"].matched == 1 and batch.added == 0


def test_a_prospect_with_an_abandoned_cart_fires_live(handle):
    handle.run(lambda s: s.append(events=[ev("p", at(26 * HOUR), "cart_add")], evaluate=True))
    assert worker(handle).drain().fired == 1
    (item,) = outbox(handle)
    assert item["customer_id"] == "p" and json.loads(item["fields"])["risk_tier"] is None


def test_a_dead_workers_claims_are_drained_after_their_lease(handle):
    handle.run(lambda s: s.append(**cart_customer("a"), evaluate=True))
    claimed = handle.run(lambda s: s.claim_evaluations(NOW, 10, LEASE_S))  # a worker that died right after
    assert claimed.num_rows == 1
    assert worker(handle, NOW + timedelta(seconds=LEASE_S - 1)).drain().customers == 0  # still its claim
    assert outbox(handle) == []
    restarted = worker(handle, NOW + timedelta(seconds=LEASE_S))
    assert restarted.drain().customers == 1 and len(outbox(handle)) == 1
    assert handle.run(lambda s: s.pending_evaluations()) == 0


def test_two_workers_share_the_queue_and_fire_each_item_once(settings, tmp_path):
    handles = [StoreHandle(settings, tmp_path) for _ in range(2)]  # as two service processes
    ids = [f"c{i:03d}" for i in range(40)]
    rows = [cart_customer(c) for c in ids]
    handles[0].run(
        lambda s: s.append(
            transactions=[t for r in rows for t in r["transactions"]],
            events=[e for r in rows for e in r["events"]],
            evaluate=True,
        )
    )
    done: list = []
    workers = [worker(h, batch=7) for h in handles]
    threads = [threading.Thread(target=lambda w=w: done.append(w.drain())) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(d.customers for d in done) == 40  # claims never overlap: each customer evaluated once
    items = outbox(handles[0])
    assert sorted(i["customer_id"] for i in items) == ids and sum(d.fired for d in done) == 40
    # a lease that ran out mid-evaluation: a second evaluation of the same customers the same day adds nothing
    handles[1].run(lambda s: s.append(events=[ev(c, at(HOUR), "session") for c in ids], evaluate=True))
    late = [handles[0].run(lambda s: s.claim_evaluations(NOW, 100, 0.0)) for _ in range(2)]
    assert [t.num_rows for t in late] == [40, 40]
    for h, claimed in zip(handles, late, strict=True):
        run = h.run(lambda s, c=claimed: evaluate_customers(s, hand_model(), RULES, ids, NOW, policy=POLICY, claimed=c))
        assert run.added == 0
    assert len(outbox(handles[0])) == 40
    for h in handles:
        h.close()


def test_the_worker_thread_drains_leftovers_at_start_then_wakes_on_notify_and_stops(handle):
    def wait_for(n: int) -> list[str]:
        deadline = time.monotonic() + 30
        while len(outbox(handle)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return sorted(i["customer_id"] for i in outbox(handle))

    handle.run(lambda s: s.append(**cart_customer("left"), evaluate=True))  # queued before the service started
    live = worker(handle, poll_s=60, delay_s=0.2)  # only the start and a notify can wake it within the test
    live.start()
    try:
        assert wait_for(1) == ["left"]
        handle.run(lambda s: s.append(**cart_customer("a"), evaluate=True))
        live.notify()
        assert wait_for(2) == ["a", "left"]
        assert live.backlog() == 0 and live.last_error is None
    finally:
        live.stop()
    assert not live._thread.is_alive()


def test_an_unreachable_store_pauses_the_worker_with_the_reason(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store folder should be")
    handle = StoreHandle(StoreSettings(path=blocker / "store"), tmp_path)
    live = worker(handle, poll_s=60)
    live.start()
    try:
        deadline = time.monotonic() + 30
        while live.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.last_error and f"the customer store at {blocker / 'store'} cannot be reached" in live.last_error
    finally:
        live.stop()
