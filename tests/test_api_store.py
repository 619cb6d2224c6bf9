"""The store routes of the API, on both store backends (embedded, and a throwaway PostgreSQL server):
lookups by id equal batch scoring on the store, unknown ids are 404 / not_found, bad input is a 400 naming the
field, POST /v1/events stores rows idempotently and rejects bad ones with index, field and reason, the next score
sees new rows, and an unreachable store is a 503 problem with /readyz not ready."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest

from tests.postgres import cluster, missing_binaries, new_database

pytestmark = pytest.mark.slow

NOW = datetime(2026, 1, 1)
AS_OF = "2024-10-01"
CRM, READER = "crm-token-" + "x" * 20, "reader-token-" + "y" * 20


@contextmanager
def service(data_dir: Path, store_env: dict[str, str]) -> Iterator:
    """The real service in-process (BentoML's ASGI app) on the session's champion, with the given store settings
    and two keys: ``crm`` (score and events) and ``reader`` (score only)."""
    from starlette.testclient import TestClient

    keys = data_dir / f"keys-{uuid.uuid4().hex[:6]}.toml"
    keys.write_text(
        f'[keys.crm]\nsha256 = "{hashlib.sha256(CRM.encode()).hexdigest()}"\n'
        f'[keys.reader]\nsha256 = "{hashlib.sha256(READER.encode()).hexdigest()}"\nscopes = ["score"]\n'
    )
    env = {
        "CHURN_DATA_DIR": str(data_dir),
        "CHURN_SCORING__MODEL_URI": "models:/churnguard@champion",
        "CHURN_SERVING__KEYS_FILE": str(keys),
        "CHURN_SERVING__RELOAD_INTERVAL_S": "0",
        "CHURN_SERVING__RATE_LIMIT_PER_MINUTE": "1000000",
        "BENTOML_CONFIG_OPTIONS": "services.churnguard.metrics.enabled=false",
        **store_env,
    }
    names = {*env, "CHURN_STORE__URL", "CHURN_STORE__PATH", "CHURN_SERVING__API_KEYS"}
    old = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ.pop(k, None)
    os.environ.update(env)
    bentoml_service = importlib.import_module("_bentoml_sdk.service")  # one current service per process: restore it
    previous = bentoml_service._current_service
    try:
        from serving.service import ChurnService

        client = TestClient(
            ChurnService.to_asgi(), headers={"Authorization": f"Bearer {CRM}"}, raise_server_exceptions=False
        )
        client.__enter__()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield client
    finally:
        client.__exit__(None, None, None)
        bentoml_service.set_current_service(previous)


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def backend(request, registered, test_settings, demo_dir, tmp_path_factory):
    """(client, store settings) for a store holding the session's demo data, one of each backend."""
    from features.store import StoreSettings, ingest, open_store

    if request.param == "embedded":
        settings = StoreSettings(path=tmp_path_factory.mktemp("api-store") / "store")
        env = {"CHURN_STORE__PATH": str(settings.path)}
    else:
        settings = StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "api"))
        env = {"CHURN_STORE__URL": settings.url}
    store = open_store(settings, test_settings.data_dir)
    ingest(store, demo_dir, now=NOW)
    store.close()
    with service(test_settings.data_dir, env) as client:
        yield client, settings


@pytest.fixture(scope="module")
def client(backend):
    return backend[0]


@pytest.fixture(scope="module")
def store(backend, test_settings):
    from features.store import open_store

    s = open_store(backend[1], test_settings.data_dir)
    yield s
    s.close()


@pytest.fixture(scope="module")
def model(registered, test_settings):
    from model.registry import load_model

    return load_model(test_settings.mlflow)


def _batch(store, model, as_of: datetime):
    from serving.policy import load_policy
    from serving.scoring import score_batch
    from serving.settings import ScoringSettings

    result = score_batch(store.dataset(), model, load_policy(), ScoringSettings(reasons="all"), as_of=as_of)
    return result.scores.set_index("customer_id"), result.rejected.set_index("customer_id")


def _assert_card_equals_batch(card: dict, row) -> None:
    """Every scorecard field equal, to the last bit: the batch row through the response's own model (JSON types
    only), then ==."""
    from model.scorecard import SCORECARD_COLUMNS
    from serving.schemas import Scorecard

    values = {c: row[c] for c in SCORECARD_COLUMNS if c != "customer_id"}
    want = Scorecard.model_validate({"customer_id": row.name, **values}).model_dump(mode="json")
    assert set(card) == set(want)
    for column, value in want.items():
        assert card[column] == value, (card["customer_id"], column, card[column], value)


def _ids(data, n: int) -> list[str]:
    ids = pc.unique(data.transactions["customer_id"]).to_pylist()
    return ids[:: max(len(ids) // n, 1)][:n]


# --------------------------------------------------------------------------------------------- lookups


def test_lookup_equals_batch_scoring_on_the_store(client, store, model, demo_data):
    data, _ = demo_data
    scores, rejected = _batch(store, model, datetime.fromisoformat(AS_OF))
    compared = 0
    for cid in _ids(data, 12):
        r = client.get(f"/v1/customers/{cid}/score", params={"as_of": AS_OF})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["as_of"] == "2024-10-01T00:00:00" and body["model_version"] == "churnguard/1"
        if cid in scores.index:
            assert len(body["scores"]) == 1 and body["rejected"] == []
            _assert_card_equals_batch(body["scores"][0], scores.loc[cid])
            compared += 1
        else:
            assert body["rejected"] == [{"customer_id": cid, "reason": rejected.loc[cid, "reason"]}]
    assert compared >= 8


def test_batch_lookup_equals_batch_scoring_and_lists_the_ids_not_found(client, store, model, demo_data):
    data, _ = demo_data
    as_of = "2025-03-15T12:00:00"
    scores, rejected = _batch(store, model, datetime.fromisoformat(as_of))
    prospects = [c for c in rejected.index if "no purchase before as_of" in rejected.loc[c, "reason"]][:2]
    later = [c for c in rejected.index if "not a customer yet" in rejected.loc[c, "reason"]][:2]
    ids = [*_ids(data, 30), *prospects, *later, "nobody-1", "nobody-2"]
    r = client.post("/v1/customers/score", json={"customer_ids": ids, "as_of": as_of})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["not_found"] == ["nobody-1", "nobody-2"]
    got = [s["customer_id"] for s in body["scores"]] + [s["customer_id"] for s in body["rejected"]]
    assert sorted(got) == sorted(ids[:-2])  # every id found is scored or rejected with its reason
    for card in body["scores"]:
        _assert_card_equals_batch(card, scores.loc[card["customer_id"]])
    for entry in body["rejected"]:
        assert entry["reason"] == rejected.loc[entry["customer_id"], "reason"]
    assert {e["customer_id"] for e in body["rejected"]} >= {*prospects, *later}
    assert len(body["scores"]) >= 20


def test_unknown_customer_is_a_404_problem(client):
    assert client.get("/v1/customers/a%00b/score").status_code == 404  # an id no store can hold: not found
    nul = client.post("/v1/customers/score", json={"customer_ids": ["a\x00b"]})
    assert nul.status_code == 200 and nul.json()["not_found"] == ["a\x00b"]
    r = client.get("/v1/customers/no-such-customer/score")
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "urn:churnguard:problem:not-found" and "no-such-customer" in problem["detail"]
    assert problem["instance"] == "/v1/customers/no-such-customer/score" and problem["request_id"]


@pytest.mark.parametrize(
    ("query", "field"),
    [({"as_of": "soon"}, "as_of"), ({"as_of": "2024-02-30"}, "as_of"), ({"reasons": "perhaps"}, "reasons")],
)
def test_malformed_query_is_a_400_naming_the_field(client, demo_data, query, field):
    cid = _ids(demo_data[0], 1)[0]
    r = client.get(f"/v1/customers/{cid}/score", params=query)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert [(e["field"], e["location"]) for e in problem["errors"]] == [(field, "query")]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_ids": []}, "customer_ids"),
        ({"customer_ids": [f"c{i}" for i in range(1001)]}, "customer_ids"),
        ({"customer_ids": ["a", "b", "a"]}, "customer_ids[2]"),
        ({"customer_ids": ["a"], "as_of": "yesterday"}, "as_of"),
        ({"customer_ids": [" "]}, "customer_ids[0]"),
        ({"customer_ids": ["a"], "colour": 1}, "colour"),
    ],
)
def test_bad_batch_lookups_are_400_naming_the_field(client, body, field):
    r = client.post("/v1/customers/score", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()


# --------------------------------------------------------------------------------------------- new rows


def test_events_are_stored_once_and_the_next_score_sees_them(client, store, model, demo_data):
    from features.build import as_entities, build_features

    data, _ = demo_data
    cid = _ids(data, 5)[2]
    as_of = "2025-12-20"
    when = datetime.fromisoformat(as_of)

    def recency() -> float:
        return build_features(store.rows_for([cid]), as_entities([cid], when))["recency_days"][0].as_py()

    before = client.get(f"/v1/customers/{cid}/score", params={"as_of": as_of}).json()["scores"][0]
    assert recency() > 2.0
    tag = uuid.uuid4().hex[:8]
    body = {
        "transactions": [
            {"customer_id": cid, "timestamp": "2025-12-18T10:00:00", "amount": 55.0, "order_id": f"api-{tag}"},
            {"customer_id": cid, "timestamp": "2025-12-18T10:00:00", "amount": 5.0, "order_id": f"api-{tag}"},
        ],
        "events": [{"customer_id": cid, "timestamp": "2025-12-18T09:58:00", "event_type": "session"}],
    }
    r = client.post("/v1/events", json=body)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["added"] == {"transactions": 2, "events": 1, "customers": 0} and first["rejected"] == []
    assert recency() == pytest.approx(1 + 14 / 24)  # the store has the purchase: 1 day 14 h before as_of
    after = client.get(f"/v1/customers/{cid}/score", params={"as_of": as_of}).json()["scores"][0]
    assert after["churn_probability"] < before["churn_probability"]  # the next score sees the new purchase
    scores, _ = _batch(store, model, when)
    _assert_card_equals_batch(after, scores.loc[cid])  # and equals batch scoring on the store as it is now

    retry = client.post("/v1/events", json=body).json()
    assert retry["added"] == {"transactions": 0, "events": 0, "customers": 0}
    assert retry["present"] == {"transactions": 2, "events": 1, "customers": 0}
    assert client.get(f"/v1/customers/{cid}/score", params={"as_of": as_of}).json()["scores"][0] == after


def test_a_new_customer_from_events_is_known_at_once(client):
    cid = f"api-new-{uuid.uuid4().hex[:8]}"
    assert client.get(f"/v1/customers/{cid}/score").status_code == 404
    r = client.post(
        "/v1/events",
        json={
            "customers": [{"customer_id": cid, "signup_date": "2025-01-05"}],
            "events": [{"customer_id": cid, "timestamp": "2025-01-06T08:00:00", "event_type": "session"}],
        },
    )
    assert r.json()["added"] == {"transactions": 0, "events": 1, "customers": 1}
    prospect = client.get(f"/v1/customers/{cid}/score", params={"as_of": "2025-02-01"})
    assert prospect.status_code == 200
    assert prospect.json()["scores"] == [] and "no purchase before as_of" in prospect.json()["rejected"][0]["reason"]
    client.post("/v1/events", json={"transactions": [{"customer_id": cid, "timestamp": "2025-01-20", "amount": 9}]})
    scored = client.get(f"/v1/customers/{cid}/score", params={"as_of": "2025-02-01", "reasons": "false"}).json()
    assert [s["customer_id"] for s in scored["scores"]] == [cid] and scored["scores"][0]["top_reasons"] == []
    early = client.post("/v1/customers/score", json={"customer_ids": [cid], "as_of": "2025-01-01"}).json()
    assert early["rejected"][0]["reason"].startswith("no purchase, event or sign-up before as_of")


def test_bad_rows_are_rejected_with_index_field_and_reason(client):
    cid = f"api-bad-{uuid.uuid4().hex[:8]}"
    future = (datetime.utcnow() + timedelta(days=3)).isoformat(timespec="seconds")
    good = {"customer_id": cid, "timestamp": "2025-03-01T10:00:00", "amount": 12.0}
    body = {
        "transactions": [
            good,
            {"customer_id": cid, "timestamp": "2025-03-01T10:00:00", "amount": "twelve"},
            {"customer_id": cid, "timestamp": "2025-02-30T10:00:00", "amount": 1.0},
            {"customer_id": cid, "amount": 1.0},
            dict(good),
            {"customer_id": cid, "timestamp": future, "amount": 3.0},
            {"customer_id": " ", "timestamp": "2025-03-01T10:00:00", "amount": 1.0},
            {"customer_id": cid, "timestamp": "2025-03-02T10:00:00", "amount": 1.0, "colour": "red"},
            "not a row",
            {"customer_id": cid, "timestamp": "2025-03-03T10:00:00", "amount": -4.0},  # a refund: valid
            {"customer_id": cid, "timestamp": "2025-03-04T10:00:00", "amount": 1.0, "channel": "w\x00b"},
        ],
        "customers": [
            {"customer_id": cid, "signup_date": "2025-02-01", "churn_date": "2025-01-01"},
            {"customer_id": cid, "signup_date": "2025-02-01"},
            {"customer_id": cid, "signup_date": "2025-02-02"},
        ],
    }
    r = client.post("/v1/events", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == {"transactions": 2, "events": 0, "customers": 1}
    got = [(e["table"], e["index"], e["field"], e["reason"]) for e in out["rejected"]]
    assert got == [
        ("transactions", 1, "transactions[1].amount", "non-numeric amount"),
        ("transactions", 2, "transactions[2].timestamp", "unparseable timestamp"),
        ("transactions", 3, "transactions[3].timestamp", "missing timestamp"),
        ("transactions", 4, "transactions[4]", "exact duplicate"),
        ("transactions", 5, "transactions[5].timestamp", "timestamp after now"),
        ("transactions", 6, "transactions[6].customer_id", "missing customer_id"),
        ("transactions", 7, "transactions[7].colour", "unknown column colour"),
        ("transactions", 8, "transactions[8]", "not an object"),
        ("transactions", 10, "transactions[10].channel", "invalid channel"),
        ("customers", 0, "customers[0].churn_date", "churn_date before signup_date"),
        ("customers", 2, "customers[2].customer_id", "duplicate customer_id"),
    ]
    assert all(e["detail"] for e in out["rejected"])
    assert out["rejected"][0]["customer_id"] == cid
    stored = client.post("/v1/customers/score", json={"customer_ids": [cid], "as_of": "2025-04-01"}).json()
    assert [s["customer_id"] for s in stored["scores"]] == [cid] and stored["not_found"] == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"transactions": [', "body"),
        (b'{"transactions": {"customer_id": "a"}}', "transactions"),
        (b"{}", "transactions"),
        (b'{"transactions": [], "events": []}', "transactions"),
        (b'{"orders": []}', "orders"),
        (json.dumps({"events": [{}] * 10_001}).encode(), "events"),
    ],
)
def test_a_malformed_events_body_is_a_400(client, raw, field):
    r = client.post("/v1/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()


def test_events_need_the_events_scope(client, demo_data):
    cid = _ids(demo_data[0], 1)[0]
    reader = {"Authorization": f"Bearer {READER}"}
    assert client.get(f"/v1/customers/{cid}/score", headers=reader).status_code == 200
    body = {"events": [{"customer_id": cid, "timestamp": "2025-01-01T00:00:00", "event_type": "session"}]}
    r = client.post("/v1/events", json=body, headers=reader)
    assert r.status_code == 403 and "'events' scope" in r.json()["detail"]
    assert client.get(f"/v1/customers/{cid}/score", headers={"Authorization": ""}).status_code == 401


def test_readyz_names_the_store(client, backend):
    r = client.get("/readyz", headers={"Authorization": ""})
    settings = backend[1]
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["detail"] is None
    assert r.json()["store"] == (settings.url or str(settings.path))  # (its password, if any, would be ***)


# --------------------------------------------------------------------------------------------- an unreachable store


def _assert_unavailable(client, demo_ids: list[str]) -> None:
    cid = demo_ids[0]
    answers = [
        client.get(f"/v1/customers/{cid}/score"),
        client.post("/v1/customers/score", json={"customer_ids": [cid]}),
        client.post(
            "/v1/events", json={"events": [{"customer_id": cid, "timestamp": "2025-01-01", "event_type": "x"}]}
        ),
    ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:churnguard:problem:unavailable" and "store" in r.json()["detail"]
        assert "Traceback" not in r.text and r.headers["retry-after"] == "5"
    assert client.get("/v1/model").status_code == 200  # what needs no store keeps working


def test_a_broken_embedded_store_is_503_and_not_ready(registered, test_settings, demo_data, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store folder should be")
    with service(test_settings.data_dir, {"CHURN_STORE__PATH": str(blocker / "store")}) as client:
        _assert_unavailable(client, _ids(demo_data[0], 1))
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
        assert f"the customer store at {blocker / 'store'} cannot be reached" in ready.json()["detail"]


def test_postgres_going_down_is_503_and_coming_back_needs_no_restart(registered, test_settings, demo_data):
    if missing_binaries():
        pytest.skip(f"PostgreSQL server binaries not on PATH ({', '.join(missing_binaries())})")
    from features.store import StoreSettings, open_store

    cid = _ids(demo_data[0], 1)[0]
    with cluster(durable=True) as pg:  # its stop is an immediate shutdown: commits must be on disk already
        store = open_store(StoreSettings(url=pg.url), test_settings.data_dir)
        store.append(transactions=[{"customer_id": cid, "timestamp": datetime(2024, 5, 1), "amount": 10.0}])
        store.close()
        with service(test_settings.data_dir, {"CHURN_STORE__URL": pg.url}) as client:
            up = client.get(f"/v1/customers/{cid}/score", params={"as_of": "2024-06-01"})
            assert up.status_code == 200 and len(up.json()["scores"]) == 1
            assert client.get("/readyz").status_code == 200
            pg.stop()
            _assert_unavailable(client, [cid])
            ready = client.get("/readyz", headers={"Authorization": ""})
            assert ready.status_code == 503
            assert f"the customer store at {pg.url} cannot be reached" in ready.json()["detail"]
            pg.start()
            for _ in range(12):  # each request thread may still hold a connection from before the restart
                again = client.get(f"/v1/customers/{cid}/score", params={"as_of": "2024-06-01"})
                assert again.status_code == 200 and again.json()["scores"] == up.json()["scores"]
                assert client.get("/readyz").status_code == 200


def test_a_closed_port_is_503(registered, test_settings, demo_data):
    with service(test_settings.data_dir, {"CHURN_STORE__URL": "postgresql://u:secret@127.0.0.1:9/db"}) as client:
        _assert_unavailable(client, _ids(demo_data[0], 1))
        ready = client.get("/readyz").json()
        assert "postgresql://u:***@127.0.0.1:9/db" in ready["detail"] and "secret" not in json.dumps(ready)


def test_outbox_pages_through_fired_triggers_with_a_cursor(client, store):
    """GET /v1/outbox: every item once, in seq order, control items marked; a bad cursor or limit is a 400 naming
    the parameter."""
    from features.store.outbox import items_table, outbox_id

    fired = datetime(2024, 10, 1, 6)
    rows = [
        {
            "id": outbox_id("cart_abandoned", f"api-outbox-{i}", fired),
            "customer_id": f"api-outbox-{i}",
            "rule": "cart_abandoned",
            "action": "cart_reminder",
            "fired_at": fired,
            "as_of": fired,
            "fields": json.dumps({"hours_since_cart_add": 30.5}),
            "control": i % 3 == 0,
        }
        for i in range(7)
    ]
    store.add_outbox(items_table(rows))
    seen, cursor = [], 0
    while True:
        r = client.get("/v1/outbox", params={"after": cursor, "limit": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        seen += body["items"]
        cursor = body["next_after"]
        if not body["has_more"]:
            break
    ours = [i for i in seen if i["customer_id"].startswith("api-outbox-")]
    assert [i["customer_id"] for i in ours] == [f"api-outbox-{i}" for i in range(7)]
    assert [i["seq"] for i in seen] == sorted({i["seq"] for i in seen})
    assert all(i["control"] == (i["state"] == "control") for i in ours)
    assert ours[1]["fields"] == {"hours_since_cart_add": 30.5} and ours[1]["as_of"] == "2024-10-01T06:00:00Z"
    for params, field in (({"limit": 0}, "limit"), ({"after": -1}, "after"), ({"limit": "x"}, "limit")):
        r = client.get("/v1/outbox", params=params)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
        assert any(field in json.dumps(e) for e in r.json()["errors"]), r.text


def _outbox_of(client, customer_id: str) -> list[dict]:
    seen, cursor = [], 0
    while True:
        body = client.get("/v1/outbox", params={"after": cursor, "limit": 500}).json()
        seen += [i for i in body["items"] if i["customer_id"] == customer_id]
        cursor = body["next_after"]
        if not body["has_more"]:
            return seen


def _drained(client, customer_id: str, timeout_s: float = 60) -> list[dict]:
    """The customer's outbox items once the live worker has emptied its queue (a POST's customers are queued in the
    transaction that stores its rows, so an empty queue after the POST means they were evaluated)."""
    import time

    deadline = time.monotonic() + timeout_s
    while (ready := client.get("/readyz").json())["pending_evaluations"] != 0:
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    assert ready["live_triggers_error"] is None
    return _outbox_of(client, customer_id)


def test_events_are_evaluated_live_and_each_firing_is_written_once(client, store, model):
    """POST /v1/events with a cart_add 30 hours old: the background worker fires cart_abandoned into the outbox
    (the batch's id for the day); the same request again, and a later event, fire nothing new; nor does the day's
    batch run afterwards."""
    from features.contract import now_utc
    from features.store.outbox import outbox_id
    from serving.policy import load_policy
    from serving.triggers import evaluate_triggers, load_triggers

    now = now_utc().replace(tzinfo=None)
    cid = f"api-cart-{uuid.uuid4().hex[:8]}"
    body = {
        "transactions": [{"customer_id": cid, "timestamp": (now - timedelta(days=40)).isoformat(), "amount": 30.0}],
        "events": [
            {"customer_id": cid, "timestamp": (now - timedelta(hours=30)).isoformat(), "event_type": "cart_add"}
        ],
    }
    assert client.post("/v1/events", json=body).json()["added"] == {"transactions": 1, "events": 1, "customers": 0}
    (item,) = _drained(client, cid)
    assert item["rule"] == "cart_abandoned" and item["action"] == "cart_reminder"
    as_of = datetime.fromisoformat(item["as_of"].removesuffix("Z"))
    assert item["id"] == outbox_id("cart_abandoned", cid, as_of) and as_of >= now
    assert item["fields"]["hours_since_cart_add"] >= 30 and item["fields"]["risk_tier"] is not None

    assert client.post("/v1/events", json=body).json()["added"] == {"transactions": 0, "events": 0, "customers": 0}
    later = {"events": [{"customer_id": cid, "timestamp": now.isoformat(), "event_type": "session"}]}
    assert client.post("/v1/events", json=later).json()["added"]["events"] == 1  # queued, evaluated again
    assert _drained(client, cid) == [item]

    policy = load_policy()
    run = evaluate_triggers(
        None, model, load_triggers(policy=policy), store, as_of + timedelta(minutes=1), policy=policy
    )
    assert cid not in {i["customer_id"] for i in run.items().to_pylist()}
    assert _outbox_of(client, cid) == [item]


def test_with_a_separate_worker_the_api_only_queues_and_churn_triggers_queued_evaluates(
    registered, test_settings, demo_dir, tmp_path
):
    """serving.live_triggers_worker = process: POST /v1/events queues its customer and nothing in the API
    evaluates it (the backlog stays); `churn triggers --queued`, a process of its own, fires cart_abandoned with the
    same outbox id the in-service worker would give, and empties the queue."""
    import time

    from typer.testing import CliRunner

    from churnguard.cli import app
    from features.contract import now_utc
    from features.store import StoreSettings, ingest, open_store
    from features.store.outbox import outbox_id

    settings = StoreSettings(path=tmp_path / "store")
    store = open_store(settings, test_settings.data_dir)
    ingest(store, demo_dir, now=NOW)
    store.close()
    env = {"CHURN_STORE__PATH": str(settings.path), "CHURN_SERVING__LIVE_TRIGGERS_WORKER": "process"}
    now = now_utc().replace(tzinfo=None)
    cid = f"api-sep-{uuid.uuid4().hex[:8]}"
    body = {
        "transactions": [{"customer_id": cid, "timestamp": (now - timedelta(days=40)).isoformat(), "amount": 30.0}],
        "events": [
            {"customer_id": cid, "timestamp": (now - timedelta(hours=30)).isoformat(), "event_type": "cart_add"}
        ],
    }
    with service(test_settings.data_dir, env) as client:
        assert client.post("/v1/events", json=body).json()["added"]["events"] == 1
        time.sleep(2.5)  # more than the in-service worker's delay and poll: it would have run by now
        assert client.get("/readyz").json()["pending_evaluations"] == 1
        assert _outbox_of(client, cid) == []

        cli_env = {"CHURN_DATA_DIR": str(test_settings.data_dir), **env}
        done = CliRunner().invoke(app, ["triggers", "--queued"], env=cli_env)
        assert done.exit_code == 0, done.output
        assert "evaluated 1 queued customers; 1 triggers fired" in " ".join(done.output.split())
        (item,) = _outbox_of(client, cid)
        assert item["rule"] == "cart_abandoned"
        assert item["id"] == outbox_id("cart_abandoned", cid, datetime.fromisoformat(item["as_of"].removesuffix("Z")))
        assert client.get("/readyz").json()["pending_evaluations"] == 0
        again = CliRunner().invoke(app, ["triggers", "--queued"], env=cli_env)
        assert "evaluated 0 queued customers" in " ".join(again.output.split())
        bad = CliRunner().invoke(app, ["triggers", "--queued", "--as-of", "2024-01-01"], env=cli_env)
        assert bad.exit_code == 2 and "--queued" in bad.output
