"""The OpenAPI document a client generator reads: valid, complete for /v1, bearer scheme, problem responses."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate


@pytest.fixture(scope="module")
def doc():
    from serving.service import api

    return api.openapi()


def test_the_document_is_valid_openapi_31(doc):
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the 3.1 schema
    assert "nullable" not in json.dumps(doc)  # a 3.0 keyword: the document speaks one version


def test_every_v1_route_is_documented(doc):
    from fastapi.routing import APIRoute

    from serving.service import api

    def flat(routes):  # FastAPI keeps included routers as one entry holding the original router
        for r in routes:
            inner = getattr(r, "original_router", None)
            yield from flat(inner.routes) if inner is not None else [r]

    routes = {
        (r.path, m.lower())
        for r in flat(api.routes)
        if isinstance(r, APIRoute) and r.path.startswith("/v1/")
        for m in r.methods
    }
    documented = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert routes and routes <= documented
    assert {("/v1/score", "post"), ("/v1/score_features", "post"), ("/v1/model", "get")} <= documented
    assert {
        ("/v1/customers/{customer_id}/score", "get"),
        ("/v1/customers/score", "post"),
        ("/v1/events", "post"),
    } <= documented
    assert ("/readyz", "get") in documented


def test_bearer_scheme_and_problem_responses(doc):
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    problem = doc["components"]["schemas"]["ProblemDetails"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail", "instance"}
    assert "errors" in problem["properties"]
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            assert "422" not in op["responses"], (path, method)
            for status in ("401", "429"):
                content = op["responses"][status]["content"]
                assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}
            if method == "post":
                assert {"400", "413"} <= set(op["responses"]), (path, method)
    assert doc["paths"]["/readyz"]["get"]["security"] == []
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]


def test_operation_ids_are_the_route_names(doc):
    ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert {"score", "score_features", "model_info", "customer_score", "customers_score", "events"} <= ids


def test_the_store_routes_document_their_problems_and_parameters(doc):
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    lookup = doc["paths"]["/v1/customers/{customer_id}/score"]["get"]
    assert {"400", "401", "403", "404", "429", "503"} <= set(lookup["responses"])
    assert lookup["responses"]["404"]["content"] == problem and lookup["responses"]["503"]["content"] == problem
    params = {(p["name"], p["in"], p.get("required", False)) for p in lookup["parameters"]}
    assert params == {("customer_id", "path", True), ("as_of", "query", False), ("reasons", "query", False)}
    batch = doc["paths"]["/v1/customers/score"]["post"]
    assert {"400", "413", "503"} <= set(batch["responses"])
    events = doc["paths"]["/v1/events"]["post"]
    assert {"400", "401", "403", "413", "429", "503"} <= set(events["responses"])
    body = events["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    rows = schema["properties"]["transactions"]
    assert rows["type"] == "array" and rows["maxItems"] == 10_000
    assert {"customer_id", "timestamp", "amount"} <= set(rows["items"]["required"])  # typed for client generators
    assert "rejected" in doc["components"]["schemas"]["EventsResponse"]["properties"]
    assert "not_found" in doc["components"]["schemas"]["CustomersScoreResponse"]["properties"]
