"""The scoring API (BentoML): the champion model behind ``POST /score``, ``POST /score_features`` and ``GET /model``.

The model is resolved once at start-up: ``churnguard:latest`` from BentoML's model store, which ``churn serve``
syncs to the registry's champion first (and which a built bento carries). ``CHURN_SCORING__MODEL_URI`` loads a
model straight from the MLflow registry instead (used by the tests and for debugging). Features come from the
same ``build_features`` as batch scoring, through ``serving.scoring.score_dataset``; requests run the compiled
definitions on the small-data engine (SQLite, see ``features/engines.py``), which answers in milliseconds.

Security: with ``CHURN_API_TOKEN`` set, every call except health, metrics and docs needs
``Authorization: Bearer <token>`` (compared in constant time). Bodies over ``serving.max_body_bytes`` get 413.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import bentoml
import pandas as pd
from fastapi import FastAPI

from churnguard.settings import load_settings  # the service's edge: it builds its own settings (see the contract)
from features.build import as_entities
from features.contract import now_utc
from features.dataset import Dataset
from features.engines import SQLiteEngine
from model.churn_model import ChurnModel, ModelCard
from model.registry import load_local_model, load_model
from model.scorecard import NOT_SCORABLE, SCORECARD_COLUMNS
from serving.bento import BENTO_MODEL
from serving.policy import load_policy
from serving.schemas import CustomerHistory, Customers, FeatureRows, ScoreResponse, client_error, unique_ids
from serving.scoring import Scored, score_dataset, with_actions

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = ("/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/docs", "/favicon.ico")
model_app = FastAPI(title="churnguard model card")


@bentoml.service(name="churnguard", traffic={"timeout": 30}, workers=1)
@bentoml.asgi_app(model_app, path="/model")
class ChurnService:
    bento_model = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        configure_logging()
        self.settings = load_settings()
        self.model = self._load_model()
        self.policy = load_policy(self.settings.scoring.policy_file)
        self.engine = SQLiteEngine()
        self._warm_up()

    def _load_model(self) -> ChurnModel:
        """The model named by ``scoring.model_uri`` from the registry, else the one synced into BentoML's store."""
        if self.settings.scoring.model_uri:
            model = load_model(self.settings.mlflow, self.settings.scoring.model_uri)
        else:
            stored = self.bento_model
            version = stored.info.labels.get("registry_version", str(stored.tag))
            model = load_local_model(Path(stored.path_of("mlflow_model")), version)
        return model.with_overrides(tier_thresholds=self.settings.scoring.tier_thresholds)

    @model_app.get("/")
    def model_card(self) -> ModelCard:
        """Version, training dates, horizon, features and held-out metrics of the model being served."""
        return self.model.card()

    def _warm_up(self) -> None:
        """Compile the feature SQL and touch every model once, so the first real request is as fast as the rest."""
        t = datetime(2024, 1, 1)
        data = Dataset.from_records([{"customer_id": "warm-up", "timestamp": t, "amount": 1.0}])
        score_dataset(
            data,
            as_entities(["warm-up"], datetime(2024, 2, 1)),
            self.model,
            self.policy,
            engine=self.engine,
            reasons=True,
        )

    @bentoml.api
    def score(self, customers: Customers, as_of: datetime | date | None = None, reasons: bool = True) -> ScoreResponse:
        """Score customers from their raw history (the same features as batch scoring). ``as_of`` defaults to now."""
        unique_ids(customers, "customers")
        when = _as_datetime(as_of) if as_of else now_utc()
        data = _request_dataset(customers)
        entities = as_entities([c.customer_id for c in customers], when)
        scored = score_dataset(data, entities, self.model, self.policy, engine=self.engine, reasons=reasons)
        return self._response(scored, when)

    @bentoml.api
    def score_features(self, rows: FeatureRows, reasons: bool = True) -> ScoreResponse:
        """Score precomputed feature rows (every feature of GET /model's list, null where undefined)."""
        unique_ids(rows, "rows")
        names = self.model.feature_names
        for i, row in enumerate(rows):
            missing = [n for n in names if n not in row.features]
            unknown = [n for n in row.features if n not in set(names)]
            if missing or unknown:
                what = f"missing {missing[:5]}" if missing else f"unknown {unknown[:5]}"
                raise client_error(("rows", i, "features"), f"{what} (GET /model lists the {len(names)} features)")
        frame = pd.DataFrame(
            [{"customer_id": r.customer_id, "as_of": _as_datetime(r.as_of), **r.features} for r in rows]
        )
        frame[names] = frame[names].astype("float64")
        prospect = frame["frequency"].fillna(0) < 1
        scores = with_actions(self.model.score(frame.loc[~prospect], reasons=reasons), self.policy)
        rejected = pd.DataFrame({"customer_id": frame.loc[prospect, "customer_id"], "reason": NOT_SCORABLE})
        as_of = frame["as_of"].max().to_pydatetime()
        return self._response(Scored(scores, rejected), as_of)

    def _response(self, scored: Scored, as_of: datetime) -> ScoreResponse:
        records = scored.scores[list(SCORECARD_COLUMNS)].to_dict(orient="records")
        return ScoreResponse(
            model_version=self.model.model_version,
            as_of=as_of,
            scores=records,
            rejected=scored.rejected.to_dict(orient="records"),
            warnings=self.model.season_warnings(as_of),
        )


def _as_datetime(d: datetime | date) -> datetime:
    return d if isinstance(d, datetime) else datetime(d.year, d.month, d.day)


def _request_dataset(customers: list[CustomerHistory]) -> Dataset:
    """Contract tables from a request; exact duplicate rows are dropped, as batch validation does."""
    tx, ev, cu = [], [], []
    for c in customers:
        tx += [{**t.model_dump(), "customer_id": c.customer_id} for t in dict.fromkeys(c.transactions)]
        ev += [{**e.model_dump(), "customer_id": c.customer_id} for e in dict.fromkeys(c.events)]
        if c.signup_date or c.churn_date:
            cu.append({"customer_id": c.customer_id, "signup_date": c.signup_date, "churn_date": c.churn_date})
    return Dataset.from_records(tx, ev, cu)


# ------------------------------------------------------------------------------------------------ middleware


class ApiGuard:
    """Bearer-token check (when CHURN_API_TOKEN is set) and a request body size limit, as plain ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        settings = load_settings()
        self.token = settings.api_token.get_secret_value().encode() if settings.api_token else None
        self.max_body = settings.serving.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None and not _authorized(headers.get(b"authorization", b""), self.token):
            return await _send_json(
                send, 401, {"error": "missing or invalid bearer token"}, {b"www-authenticate": b"Bearer"}
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_json(send, 413, {"error": f"request body over {self.max_body:,} bytes"})
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _BodyTooLarge
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            return await _send_json(send, 413, {"error": f"request body over {self.max_body:,} bytes"})


class _BodyTooLarge(Exception):
    pass


def _is_open(path: str) -> bool:
    return path == "/" or path in OPEN_PATHS or path.startswith("/static_content/")


def _authorized(header: bytes, token: bytes) -> bool:
    scheme, _, value = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)


async def _send_json(send: Send, status: int, body: dict, extra_headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += list((extra_headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


ChurnService.add_asgi_middleware(ApiGuard)


# ------------------------------------------------------------------------------------------------ logging


class _ClientErrorFilter(logging.Filter):
    """A bad request is the client's problem: log one line, not a 25-line traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        client_error = isinstance(exc, ValidationError) or (
            isinstance(exc, bentoml.exceptions.BentoMLException) and exc.error_code.value < 500
        )
        if client_error:
            record.msg = f"{record.getMessage()}: client error: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging() -> None:
    """The service process's logging, set once at its edge: one line per client error, no MLflow chatter."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())
    logging.getLogger("mlflow").setLevel(logging.ERROR)
