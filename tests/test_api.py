"""The scoring API through BentoML's ASGI app: /v1 scorecards, keys, problem documents for bad input, API == batch."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow.compute as pc
import pytest

pytestmark = pytest.mark.slow

TOKEN = "test-token-123"  # tests/conftest.py::API_TOKEN, the key the session's api_client sends
AS_OF = "2024-10-01"


@pytest.fixture(scope="module")
def client(api_client):
    return api_client


def history(data, customer_id: str) -> dict:
    """A customer's clean rows as an API request entry."""

    def rows(table, columns):
        t = table.filter(pc.equal(table["customer_id"], customer_id)).select(columns).to_pylist()
        return [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items() if v is not None} for r in t
        ]

    tx_cols = ["timestamp", "amount", "order_id", "quantity", "product_id", "category", "channel"]
    entry = {
        "customer_id": customer_id,
        "transactions": rows(data.transactions, tx_cols),
        "events": rows(data.events, ["timestamp", "event_type"]),
    }
    cust = rows(data.customers, ["signup_date", "churn_date"])
    if cust:
        entry.update(cust[0])
    return entry


@pytest.fixture(scope="module")
def sample_ids(demo_data):
    data, _ = demo_data
    ids = pc.unique(data.transactions["customer_id"]).to_pylist()
    return ids[:: max(len(ids) // 25, 1)][:25]


def test_score_returns_scorecards(client, demo_data, sample_ids):
    data, _ = demo_data
    r = client.post("/v1/score", json={"customers": [history(data, c) for c in sample_ids], "as_of": AS_OF})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "churnguard/1"
    got = {s["customer_id"] for s in body["scores"]} | {s["customer_id"] for s in body["rejected"]}
    assert got == set(sample_ids)
    for card in body["scores"]:
        assert 0 <= card["churn_probability"] <= 1
        assert card["risk_tier"] in {"low", "medium", "high", "critical"}
        assert card["p_active_30d"] >= card["p_active_90d"] >= card["p_active_180d"]
        assert card["lifecycle_stage"] in {"new", "active", "loyal", "at_risk", "lapsed", "reactivated"}
        assert card["recommended_action"]
        assert card["model_version"] == "churnguard/1"


def test_api_equals_batch_for_the_same_customer_data(client, demo_data, sample_ids, registered, test_settings):
    from model.registry import load_model
    from serving.policy import load_policy
    from serving.scoring import score_batch
    from serving.settings import ScoringSettings

    data, rejects = demo_data
    as_of = datetime.fromisoformat(AS_OF)
    batch = score_batch(
        data,
        load_model(test_settings.mlflow),
        load_policy(),
        ScoringSettings(reasons="all"),
        as_of=as_of,
        invalid_customer_ids=rejects["customer_id"],
    ).scores.set_index("customer_id")
    r = client.post("/v1/score", json={"customers": [history(data, c) for c in sample_ids], "as_of": AS_OF})
    api = r.json()["scores"]
    assert len(api) >= 10
    for card in api:
        row = batch.loc[card["customer_id"]]
        for field in (
            "churn_probability",
            "p_active_30d",
            "p_active_90d",
            "median_days_to_churn",
            "expected_value_12m",
            "value_at_risk",
            "expected_value_saved",
        ):
            assert card[field] == pytest.approx(row[field], rel=1e-9, abs=1e-9), (card["customer_id"], field)
        for field in ("risk_tier", "lifecycle_stage", "recommended_action"):
            assert card[field] == row[field]
        assert card["top_reasons"] == list(row["top_reasons"])


def test_refunds_are_valid_and_prospects_are_rejected_with_a_reason(client):
    body = {
        "customers": [
            {
                "customer_id": "r1",
                "transactions": [
                    {"timestamp": "2024-05-01T10:00:00", "amount": 80.0},
                    {"timestamp": "2024-05-03T10:00:00", "amount": -30.0},
                ],
            },
            {"customer_id": "p1", "events": [{"timestamp": "2024-05-01T10:00:00", "event_type": "session"}]},
        ],
        "as_of": "2024-06-01",
    }
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    assert [s["customer_id"] for s in r.json()["scores"]] == ["r1"]
    assert r.json()["rejected"][0]["customer_id"] == "p1"
    assert "no purchase before as_of" in r.json()["rejected"][0]["reason"]


def test_nobody_with_a_purchase_before_as_of_is_200_with_everybody_rejected(client):
    """Round 1 answered 500 here (the policy step failed on an empty frame)."""
    cases = [
        [{"customer_id": "new", "events": [{"timestamp": "2024-05-01T10:00:00", "event_type": "session"}]}],
        [{"customer_id": "empty", "transactions": []}],
        [{"customer_id": "later", "transactions": [{"timestamp": "2024-07-01T10:00:00", "amount": 5.0}]}],
        [{"customer_id": "a"}, {"customer_id": "b", "signup_date": "2024-01-01"}],
    ]
    for customers in cases:
        r = client.post("/v1/score", json={"customers": customers, "as_of": "2024-06-01"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["scores"] == []
        assert [x["customer_id"] for x in body["rejected"]] == [c["customer_id"] for c in customers]
        assert all("no purchase before as_of" in x["reason"] for x in body["rejected"])


def test_model_endpoint_reports_the_served_version(client):
    r = client.get("/v1/model")
    assert r.status_code == 200
    card = r.json()
    assert card["model_version"] == "churnguard/1" and card["horizon_days"] == 90
    assert "recency_days" in card["features"] and "roc_auc" in card["holdout_metrics"]
    assert card["source"] == "models:/churnguard@champion" and card["loaded_at"]
    ready = client.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model_version"] == "churnguard/1"


def test_request_id_is_echoed_or_generated_on_every_response(client):
    r = client.get("/v1/model", headers={"X-Request-ID": "crm-42.a"})
    assert r.headers["x-request-id"] == "crm-42.a"
    for response in (
        client.get("/v1/model"),
        client.get("/livez"),
        client.get("/nowhere"),
        client.post("/v1/score", json={}),
        client.get("/v1/model", headers={"Authorization": ""}),
    ):
        assert len(response.headers["x-request-id"]) == 32, response.url
    bad = client.get("/v1/model", headers={"X-Request-ID": "no spaces or newlines allowed " * 10})
    assert bad.headers["x-request-id"] != "no spaces"
    problem = client.post("/v1/score", json={}, headers={"X-Request-ID": "req-7"}).json()
    assert problem["request_id"] == "req-7"


def test_unknown_route_and_method_are_problems(client):
    r = client.get("/v1/nowhere")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "urn:churnguard:problem:not-found" and r.json()["instance"] == "/v1/nowhere"
    r = client.get("/v1/score")
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 405


def test_score_features_matches_score(client, demo_data, sample_ids):
    from features.build import as_entities, build_features

    data, _ = demo_data
    cid = sample_ids[3]
    feats = build_features(data, as_entities([cid], datetime.fromisoformat(AS_OF))).to_pylist()[0]
    row = {
        "customer_id": cid,
        "as_of": AS_OF,
        "features": {k: v for k, v in feats.items() if k not in ("customer_id", "as_of")},
    }
    a = client.post("/v1/score_features", json={"rows": [row]}).json()
    b = client.post("/v1/score", json={"customers": [history(data, cid)], "as_of": AS_OF}).json()
    assert a["scores"] == b["scores"]


def test_auth(client):
    body = {"customers": [{"customer_id": "a", "transactions": [{"timestamp": "2024-01-01", "amount": 1}]}]}
    assert client.post("/v1/score", json=body, headers={"Authorization": ""}).status_code == 401
    assert client.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/score", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": ""}).status_code == 401
    # /metrics is open too, but needs the real server's Prometheus set-up (tests/test_served.py covers it)
    for path in ("/readyz", "/livez", "/docs.json"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200, path


def _one(**tx) -> dict:
    return {
        "customers": [
            {"customer_id": "c1", "transactions": [{"timestamp": "2024-01-01T10:00:00", "amount": 10.0, **tx}]}
        ]
    }


BAD_REQUESTS = {
    "empty list": ({"customers": []}, "customers"),
    "missing customers": ({}, "customers"),
    "wrong type amount": (_one(amount="ten"), "amount"),
    "missing timestamp": ({"customers": [{"customer_id": "c1", "transactions": [{"amount": 1.0}]}]}, "timestamp"),
    "unparseable date": (_one(timestamp="2024-02-30T10:00:00"), "timestamp"),
    "unparseable as_of": ({**_one(), "as_of": "soon"}, "as_of"),
    "unknown field": (_one(colour="red"), "colour"),
    "empty customer id": ({"customers": [{"customer_id": " ", "transactions": []}]}, "customer_id"),
    "duplicate ids": ({"customers": [{"customer_id": "a"}, {"customer_id": "a"}]}, "customer_id"),
    "too many customers": ({"customers": [{"customer_id": f"c{i}"} for i in range(1001)]}, "customers"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_a_400_problem_naming_the_field(client, case):
    body, field = BAD_REQUESTS[case]
    r = client.post("/v1/score", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "urn:churnguard:problem:invalid-request"
    assert problem["status"] == 400 and problem["title"] and problem["detail"] and problem["instance"] == "/v1/score"
    assert any(field in e["field"] for e in problem["errors"]), problem
    assert all(e["location"] == "body" and e["pointer"].startswith("#/") for e in problem["errors"])
    assert "Traceback" not in r.text


def test_field_paths_name_the_exact_row(client):
    body = _one(amount="ten")
    body["customers"][0]["transactions"].insert(0, {"timestamp": "2024-01-01T09:00:00", "amount": 1.0})
    problem = client.post("/v1/score", json=body).json()
    assert problem["errors"][0]["field"] == "customers[0].transactions[1].amount"
    assert problem["errors"][0]["pointer"] == "#/customers/0/transactions/1/amount"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"customers": [{"customer_id": "c", "transactions": [{"timestamp": "2024-01-01", "amount": NaN}]}]}',
        b'{"customers": [{"customer_id": "c", "transactions": [{"timestamp": "2024-01-01", "amount": Infinity}]}]}',
        b"not json",
        b"",
    ],
)
def test_non_finite_numbers_and_broken_json_are_400(client, raw):
    r = client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"], r.text
    assert "Traceback" not in r.text


def test_malformed_json_has_its_own_problem_type(client):
    r = client.post("/v1/score", content=b'{"customers": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["type"] == "urn:churnguard:problem:malformed-json"


def test_oversized_body_is_413(client):
    tx = [{"timestamp": "2024-01-01T10:00:00", "amount": 1.0, "product_id": "x" * 400}] * 5000
    r = client.post("/v1/score", json={"customers": [{"customer_id": "big", "transactions": tx}]})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 413


def test_oversized_body_without_content_length_is_413(client):
    chunk = b'{"customers": [{"customer_id": "big", "transactions": [' + b" " * 500_000

    def body():
        for _ in range(5):
            yield chunk

    r = client.post("/v1/score", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "urn:churnguard:problem:body-too-large"


def test_score_features_with_missing_features_is_400(client):
    r = client.post(
        "/v1/score_features", json={"rows": [{"customer_id": "a", "as_of": AS_OF, "features": {"recency_days": 3.0}}]}
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "rows[0].features" and "missing" in r.json()["errors"][0]["detail"]


def test_openapi_documents_the_request(client):
    doc = client.get("/docs.json").json()
    assert doc == client.get("/v1/openapi.json").json()
    text = json.dumps(doc)
    assert "/v1/score" in doc["paths"] and "churn_probability" in text and "refunds" in text.lower()


def test_probabilities_are_finite(client, demo_data, sample_ids):
    data, _ = demo_data
    r = client.post("/v1/score", json={"customers": [history(data, c) for c in sample_ids[:5]], "as_of": AS_OF})
    values = [s["churn_probability"] for s in r.json()["scores"]]
    assert np.isfinite(values).all()
