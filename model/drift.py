"""Population stability: the binned distributions a model records at training, and the PSI against them.

The registered model carries a ``DriftReference`` (``ChurnModel.drift_reference``): for every feature its
classifier reads, and for its churn score, the bins and their shares on the rows it learned from. Training builds
it (``training/drift.py``); the report and ``churn monitor`` bin today's rows with the same bins
(``Distribution.shares_of``) and compare with ``psi``. Neither needs the training code or data.

Bins. A numeric column is cut at its deciles on the reference rows (``np.quantile``, linear interpolation, the
distinct values of the 10 %, 20 %, ..., 90 % quantiles). Bins are closed on the right: ``(-inf, e1]``,
``(e1, e2]``, ..., ``(e_k, inf)``, so a value that fills several deciles (zero counts, say) gets a bin of its
own. A column that is not numeric (or boolean) is binned by category: one bin per value seen in the reference,
then ``other`` for values never seen there. Nulls are always their own bin, last.

PSI (population stability index) of current shares ``a`` against reference shares ``e`` over the same bins::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i),   a share below EPSILON (1e-4) counted as EPSILON

The epsilon keeps an empty bin (on either side) finite: a bin empty at training that holds 10 % of today's rows
adds (0.1 - 0.0001) * ln(0.1 / 0.0001) = 0.69. Conventional reading, and the default settings: below 0.1 stable,
0.1 to 0.25 a moderate shift (warn), 0.25 and above a major shift (alert).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

EPSILON = 1e-4
DECILES = tuple(np.round(np.arange(1, 10) / 10, 1).tolist())
NULL_BIN = "null"
OTHER_BIN = "other"
Status = Literal["ok", "warn", "alert"]


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float], epsilon: float = EPSILON) -> float:
    """The population stability index of ``actual`` shares against ``expected`` shares (same bins)."""
    e = np.maximum(np.asarray(expected, dtype=float), epsilon)
    a = np.maximum(np.asarray(actual, dtype=float), epsilon)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs the same bins on both sides: {e.shape} vs {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def status(value: float, warn: float, alert: float) -> Status:
    """ok below ``warn``, warn from ``warn``, alert from ``alert`` (both thresholds inclusive)."""
    if value >= alert:
        return "alert"
    return "warn" if value >= warn else "ok"


@dataclass(frozen=True)
class Distribution:
    """One column's bins and the share of the reference rows in each (the null bin last)."""

    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()  # numeric: inner cut points, bins closed on the right
    categories: tuple[str, ...] = ()  # categorical: one bin each, then OTHER_BIN
    shares: tuple[float, ...] = ()
    n: int = 0  # reference rows

    @classmethod
    def fit(cls, name: str, values: pd.Series | np.ndarray) -> Distribution:
        """The bins of ``values`` (deciles, or categories) and the share of ``values`` in each."""
        series = pd.Series(values)
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        if numeric:
            x = series.to_numpy(dtype="float64", na_value=np.nan)
            present = x[~np.isnan(x)]
            edges = tuple(np.unique(np.quantile(present, DECILES)).tolist()) if len(present) else ()
            skeleton = cls(name, "numeric", edges=edges)
        else:
            present = series[series.notna()].astype(str)
            skeleton = cls(name, "categorical", categories=tuple(sorted(present.unique())))
        shares = skeleton.shares_of(series)
        return cls(name, skeleton.kind, skeleton.edges, skeleton.categories, tuple(shares.tolist()), n=int(len(series)))

    @property
    def labels(self) -> list[str]:
        """A name for every bin, in order (``(-inf, 3]``, ``(3, 7]``, ..., ``null``)."""
        if self.kind == "categorical":
            return [*self.categories, OTHER_BIN, NULL_BIN]
        bounds = ["-inf", *(_num(e) for e in self.edges), "inf"]
        inner = [f"({lo}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        inner[-1] = inner[-1].replace("inf]", "inf)")
        return [*inner, NULL_BIN]

    def counts(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Rows of ``values`` per bin (the same bins as ``labels``)."""
        series = pd.Series(values)
        null = series.isna().to_numpy()
        if self.kind == "numeric":
            x = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            null = np.isnan(x)
            index = np.searchsorted(np.asarray(self.edges, dtype=float), x[~null], side="left")
            size = len(self.edges) + 1
        else:
            position = {c: i for i, c in enumerate(self.categories)}
            index = np.array([position.get(v, len(self.categories)) for v in series[~null].astype(str)], dtype=int)
            size = len(self.categories) + 1
        return np.append(np.bincount(index, minlength=size), int(null.sum()))

    def shares_of(self, values: pd.Series | np.ndarray) -> np.ndarray:
        counts = self.counts(values)
        return counts / max(int(counts.sum()), 1)

    def psi_of(self, values: pd.Series | np.ndarray, epsilon: float = EPSILON) -> float:
        return psi(self.shares, self.shares_of(values), epsilon)


@dataclass(frozen=True)
class DriftReference:
    """What the model saw at training: the rows of one snapshot, binned per feature and for the churn score."""

    as_of: str  # the snapshot date of the reference rows (the latest the registered model learned from)
    n_rows: int
    features: dict[str, Distribution]
    score: Distribution
    mean_score: float  # the model's mean churn probability on those rows
    churn_rate: float  # their observed churn rate (labels)
    population: str = "customers with an order before as_of who had not cancelled (the labelled population)"
    extra: dict[str, Any] = field(default_factory=dict)


def _num(x: float) -> str:
    return f"{x:.4g}"
