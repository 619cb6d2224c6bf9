"""Every optional input may be absent: customers without churn_date or signup_date, transactions without order_id,
no events, no customers. Training and scoring work on each combination (validation of such files: test_validate)."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest

from features.build import build_features, entities_at
from features.dataset import Dataset

pytestmark = pytest.mark.slow
AS_OF = datetime(2024, 10, 1)


def _without(table: pa.Table, column: str) -> pa.Table:
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.nulls(table.num_rows, table.schema.field(i).type))


def _variants(data: Dataset) -> dict[str, Dataset]:
    tx, ev, cu = data.transactions, data.events, data.customers
    no_events, no_customers = ev.schema.empty_table(), cu.schema.empty_table()
    return {
        "customers without churn_date": Dataset(tx, ev, _without(cu, "churn_date")),
        "customers without signup_date": Dataset(tx, ev, _without(cu, "signup_date")),
        "transactions without order_id": Dataset(_without(tx, "order_id"), ev, cu),
        "no events file": Dataset(tx, no_events, cu),
        "no customers file": Dataset(tx, ev, no_customers),
        "transactions only, no order ids": Dataset(_without(tx, "order_id"), no_events, no_customers),
    }


@pytest.fixture(scope="module")
def bare_model(demo_data, test_settings):
    """Trained on the barest input there is: transactions without order ids, no events, no customers."""
    from training.train import train

    data, _ = demo_data
    bare = _variants(data)["transactions only, no order ids"]
    small = test_settings.training.model_copy(update={"max_training_rows": 8000})
    return train(bare, small, test_settings.labels, test_settings.features).model


def test_every_combination_of_absent_optional_columns_trains_and_scores(demo_data, bare_model, trained):
    from serving.policy import load_policy
    from serving.scoring import score_dataset

    data, _ = demo_data
    for name, variant in _variants(data).items():
        entities = entities_at(variant, AS_OF)
        features = build_features(variant, entities).to_pandas()
        assert features["frequency"].ge(1).sum() > 1000, name
        for model in (bare_model, trained.model):
            scored = score_dataset(variant, entities, model, load_policy())
            assert len(scored.scores) + len(scored.rejected) == entities.num_rows, name
            assert scored.scores["churn_probability"].between(0, 1).all(), name
            assert scored.scores[["expected_value_12m", "p_active_90d"]].notna().all().all(), name
