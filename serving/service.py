"""The scoring API (BentoML): versioned routes under ``/v1``, one error shape, keys, hot model reload.

| route | |
|---|---|
| ``POST /v1/score`` | customers with their raw history -> scorecards (+ the customers not scored, and why) |
| ``POST /v1/score_features`` | precomputed feature rows -> scorecards |
| ``GET /v1/model`` | the served model's card, where it came from, when it was loaded |
| ``GET /v1/customers/{customer_id}/score`` | a stored customer's scorecard (the customer store, ``features/store/``) |
| ``POST /v1/customers/score`` | up to 1,000 stored customers' scorecards, and the ids not found |
| ``POST /v1/events`` | new transactions, events and customer records into the store (checked row by row) |
| ``GET /v1/outbox`` | fired triggers after a cursor (``serving/outbox.py``; pull delivery) |
| ``/readyz``, ``/livez``, ``/metrics``, ``/docs.json`` (= ``/v1/openapi.json``), ``/`` (docs) | open |

The routes are a FastAPI app mounted into the BentoML service (BentoML's own ``@bentoml.api`` routes are POST-only
and cannot carry path parameters or a valid OpenAPI document); BentoML still runs the server: workers, metrics,
health, timeouts, ``bentoml build``. The customers ``POST /v1/events`` touches are queued with its rows and
evaluated against the trigger rules by a background worker (``serving/live_triggers.py``), off the request path.
Request validation, our own checks and every other error answer ``application/problem+json``
(``serving/problems.py``, ``serving/middleware.py``).

The model: followed from the registry (``scoring.model_uri``, default the champion alias) and swapped without a
restart when the alias moves (``serving/reload.py``); or, in a built bento (``serving.model_source = "bento"``),
the one packed into it. Features come from the same ``build_features`` as batch scoring, through
``serving.scoring.score_dataset``, on the small-data engine (SQLite, see ``features/engines.py``).

The customer store (``settings.store``: embedded under the data dir, or PostgreSQL) is opened on first use and
again after a failure (``serving/customers.py``): while it cannot be reached its routes answer 503 and ``/readyz``
says not ready, naming the store; the other routes keep working.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import bentoml
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from churnguard.settings import load_settings  # the service's edge: it builds its own settings (see the contract)
from features.build import as_entities
from features.contract import CustomerId, now_utc
from features.dataset import Dataset
from features.engines import SQLiteEngine
from model.churn_model import ChurnModel
from model.registry import load_local_model, load_model, registered_version
from model.scorecard import NOT_SCORABLE, SCORECARD_COLUMNS
from serving.bento import BENTO_MODEL
from serving.customers import StoreHandle, StoreUnavailable, check_rows, score_stored
from serving.live_triggers import LiveTriggers
from serving.middleware import ApiGuard
from serving.openapi import install_openapi
from serving.outbox import DEFAULT_LIMIT, MAX_LIMIT
from serving.outbox import page as outbox_page
from serving.policy import Policy, load_policy
from serving.problems import (
    MALFORMED_JSON,
    PROBLEM_JSON,
    Problem,
    field_error,
    openapi_responses,
    problem_body,
    validation_errors,
)
from serving.reload import ModelFollower, Served
from serving.schemas import (
    AsOf,
    CustomerHistory,
    CustomersScoreRequest,
    CustomersScoreResponse,
    EventsRequest,
    EventsResponse,
    FeatureScoreRequest,
    ModelInfo,
    OutboxPage,
    Readiness,
    ScoreRequest,
    ScoreResponse,
    unique_ids,
)
from serving.scoring import ScoredRows, score_rows, with_actions

log = logging.getLogger("churnguard.api")
API_VERSION = "1"
SCORING_ERRORS = openapi_responses(400, 401, 403, 413, 429, 503)
LOOKUP_ERRORS = openapi_responses(400, 401, 403, 404, 429, 503)

api = FastAPI(
    title="churnguard scoring API",
    version=API_VERSION,
    description="Churn scorecards for a CRM. Errors are RFC 9457 problem documents (application/problem+json).",
    openapi_url="/v1/openapi.json",
    docs_url=None,
    redoc_url=None,
    generate_unique_id_function=lambda route: route.name,  # operationId = the method name: score, model_info, ...
)


@bentoml.service(name="churnguard", workers="cpu_count", traffic={"timeout": 30})
@bentoml.asgi_app(api, path="/")
class ChurnService:
    def __init__(self) -> None:
        configure_logging()
        self.settings = load_settings()
        self.policy: Policy = load_policy(self.settings.scoring.policy_file)
        self.engine = SQLiteEngine()
        _limit_threads(self.settings.serving.threads)
        self.store = StoreHandle(self.settings.store, self.settings.data_dir)
        self.follower = self._follower()
        self.follower.start()
        self.live = self._live_triggers()
        log.info("serving %s from %s", self.follower.current.version, self.follower.source)

    def _follower(self) -> ModelFollower:
        s = self.settings
        if s.serving.model_source == "bento":
            stored = bentoml.models.get(BENTO_MODEL)
            path = Path(stored.path_of("mlflow_model"))
            version = stored.info.labels.get("registry_version", str(stored.tag))
            return ModelFollower(
                lambda v: self._prepare(load_local_model(path, v)), initial=version, source=f"bento {stored.tag}"
            )
        uri = s.model_uri

        def resolve() -> str:
            return registered_version(s.mlflow, uri)

        return ModelFollower(
            lambda version: self._prepare(load_model(s.mlflow, f"models:/{version}")),
            initial=resolve(),
            source=uri,
            resolve=resolve,
            interval_s=s.serving.reload_interval_s,
        )

    def _live_triggers(self) -> LiveTriggers | None:
        """The background trigger evaluation of the customers ``POST /v1/events`` touches (serving/live_triggers.py);
        the rules file is validated here, at start-up."""
        s = self.settings
        if not s.serving.live_triggers:
            return None
        from serving.triggers import load_triggers

        rules = load_triggers(s.scoring.triggers_file, policy=self.policy)
        live = LiveTriggers(
            self.store,
            lambda: self.follower.current.model,
            rules,
            self.policy,
            engine=self.engine,
            batch=s.serving.live_triggers_batch,
            poll_s=s.serving.live_triggers_poll_s,
            delay_s=s.serving.live_triggers_delay_s,
        )
        if s.serving.live_triggers_worker == "service":
            live.start()  # else `churn triggers --follow` evaluates; this process only queues and reports the backlog
        return live

    def _prepare(self, model: ChurnModel) -> ChurnModel:
        """Apply the tier overrides, then compile the feature SQL and touch every model part once, so the first
        request on a new model is as fast as the rest."""
        model = model.with_overrides(tier_thresholds=self.settings.scoring.tier_thresholds)
        data = Dataset.from_records([{"customer_id": "warm-up", "timestamp": datetime(2024, 1, 1), "amount": 1.0}])
        entities = as_entities(["warm-up"], datetime(2024, 2, 1))
        score_rows(data, entities, model, self.policy, engine=self.engine, reasons=True)
        return model

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.follower.stop()
        if self.live is not None:
            self.live.stop()
        self.store.close()

    def readiness(self) -> Readiness:
        f = self.follower
        served = f.current
        store_problem = self.store.check()
        backlog = None
        if self.live is not None and store_problem is None:
            with contextlib.suppress(StoreUnavailable):  # reported by the next check; the backlog is information
                backlog = self.live.backlog()
        return Readiness(
            status="ready" if store_problem is None else "not_ready",
            detail=store_problem,
            store=self.store.location,
            model_version=served.version,
            source=served.source,
            loaded_at=served.loaded_at,
            last_check=f.last_check,
            reload_error=f.reload_error,
            pending_evaluations=backlog,
            live_triggers_error=self.live.last_error if self.live is not None else None,
        )

    # ------------------------------------------------------------------------------------------- routes

    @api.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=SCORING_ERRORS,
        summary="Score customers from their raw history",
        tags=["scoring"],
    )
    def score(self, body: ScoreRequest) -> Response:
        """1 to 1,000 customers with their transactions and events; rows at or after `as_of` are ignored.
        Features come from the same definitions as batch scoring, so the same data gives the same scorecard.
        A customer with no purchase before `as_of` is listed in `rejected` with the reason."""
        served = self.follower.current  # this request's model, whatever a reload does meanwhile
        unique_ids(body.customers, "customers")
        when = _as_datetime(body.as_of) if body.as_of else now_utc()
        data = _request_dataset(body.customers)
        entities = as_entities([c.customer_id for c in body.customers], when)
        scored = score_rows(data, entities, served.model, self.policy, engine=self.engine, reasons=body.reasons)
        return _response(served, scored, when)

    @api.post(
        "/v1/score_features",
        response_model=ScoreResponse,
        responses=SCORING_ERRORS,
        summary="Score precomputed feature rows",
        tags=["scoring"],
    )
    def score_features(self, body: FeatureScoreRequest) -> Response:
        """Every feature listed by `GET /v1/model`, null where undefined. A row with `frequency` below 1 (no
        purchase before its `as_of`) is listed in `rejected`."""
        served = self.follower.current
        rows = body.rows
        unique_ids(rows, "rows")
        names = served.model.feature_names
        known = set(names)
        errors = []
        for i, row in enumerate(rows):
            missing = [n for n in names if n not in row.features]
            unknown = [n for n in row.features if n not in known]
            if missing or unknown:
                what = f"missing {missing[:5]}" if missing else f"unknown {unknown[:5]}"
                errors.append(field_error(("rows", i, "features"), f"{what} (GET /v1/model lists the features)"))
        if errors:
            raise Problem(400, f"{len(errors)} row(s) do not carry the model's {len(names)} features", errors=errors)
        frame = pd.DataFrame(
            [{"customer_id": r.customer_id, "as_of": _as_datetime(r.as_of), **r.features} for r in rows]
        )
        frame[names] = frame[names].astype("float64")
        prospect = frame["frequency"].fillna(0).to_numpy() < 1
        cards = served.model.score(frame.loc[~prospect].reset_index(drop=True), reasons=body.reasons)
        scores = with_actions(cards, self.policy)
        rejected = [{"customer_id": c, "reason": NOT_SCORABLE} for c in frame.loc[prospect, "customer_id"]]
        as_of = frame["as_of"].max().to_pydatetime()
        return _response(served, ScoredRows(scores[list(SCORECARD_COLUMNS)].to_dict(orient="records"), rejected), as_of)

    @api.get(
        "/v1/model",
        response_model=ModelInfo,
        responses=openapi_responses(401, 403, 429, 503),
        summary="The model being served",
        tags=["model"],
    )
    def model_info(self) -> ModelInfo:
        """Version, training dates, horizon, features, held-out metrics; where the model came from and when this
        worker loaded it. After a promotion, `model_version` changes here within `serving.reload_interval_s`."""
        served = self.follower.current
        return ModelInfo(
            **served.model.card().to_dict(),
            source=served.source,
            loaded_at=served.loaded_at,
            reload_error=self.follower.reload_error,
        )

    @api.get(
        "/v1/customers/{customer_id}/score",
        response_model=ScoreResponse,
        responses=LOOKUP_ERRORS,
        summary="Score a stored customer by id",
        tags=["customers"],
    )
    def customer_score(
        self,
        customer_id: Annotated[CustomerId, PathParam(description="The customer's id in the store.")],
        as_of: Annotated[
            AsOf,
            Query(
                description="Features use stored rows strictly before this time (a date or "
                "an ISO 8601 time stamp); default: now (UTC)."
            ),
        ] = None,
        reasons: Annotated[bool, Query(description="Compute top_reasons.")] = True,
    ) -> Response:
        """The scorecard from the customer's stored history, at now or `as_of`: the same scorecard `churn score`
        gives for this customer at the same `as_of`. An id with no stored row is a 404; a customer with no
        purchase before `as_of` is listed in `rejected` with the reason (200)."""
        served = self.follower.current
        when = _as_datetime(as_of) if as_of else now_utc()
        found = self.store.run(
            lambda store: score_stored(
                store, [customer_id], when, served.model, self.policy, engine=self.engine, reasons=reasons
            )
        )
        if found.not_found:
            raise Problem(404, f"no customer {customer_id!r} in the store")
        return _response(served, found.scored, when)

    @api.post(
        "/v1/customers/score",
        response_model=CustomersScoreResponse,
        responses=SCORING_ERRORS,
        summary="Score stored customers by id",
        tags=["customers"],
    )
    def customers_score(self, body: CustomersScoreRequest) -> Response:
        """1 to 1,000 ids: a scorecard for each stored customer scorable at `as_of`, the others in `rejected`
        with the reason, and the ids with no stored row in `not_found`."""
        served = self.follower.current
        _unique(body.customer_ids, "customer_ids")
        when = _as_datetime(body.as_of) if body.as_of else now_utc()
        found = self.store.run(
            lambda store: score_stored(
                store, body.customer_ids, when, served.model, self.policy, engine=self.engine, reasons=body.reasons
            )
        )
        return _response(served, found.scored, when, not_found=found.not_found)

    @api.post(
        "/v1/events",
        response_model=EventsResponse,
        responses=openapi_responses(400, 401, 403, 413, 429, 503),
        summary="Add transactions, events and customer records to the store",
        tags=["customers"],
    )
    def events(self, body: EventsRequest) -> EventsResponse:
        """Rows for the customer store, each with its `customer_id`, checked one by one against the data contract
        (the checks batch validation makes on files): kept rows are stored in one transaction, rejected rows come
        back with their index, field and reason. A row already stored (a retried request) is not added again.
        The next score of these customers sees the new rows. The trigger rules are then evaluated for the
        customers whose rows changed, in the background (`serving.live_triggers`): firings appear in
        `GET /v1/outbox` moments later; `/readyz` shows the backlog."""
        tables = {"transactions": body.transactions, "events": body.events, "customers": body.customers}
        if not any(tables.values()):
            raise Problem(
                400,
                "no rows: send transactions, events or customers",
                errors=[field_error(("transactions",), "at least one row in transactions, events or customers")],
            )
        now = now_utc() if self.settings.validation.reject_future else None
        checked = check_rows(tables, now=now)
        kept = checked.kept
        if any(kept.values()):
            live = self.live
            result = self.store.run(lambda store: store.append(**kept, evaluate=live is not None))
            added, present, updated = result.added, result.present, result.updated_customers
            if live is not None and result.queued and live.running:
                live.notify()  # the trigger rules run for these customers in the background
        else:
            self.store.run(lambda store: store.rows_for([]))  # nothing to write, but the store must be there
            added = present = dict.fromkeys(tables, 0)
            updated = 0
        log.debug(  # the request's own line (middleware) is the INFO one
            "events: added %s, already stored %s, %d rows rejected",
            added,
            present,
            len(checked.rejected),
        )
        return EventsResponse(
            added=added,
            present=present,
            updated_customers=updated,
            rejected=[r.__dict__ for r in checked.rejected],
        )

    @api.get(
        "/v1/outbox",
        response_model=OutboxPage,
        responses=openapi_responses(400, 401, 403, 429, 503),
        summary="Fired triggers after a cursor (pull delivery)",
        tags=["triggers"],
    )
    def outbox(
        self,
        after: Annotated[int, Query(ge=0, description="The next_after of the previous page (0: from the start).")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
    ) -> OutboxPage:
        """The trigger outbox in commit order, at least once: store `next_after` after processing a page and pass
        it as `after`. Control items are in the pages, marked (`control: true`): record them, contact nobody.
        Reading changes no delivery state (push delivery, `churn deliver`, reads the same outbox)."""
        return OutboxPage(**self.store.run(lambda store: outbox_page(store, after, limit)))


# ------------------------------------------------------------------------------------------------ helpers


def _response(served: Served, scored: ScoredRows, as_of: datetime, not_found: list[str] | None = None) -> Response:
    """The answer of the scoring routes (with ``not_found``: of the lookup of many ids), checked by its model once
    and encoded by pydantic: the route declares the model for the OpenAPI document, and returning the encoded
    answer spares FastAPI a second validation and a slower JSON encoder."""
    fields = {
        "model_version": served.version,
        "as_of": as_of,
        "scores": scored.scores,
        "rejected": scored.rejected,
        "warnings": served.model.season_warnings(as_of),
    }
    if not_found is None:
        return json_response(ScoreResponse(**fields))
    return json_response(CustomersScoreResponse(**fields, not_found=not_found))


def json_response(body: BaseModel) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


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


def _unique(ids: list[str], field: str) -> None:
    seen: set[str] = set()
    for i, c in enumerate(ids):
        if c in seen:
            raise Problem(
                400,
                f"customer {c!r} appears more than once",
                errors=[field_error((field, i), f"{c!r} appears more than once")],
            )
        seen.add(c)


def _limit_threads(threads: int) -> None:
    """Requests run in a thread pool; its size is per worker (``serving.threads``)."""
    import contextlib

    import anyio.to_thread

    with contextlib.suppress(RuntimeError):  # outside the server's event loop (a plain import): nothing to size
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads


# ------------------------------------------------------------------------------------------------ errors


def _problem(
    request: Request, status: int, detail: str, *, errors: list | None = None, kind: tuple[str, str] | None = None
) -> JSONResponse:
    body = problem_body(status, detail, instance=request.url.path, errors=errors, kind=kind)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors, malformed = validation_errors(exc.errors())
    if malformed:
        return _problem(request, 400, errors[0]["detail"], errors=errors, kind=MALFORMED_JSON)
    detail = f"{len(errors)} invalid field{'s' if len(errors) != 1 else ''}: " + ", ".join(
        e["field"] for e in errors[:5]
    )
    return _problem(request, 400, detail, errors=errors)


@api.exception_handler(Problem)
async def _our_problem(request: Request, exc: Problem) -> JSONResponse:
    body = problem_body(exc.status, exc.detail, instance=request.url.path, errors=exc.errors, kind=exc.kind)
    return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers)


@api.exception_handler(StoreUnavailable)
async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) if hasattr(request, "state") else None
    log.error(
        "request %s %s: the customer store at %s cannot be reached: %s",
        request_id,
        request.url.path,
        exc.location,
        exc.reason,
    )
    body = problem_body(503, "the customer store cannot be reached; try again shortly", instance=request.url.path)
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON, headers={"retry-after": "5"})


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = problem_body(exc.status_code, str(exc.detail), instance=request.url.path)
    return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers)


install_openapi(api)
ChurnService.add_asgi_middleware(ApiGuard, settings=lambda: load_settings().serving)


# ------------------------------------------------------------------------------------------------ logging


def configure_logging() -> None:
    """The service process's logging, set once at its edge: our request lines at INFO, no MLflow chatter."""
    logging.getLogger("churnguard").setLevel(logging.INFO)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
