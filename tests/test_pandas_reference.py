"""``build_features`` (Ibis -> DuckDB) against the independent pandas reference in ``benchmarks/``.

Two implementations of the registry written separately must agree on every column, on random histories built
to hit the edges: null order ids, orders spread over several days, refunds, zero amounts, unknown event types,
rows exactly on window boundaries and at as_of, sub-second time stamps, sign-up / cancel dates before and
after as_of, customers known only from the customers file, and entities with no data at all.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from benchmarks.pandas_reference import pandas_features
from features.build import build_features, entities_at, feature_names
from features.dataset import Dataset
from features.registry import DEFAULT_EVENT_TYPES

AS_OFS = [datetime(2023, 2, 1), datetime(2023, 6, 1), datetime(2023, 11, 15, 12, 0), datetime(2024, 3, 1)]
EVENT_TYPES = DEFAULT_EVENT_TYPES
ORIGIN = datetime(2023, 1, 1)


def _when(rng: random.Random) -> datetime:
    t = ORIGIN + timedelta(seconds=rng.uniform(0, 600) * 86400)
    return t if rng.random() < 0.2 else t.replace(microsecond=0)


def random_dataset(seed: int, n_customers: int = 40) -> Dataset:
    rng = random.Random(seed)
    txs, evs, cus = [], [], []
    for i in range(n_customers):
        cid = f"c{i}"
        for _ in range(rng.randint(0 if i % 7 == 0 else 1, 15)):
            when = _when(rng)
            amount = round(rng.choice([-1, 1, 1, 1, 1]) * rng.uniform(1, 200), 2)
            if rng.random() < 0.03:
                amount = 0.0
            order_id = rng.choice([None, None, f"o{rng.randint(0, 8)}"])
            line = {
                "customer_id": cid,
                "timestamp": when,
                "amount": amount,
                "order_id": order_id,
                "product_id": rng.choice([None, *(f"p{k}" for k in range(8))]),
                "category": rng.choice([None, "k0", "k1", "k2"]),
                "channel": rng.choice(["web", "app", None]),
            }
            txs.append(line)
            if rng.random() < 0.25:  # a second line of the same order (same time stamp, or a later day)
                later = when if rng.random() < 0.5 else when + timedelta(days=rng.uniform(0, 3))
                txs.append(
                    dict(line, timestamp=later, amount=round(rng.uniform(1, 50), 2), product_id=f"p{rng.randint(0, 9)}")
                )
        for _ in range(rng.randint(0, 20)):
            evs.append(
                {
                    "customer_id": cid,
                    "timestamp": _when(rng),
                    "event_type": rng.choice([*EVENT_TYPES, "other", "push_open"]),
                }
            )
        # rows exactly on window edges (and at as_of itself) of one snapshot
        edge_of = rng.choice(AS_OFS)
        for days in rng.sample([0, 30, 60, 90, 180, 365], 2):
            edge = edge_of - timedelta(days=days)
            txs.append({"customer_id": cid, "timestamp": edge, "amount": 10.0, "order_id": None})
            evs.append({"customer_id": cid, "timestamp": edge, "event_type": rng.choice(EVENT_TYPES)})
        if rng.random() < 0.7:
            signup = ORIGIN + timedelta(days=rng.uniform(-200, 500)) if rng.random() < 0.9 else None
            churn = None
            if rng.random() < 0.4:
                churn = (signup or ORIGIN) + timedelta(days=rng.uniform(0, 400))
            cus.append({"customer_id": cid, "signup_date": signup, "churn_date": churn})
    for j in range(3):  # known from the customers file only
        signup = ORIGIN + timedelta(days=100 * j)
        cus.append({"customer_id": f"s{j}", "signup_date": signup, "churn_date": None})
    return Dataset.from_records(txs, evs, cus)


def with_ghosts(entities: pa.Table) -> pa.Table:
    """Add entities that have no rows anywhere (every feature is its fill value or null)."""
    ghosts = pa.table({"customer_id": ["ghost", "ghost"], "as_of": [AS_OFS[0], AS_OFS[-1]]})
    return pa.concat_tables([entities, ghosts.cast(entities.schema)])


def assert_same_features(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """Same columns and rows in the same order; floats to rel 1e-9, nulls in the same places."""
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    assert actual["customer_id"].tolist() == expected["customer_id"].tolist()
    assert (actual["as_of"].to_numpy() == expected["as_of"].to_numpy()).all()
    problems = []
    for name in expected.columns[2:]:
        e, a = expected[name].to_numpy(), actual[name].to_numpy()
        if e.dtype.kind == "i" or a.dtype.kind == "i":
            if e.dtype != a.dtype or not np.array_equal(e, a):
                problems.append(f"{name} ({e.dtype} vs {a.dtype}): {_first_diff(expected, e, a, e != a)}")
            continue
        e, a = e.astype("float64"), a.astype("float64")
        same_null = np.isnan(e) == np.isnan(a)
        close = np.isclose(a, e, rtol=1e-9, atol=1e-9, equal_nan=True)
        if not (same_null.all() and close.all()):
            problems.append(f"{name}: {_first_diff(expected, e, a, ~(same_null & close))}")
    assert not problems, "features differ:\n" + "\n".join(problems)


def _first_diff(frame: pd.DataFrame, e: np.ndarray, a: np.ndarray, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    return (
        f"{int(bad.sum())} rows, first {frame['customer_id'].iloc[i]} @ {frame['as_of'].iloc[i]}: "
        f"build_features={e[i]!r} pandas={a[i]!r}"
    )


def churnguard_frame(data: Dataset, entities: pa.Table) -> pd.DataFrame:
    return build_features(data, entities, event_types=EVENT_TYPES).to_pandas()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_build_features_equals_pandas_reference(seed):
    data = random_dataset(seed)
    entities = with_ghosts(entities_at(data, AS_OFS))
    expected = churnguard_frame(data, entities)
    assert list(expected.columns) == ["customer_id", "as_of", *feature_names(EVENT_TYPES)]
    assert_same_features(expected, pandas_features(data, entities.to_pandas(), EVENT_TYPES))


def test_entity_order_is_kept_and_other_event_types_work():
    data = random_dataset(9)
    entities = entities_at(data, AS_OFS[1:3])
    shuffled = entities.take(np.random.default_rng(0).permutation(entities.num_rows))
    event_types = ("session", "other")
    expected = build_features(data, shuffled, event_types=event_types).to_pandas()
    assert_same_features(expected, pandas_features(data, shuffled.to_pandas(), event_types))


def test_dataset_with_transactions_only():
    full = random_dataset(11)
    data = Dataset.from_records(full.transactions)
    entities = entities_at(data, AS_OFS[2])
    expected = churnguard_frame(data, entities)
    assert_same_features(expected, pandas_features(data, entities.to_pandas(), EVENT_TYPES))


def test_the_pandas_script_cleans_the_messy_demo_like_validation(demo_dir, demo_data, tmp_path):
    """The benchmark's whole-process baseline reads the raw demo files (with their injected bad rows and
    duplicates) and must give what churnguard gives from the validated data: otherwise the ratio compares two
    different answers."""
    from benchmarks.pandas_reference import main

    as_of = datetime(2024, 6, 1)
    out = tmp_path / "pandas.parquet"
    main(["--data", str(demo_dir), "--as-of", as_of.date().isoformat(), "--out", str(out), "--now", "2026-01-01"])
    data, _ = demo_data
    expected = churnguard_frame(data, entities_at(data, as_of))
    assert_same_features(expected, pd.read_parquet(out))
