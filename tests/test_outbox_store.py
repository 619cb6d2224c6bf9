"""The trigger outbox and evaluation state in the customer store, on both backends (embedded SQLite catalog and a
throwaway PostgreSQL server): idempotent on id, seq in commit order for cursors, delivery states, control items
never delivered, evaluation state shifting, one transaction for items and state."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from features.store import StoreError, StoreSettings, open_store
from features.store.outbox import EVALUATION_INPUT, OUTBOX_COLUMNS, items_table, outbox_id
from tests.postgres import new_database

T0 = datetime(2025, 3, 1)
FIRED = datetime(2025, 3, 1, 6, 0, 0)


@pytest.fixture(params=["embedded", "postgres"])
def store(request, tmp_path):
    if request.param == "embedded":
        settings = StoreSettings(path=tmp_path / "store")
    else:
        settings = StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "outbox"))
    s = open_store(settings, tmp_path)
    yield s
    s.close()


def item(customer: str, rule: str = "cart_abandoned", as_of: datetime = T0, control: bool = False) -> dict:
    return {
        "id": outbox_id(rule, customer, as_of),
        "customer_id": customer,
        "rule": rule,
        "action": "cart_reminder",
        "fired_at": FIRED,
        "as_of": as_of,
        "fields": json.dumps({"hours_since_cart_add": 30.5}),
        "control": control,
    }


def test_ids_are_deterministic_per_rule_customer_and_day():
    assert outbox_id("r", "c1", T0) == outbox_id("r", "c1", T0 + timedelta(hours=5))
    assert outbox_id("r", "c1", T0) != outbox_id("r", "c1", T0 + timedelta(days=1))
    assert outbox_id("r", "c1", T0) != outbox_id("r2", "c1", T0) != outbox_id("r", "c2", T0)


def test_add_outbox_is_idempotent_and_seq_orders_the_cursor(store):
    first = items_table([item("a"), item("b", control=True), item("c")])
    assert store.add_outbox(first) == 3
    assert store.add_outbox(first) == 0  # a re-run adds nothing
    assert store.add_outbox(items_table([item("c"), item("d")])) == 1
    page = store.outbox_after(0, 10)
    assert tuple(page.column_names) == OUTBOX_COLUMNS
    assert page["customer_id"].to_pylist() == ["a", "b", "c", "d"]
    seq = page["seq"].to_pylist()
    assert seq == sorted(seq) and len(set(seq)) == 4
    assert page["state"].to_pylist() == ["pending", "control", "pending", "pending"]
    assert page["control"].to_pylist() == [False, True, False, False]
    assert page["next_attempt_at"].to_pylist() == [FIRED, None, FIRED, FIRED]
    assert page["attempts"].to_pylist() == [0] * 4
    assert json.loads(page["fields"][0].as_py()) == {"hours_since_cart_add": 30.5}
    assert page["as_of"][0].as_py() == T0 and page["fired_at"][0].as_py() == FIRED
    # paging with the cursor: every item once, in order
    got, cursor = [], 0
    while True:
        part = store.outbox_after(cursor, 3)
        if part.num_rows == 0:
            break
        got += part["customer_id"].to_pylist()
        cursor = part["seq"][-1].as_py()
    assert got == ["a", "b", "c", "d"]
    assert store.outbox_after(seq[-1], 10).num_rows == 0


def test_delivery_states_and_control_items(store):
    store.add_outbox(items_table([item("a"), item("b", control=True), item("c")]))
    due = store.pending_deliveries(FIRED, 10)
    assert due["customer_id"].to_pylist() == ["a", "c"]  # control items are never due
    assert store.pending_deliveries(FIRED - timedelta(seconds=1), 10).num_rows == 0
    a, b = outbox_id("cart_abandoned", "a", T0), outbox_id("cart_abandoned", "b", T0)
    later = FIRED + timedelta(minutes=5)
    store.mark_delivery(a, "pending", 1, later, "HTTP 503")
    assert store.pending_deliveries(FIRED, 10)["customer_id"].to_pylist() == ["c"]
    due = store.pending_deliveries(later, 10)
    assert due["customer_id"].to_pylist() == ["c", "a"]  # oldest due first
    assert due.filter(pa.compute.equal(due["customer_id"], "a"))["last_error"].to_pylist() == ["HTTP 503"]
    store.mark_delivery(a, "delivered", 2, None, None)
    store.mark_delivery(outbox_id("cart_abandoned", "c", T0), "dead", 8, None, "HTTP 410")
    assert store.pending_deliveries(later, 10).num_rows == 0
    states = dict(zip(*store.outbox_after(0, 10).select(["customer_id", "state"]).to_pydict().values(), strict=True))
    assert states == {"a": "delivered", "b": "control", "c": "dead"}
    with pytest.raises(StoreError, match="control item"):
        store.mark_delivery(b, "delivered", 1, None, None)
    with pytest.raises(StoreError, match="no outbox item"):
        store.mark_delivery("nope", "delivered", 1, None, None)
    with pytest.raises(ValueError, match="delivery state"):
        store.mark_delivery(a, "control", 1, None, None)


def test_a_claim_leases_its_items_so_a_second_deliverer_skips_them(store):
    store.add_outbox(items_table([item("a"), item("b", control=True), item("c"), item("d")]))
    lease = FIRED + timedelta(minutes=15)
    first = store.claim_deliveries(FIRED, 2, lease)
    assert first["customer_id"].to_pylist() == ["a", "c"]  # control items are never claimed
    second = store.claim_deliveries(FIRED, 10, lease)
    assert second["customer_id"].to_pylist() == ["d"]  # a and c are leased
    assert store.claim_deliveries(FIRED, 10, lease).num_rows == 0
    # the first deliverer finishes a; c's deliverer died: c is due again when the lease ends, d too
    store.mark_delivery(outbox_id("cart_abandoned", "a", T0), "delivered", 1, None, None)
    assert store.claim_deliveries(lease - timedelta(seconds=1), 10, lease).num_rows == 0
    again = store.claim_deliveries(lease, 10, lease + timedelta(minutes=15))
    assert sorted(again["customer_id"].to_pylist()) == ["c", "d"]


def test_deliverers_claiming_at_once_take_disjoint_items(store):
    from concurrent.futures import ThreadPoolExecutor

    store.add_outbox(items_table([item(f"c{i:03d}") for i in range(120)]))
    lease = FIRED + timedelta(minutes=15)
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda _: store.claim_deliveries(FIRED, 30, lease), range(4)))
    taken = [c for claim in claims for c in claim["customer_id"].to_pylist()]
    assert sorted(taken) == [f"c{i:03d}" for i in range(120)]  # each item once, none lost


def evaluations(rows: list[tuple[str, datetime, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"customer_id": c, "as_of": d, "risk_tier": t} for c, d, t in rows], schema=EVALUATION_INPUT
    )


def test_evaluation_state_keeps_the_latest_and_the_previous(store):
    day2, day3 = T0 + timedelta(days=1), T0 + timedelta(days=2)
    store.add_outbox(items_table([]), evaluations=evaluations([("a", T0, "low"), ("b", T0, "medium")]))
    store.add_outbox(items_table([]), evaluations=evaluations([("a", day2, "high")]))
    store.add_outbox(items_table([]), evaluations=evaluations([("a", day2, "critical")]))  # same as_of again
    store.add_outbox(items_table([]), evaluations=evaluations([("b", T0 - timedelta(days=5), "low")]))  # older
    rows = {r["customer_id"]: r for r in store.evaluations().to_pylist()}
    assert rows["a"] == {"customer_id": "a", "as_of": day2, "risk_tier": "critical", "prev_as_of": T0,
                         "prev_tier": "low"}  # fmt: skip
    assert rows["b"] == {"customer_id": "b", "as_of": T0, "risk_tier": "medium", "prev_as_of": None,
                         "prev_tier": None}  # fmt: skip
    store.add_outbox(items_table([]), evaluations=evaluations([("a", day3, "low")]))
    (a,) = store.evaluations(["a"]).to_pylist()
    assert (a["prev_tier"], a["risk_tier"], a["prev_as_of"]) == ("critical", "low", day2)


def test_firings_since(store):
    store.add_outbox(
        items_table([item("a", as_of=T0 - timedelta(days=10)), item("a", "risk_jump"), item("b", control=True)])
    )
    recent = store.firings_since(T0 - timedelta(days=1))
    assert sorted(zip(recent["customer_id"].to_pylist(), recent["rule"].to_pylist(), strict=True)) == [
        ("a", "risk_jump"),
        ("b", "cart_abandoned"),
    ]
    assert store.firings_since(T0 - timedelta(days=30), ["a"]).num_rows == 2
    assert store.firings_since(T0 - timedelta(days=30), ["zz"]).num_rows == 0


def test_items_and_state_are_one_transaction(store):
    bad = evaluations([("a", T0, "low")]).set_column(2, "risk_tier", pa.array([None], pa.string()))
    with pytest.raises(Exception):  # noqa: B017 - NOT NULL violation of either backend's driver
        store.add_outbox(items_table([item("a")]), evaluations=bad)
    assert store.outbox_after(0, 10).num_rows == 0


# --------------------------------------------------------------------------------------------- pending evaluations


def _tx(customer: str, day: int, amount: float = 10.0) -> dict:
    return {"customer_id": customer, "timestamp": T0 - timedelta(days=day), "amount": amount}


def _claimed(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table["customer_id"].to_pylist(), table["seq"].to_pylist(), strict=True))


def test_append_queues_the_customers_it_changed_in_the_same_transaction(store):
    assert store.append(transactions=[_tx("a", 3)]).queued == 0  # not asked: nothing queued
    assert store.pending_evaluations() == 0
    result = store.append(
        transactions=[_tx("a", 3), _tx("b", 2)],  # a's row is stored already
        customers=[{"customer_id": "c", "signup_date": T0}],
        evaluate=True,
    )
    assert result.added["transactions"] == 1 and result.queued == 2
    retry = store.append(transactions=[_tx("a", 3), _tx("b", 2)], evaluate=True)  # a retried request
    assert retry.queued == 0
    assert store.pending_evaluations() == 2
    claimed = store.claim_evaluations(T0, 10, 60)
    assert claimed["customer_id"].to_pylist() == ["b", "c"]  # oldest touch first
    assert claimed["claimed_until"].to_pylist() == [T0 + timedelta(seconds=60)] * 2


def test_claims_are_exclusive_until_their_lease_runs_out(store):
    store.append(transactions=[_tx(c, 1) for c in "abcde"], evaluate=True)
    first = store.claim_evaluations(T0, 3, 30)
    second = store.claim_evaluations(T0 + timedelta(seconds=1), 10, 30)
    assert first["customer_id"].to_pylist() == ["a", "b", "c"]
    assert second["customer_id"].to_pylist() == ["d", "e"]  # never one another worker holds
    assert store.claim_evaluations(T0 + timedelta(seconds=29), 10, 30).num_rows == 0
    expired = store.claim_evaluations(T0 + timedelta(seconds=30), 10, 30)  # a dead worker's claims run out
    assert expired["customer_id"].to_pylist() == ["a", "b", "c"]
    assert store.pending_evaluations() == 5


def test_evaluated_rows_go_with_the_firings_and_a_new_touch_stays_due(store):
    store.append(transactions=[_tx("a", 1), _tx("b", 1)], evaluate=True)
    claimed = store.claim_evaluations(T0, 10, 60)
    store.append(transactions=[_tx("b", 0)], evaluate=True)  # b touched again while being evaluated
    assert store.add_outbox(items_table([item("a")]), evaluated=claimed) == 1
    assert store.pending_evaluations() == 1  # a done; b's newer touch is still due, released at once
    again = store.claim_evaluations(T0 + timedelta(seconds=1), 10, 60)
    assert again["customer_id"].to_pylist() == ["b"] and again["seq"][0].as_py() > dict(_claimed(claimed))["b"]
    store.add_outbox(items_table([]), evaluated=again)
    assert store.pending_evaluations() == 0


def test_a_failed_outbox_commit_keeps_the_pending_rows(store):
    store.append(transactions=[_tx("a", 1)], evaluate=True)
    claimed = store.claim_evaluations(T0, 10, 60)
    broken = items_table([item("a")]).set_column(0, "id", pa.array([None], pa.string()))
    with pytest.raises((StoreError, ValueError, pa.ArrowInvalid)):
        store.add_outbox(broken, evaluated=claimed)
    assert store.pending_evaluations() == 1 and store.outbox_after(0, 10).num_rows == 0
