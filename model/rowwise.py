"""Row-wise arithmetic whose result for a row does not depend on the other rows in the batch.

``X @ w`` (BLAS) and ``(X * w).sum(axis=1)`` (numpy's reduction) choose their summation order from the array's
shape, so the same customer scored alone (the API) and among a million (batch) can differ in the last bit. The
product promises the same scorecard either way, so linear predictors are summed here, one column at a time, in
the order of the columns: the same operations for a row whatever the batch.
"""

from __future__ import annotations

import numpy as np


def row_dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for a 2-D ``x`` (rows x columns), summed column by column in column order."""
    x = np.asarray(x, dtype="float64")
    w = np.asarray(w, dtype="float64").ravel()
    if x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"row_dot: x is {x.shape}, w has {w.shape[0]} weights")
    out = np.zeros(x.shape[0], dtype="float64")
    for j in range(x.shape[1]):
        out += x[:, j] * w[j]
    return out
