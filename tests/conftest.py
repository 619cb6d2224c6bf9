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
        pytest.skip(f"the shared Online Retail file is not here ({ONLINE_RETAIL}); it lives beside the project "
                    "on the developers' machines")
    return ONLINE_RETAIL.parent


def dataset(transactions, events=(), customers=()) -> Dataset:
    return Dataset.from_records(transactions, events, customers)
