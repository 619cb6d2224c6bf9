"""DuckDB and SQLite run the same compiled feature definitions and must agree exactly."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest

from features.build import build_features, entities_at, feature_schema
from features.engines import DuckDBEngine, SQLiteEngine
from tests.conftest import dataset
from tests.test_features import CUSTOMERS, EVENTS, TRANSACTIONS, _random_history

SQLITE = SQLiteEngine(max_rows=10**9)
DUCKDB = DuckDBEngine(threads=1)


def _same(a: pa.Table, b: pa.Table) -> None:
    assert a.schema.equals(b.schema)
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a[name].to_pylist() == b[name].to_pylist(), name


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_sqlite_equals_duckdb_on_random_histories(seed):
    txs, evs = _random_history(seed)
    customers = [
        {"customer_id": "c1", "signup_date": datetime(2022, 11, 1), "churn_date": datetime(2023, 9, 1)},
        {"customer_id": "c2", "signup_date": datetime(2023, 12, 1), "churn_date": None},
    ]
    data = dataset(txs, evs, customers)
    entities = entities_at(data, [datetime(2023, 3, 1), datetime(2023, 8, 15, 12), datetime(2024, 6, 1)])
    _same(build_features(data, entities, engine=SQLITE), build_features(data, entities, engine=DUCKDB))


def test_sqlite_equals_duckdb_on_the_hand_written_fixture():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    entities = entities_at(data, datetime(2024, 7, 1))
    result = build_features(data, entities, engine=SQLITE)
    assert result.schema.equals(feature_schema())
    _same(result, build_features(data, entities, engine=DUCKDB))


def test_sqlite_hands_large_inputs_to_duckdb():
    engine = SQLiteEngine(max_rows=10)
    assert engine.for_size(10) is engine
    assert engine.for_size(11) is engine.fallback


def test_unknown_customers_get_empty_features_on_both():
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    entities = pa.table({"customer_id": ["nobody", "A"], "as_of": [datetime(2024, 7, 1)] * 2})
    a = build_features(data, entities, engine=SQLITE)
    _same(a, build_features(data, entities, engine=DUCKDB))
    assert a["frequency"].to_pylist() == [0, 3]
