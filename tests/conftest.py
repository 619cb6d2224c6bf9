"""Shared fixtures: small hand-written timelines, and the shared Online Retail file when it is present."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from features.dataset import Dataset

pytest_plugins = ["tests.postgres"]

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail.parquet"
ONLINE_RETAIL_MAPPING = ROOT / "examples" / "online_retail.yaml"


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def tx(customer_id: str, when: str, amount: float, **extra) -> dict:
    return {"customer_id": customer_id, "timestamp": ts(when), "amount": amount, **extra}


def ev(customer_id: str, when: str, event_type: str) -> dict:
    return {"customer_id": customer_id, "timestamp": ts(when), "event_type": event_type}


@pytest.fixture
def online_retail_dir() -> Path:
    if not ONLINE_RETAIL.exists():
        pytest.skip(
            f"the shared Online Retail file is not here ({ONLINE_RETAIL}); it lives beside the project "
            "on the developers' machines"
        )
    return ONLINE_RETAIL.parent


def dataset(transactions, events=(), customers=()) -> Dataset:
    return Dataset.from_records(transactions, events, customers)


# ------------------------------------------------------------------------------------------------ trained model
# One tiny real training run per test session (seconds), shared by the model, registry, batch and API tests.

DEMO_CUSTOMERS = 3000


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from churnguard.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, customers=DEMO_CUSTOMERS, seed=7, fmt="parquet")
    return out


@pytest.fixture(scope="session")
def demo_data(demo_dir):
    from features.validate import load_dataset

    return load_dataset(demo_dir, now=datetime(2026, 1, 1))


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory):
    from churnguard.settings import Settings

    return Settings(data_dir=tmp_path_factory.mktemp("churnguard-data"), mlflow={"tracking_uri": None})


@pytest.fixture(scope="session")
def trained(demo_data, test_settings):
    from training.train import train

    data, _ = demo_data
    # with the rolling-origin backtest (`churn train --backtest`): test_training judges the family on it
    return train(data, test_settings.training, test_settings.labels, test_settings.features, run_backtest=True)


@pytest.fixture(scope="session")
def registered(trained, test_settings):
    from training.tracking import log_training

    return log_training(trained, test_settings.mlflow)


# ------------------------------------------------------------------------------------------------ the API
API_TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def api_client(registered, test_settings):
    """The service in-process (BentoML's ASGI app), serving the session's champion, with one API key."""
    import json
    import os

    from starlette.testclient import TestClient

    env = {
        "CHURN_DATA_DIR": str(test_settings.data_dir),
        "CHURN_SCORING__MODEL_URI": "models:/churnguard@champion",
        "CHURN_SERVING__API_KEYS": json.dumps({"crm": API_TOKEN}),
        "CHURN_SERVING__MAX_BODY_BYTES": "2000000",
        "CHURN_SERVING__RELOAD_INTERVAL_S": "0",
        "CHURN_SERVING__RATE_LIMIT_PER_MINUTE": "1000000",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:  # the service and its middleware read the settings while starting; nothing else sees these variables
        from serving.service import ChurnService

        client = TestClient(
            ChurnService.to_asgi(), headers={"Authorization": f"Bearer {API_TOKEN}"}, raise_server_exceptions=False
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


@pytest.fixture
def second_service_app(monkeypatch):
    """Build another in-process app of the service next to the session's.

    BentoML keeps one service instance per process (``get_current_service``, which also binds the routes' ``self``)
    and registers its Prometheus metrics once per app: the extra app is built with metrics off, and the session's
    instance is put back afterwards.
    """
    import importlib

    bentoml_service = importlib.import_module("_bentoml_sdk.service")  # the module (its package exports a decorator)
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.churnguard.metrics.enabled=false")
    previous = bentoml_service._current_service
    from serving.service import ChurnService

    yield ChurnService.to_asgi
    bentoml_service.set_current_service(previous)
