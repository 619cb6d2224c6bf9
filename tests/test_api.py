"""The scoring API through BentoML's ASGI app: scorecards, auth, 4xx for bad input, and API == batch."""

from __future__ import annotations

import json
import os
from datetime import datetime

import numpy as np
import pyarrow.compute as pc
import pytest
from starlette.testclient import TestClient

pytestmark = pytest.mark.slow

TOKEN = "test-token-123"
AS_OF = "2024-10-01"


@pytest.fixture(scope="module")
def client(registered, test_settings):
    env = {
        "CHURN_DATA_DIR": str(test_settings.data_dir),
        "CHURN_SCORING__MODEL_URI": "models:/churnguard@champion",
        "CHURN_API_TOKEN": TOKEN,
        "CHURN_SERVING__MAX_BODY_BYTES": "2000000",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from serving.service import ChurnService

        with TestClient(ChurnService.to_asgi(), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            yield c
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    r = client.post("/score", json={"customers": [history(data, c) for c in sample_ids], "as_of": AS_OF})
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
    r = client.post("/score", json={"customers": [history(data, c) for c in sample_ids], "as_of": AS_OF})
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
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    assert [s["customer_id"] for s in r.json()["scores"]] == ["r1"]
    assert r.json()["rejected"][0]["customer_id"] == "p1"
    assert "no purchase before as_of" in r.json()["rejected"][0]["reason"]


def test_model_endpoint(client):
    r = client.get("/model")
    assert r.status_code == 200
    card = r.json()
    assert card["model_version"] == "churnguard/1" and card["horizon_days"] == 90
    assert "recency_days" in card["features"] and "roc_auc" in card["holdout_metrics"]


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
    a = client.post("/score_features", json={"rows": [row]}).json()
    b = client.post("/score", json={"customers": [history(data, cid)], "as_of": AS_OF}).json()
    assert a["scores"] == b["scores"]


def test_auth(client):
    body = {"customers": [{"customer_id": "a", "transactions": [{"timestamp": "2024-01-01", "amount": 1}]}]}
    assert client.post("/score", json=body, headers={"Authorization": ""}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/model", headers={"Authorization": ""}).status_code == 401
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
def test_bad_input_is_a_4xx_naming_the_field(client, case):
    body, field = BAD_REQUESTS[case]
    r = client.post("/score", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text
    assert "Traceback" not in r.text


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
    r = client.post("/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text


def test_oversized_body_is_413(client):
    tx = [{"timestamp": "2024-01-01T10:00:00", "amount": 1.0, "product_id": "x" * 400}] * 5000
    r = client.post("/score", json={"customers": [{"customer_id": "big", "transactions": tx}]})
    assert r.status_code == 413


def test_score_features_with_missing_features_is_400(client):
    r = client.post(
        "/score_features", json={"rows": [{"customer_id": "a", "as_of": AS_OF, "features": {"recency_days": 3.0}}]}
    )
    assert r.status_code == 400
    assert "features" in r.text and "missing" in r.text


def test_openapi_documents_the_request(client):
    doc = client.get("/docs.json").json()
    text = json.dumps(doc)
    assert "/score" in doc["paths"] and "churn_probability" in text and "refunds" in text.lower()


def test_probabilities_are_finite(client, demo_data, sample_ids):
    data, _ = demo_data
    r = client.post("/score", json={"customers": [history(data, c) for c in sample_ids[:5]], "as_of": AS_OF})
    values = [s["churn_probability"] for s in r.json()["scores"]]
    assert np.isfinite(values).all()
