"""Spark runs the same feature definitions and the same scoring as DuckDB, with the same results.

One SparkSession (``local[2]``, small memory) for the whole module. Skipped only when no Java runtime is present;
PySpark itself is a development dependency, so a missing PySpark is a failure, not a skip.
"""

from __future__ import annotations

import shutil
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from features.build import build_features, entities_at, feature_schema
from features.engines import DuckDBEngine, make_engine
from features.settings import FeatureSettings
from tests.conftest import dataset
from tests.test_features import CUSTOMERS, EVENTS, TRANSACTIONS

AS_OFS = [datetime(2024, 4, 1), datetime(2024, 10, 1, 12)]
SCORE_AS_OF = datetime(2024, 10, 1)
TOLERANCE = 1e-9

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="no Java runtime on PATH: Spark cannot start (install Java 17)"
)

# small and quick on a 2-core machine: few shuffle partitions, no UI
TEST_CONF = {
    "spark.driver.memory": "1g",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    # a short-lived JVM: the quick JIT tier only and the serial collector halve start-up and first queries on 2 cores
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="module")
def spark_engine(tmp_path_factory):
    engine = make_engine(
        FeatureSettings(
            engine="spark",
            spark_master="local[2]",
            spark_conf=TEST_CONF,
            spark_staging_dir=tmp_path_factory.mktemp("spark-staging"),
        )
    )
    try:
        yield engine
    finally:
        engine.stop()


def _same_features(duck: pa.Table, spark: pa.Table) -> None:
    """Same rows in the same order, same columns and dtypes, nulls in the same places, values within 1e-9."""
    assert spark.schema.equals(duck.schema), (spark.schema, duck.schema)
    assert spark.num_rows == duck.num_rows
    for name in duck.column_names:
        a, b = duck[name], spark[name]
        assert a.null_count == b.null_count, name
        assert a.is_null().equals(b.is_null()), name
        if pa.types.is_floating(a.type):
            x, y = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
            known = ~np.isnan(x)
            np.testing.assert_allclose(y[known], x[known], rtol=0, atol=TOLERANCE, err_msg=name)
        else:
            assert a.equals(b), name


def test_spark_equals_duckdb_on_demo_data_at_two_dates(spark_engine, demo_data):
    data, _ = demo_data
    entities = entities_at(data, AS_OFS)
    assert entities.num_rows > 4000  # a few thousand customers at each date
    duck = build_features(data, entities, engine=DuckDBEngine(threads=2))
    spark = build_features(data, entities, engine=spark_engine)
    assert duck.schema.equals(feature_schema())
    _same_features(duck, spark)
    mixed = [c for c in duck.column_names if 0 < duck[c].null_count < duck.num_rows]
    assert len(mixed) >= 5, mixed  # the comparison covers nulls and values
    assert sorted(set(spark["as_of"].to_pylist())) == AS_OFS


def test_spark_equals_duckdb_on_the_hand_written_fixture(spark_engine):
    """Edge cases: refunds sharing an order id, orders without ids, rows exactly at as_of, a prospect, an unknown
    customer, a sign-up date; entities in an arbitrary order come back in that order."""
    data = dataset(TRANSACTIONS, EVENTS, CUSTOMERS)
    entities = pa.table(
        {
            "customer_id": ["C", "nobody", "A", "B", "A"],
            "as_of": [datetime(2024, 7, 1)] * 4 + [datetime(2024, 3, 1, 6)],
        }
    )
    _same_features(build_features(data, entities), build_features(data, entities, engine=spark_engine))


def test_engine_setting_picks_spark_with_its_master(monkeypatch):
    from churnguard.settings import load_settings
    from features.spark import SparkEngine

    monkeypatch.setenv("CHURN_FEATURES__ENGINE", "spark")
    monkeypatch.setenv("CHURN_FEATURES__SPARK_MASTER", "spark://cluster:7077")
    monkeypatch.setenv("CHURN_FEATURES__SPARK_CONF", '{"spark.executor.memory": "8g"}')
    engine = make_engine(load_settings().features)
    assert isinstance(engine, SparkEngine)  # nothing started yet: the session starts on first use
    assert (engine.master, engine.conf) == ("spark://cluster:7077", {"spark.executor.memory": "8g"})
    monkeypatch.setenv("CHURN_FEATURES__ENGINE", "postgres")
    with pytest.raises(ValueError, match="engine"):
        load_settings()


def test_cli_features_on_spark_writes_the_duckdb_file(spark_engine, demo_dir, tmp_path):
    """`churn features --engine spark` (in this process it joins the running session and leaves it running)."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from churnguard.cli import app

    runner = CliRunner()
    files = {}
    for engine in ("duckdb", "spark"):
        files[engine] = tmp_path / f"{engine}.parquet"
        args = ["features", "--data", str(demo_dir), "--as-of", "2024-10-01", "--out", str(files[engine])]
        result = runner.invoke(app, [*args, "--engine", engine])
        assert result.exit_code == 0, result.output
    assert pq.read_table(files["spark"]).equals(pq.read_table(files["duckdb"]))
    assert not spark_engine.session.sparkContext._jsc.sc().isStopped()


@pytest.mark.slow
def test_spark_scoring_equals_duckdb(spark_engine, demo_data, trained, tmp_path):
    from pyspark.sql import functions as F

    from serving.policy import load_policy
    from serving.scoring import score_batch, write_batch
    from serving.settings import ScoringSettings
    from serving.spark_scoring import _write_scores, read_scores, score_batch_spark

    data, rejects = demo_data
    settings = ScoringSettings(capacity=150, control_share=0.2, seed=3)
    policy = load_policy()
    duck = score_batch(
        data, trained.model, policy, settings, as_of=SCORE_AS_OF, invalid_customer_ids=rejects["customer_id"]
    )
    out = tmp_path / "scores"
    spark = score_batch_spark(
        data,
        trained.model,
        policy,
        settings,
        spark_engine,
        out,
        as_of=SCORE_AS_OF,
        invalid_customer_ids=rejects["customer_id"],
    )
    # the scorecards: same customers, columns, values (top_reasons for the outreach customers only, on both)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["as_of_date=2024-10-01"]
    written = read_scores(out).sort_values("customer_id").reset_index(drop=True)
    expected = duck.scores.drop(columns=["value_band", "action_cost"]).sort_values("customer_id")
    expected = expected.reset_index(drop=True)
    assert list(written.columns) == list(expected.columns)
    assert len(written) == len(expected) > 2000
    for column in expected.columns:
        if column == "top_reasons":
            assert written[column].map(list).tolist() == expected[column].map(list).tolist()
        elif expected[column].dtype == object:
            assert written[column].tolist() == expected[column].tolist(), column
        elif column == "as_of":
            assert (written[column].to_numpy() == expected[column].to_numpy()).all()
        else:
            np.testing.assert_allclose(written[column], expected[column], rtol=0, atol=TOLERANCE, err_msg=column)
    assert sum(len(r) for r in written["top_reasons"]) > 0
    # the outreach list, the customers not scored and the summary
    pd.testing.assert_frame_equal(
        spark.outreach.reset_index(drop=True), duck.outreach.reset_index(drop=True), check_exact=False, atol=1e-12
    )
    pd.testing.assert_frame_equal(
        spark.rejected.sort_values("customer_id").reset_index(drop=True),
        duck.rejected.sort_values("customer_id").reset_index(drop=True),
    )
    assert spark.n_input_customers == duck.n_input_customers
    a, b = spark.summary, duck.summary
    assert (a.customers_scored, a.customers_rejected, a.rejected_by_reason) == (
        b.customers_scored,
        b.customers_rejected,
        b.rejected_by_reason,
    )
    assert a.share_per_tier == b.share_per_tier and a.share_per_stage == b.share_per_stage
    assert a.total_value_at_risk == pytest.approx(b.total_value_at_risk, rel=1e-12)
    assert (a.outreach_size, a.outreach_control, a.actions) == (b.outreach_size, b.outreach_control, b.actions)
    # the same outreach and not-scored files
    write_batch(spark, None, tmp_path / "s_outreach.csv", tmp_path / "s_rejected.csv")
    write_batch(duck, tmp_path / "d_scores.parquet", tmp_path / "d_outreach.csv", tmp_path / "d_rejected.csv")
    for name in ("outreach", "rejected"):
        assert pacsv.read_csv(tmp_path / f"s_{name}.csv").equals(pacsv.read_csv(tmp_path / f"d_{name}.csv")), name
    # writing the same date again replaces its partition (a retry duplicates nothing); other dates stay
    again = spark_engine.put(pa.Table.from_pandas(written, preserve_index=False), "again")
    _write_scores(again, out)
    _write_scores(again.withColumn("as_of", F.lit(datetime(2024, 11, 1))), out)
    assert len(read_scores(out)) == 2 * len(expected)
    assert len(read_scores(out, SCORE_AS_OF)) == len(expected)


@pytest.mark.slow
def test_training_snapshots_on_spark_equal_duckdb(spark_engine, demo_data, test_settings):
    """`churn train --engine spark`: the snapshot frame (every planned date's sampled customers, their features and
    labels) built on Spark, all dates in one query, equals the one DuckDB builds date by date."""
    from training.snapshots import build_snapshot_frame
    from training.train import plan_training_snapshots

    data, _ = demo_data
    training = test_settings.training
    plan = plan_training_snapshots(data, training, test_settings.labels.horizon_days)
    kwargs = {"event_types": test_settings.features.event_types, "max_rows": 6_000, "seed": training.seed}
    steps: list[int] = []

    def progress(n: int = 1, description: str | None = None) -> None:
        steps.append(n)

    duck = build_snapshot_frame(data, plan, **kwargs)
    spark = build_snapshot_frame(data, plan, engine=spark_engine, progress=progress, **kwargs)
    assert sum(steps) == len(plan.all_dates) >= 3  # one query for every date
    a, b = duck.frame, spark.frame
    assert len(a) > 3000 and a["as_of"].nunique() == len(plan.all_dates)
    assert list(b.columns) == list(a.columns) and list(b.dtypes) == list(a.dtypes)
    assert b[["customer_id", "as_of"]].equals(a[["customer_id", "as_of"]])  # same rows, same order
    assert b[["churned", "duration_days", "event"]].equals(a[["churned", "duration_days", "event"]])
    _same_features(
        pa.Table.from_pandas(a[duck.feature_names], preserve_index=False),
        pa.Table.from_pandas(b[spark.feature_names], preserve_index=False),
    )
    assert spark.feature_names == duck.feature_names
    assert (spark.churn_rates, spark.labelled_counts) == (duck.churn_rates, duck.labelled_counts)
