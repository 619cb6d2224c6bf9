"""Batch scoring on Spark: ``churn score`` with ``features.engine = spark``.

The same steps as ``serving.scoring.score_batch``, with the heavy ones on the executors: the feature query (the
one Ibis definition, compiled to Spark SQL), then the registered ``ChurnModel`` and the retention policy applied
per partition with ``mapInPandas`` (the very ``ChurnModel.score`` and ``with_actions`` the DuckDB path calls, on
Arrow batches). Scorecards are written by Spark as Parquet partitioned by ``as_of_date``; a re-run for the same
date replaces that date's partition only (dynamic partition overwrite), and Spark's job commit publishes the files
only when every task succeeded. The outreach list, its ``top_reasons`` and the customers not scored are computed
on the driver from what Spark returns (the outreach candidates, the prospects' ids) and written as in the DuckDB
path, so both engines give the same files (``tests/test_spark.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from features.build import entities_at
from features.dataset import Dataset
from features.spark import SparkEngine
from model.churn_model import ChurnModel
from model.scorecard import NOT_SCORABLE, SCORECARD, SCORECARD_COLUMNS, TIERS
from serving.policy import POLICY_COLUMNS, Policy, select_outreach
from serving.scoring import (
    BatchResult,
    BatchSummary,
    _count_input_customers,
    _explained_size,
    _rejected_outside,
    explained_count,
    with_actions,
)
from serving.settings import ScoringSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PARTITION = "as_of_date"


def score_batch_spark(
    data: Dataset,
    model: ChurnModel,
    policy: Policy,
    settings: ScoringSettings,
    engine: SparkEngine,
    out: Path | str,
    *,
    as_of: datetime,
    invalid_customer_ids: pa.Array | pa.ChunkedArray | None = None,
    progress: Callable[[int, str | None], None] | None = None,
) -> BatchResult:
    """Score every customer known before ``as_of`` on Spark and write the scorecards to ``out`` (a folder of
    Parquet files partitioned by ``as_of_date``). Returns the outreach list, the rejects and the summary; its
    ``scores`` frame holds the outreach customers' scorecards only (the full set is in ``out``)."""
    from pyspark import StorageLevel

    say = progress or (lambda n=1, d=None: None)
    entities = entities_at(data, as_of)
    say(0, "computing features on Spark")
    # computed once, read by the prospects, the scoring and the outreach reasons
    features = engine.features(data, entities, model.event_types).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _score(data, model, policy, settings, engine, out, features, entities, as_of, invalid_customer_ids, say)
    finally:
        features.unpersist()


def _score(data, model, policy, settings, engine, out, features, entities, as_of, invalid_customer_ids, say):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    scorable = features.filter(F.col("frequency") >= 1)
    prospects = features.filter(F.col("frequency") < 1).select("customer_id").orderBy("customer_id").toPandas()
    rejected = pd.concat(
        [
            _rejected_outside(data, entities, invalid_customer_ids),
            pd.DataFrame({"customer_id": prospects["customer_id"].astype(str), "reason": NOT_SCORABLE}),
        ],
        ignore_index=True,
    ).sort_values("customer_id", kind="stable", ignore_index=True)  # the DuckDB path's order

    reasons_all = settings.reasons == "all"
    schema = _scorecard_schema(features.schema["as_of"].dataType)

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if len(batch):
                cards = model.score(batch, reasons=reasons_all)
                yield _for_spark(with_actions(cards, policy))

    say(0, "scoring on Spark")
    scores = scorable.mapInPandas(score_partition, schema).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_scored = scores.count()
        say(entities.num_rows, None)  # every known customer is now scored or a prospect
        outreach = _outreach(scores, settings)
        if settings.reasons == "outreach" and len(outreach):
            head = outreach["customer_id"].iloc[: _explained_size(settings) or len(outreach)]
            say(0, f"explaining {len(head):,} of {len(outreach):,} outreach customers")
            ids = engine.put(pa.table({"customer_id": pa.array(head, pa.string())}), "outreach")
            rows = features.join(ids, "customer_id", "inner").toPandas()
            explained = dict(zip(rows["customer_id"], model.reasons(rows), strict=True))
            outreach["top_reasons"] = [explained.get(c, []) for c in outreach["customer_id"]]
            scores_out = _with_reasons(scores, outreach, engine)
        else:
            scores_out = scores
        n_input = _count_input_customers(data, invalid_customer_ids)
        if n_scored + len(rejected) != n_input:  # checked before anything is written
            raise AssertionError(
                f"customer accounting broken: {n_scored} scored + {len(rejected)} rejected != {n_input} input customers"
            )
        summary = _summary(scores, n_scored, outreach, rejected)
        _write_scores(scores_out, out)
    finally:
        scores.unpersist()
    return BatchResult(outreach.copy(), outreach, rejected, n_input, summary, model.season_warnings(as_of))


def _scorecard_schema(timestamp_type):
    """The Spark schema of a scorecard row (``model/scorecard.py``'s fields plus the policy's)."""
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    kinds = {str: StringType(), float: DoubleType(), list[str]: ArrayType(StringType())}
    fields = [StructField(f.name, timestamp_type if f.name == "as_of" else kinds[f.type], True) for f in SCORECARD]
    fields += [StructField("value_band", StringType(), True), StructField("action_cost", DoubleType(), True)]
    return StructType(fields)


def _for_spark(cards: pd.DataFrame) -> pd.DataFrame:
    out = cards[[*SCORECARD_COLUMNS, *POLICY_COLUMNS]].copy()
    out["top_reasons"] = [list(r) for r in out["top_reasons"]]
    for column in ("churn_probability", "expected_value_12m", "value_at_risk", "expected_value_saved", "action_cost"):
        out[column] = out[column].astype("float64")
    return out


def _outreach(scores: DataFrame, settings: ScoringSettings) -> pd.DataFrame:
    """``select_outreach`` over the candidates Spark ranks: the same total order (expected value saved, then
    customer id) as ``outreach_candidates``, so the list equals the DuckDB path's."""
    from pyspark.sql import functions as F

    eligible = scores.filter((F.col("recommended_action") != "no_action") & (F.col("expected_value_saved") > 0))
    ranked = eligible.orderBy(F.col("expected_value_saved").desc(), F.col("customer_id").asc())
    if settings.capacity is not None:
        ranked = ranked.limit(settings.capacity)
    candidates = ranked.toPandas()
    candidates["as_of"] = candidates["as_of"].astype("datetime64[us]")  # the contract's unit, as build_features
    candidates["top_reasons"] = [list(r) if r is not None else [] for r in candidates["top_reasons"]]
    return select_outreach(
        candidates,
        capacity=settings.capacity,
        budget=settings.budget,
        control_share=settings.control_share,
        seed=settings.seed,
    )


def _with_reasons(scores: DataFrame, outreach: pd.DataFrame, engine: SparkEngine) -> DataFrame:
    """The outreach customers' top_reasons put into the full scorecards (the others keep theirs: empty)."""
    from pyspark.sql import functions as F

    table = pa.table(
        {
            "customer_id": pa.array(outreach["customer_id"], pa.string()),
            "explained": pa.array(list(outreach["top_reasons"]), pa.list_(pa.string())),
        }
    )
    explained = engine.put(table, "reasons")
    joined = scores.join(F.broadcast(explained), "customer_id", "left")
    return joined.withColumn("top_reasons", F.coalesce(F.col("explained"), F.col("top_reasons"))).select(
        *scores.columns
    )


def _summary(scores: DataFrame, n_scored: int, outreach: pd.DataFrame, rejected: pd.DataFrame) -> BatchSummary:
    from pyspark.sql import functions as F

    n = max(n_scored, 1)
    tiers = {r["risk_tier"]: r["count"] for r in scores.groupBy("risk_tier").count().collect()}
    stages = scores.groupBy("lifecycle_stage").count().orderBy(F.col("count").desc(), "lifecycle_stage").collect()
    total = scores.agg(F.sum("value_at_risk").alias("v")).collect()[0]["v"] or 0.0
    contacted = outreach.loc[~outreach["control"]] if len(outreach) else outreach
    return BatchSummary(
        customers_scored=n_scored,
        customers_rejected=len(rejected),
        rejected_by_reason={str(k): int(v) for k, v in rejected["reason"].value_counts().items()},
        share_per_tier={t: float(tiers.get(t, 0) / n) for t in TIERS},
        share_per_stage={str(r["lifecycle_stage"]): round(r["count"] / n, 4) for r in stages},
        total_value_at_risk=float(total),
        outreach_size=len(outreach),
        outreach_explained=explained_count(outreach),
        outreach_control=int(outreach["control"].sum()) if len(outreach) else 0,
        outreach_expected_value_saved=float(contacted["expected_value_saved"].sum()) if len(outreach) else 0.0,
        actions={str(k): int(v) for k, v in outreach["recommended_action"].value_counts().items()}
        if len(outreach)
        else {},
    )


def _write_scores(scores: DataFrame, out: Path | str) -> None:
    """Parquet partitioned by as_of_date; re-scoring a date replaces only that date's partition. A ``Path`` is a
    local (or shared-mount) folder; a string goes to Spark as it is (``s3a://...``, ``hdfs://...``)."""
    from pyspark.sql import functions as F

    frame = scores.select(*SCORECARD_COLUMNS).withColumn(PARTITION, F.date_format("as_of", "yyyy-MM-dd"))
    target = Path(out).resolve().as_uri() if isinstance(out, Path) else out
    frame.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(PARTITION).parquet(target)


def read_scores(out: Path | str, as_of: datetime | None = None) -> pd.DataFrame:
    """The scorecards a Spark run wrote (all dates, or one), as the DuckDB path's scores frame: same columns."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(out), format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field(PARTITION) == f"{as_of:%Y-%m-%d}" if as_of else None)
    return table.select(list(SCORECARD_COLUMNS)).to_pandas()
