"""One error shape for the whole API: RFC 9457 ``application/problem+json``.

Every error answer, whoever produces it (our routes, request validation, the auth and size guard, BentoML's own
handlers, an unknown path), is a problem document::

    {"type": "urn:churnguard:problem:invalid-request", "title": "Invalid request", "status": 400,
     "detail": "2 fields are invalid", "instance": "/v1/score", "request_id": "9c1f...",
     "errors": [{"field": "customers[0].transactions[3].amount", "pointer": "#/customers/0/transactions/3/amount",
                 "location": "body", "detail": "Input should be a valid number"}]}

``type`` is a stable identifier a client can switch on (URNs, listed in ``PROBLEM_TYPES`` and the README);
``errors[]`` appears for validation errors and names each field by its path in the request body (``field``, and
``pointer`` as a JSON Pointer), query string or path. 5xx problems never carry exception text: the request id
finds the traceback in the server log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"
URN = "urn:churnguard:problem:"

# status -> (type slug, title). One type per status, except 400, which distinguishes bad JSON from bad fields.
PROBLEM_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid-request", "Invalid request"),
    401: ("unauthenticated", "Missing or invalid API key"),
    403: ("forbidden", "API key not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
    504: ("timeout", "Request timed out"),
}
MALFORMED_JSON = ("malformed-json", "Malformed JSON")


class FieldError(BaseModel):
    field: str = Field(description="Path of the field at fault, e.g. customers[0].transactions[3].amount.")
    pointer: str | None = Field(None, description="The same path as a JSON Pointer into the body (#/customers/0).")
    location: str = Field(description="body, query, path or header.")
    detail: str = Field(description="What is wrong with it.")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, the body of every error answer (content type application/problem+json)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(description="Problem type URI; stable, one per kind of error (see the API docs).")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong for this request.")
    instance: str = Field(description="The request path this problem occurred on.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request (also in the server log).")
    errors: list[FieldError] | None = Field(None, description="Each invalid field, for validation errors.")


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        kind: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors) if errors else None
        self.headers = headers or {}
        self.kind = kind


def problem_body(
    status: int,
    detail: str,
    *,
    instance: str,
    request_id: str | None = None,
    errors: Sequence[dict[str, Any]] | None = None,
    kind: tuple[str, str] | None = None,
) -> dict[str, Any]:
    slug, title = kind or PROBLEM_TYPES.get(status) or (_slug(status), _phrase(status))
    body: dict[str, Any] = {
        "type": URN + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = list(errors)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()


def field_error(loc: Iterable[Any], detail: str, location: str = "body") -> dict[str, Any]:
    """One ``errors[]`` entry from a pydantic-style location tuple: ("customers", 0, "amount")."""
    parts = [p for p in loc]
    return {
        "field": dotted(parts) or location,
        "pointer": "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)
        if location == "body"
        else None,
        "location": location,
        "detail": detail,
    }


def dotted(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def validation_errors(errors: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Pydantic / FastAPI validation errors as ``errors[]`` entries; the flag says the JSON itself was broken.

    FastAPI's locations start with where the value came from (body, query, path, header); pydantic's own
    errors have no such prefix and are taken as the body.
    """
    out, malformed = [], False
    for e in errors:
        loc = list(e.get("loc") or ())
        location = "body"
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            location, loc = str(loc[0]), loc[1:]
        if e.get("type") == "json_invalid":
            malformed = True
            ctx = e.get("ctx") or {}
            msg = f"not valid JSON: {ctx.get('error', e.get('msg', ''))}"
            out.append({"field": "body", "pointer": "#", "location": "body", "detail": msg})
            continue
        out.append(field_error(loc, _message(e), location))
    return out, malformed


def _message(e: dict[str, Any]) -> str:
    msg = str(e.get("msg") or e.get("type") or "invalid")
    if e.get("type") == "missing" and not e.get("loc"):
        return "a JSON body is required"
    return msg.removeprefix("Value error, ")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(status: int) -> str:
    return _phrase(status).lower().replace(" ", "-").replace("'", "")


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for a route: each status answered with a problem document."""
    return {
        status: {
            "description": PROBLEM_TYPES.get(status, (None, _phrase(status)))[1],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }
