"""The real, messy UCI Online Retail file validates and produces features and labels (skipped when absent)."""

from __future__ import annotations

from datetime import datetime

import pyarrow.compute as pc

from features.build import build_features, entities_at
from features.labels import build_labels
from features.mapping import load_mapping
from features.validate import load_dataset
from tests.conftest import ONLINE_RETAIL_MAPPING


def test_online_retail_validates_features_and_labels(online_retail_dir):
    data, rejects = load_dataset(
        online_retail_dir, now=datetime(2026, 1, 1), mapping=load_mapping(online_retail_dir, ONLINE_RETAIL_MAPPING)
    )
    report = data.report
    tx = report.tables[0]
    # figures from ../shared/data/README.md: 541,909 rows, 135,080 without customer, 5,225 duplicates with one
    assert tx.rows_read == 541_909
    assert tx.rejected == {"missing customer_id": 135_080, "exact duplicate": 5_225}
    assert tx.rows_kept + rejects.num_rows == tx.rows_read
    assert report.n_customers == 4_372
    # cancellations are kept as negative amounts
    assert pc.sum(pc.less(data.transactions["amount"], 0)).as_py() > 8_000

    as_of = datetime(2011, 9, 1)
    entities = entities_at(data, as_of)
    features = build_features(data, entities)
    assert features.num_rows == entities.num_rows > 3_000
    assert pc.min(features["recency_days"]).as_py() >= 0
    labels = build_labels(data, entities, horizon_days=90)
    churn_rate = pc.mean(labels["churned"]).as_py()
    assert 0.2 < churn_rate < 0.7


def test_online_retail_trains_and_the_winner_is_at_least_as_good_as_every_baseline(online_retail_dir, tmp_path):
    from churnguard.settings import Settings
    from training.train import train

    data, _ = load_dataset(
        online_retail_dir, now=datetime(2026, 1, 1), mapping=load_mapping(online_retail_dir, ONLINE_RETAIL_MAPPING)
    )
    s = Settings(data_dir=tmp_path)
    result = train(data, s.training, s.labels, s.features, run_backtest=False)
    ev = result.evaluation
    assert ev.holdout_as_of == "2011-09-10"
    for baseline in ("recency", "rfm_logit"):
        assert ev.candidates[ev.winner]["log_loss"] <= ev.candidates[baseline]["log_loss"]
    assert ev.candidates[ev.winner]["roc_auc"] > 0.7
    assert ev.warnings  # one year of data: the September holdout's season is not covered by training
