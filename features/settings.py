"""Settings sections read by the features layer. ``churnguard/settings.py`` composes them into one ``Settings``.

Each section is a frozen pydantic model that forbids unknown keys, so a misspelt setting is an error, not a
silent default. Functions receive the section they need as an argument; nothing here reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from features.registry import DEFAULT_EVENT_TYPES


class Section(BaseModel):
    """Base of every settings section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationSettings(Section):
    """How raw rows are checked (see ``features/contract.py`` for the schema itself)."""

    reject_future: bool = Field(True, description="Reject rows whose timestamp is after the run's clock ('now').")


class FeatureSettings(Section):
    """The configurable parts of the feature registry."""

    event_types: tuple[str, ...] = Field(
        DEFAULT_EVENT_TYPES, description="Event types that get their own features; others count as engagement only."
    )
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="Where batch features (and `churn score`'s scoring) run: embedded DuckDB, or Apache Spark "
        "(the same feature definitions; needs the spark extra and Java 17).",
    )
    spark_master: str = Field(
        "local[2]",
        description="Spark master URL for engine=spark: local[N], spark://host:7077, yarn, ...; empty: the one "
        "spark-submit or the cluster's job gives.",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description='Extra Spark conf for engine=spark, e.g. {"spark.executor.memory": "8g"}.',
    )
    spark_staging_dir: Path | None = Field(
        None,
        description="Where the validated tables are written as Parquet for Spark to read (default: a temp folder; "
        "on a cluster, a path the executors see under the same name).",
    )


class LabelSettings(Section):
    """The churn definition shared by labels, training and scoring."""

    horizon_days: int = Field(
        90, ge=7, le=730, description="Churn horizon H: churned = no purchase in [as_of, as_of+H)."
    )
