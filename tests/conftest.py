"""Shared fixtures: small hand-written timelines, and the shared Online Retail file when it is present."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from features.dataset import Dataset

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
    return train(data, test_settings.training, test_settings.labels, test_settings.features)


@pytest.fixture(scope="session")
def registered(trained, test_settings):
    from training.tracking import log_training

    return log_training(trained, test_settings.mlflow)
