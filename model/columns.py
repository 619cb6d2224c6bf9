"""Feature rows as columns: a pandas DataFrame (batch scoring, training) or a plain mapping of column name to numpy
array (the customers of one API request).

The scorecard's rules (``model/scorecard.py``), the classifiers, the survival and value models and the retention
policy read their inputs through these few functions, so each rule is written once and runs on either form. The
mapping form exists for speed: pandas costs about 0.1 ms per frame operation whatever the frame's size, and
scoring one customer through ~40 of them took longer than the model itself. Both forms give the same values, to
the bit (the arithmetic is the same numpy on the same float64 columns; ``tests/test_columns.py`` checks whole
scorecards on many customers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

Columns = pd.DataFrame | Mapping[str, Any]  # a frame, or {name: 1-D array}, every array the same length


def column(rows: Columns, name: str, dtype: Any = "float64") -> np.ndarray:
    """One column as a numpy array of ``dtype`` (missing values NaN for floats); ``dtype=None`` keeps its own."""
    values = rows[name]
    if isinstance(values, pd.Series):
        if dtype is None:
            return values.to_numpy()
        return values.to_numpy(dtype=dtype, na_value=np.nan) if np.dtype(dtype).kind == "f" else values.to_numpy(dtype)
    return np.asarray(values, dtype=dtype)


def matrix(rows: Columns, names: Sequence[str]) -> np.ndarray:
    """Rows x ``names`` as float64, missing values NaN."""
    if isinstance(rows, pd.DataFrame):
        return rows[list(names)].to_numpy(dtype="float64", na_value=np.nan)
    if not names:
        return np.empty((n_rows(rows), 0), dtype="float64")
    return np.column_stack([np.asarray(rows[n], dtype="float64") for n in names])


def n_rows(rows: Columns) -> int:
    if isinstance(rows, pd.DataFrame):
        return len(rows)
    return len(next(iter(rows.values()))) if len(rows) else 0


def has_column(rows: Columns, name: str) -> bool:
    return name in rows.columns if isinstance(rows, pd.DataFrame) else name in rows


def row(rows: Columns, i: int) -> Mapping[str, Any]:
    """Row ``i`` by column name (``row["recency_days"]``, ``row.get(...)``)."""
    if isinstance(rows, pd.DataFrame):
        return rows.iloc[i]
    return {name: values[i] for name, values in rows.items()}


def take(rows: Columns, which: np.ndarray) -> Columns:
    """The rows selected by a boolean mask or positions, in the same form (a frame keeps its index)."""
    if isinstance(rows, pd.DataFrame):
        return rows.loc[which] if np.asarray(which).dtype == bool else rows.iloc[which]
    return {name: np.asarray(values)[which] for name, values in rows.items()}


def from_arrow(table: Any) -> dict[str, np.ndarray]:
    """A pyarrow table as columns with the values and types ``table.to_pandas()`` gives: floats with NaN for
    missing, int64, ``datetime64`` time stamps in the table's unit, strings as objects."""
    return {name: table[name].to_numpy() for name in table.column_names}
