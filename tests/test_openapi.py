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
    assert {"score", "score_features", "model_info"} <= ids
