"""Rolling snapshots: the training set is many points in time, each with features before it and labels after it.

Out-of-time validation: the latest snapshot whose label window ends by the end of the data (and by ``--as-of``)
is held out. Training snapshots must have their whole label window *before* the holdout date, so nothing the
model learns from comes from the period it is judged on. The latest training snapshot doubles as the validation
set for early stopping and calibration; earlier ones are fitted on.

With more than a year of usable history the training snapshots are spread over a full year, so every season
is seen (and the ``season`` features are used); with a short history they are packed monthly.
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
from features.labels import build_labels
from features.registry import feature_registry

MIN_HISTORY_DAYS = 28  # a snapshot needs this much history before it
SEASON_SPAN_DAYS = 270  # train snapshots spanning this long cover the seasons well enough to use season features


class NotEnoughDataError(ValueError):
    """Training refused: the message says what is missing."""


@dataclass(frozen=True)
class SnapshotPlan:
    holdout: datetime
    train: tuple[datetime, ...]  # oldest first; the last one is the validation snapshot
    horizon_days: int
    data_start: datetime
    data_end: datetime

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
        return (*self.train, self.holdout)


def plan_snapshots(
    data_start: datetime,
    data_end: datetime,
    *,
    horizon_days: int,
    n_snapshots: int,
    step_days: int,
    as_of: datetime | None = None,
) -> SnapshotPlan:
    """Pick the holdout and training snapshot dates (midnight) for the data's time span."""
    horizon = timedelta(days=horizon_days)
    end = min(data_end, as_of) if as_of else data_end
    holdout = _midnight(end - horizon)
    earliest = _midnight(data_start) + timedelta(days=MIN_HISTORY_DAYS)
    latest_train = holdout - horizon
    if holdout < earliest + horizon:
        raise NotEnoughDataError(
            f"not enough history: {(end - data_start).days} days of data; out-of-time training with a "
            f"{horizon_days}-day horizon needs at least {2 * horizon_days + MIN_HISTORY_DAYS} days "
            f"(one training window, one held-out window, {MIN_HISTORY_DAYS} days of history); "
            "use a shorter --horizon-days or more data"
        )
    n_train = max(n_snapshots - 1, 2)
    available = (latest_train - earliest).days
    step = max(step_days, math.ceil(min(available, 365) / (n_train - 1))) if available >= 365 else step_days
    dates = [latest_train - timedelta(days=step * i) for i in range(n_train)]
    dates = sorted(d for d in dates if d >= earliest)
    if len(dates) < 2:
        raise NotEnoughDataError(
            f"not enough history for two training snapshots before the held-out one ({holdout:%Y-%m-%d}): "
            f"they must lie between {earliest:%Y-%m-%d} and {latest_train:%Y-%m-%d}, {step} days apart; "
            "use a shorter --horizon-days or more data"
        )
    return SnapshotPlan(holdout, tuple(dates), horizon_days, data_start, data_end)


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
        }[which]
        return self.frame[self.frame["as_of"].isin(pd.to_datetime(list(dates)))]


def build_snapshot_frame(
    data: Dataset,
    plan: SnapshotPlan,
    *,
    event_types: tuple[str, ...],
    max_rows: int,
    seed: int,
    progress: Callable[[int, str | None], None] | None = None,
) -> SnapshotFrame:
    """Labels first (cheap), then a seeded sample of labelled customers per snapshot, then their features."""
    from features.build import entities_at

    entities = entities_at(data, list(plan.all_dates))
    labels = build_labels(data, entities, horizon_days=plan.horizon_days, data_end=plan.data_end)
    per_snapshot = max(max_rows // len(plan.all_dates), 1)
    sampled = _sample_per_snapshot(labels, per_snapshot, seed)
    parts = []
    for i, as_of in enumerate(plan.all_dates):
        subset = sampled.filter(pc.equal(sampled["as_of"], pa.scalar(as_of, pa.timestamp("us"))))
        feats = build_features(data, subset.select(["customer_id", "as_of"]), event_types=event_types)
        parts.append(feats.join(subset, ["customer_id", "as_of"]).to_pandas())
        if progress:
            progress(1, f"features for snapshot {as_of:%Y-%m-%d} ({i + 1}/{len(plan.all_dates)})")
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
