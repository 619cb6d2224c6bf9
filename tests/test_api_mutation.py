"""Seeded mutation of valid requests over every route: never a 5xx, every 4xx a problem document, every 200 valid.

The store routes run on the session service's embedded store (empty but for the rows this test posts).

Each case starts from a valid request and changes one or two things: a value of the wrong type, a missing or an
unknown key, an odd date, a huge number, unicode, a truncated or corrupted body, a wrong content type. The seed is
fixed, so a failure names a case that replays exactly (the assertion message holds the request).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import datetime
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.slow
SEED = 20261202
CASES = {
    "/v1/score": 300,
    "/v1/score_features": 150,
    "/v1/model": 40,
    "/v1/customers/score": 150,
    "/v1/events": 200,
    "/v1/customers/{id}/score": 80,
}

ODD_VALUES = [
    None,
    "",
    " ",
    "x" * 300,
    "顧客-Ω-🙂",
    "\u202eevil\u202c",
    "\x00",
    "null",
    0,
    -1,
    1e308,
    -1e308,
    1e-308,
    10**30,
    -(2**63),
    2**64,
    True,
    False,
    [],
    {},
    [1, 2],
    {"a": 1},
    "1e400",
    "NaN",
    "Infinity",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59",
    "2024-02-30",
    "2024-13-01",
    "2024-06-01T25:00:00",
    "2024-06-01T00:00:00+14:00",
    "2024-06-01T00:00:00Z",
    "1970-01-01",
    "-2024-01-01",
    "2024-06-01T00:00:00.123456789",
    "20240601",
    "1717200000",
]


def _score_body() -> dict:
    return {
        "customers": [
            {
                "customer_id": "m1",
                "transactions": [
                    {"timestamp": "2024-02-01T10:00:00", "amount": 40.0, "order_id": "o1", "quantity": 2.0},
                    {"timestamp": "2024-03-15T10:00:00", "amount": 25.5, "category": "shoes", "channel": "web"},
                    {"timestamp": "2024-04-20T10:00:00", "amount": -10.0, "product_id": "p9"},
                ],
                "events": [
                    {"timestamp": "2024-05-01T08:00:00", "event_type": "session"},
                    {"timestamp": "2024-05-02T08:00:00", "event_type": "email_open"},
                ],
                "signup_date": "2023-12-01T00:00:00",
            },
            {"customer_id": "m2", "transactions": [{"timestamp": "2024-05-20T12:00:00", "amount": 99.0}]},
        ],
        "as_of": "2024-06-01",
        "reasons": True,
    }


def _lookup_body() -> dict:
    return {"customer_ids": ["m1", "m2", "nobody"], "as_of": "2024-06-01", "reasons": True}


def _events_body() -> dict:
    return {
        "transactions": [
            {"customer_id": "m1", "timestamp": "2024-02-01T10:00:00", "amount": 40.0, "order_id": "o1"},
            {"customer_id": "m1", "timestamp": "2024-04-20T10:00:00", "amount": -10.0, "product_id": "p9"},
            {"customer_id": "m2", "timestamp": "2024-05-20T12:00:00", "amount": 99.0, "quantity": 1.0},
        ],
        "events": [{"customer_id": "m1", "timestamp": "2024-05-01T08:00:00", "event_type": "session"}],
        "customers": [{"customer_id": "m1", "signup_date": "2023-12-01T00:00:00", "churn_date": None}],
    }


@pytest.fixture(scope="module")
def feature_body(demo_data):
    from features.build import as_entities, build_features

    data, _ = demo_data
    cid = data.transactions["customer_id"][0].as_py()
    feats = build_features(data, as_entities([cid], datetime(2024, 10, 1))).to_pylist()[0]
    features = {k: v for k, v in feats.items() if k not in ("customer_id", "as_of")}
    return {"rows": [{"customer_id": cid, "as_of": "2024-10-01", "features": features}], "reasons": True}


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _mutate_tree(rng: random.Random, body):
    body = copy.deepcopy(body)
    paths = [p for p in _paths(body) if p]
    path = rng.choice(paths)
    parent, last = _get(body, path[:-1]), path[-1]
    op = rng.choice(["replace", "replace", "replace", "delete", "unknown", "duplicate", "wrap", "stringify"])
    if op == "replace":
        parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif op == "delete":
        del parent[last]
    elif op == "unknown":
        target = _get(body, path) if isinstance(_get(body, path), dict) else parent
        if isinstance(target, dict):
            target[rng.choice(["colour", "ÿ", "", "__proto__", "customer_id "])] = rng.choice(ODD_VALUES)
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "stringify":
        parent[last] = json.dumps(parent[last])
    return body


def _mutate(rng: random.Random, body) -> tuple[bytes, dict[str, str]]:
    """One or two tree mutations, sometimes followed by damage to the bytes or the content type."""
    tree = _mutate_tree(rng, body)
    if rng.random() < 0.3:
        tree = _mutate_tree(rng, tree)
    raw = json.dumps(tree, ensure_ascii=rng.random() < 0.5).encode()
    headers = {"content-type": "application/json"}
    damage = rng.random()
    if damage < 0.06:
        raw = raw[: rng.randrange(len(raw))]
    elif damage < 0.10:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
    elif damage < 0.12:
        raw = b"\xff\xfe" + raw
    elif damage < 0.15:
        headers["content-type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
    return raw, headers


def _strict_json(text: str):
    def no_constants(name):
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=no_constants)


def _check(r, what: str) -> str:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    assert "Traceback" not in r.text, what
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json", f"{what}: {r.headers['content-type']}"
        problem = _strict_json(r.text)
        assert {"type", "title", "status", "detail", "instance"} <= set(problem), what
        assert problem["status"] == r.status_code and problem["type"].startswith("urn:churnguard:problem:"), what
        if r.status_code == 400 and "errors" in problem:
            assert all(e["field"] and e["detail"] for e in problem["errors"]), what
        return "4xx"
    _strict_json(r.text)  # a 200 carries real JSON: no NaN or Infinity
    return "200"


def test_mutated_requests_never_fail_the_server(api_client, feature_body):
    rng = random.Random(SEED)
    bases = {
        "/v1/score": _score_body(),
        "/v1/score_features": feature_body,
        "/v1/customers/score": _lookup_body(),
        "/v1/events": _events_body(),
    }
    seeded = api_client.post("/v1/events", json=_events_body())  # so that lookups find m1 and m2 in the store
    assert seeded.status_code == 200 and not seeded.json()["rejected"], seeded.text
    outcomes: dict[str, dict[str, int]] = {}
    for route, n in CASES.items():
        counts = outcomes.setdefault(route, {"200": 0, "4xx": 0})
        for i in range(n):
            if route == "/v1/model":
                query = {rng.choice(["as_of", "x", "ÿ", ""]): str(rng.choice(ODD_VALUES))}
                r = api_client.get(route, params=query, headers={"X-Request-ID": rng.choice(["ok-1", "bad id", ""])})
                what = f"GET {route} case {i}: {query}"
            elif route == "/v1/customers/{id}/score":
                cid = rng.choice(["m1", "m2", "nobody", *map(str, ODD_VALUES)])
                query = {"as_of": "2024-06-01", "reasons": "true"}
                query[rng.choice(["as_of", "reasons", "x"])] = str(rng.choice(ODD_VALUES))
                if rng.random() < 0.3:
                    query.pop(rng.choice(list(query)))
                r = api_client.get(f"/v1/customers/{quote(cid, safe='')}/score", params=query)
                what = f"GET {route} case {i}: {cid!r} {query}"
            else:
                raw, headers = _mutate(rng, bases[route])
                r = api_client.post(route, content=raw, headers=headers)
                what = f"POST {route} case {i}: {raw[:600]!r}"
            counts[_check(r, what)] += 1
    # the mutations must reach both outcomes on every route that takes input, or they test nothing
    for route in ("/v1/score", "/v1/score_features", "/v1/customers/score", "/v1/events"):
        assert outcomes[route]["200"] > 10 and outcomes[route]["4xx"] > 30, outcomes
    assert outcomes["/v1/customers/{id}/score"]["200"] > 5 and outcomes["/v1/customers/{id}/score"]["4xx"] > 5
