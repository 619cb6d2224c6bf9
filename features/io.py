"""Writing outputs so that a crash never leaves a half-written file behind: temp file in the same folder + rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, path: Path) -> None:
    """CSV or Parquet by extension, atomically. Time stamps in Parquet are microseconds (readable by Spark too)."""
    writer = _writer(path)
    with atomic_path(path) as tmp:
        writer(table, tmp)


def write_batches(schema: pa.Schema, tables: Iterable[pa.Table], path: Path) -> None:
    """Tables of one ``schema`` streamed into one CSV or Parquet file (by extension), atomically: memory holds one
    table at a time. The file equals ``write_table`` of their concatenation."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported output type (use .csv or .parquet)")
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            writer = pq.ParquetWriter(tmp, schema, coerce_timestamps="us", allow_truncated_timestamps=True)
        else:
            writer = pacsv.CSVWriter(tmp, schema)
        with writer:
            for table in tables:
                writer.write_table(table)


def _writer(path: Path) -> Callable[[pa.Table, Path], None]:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return lambda t, p: pq.write_table(t, p, coerce_timestamps="us", allow_truncated_timestamps=True)
    if suffix == ".csv":
        return lambda t, p: pacsv.write_csv(t, p)
    raise ValueError(f"{path}: unsupported output type (use .csv or .parquet)")
