"""The feature query on Apache Spark: the same Ibis expression as DuckDB, compiled to Spark SQL.

``SparkEngine`` runs ``features.build.feature_query`` (the one definition, compiled with Ibis's ``pyspark``
dialect and cached) on a ``SparkSession``: local (``local[2]``) or a cluster (``spark://host:7077``, ``yarn``, or
the session a ``spark-submit`` / Databricks job already holds). The contract tables go to Spark as Parquet written
once per dataset into a staging folder (``features.spark_staging_dir``; it must be readable by the executors under
the same path, e.g. a shared mount, on a cluster), and the entity table with them; all snapshot dates go in one query.

``build_features(..., engine=SparkEngine(...))`` returns the same Arrow table as DuckDB (``tests/test_spark.py``
checks customers, columns, dtypes, nulls and values); ``SparkEngine.frame`` returns the Spark DataFrame instead,
for scoring on the executors without collecting the features to the driver.

What Spark needs that DuckDB does not (``../shared/docs/stack-notes.md``): the session time zone pinned to UTC
(``ibis.pyspark.connect`` does it), microsecond Parquet time stamps, and Arrow for the transfer to Python.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.dataset import Dataset
from features.engines import POSITION, TABLE_NAMES, EngineUnavailableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Conf for a churnguard session unless the caller's conf says otherwise. Shuffle partitions: Spark's default (200)
# is for clusters; adaptive execution coalesces them, but planning 200 tasks per stage on 2 cores costs seconds.
DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
LOCAL_CONF = {
    "spark.pyspark.python": sys.executable,  # the Python workers run this environment (churnguard installed)
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
}


def spark_missing_message() -> str:
    return (
        "the spark engine needs PySpark and Java 17: install churnguard with the spark extra "
        "(`uv sync --extra spark` or `pip install 'churnguard[spark]'`)"
    )


def _register_ibis_options() -> None:
    """Ibis's pyspark compiler reads its backend options, which exist only once the backend class registered them."""
    from ibis.backends.pyspark import Backend

    Backend.register_options()


class SparkEngine:
    """The feature SQL on a SparkSession. The session starts on first use (JVM start: seconds) and is reused."""

    dialect = "pyspark"

    def __init__(
        self,
        master: str | None = "local[2]",
        conf: Mapping[str, str] | None = None,
        staging_dir: str | Path | None = None,
        session: SparkSession | None = None,
    ) -> None:
        try:
            import pyspark  # noqa: F401
        except ImportError as e:  # pragma: no cover - the extra is installed in development
            raise ValueError(spark_missing_message()) from e
        _register_ibis_options()
        self.master = master
        self.conf = dict(conf or {})
        self.staging_dir = Path(staging_dir) if staging_dir else None
        self._session = session
        self._lock = threading.Lock()
        self._staged: tuple[Dataset, Path] | None = None  # the dataset whose tables are on Spark, and where
        self._own_staging: Path | None = None
        self._put: list[Path] = []  # small tables handed to Spark (entities, id lists), removed by stop()
        self._owns_session = False  # a session found running (spark-submit, a notebook, a test) is left running

    # ----------------------------------------------------------------------------------------- session

    @property
    def session(self) -> SparkSession:
        with self._lock:
            if self._session is None:
                self._session = self._start()
            return self._session

    def _start(self) -> SparkSession:
        import ibis
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName("churnguard")
        if self.master:
            builder = builder.master(self.master)
        local = (self.master or "").startswith("local")
        for key, value in {**DEFAULT_CONF, **(LOCAL_CONF if local else {}), **self.conf}.items():
            builder = builder.config(key, value)
        self._owns_session = SparkSession.getActiveSession() is None
        try:
            session = builder.getOrCreate()  # under spark-submit or in a notebook: the session already there
        except Exception as e:  # no Java, a master that does not answer: an error, never a silent fallback
            raise EngineUnavailableError(f"could not start Spark (master {self.master!r}): {_first_line(e)}") from e
        ibis.pyspark.connect(session)  # pins the session time zone to UTC, as the feature definitions expect
        return session

    def stop(self) -> None:
        """Remove the staged tables and stop the session if this engine started it."""
        self._drop_staged()
        for path in self._put:
            shutil.rmtree(path, ignore_errors=True)
        self._put.clear()
        if self._own_staging is not None:
            shutil.rmtree(self._own_staging, ignore_errors=True)
            self._own_staging = None
        if self._session is not None and self._owns_session:
            self._session.stop()
        self._session = None

    # ----------------------------------------------------------------------------------------- engine protocol

    def for_size(self, rows: int) -> SparkEngine:
        return self

    def run(self, sql: str, data: Dataset, entities: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        """Run SQL compiled from ``features.build.contract_tables`` and bring the result to the driver as Arrow."""
        result = self.frame(sql, data, entities).toArrow()
        return _conform(result, schema) if schema is not None else result

    def frame(self, sql: str, data: Dataset, entities: pa.Table | DataFrame) -> DataFrame:
        """The query's result as a Spark DataFrame (lazy; nothing runs until it is written or collected)."""
        spark = self.session
        folder = self._stage(data)
        for name in ("transactions", "events", "customers"):
            spark.read.parquet(_uri(folder / name)).createOrReplaceTempView(TABLE_NAMES[name])
        if isinstance(entities, pa.Table):
            entities = self.put(entities, "entities")
        entities.createOrReplaceTempView(TABLE_NAMES["entities"])
        return spark.sql(sql)

    def features(self, data: Dataset, entities: pa.Table, event_types: tuple[str, ...]) -> DataFrame:
        """``build_features`` as a Spark DataFrame: the same columns, left on the executors (lazy)."""
        from features.build import check_entities, compiled_sql, single_date

        entities = check_entities(entities)
        indexed = entities.append_column(POSITION, pa.array(np.arange(entities.num_rows, dtype=np.int64)))
        sql = compiled_sql(tuple(event_types), self.dialect, single_date(entities))
        return self.frame(sql, data, indexed).drop(POSITION)

    def put(self, table: pa.Table, name: str) -> DataFrame:
        """An Arrow table as a Spark DataFrame, through a Parquet file in the staging folder."""
        path = self._staging_root() / f"{name}-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        self._put.append(path)
        _write(table, path / "part-0.parquet")
        return self.session.read.parquet(_uri(path))

    # ----------------------------------------------------------------------------------------- staging

    def _staging_root(self) -> Path:
        if self.staging_dir is not None:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            return self.staging_dir
        if self._own_staging is None:
            self._own_staging = Path(tempfile.mkdtemp(prefix="churnguard-spark-"))
        return self._own_staging

    def _stage(self, data: Dataset) -> Path:
        """Write the dataset's tables once (per dataset object) as Parquet for Spark to read."""
        with self._lock:
            if self._staged is not None and self._staged[0] is data:
                return self._staged[1]
        self._drop_staged()
        folder = self._staging_root() / f"dataset-{uuid.uuid4().hex}"
        for name in ("transactions", "events", "customers"):
            (folder / name).mkdir(parents=True)
            _write(getattr(data, name), folder / name / "part-0.parquet")
        with self._lock:
            self._staged = (data, folder)
        return folder

    def _drop_staged(self) -> None:
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is not None:
            shutil.rmtree(staged[1], ignore_errors=True)


def _uri(path: Path) -> str:
    """A local path as a file: URI, so a cluster whose default file system is HDFS or DBFS reads the shared mount."""
    return Path(path).resolve().as_uri()


def _write(table: pa.Table, path: Path) -> None:
    # Spark cannot read nanosecond Parquet time stamps; the contract's are microseconds already
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True)


def _conform(result: pa.Table, schema: pa.Schema) -> pa.Table:
    """Spark's Arrow result in the engine-neutral schema: naive time stamps, int64 and float64 as declared."""
    arrays = []
    for field in schema:
        column = result[field.name]
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            column = column.cast(pa.timestamp(column.type.unit))  # UTC values, zone dropped: the contract's naive UTC
        arrays.append(column.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["POSITION", "SparkEngine", "spark_missing_message"]
