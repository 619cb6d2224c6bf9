"""Labels for a snapshot: the churn flag at horizon H and the survival target. They look only at/after ``as_of``.

Classification (non-contractual churn)::

    churned = no purchase in [as_of, as_of + H)          (or an explicit cancel date inside that window)

A purchase is any transaction line with an amount >= 0: a free order is an order, exactly as for the features
(``features/registry.py``); refund lines are not purchases.

Survival: the customer churns when their inactivity first reaches H days. Walking forward from the last purchase
before ``as_of`` (p0), take the first purchase p_i (i >= 0) followed by a gap of at least H days (or by no purchase
at all); the churn moment is p_i + H. ``duration_days`` = churn moment - as_of (0 if the customer had already been
inactive for H days at as_of), ``event`` = 1. If the churn moment lies after the end of the data, the customer is
censored: ``duration_days`` = data end - as_of, ``event`` = 0. Customers with a ``churn_date`` (subscriptions)
use the cancel date instead.

``future_spend`` is the net money spent in [as_of, as_of + H) (purchases minus refunds dated in the window, as
the spend features count it): the value model is checked against it.

Who is labelled: customers with at least one purchase before ``as_of`` who had not cancelled before it. A snapshot
whose label window runs past the end of the data is refused: its "churned" customers would only be unobserved.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import ArrayLike

from features.build import KEYS, check_entities, contract_tables, days_between
from features.dataset import Dataset
from features.engines import DuckDBEngine, default_engine


def is_lapsed(recency_days: ArrayLike, cancelled: ArrayLike, horizon_days: int) -> np.ndarray:
    """Churned by definition at as_of, from what is known before it: no purchase for at least H days, or a
    cancellation before as_of. The one lapsed rule: the scorecard's ``lapsed`` stage, its survival view and the
    KPIs' "active" (its complement) all call it, so they cannot disagree with each other or with the label."""
    recency = np.asarray(recency_days, dtype=float)
    return (recency >= horizon_days) | (np.asarray(cancelled) == 1)


LABEL_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("as_of", pa.timestamp("us")),
        ("churned", pa.int64()),
        ("duration_days", pa.float64()),
        ("event", pa.int64()),
        ("future_spend", pa.float64()),
    ]
)


class LabelWindowError(ValueError):
    """A snapshot's label window is not fully observed."""


def latest_labelable_as_of(data_end: datetime, horizon_days: int) -> datetime:
    """The last as_of whose window [as_of, as_of + H) ends by the end of the data."""
    return data_end - timedelta(days=horizon_days)


def check_label_window(as_of: datetime, data_end: datetime, horizon_days: int) -> None:
    if as_of + timedelta(days=horizon_days) > data_end:
        raise LabelWindowError(
            f"cannot label as_of {as_of:%Y-%m-%d}: its {horizon_days}-day window ends "
            f"{as_of + timedelta(days=horizon_days):%Y-%m-%d %H:%M}, after the data ends ({data_end:%Y-%m-%d %H:%M}); "
            f"use an as_of on or before {latest_labelable_as_of(data_end, horizon_days):%Y-%m-%d %H:%M}"
        )


def build_labels(
    data: Dataset,
    entities: pa.Table,
    *,
    horizon_days: int,
    data_end: datetime | None = None,
    engine: DuckDBEngine | None = None,
) -> pa.Table:
    """Labels for the labelled subset of ``entities`` (see module docstring), in no particular order."""
    entities = check_entities(entities)
    data_end = data_end or data.data_end
    for as_of in pc.unique(entities["as_of"]).to_pylist():
        check_label_window(as_of, data_end, horizon_days)
    sql = _label_sql(horizon_days, data_end)
    return (engine or default_engine()).run(sql, data, entities).cast(LABEL_SCHEMA)


@lru_cache(maxsize=32)
def _label_sql(horizon_days: int, data_end: datetime) -> str:
    return ibis.to_sql(label_query(horizon_days, data_end), dialect="duckdb")


def label_query(horizon_days: int, data_end: datetime) -> ir.Table:
    tx, _, cu, ent = contract_tables()
    keys = list(KEYS)
    horizon_s = horizon_days * 86400
    end = ibis.literal(data_end, type="timestamp")

    purchases = tx.filter(tx.amount >= 0).select("customer_id", "timestamp").distinct()
    purchases = purchases.mutate(
        next_ts=purchases.timestamp.lead().over(group_by="customer_id", order_by=purchases.timestamp)
    )
    p = purchases.join(ent, "customer_id")
    gap_s = p.next_ts.epoch_seconds() - p.timestamp.epoch_seconds()
    # purchases from the last one before as_of onwards are exactly those whose next purchase is at/after as_of
    from_last = p.next_ts.isnull() | (p.next_ts >= p.as_of)
    ends_a_life = p.next_ts.isnull() | (gap_s >= horizon_s)
    in_window = (p.timestamp >= p.as_of) & (p.timestamp < p.as_of + ibis.interval(days=horizon_days))
    stats = p.group_by(keys).aggregate(
        n_before=p.count(where=p.timestamp < p.as_of),
        n_window=p.count(where=in_window),
        churn_at=(p.timestamp + ibis.interval(days=horizon_days)).min(where=from_last & ends_a_life),
    )
    stats = stats.filter(stats.n_before > 0)
    lines = tx.join(ent, "customer_id")
    window_end = lines.as_of + ibis.interval(days=horizon_days)
    spend = (
        lines.filter((lines.timestamp >= lines.as_of) & (lines.timestamp < window_end))
        .group_by(keys)
        .aggregate(future_spend=lines.amount.sum())
    )
    joined = stats.left_join(spend, keys)
    stats = joined.select(*[stats[c] for c in stats.columns], spend.future_spend)
    with_cancel = stats.left_join(cu.select("customer_id", "churn_date"), "customer_id")
    s = with_cancel.select(*[stats[c] for c in stats.columns], with_cancel.churn_date)
    s = s.filter(s.churn_date.isnull() | (s.churn_date >= s.as_of))

    moment = ibis.coalesce(s.churn_date, s.churn_at)
    observed = moment <= end
    window_end = s.as_of + ibis.interval(days=horizon_days)
    churned = (s.n_window == 0) | (s.churn_date.notnull() & (s.churn_date < window_end))
    return s.select(
        "customer_id",
        "as_of",
        churned=churned.cast("int64"),
        duration_days=ibis.ifelse(
            observed, ibis.greatest(days_between(s.as_of, moment), 0.0), days_between(s.as_of, end)
        ),
        event=observed.cast("int64"),
        future_spend=s.future_spend.fill_null(0.0),
    )
