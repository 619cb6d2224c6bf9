"""Rolling snapshots: the training set is many points in time, each with features before it and labels after it.

Two uses of the same snapshots:

* **Selection, out of time.** The latest snapshot whose label window ends by the end of the data (and by
  ``--as-of``) is held out. Training snapshots must have their whole label window *before* the holdout date, so
  nothing the candidates learn from comes from the period they are judged on. The latest training snapshot is the
  validation set (early stopping, tree size, calibration); earlier ones are fitted on. The holdout decides the
  family and its hyper-parameters.
* **Production fit.** The winner is then refitted on every labelled snapshot up to the holdout (see
  ``training/production.py``): the registered model learns from the freshest labels the data has.

Spacing. With more than a year of usable history the training snapshots are spread over a full year, so every
season is seen (and the ``season`` features are used); otherwise they are monthly. Dense snapshots (every
``dense_step_days``, over the whole usable history, up to ``max_snapshots``) are used when the history is too
short for two monthly ones before the holdout, or on request when monthly snapshots would hold few labelled rows
(``dense_below_rows``). Consecutive snapshots share customers, so density adds views of the same people at other
dates, not new people: on Online Retail (~2,200 labelled customers a month) monthly snapshots backtested slightly
better than every 14 days, and those better than weekly (README, "Quality"). The row budget
(``max_training_rows``) caps the total.

Short history. When there is no room for two training snapshots whose label windows end before the holdout, the
gap between the latest training snapshot and the holdout shrinks (down to half a horizon): training dates stay
strictly before the holdout, but their label windows overlap its window by the missing days, and the evaluation
says so in a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import build_features
from features.dataset import Dataset
from features.engines import Engine
from features.labels import build_labels
from features.registry import feature_registry

MIN_HISTORY_DAYS = 28  # a snapshot needs this much history before it
SEASON_SPAN_DAYS = 270  # train snapshots spanning this long cover the seasons well enough to use season features
MIN_GAP_SHARE = 0.5  # short history: the training label windows may overlap the holdout's by at most half of H


class NotEnoughDataError(ValueError):
    """Training refused: the message says what is missing."""


@dataclass(frozen=True)
class SnapshotPlan:
    holdout: datetime
    train: tuple[datetime, ...]  # oldest first; the last one is the validation snapshot
    horizon_days: int
    data_start: datetime
    data_end: datetime
    production: tuple[datetime, ...] = ()  # every labelled date the production fit may use, oldest first
    step_days: int = 30
    overlap_days: int = 0  # days the training label windows overlap the holdout's (short history only)

    @property
    def validation(self) -> datetime:
        return self.train[-1]

    @property
    def fit(self) -> tuple[datetime, ...]:
        return self.train[:-1]

    @property
    def uses_season(self) -> bool:
        return (self.train[-1] - self.train[0]).days >= SEASON_SPAN_DAYS

    @property
    def all_dates(self) -> tuple[datetime, ...]:
        return tuple(sorted({*self.train, *self.production, self.holdout}))


def plan_snapshots(
    data_start: datetime,
    data_end: datetime,
    *,
    horizon_days: int,
    n_snapshots: int,
    step_days: int,
    as_of: datetime | None = None,
    dense_step_days: int | None = None,
    max_snapshots: int = 30,
) -> SnapshotPlan:
    """Pick the holdout, training and production snapshot dates (midnight) for the data's time span.

    ``dense_step_days`` switches to dense snapshots: that spacing, over the whole usable history (at most
    ``max_snapshots`` training dates) instead of ``n_snapshots`` monthly ones.
    """
    horizon = timedelta(days=horizon_days)
    end = min(data_end, as_of) if as_of else data_end
    holdout = _midnight(end - horizon)
    earliest = _midnight(data_start) + timedelta(days=MIN_HISTORY_DAYS)
    step = dense_step_days or step_days
    gap = horizon_days
    if (holdout - earliest).days - gap < step:  # no room for two training dates before the holdout's window
        gap = (holdout - earliest).days - step
    if gap < math.ceil(MIN_GAP_SHARE * horizon_days):
        raise NotEnoughDataError(
            f"not enough history: {(end - data_start).days} days of data; out-of-time training with a "
            f"{horizon_days}-day horizon needs at least "
            f"{math.ceil((1 + MIN_GAP_SHARE) * horizon_days) + step + MIN_HISTORY_DAYS} days "
            f"(two training snapshots {step} days apart, a held-out window of {horizon_days} days at most "
            f"{horizon_days - math.ceil(MIN_GAP_SHARE * horizon_days)} days of which overlap the training labels, "
            f"{MIN_HISTORY_DAYS} days of history); use a shorter --horizon-days or more data"
        )
    latest_train = holdout - timedelta(days=gap)
    available = (latest_train - earliest).days
    if dense_step_days:
        n_train = min(max_snapshots, available // step + 1)
    else:
        n_train = max(n_snapshots - 1, 2)
        if available >= 365:  # spread over a year: every season is seen
            step = max(step_days, math.ceil(min(available, 365) / (n_train - 1)))
    dates = sorted(d for d in (latest_train - timedelta(days=step * i) for i in range(n_train)) if d >= earliest)
    if len(dates) < 2:
        raise NotEnoughDataError(
            f"not enough history for two training snapshots before the held-out one ({holdout:%Y-%m-%d}): "
            f"they must lie between {earliest:%Y-%m-%d} and {latest_train:%Y-%m-%d}, {step} days apart; "
            "use a shorter --horizon-days or more data"
        )
    # production: the training dates plus the labelled dates after them, at the same spacing, up to the holdout
    later = [holdout - timedelta(days=step * i) for i in range(math.ceil(gap / step) + 1)]
    production = tuple(sorted({*dates, *(d for d in later if d > dates[-1])}))
    return SnapshotPlan(holdout, tuple(dates), horizon_days, data_start, data_end, production, step, horizon_days - gap)


def labelled_buyers_before(data: Dataset, when: datetime) -> int:
    """Customers with an order before ``when``: roughly how many labelled rows a snapshot there holds."""
    tx = data.transactions
    before = tx.filter(
        pc.and_(pc.less(tx["timestamp"], pa.scalar(when, pa.timestamp("us"))), pc.greater_equal(tx["amount"], 0))
    )
    return len(pc.unique(before["customer_id"]))


def _midnight(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, ts.day)


@dataclass
class SnapshotFrame:
    """Features and labels of sampled labelled customers at the planned snapshot dates."""

    frame: pd.DataFrame  # customer_id, as_of, features..., churned, duration_days, event
    feature_names: list[str]
    plan: SnapshotPlan
    churn_rates: dict[str, float] = field(default_factory=dict)
    labelled_counts: dict[str, int] = field(default_factory=dict)

    def part(self, which: str) -> pd.DataFrame:
        dates = {
            "fit": self.plan.fit,
            "validation": (self.plan.validation,),
            "holdout": (self.plan.holdout,),
            "train": self.plan.train,
            "production": self.plan.production,
        }[which]
        return self.at(dates)

    def at(self, dates: tuple[datetime, ...] | list[datetime]) -> pd.DataFrame:
        """The rows of these snapshot dates."""
        return self.frame[self.frame["as_of"].isin(pd.to_datetime(list(dates)))]


def build_snapshot_frame(
    data: Dataset,
    plan: SnapshotPlan,
    *,
    event_types: tuple[str, ...],
    max_rows: int,
    seed: int,
    progress: Callable[[int, str | None], None] | None = None,
    engine: Engine | None = None,
) -> SnapshotFrame:
    """Labels first (cheap), then a seeded sample of labelled customers per snapshot, then their features.

    ``engine`` runs the feature query (default DuckDB; the configured one, e.g. Spark, from ``churn train``): the
    same definitions and the same frame on every engine (``tests/test_spark.py``). An engine that takes every date
    in one query (Spark) gets all snapshots at once; DuckDB goes date by date, which keeps its memory flat."""
    from features.build import entities_at

    say = progress or (lambda n=1, d=None: None)
    entities = entities_at(data, list(plan.all_dates))
    labels = build_labels(data, entities, horizon_days=plan.horizon_days, data_end=plan.data_end)
    per_snapshot = max(max_rows // len(plan.all_dates), 1)
    sampled = _sample_per_snapshot(labels, per_snapshot, seed)
    keys = ["customer_id", "as_of"]
    parts = []
    if getattr(engine, "all_dates_at_once", False):
        feats = build_features(data, sampled.select(keys), event_types=event_types, engine=engine)
        parts.append(feats.join(sampled, keys).to_pandas())
        say(len(plan.all_dates), f"features for {len(plan.all_dates)} snapshots in one query")
    else:
        for i, as_of in enumerate(plan.all_dates):
            subset = sampled.filter(pc.equal(sampled["as_of"], pa.scalar(as_of, pa.timestamp("us"))))
            feats = build_features(data, subset.select(keys), event_types=event_types, engine=engine)
            parts.append(feats.join(subset, keys).to_pandas())
            say(1, f"features for snapshot {as_of:%Y-%m-%d} ({i + 1}/{len(plan.all_dates)})")
    # a stable row order: LightGBM's bagging picks rows by position, so order is part of reproducibility
    frame = pd.concat(parts, ignore_index=True).sort_values(["as_of", "customer_id"], ignore_index=True)
    rates = frame.groupby("as_of")["churned"].mean()
    counts = pc.value_counts(labels["as_of"]).to_pylist()
    names = [s.name for s in feature_registry(event_types)]
    return SnapshotFrame(
        frame=frame,
        feature_names=names,
        plan=plan,
        churn_rates={f"{d:%Y-%m-%d}": float(r) for d, r in rates.items()},
        labelled_counts={f"{c['values']:%Y-%m-%d}": int(c["counts"]) for c in counts},
    )


def _sample_per_snapshot(labels: pa.Table, per_snapshot: int, seed: int) -> pa.Table:
    df = labels.to_pandas()
    df = df.sort_values(["as_of", "customer_id"], kind="stable")
    parts = [
        g if len(g) <= per_snapshot else g.sample(per_snapshot, random_state=seed)
        for _, g in df.groupby("as_of", sort=True)
    ]
    sampled = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(sampled, preserve_index=False).cast(labels.schema)


def check_enough(frame: SnapshotFrame, *, min_labelled: int, min_churners: int) -> None:
    """Refuse to train on too little signal, saying what is missing."""
    for which in ("fit", "validation", "holdout"):
        part = frame.part(which)
        n, churners = len(part), int(part["churned"].sum())
        if n < min_labelled:
            raise NotEnoughDataError(
                f"too few labelled customers in the {which} snapshot(s): {n} (need at least {min_labelled}; "
                "a labelled customer bought before the snapshot date). Use more data or a shorter horizon."
            )
        if churners < min_churners or n - churners < min_churners:
            raise NotEnoughDataError(
                f"the {which} snapshot(s) have {churners} churners and {n - churners} retained customers; need "
                f"at least {min_churners} of each to learn and to measure churn"
            )
