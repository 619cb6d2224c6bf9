"""The API's OpenAPI document (3.1, as FastAPI writes it), completed for client generators.

FastAPI documents the routes and their bodies; this adds what it cannot know: the bearer scheme every ``/v1``
route takes, the problem documents (``application/problem+json``) errors answer with (and drops FastAPI's 422,
which this API never sends: validation errors are 400 problems), and the open ``/readyz`` probe. The document is
served at ``/v1/openapi.json`` and ``/docs.json`` (the BentoML docs page at ``/`` reads that one);
``tests/test_openapi.py`` validates it with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from serving.problems import PROBLEM_JSON, ProblemDetails, openapi_responses
from serving.schemas import Readiness

BEARER = "bearerAuth"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["ProblemDetails"] = problem
    readiness = Readiness.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["Readiness"] = readiness
    doc["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (serving.keys_file or serving.api_keys). A service started without keys "
            "listens on the loopback interface only and does not ask for one.",
        }
    }
    doc["security"] = [{BEARER: []}]
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path in ("/docs.json", "/v1/openapi.json"):
                operation["security"] = []
    doc.setdefault("paths", {})["/readyz"] = {
        "get": {
            "summary": "Readiness, with the served model version",
            "operationId": "readyz",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Ready",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
                },
                **{str(k): v for k, v in openapi_responses(503).items()},
            },
        }
    }
    for item in doc["paths"].values():
        for operation in item.values():
            operation["responses"] = {str(k): v for k, v in operation["responses"].items()}
    return doc


def install_openapi(app: FastAPI) -> None:
    """Replace FastAPI's generator with ``build_openapi`` (cached) and serve it at ``/docs.json`` too."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs.json", include_in_schema=False)
    def docs_json() -> JSONResponse:
        return JSONResponse(openapi())


__all__ = ["PROBLEM_JSON", "build_openapi", "install_openapi"]
