"""The churnguard feature set written the way a pandas user would write it: the benchmark baseline.

``pandas_features(data, entities)`` returns the same table as ``features.build.build_features`` (columns
``customer_id``, ``as_of`` and every registry feature in registry order, one row per entity in entity order),
but is written independently from the definitions in ``features/registry.py`` (module docstring and spec
descriptions), not translated from the compiled SQL. That makes it two things at once:

* the baseline that ``benchmarks/bench_features.py`` compares churnguard against (plain groupby/merge, one
  pass per distinct ``as_of``, no row loops over customers, no DuckDB or Ibis), and
* a second implementation that ``tests/test_pandas_reference.py`` cross-checks the registry's query against.

Definitions, per (customer_id, as_of), using only rows strictly before ``as_of``:

* age of a row = (as_of - timestamp) in seconds / 86400; a window of ``w`` days is ``age < w``, the previous
  windows are ``90 <= age < 180`` and ``30 <= age < 60``;
* an order = the lines sharing an order key (``order_id``, or the time stamp's text when ``order_id`` is null)
  among which at least one is a purchase (amount >= 0, free lines included); value = sum of all its lines (net of
  refunds with the same key), age = age of its earliest purchase line; groups of refund lines alone are no order;
* spend (``monetary_total``, ``spend_*``) is net: the sum of every line, purchases and refunds, by line age;
  ``monetary_mean`` = monetary_total / frequency;
* purchase days = distinct UTC calendar days with a purchase line (amount >= 0); gap = calendar days since the previous
  purchase day (null for the first one); ``last_gap_days`` = gap of the most recent purchase day;
* standard deviations are sample (ddof=1); counts and sums are 0 without rows, everything else null;
* ``greatest`` / ``least`` in derived features ignore nulls (null only when all inputs are null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.dataset import Dataset
from features.registry import DEFAULT_EVENT_TYPES, WINDOWS, feature_registry

DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class Frames:
    """The dataset as pandas DataFrames (what a pandas user would have after ``pd.read_parquet``)."""

    transactions: pd.DataFrame
    events: pd.DataFrame
    customers: pd.DataFrame


def to_frames(data: Dataset) -> Frames:
    return Frames(data.transactions.to_pandas(), data.events.to_pandas(), data.customers.to_pandas())


def pandas_features(
    data: Dataset | Frames,
    entities: pd.DataFrame,
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES,
) -> pd.DataFrame:
    """Features for each (customer_id, as_of) row of ``entities``, laid out like ``build_features``."""
    frames = data if isinstance(data, Frames) else to_frames(data)
    event_types = tuple(event_types)
    names = [s.name for s in feature_registry(event_types)]
    entities = entities[["customer_id", "as_of"]].reset_index(drop=True)
    parts = []
    for as_of, ent in entities.groupby("as_of", sort=True):
        part = _snapshot(frames, ent, pd.Timestamp(as_of), event_types)
        parts.append(part)
    if not parts:
        return _empty(entities, event_types)
    out = pd.concat(parts).sort_index()  # back to entity order (the index is the entity position)
    return out[["customer_id", "as_of", *names]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------- one snapshot


def _snapshot(frames: Frames, ent: pd.DataFrame, as_of: pd.Timestamp, event_types: tuple[str, ...]) -> pd.DataFrame:
    ids = pd.Index(ent["customer_id"].unique())
    lines = _before(frames.transactions, ids, as_of)
    events = _before(frames.events, ids, as_of)
    purchases = lines[lines["amount"] >= 0]

    out = ent.copy()
    for block in (
        _order_features(lines),
        _line_features(lines, purchases),
        _day_features(purchases),
        _event_features(events, event_types),
        _customer_features(frames.customers, ids, as_of),
    ):
        out = out.join(block, on="customer_id")
    _fill(out, event_types)
    _derive(out, as_of, event_types)
    return out


def _before(table: pd.DataFrame, ids: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of the entity customers strictly before as_of, with their age in days."""
    rows = table[table["customer_id"].isin(ids) & (table["timestamp"] < as_of)].copy()
    rows["age"] = (as_of - rows["timestamp"]).dt.total_seconds() / DAY_SECONDS
    return rows


def _order_features(lines: pd.DataFrame) -> pd.DataFrame:
    order_key = lines["order_id"].copy()
    no_id = order_key.isna()
    order_key[no_id] = lines.loc[no_id, "timestamp"].astype(str)  # one order per time stamp
    bought = lines["amount"] >= 0
    orders = (
        lines.assign(order_key=order_key, purchase_age=lines["age"].where(bought), bought=bought)
        .groupby(["customer_id", "order_key"], sort=False)
        .agg(value=("amount", "sum"), age=("purchase_age", "max"), purchase_lines=("bought", "sum"))
        .reset_index()
    )
    orders = orders[orders["purchase_lines"] > 0]
    for w in WINDOWS:
        orders[f"in_{w}"] = orders["age"] < w
    orders["in_prev"] = (orders["age"] >= 90) & (orders["age"] < 180)
    window_cols = [f"in_{w}" for w in WINDOWS] + ["in_prev"]

    g = orders.groupby("customer_id", sort=False)
    out = g.agg(
        recency_days=("age", "min"),
        frequency=("age", "size"),
        first_purchase_days=("age", "max"),
        monetary_std=("value", "std"),  # ddof=1: null with one order
        monetary_max=("value", "max"),
    )
    counts = g[window_cols].sum()
    for w in WINDOWS:
        out[f"orders_{w}d"] = counts[f"in_{w}"]
    out["orders_prev_90d"] = counts["in_prev"]
    return out


def _line_features(lines: pd.DataFrame, purchases: pd.DataFrame) -> pd.DataFrame:
    age = lines["age"]
    spend = {f"spend_{w}d": lines["amount"].where(age < w, 0.0) for w in WINDOWS}
    spend["spend_prev_90d"] = lines["amount"].where((age >= 90) & (age < 180), 0.0)
    net = pd.DataFrame({"customer_id": lines["customer_id"], "monetary_total": lines["amount"], **spend})
    out = net.groupby("customer_id", sort=False).sum()
    refunds = lines[lines["amount"] < 0]
    by_refund = refunds.groupby("customer_id", sort=False)["amount"]
    out = out.join(pd.DataFrame({"refund_total": -by_refund.sum(), "refund_lines": by_refund.size()}), how="outer")
    breadth = purchases.groupby("customer_id", sort=False).agg(
        category_breadth=("category", "nunique"),  # nunique ignores nulls
        channel_breadth=("channel", "nunique"),
    )
    return out.join(breadth, how="outer")


def _day_features(purchases: pd.DataFrame) -> pd.DataFrame:
    day = purchases["timestamp"].dt.floor("D")
    days = (
        pd.DataFrame({"customer_id": purchases["customer_id"], "day": day})
        .drop_duplicates()
        .sort_values(["customer_id", "day"])
    )
    days["gap"] = days.groupby("customer_id", sort=False)["day"].diff().dt.days.astype("float64")
    g = days.groupby("customer_id", sort=False)
    out = g.agg(
        purchase_days=("day", "size"),
        gap_mean_days=("gap", "mean"),
        gap_std_days=("gap", "std"),
        gap_max_days=("gap", "max"),
    )
    most_recent = days.drop_duplicates("customer_id", keep="last").set_index("customer_id")
    out["last_gap_days"] = most_recent["gap"]
    return out


def _event_features(events: pd.DataFrame, event_types: tuple[str, ...]) -> pd.DataFrame:
    age = events["age"]
    flags = {"events_30d": age < 30, "events_90d": age < 90, "events_prev_30d": (age >= 30) & (age < 60)}
    recency = {}
    for et in event_types:
        is_type = events["event_type"] == et
        flags[f"{et}_30d"] = is_type & (age < 30)
        flags[f"{et}_90d"] = is_type & (age < 90)
        flags[f"{et}_prev_30d"] = is_type & (age >= 30) & (age < 60)
        recency[f"{et}_days_since_last"] = age.where(is_type)
    table = pd.DataFrame({"customer_id": events["customer_id"], "age": age, **flags, **recency})
    g = table.groupby("customer_id", sort=False)
    out = g[list(flags)].sum()
    out["days_since_last_event"] = g["age"].min()
    out["days_since_first_event"] = g["age"].max()
    for name in recency:
        out[name] = g[name].min()  # min skips nulls: null when the customer has no event of that type
    return out


def _customer_features(customers: pd.DataFrame, ids: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
    cu = customers[customers["customer_id"].isin(ids)]
    signed_up = cu["signup_date"] < as_of
    signup_age = ((as_of - cu["signup_date"]).dt.total_seconds() / DAY_SECONDS).where(signed_up)
    cancelled = (cu["churn_date"] < as_of).astype("int64")  # NaT < x is False
    table = pd.DataFrame({"customer_id": cu["customer_id"], "days_since_signup": signup_age, "cancelled": cancelled})
    return table.groupby("customer_id", sort=False).max()


# --------------------------------------------------------------------------------------------- fills, derived


def _fill(out: pd.DataFrame, event_types: tuple[str, ...]) -> None:
    for spec in feature_registry(event_types):
        if spec.source == "derived" or spec.name not in out:
            continue
        if spec.fill is not None:
            out[spec.name] = out[spec.name].fillna(spec.fill)
        out[spec.name] = out[spec.name].astype(spec.dtype)


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    """a / b where b > 0, else null."""
    return (a / b).where(b > 0)


def _derive(out: pd.DataFrame, as_of: pd.Timestamp, event_types: tuple[str, ...]) -> None:
    out["orders_trend_90d"] = (out["orders_90d"] - out["orders_prev_90d"]).astype("float64")
    out["monetary_mean"] = _ratio(out["monetary_total"], out["frequency"].astype("float64"))
    out["spend_trend_90d"] = np.log(1 + out["spend_90d"].clip(lower=0)) - np.log(
        1 + out["spend_prev_90d"].clip(lower=0)
    )
    out["refund_share"] = _ratio(out["refund_total"], out["monetary_total"] + out["refund_total"])
    out["recency_gap_ratio"] = _ratio(out["recency_days"], out["gap_mean_days"])
    first_seen = ["first_purchase_days", "days_since_first_event", "days_since_signup"]
    out["tenure_days"] = out[first_seen].max(axis=1)  # skips nulls
    out["orders_per_month"] = out["frequency"] / np.fmax(out["tenure_days"], 30.0) * 30.0  # fmax ignores null
    out["days_since_last_engagement"] = out[["recency_days", "days_since_last_event"]].min(axis=1)
    out["events_trend_30d"] = (out["events_30d"] - out["events_prev_30d"]).astype("float64")
    for et in event_types:
        out[f"{et}_trend_30d"] = (out[f"{et}_30d"] - out[f"{et}_prev_30d"]).astype("float64")
    angle = 2 * math.pi * as_of.dayofyear / 365.25
    out["season_sin"] = math.sin(angle)
    out["season_cos"] = math.cos(angle)


def _empty(entities: pd.DataFrame, event_types: tuple[str, ...]) -> pd.DataFrame:
    cols = {s.name: pd.Series(dtype=s.dtype) for s in feature_registry(event_types)}
    return pd.DataFrame({"customer_id": entities["customer_id"], "as_of": entities["as_of"], **cols})


# --------------------------------------------------------------------------------------------- the whole script


def read_frames(data_dir: Path, now: pd.Timestamp) -> Frames:
    """The files read and cleaned the way a pandas user would: parse, drop rows without a customer, time stamp or
    amount, drop rows after ``now`` and exact duplicates (no reasons kept: that is what churnguard adds)."""

    def read(name: str) -> pd.DataFrame:
        path = data_dir / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else pd.read_csv(data_dir / f"{name}.csv", dtype=str)

    def clean(frame: pd.DataFrame, needed: list[str], times: list[str]) -> pd.DataFrame:
        frame = frame.assign(**{c: pd.to_datetime(frame[c], errors="coerce", format="mixed") for c in times})
        frame = frame.drop_duplicates()  # on the parsed values: one time stamp written two ways is one row
        frame = frame.dropna(subset=needed)
        return frame[frame["timestamp"] <= now] if "timestamp" in frame else frame

    tx = read("transactions")
    for column in ("amount", "quantity"):
        tx[column] = pd.to_numeric(tx[column], errors="coerce")
    return Frames(
        clean(tx, ["customer_id", "timestamp", "amount"], ["timestamp"]),
        clean(read("events"), ["customer_id", "timestamp", "event_type"], ["timestamp"]),
        clean(read("customers"), ["customer_id"], ["signup_date", "churn_date"]).drop_duplicates("customer_id"),
    )


def known_before(frames: Frames, as_of: pd.Timestamp) -> pd.DataFrame:
    """Entities: every customer with a transaction, event or sign-up before ``as_of``, sorted by id."""
    seen = pd.concat(
        [
            frames.transactions.loc[frames.transactions["timestamp"] < as_of, "customer_id"],
            frames.events.loc[frames.events["timestamp"] < as_of, "customer_id"],
            frames.customers.loc[frames.customers["signup_date"] < as_of, "customer_id"],
        ]
    )
    ids = np.sort(seen.unique())
    return pd.DataFrame({"customer_id": ids, "as_of": as_of})


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.pandas_reference --data DIR --as-of DATE --out FILE.parquet``: the whole pandas
    script as one process (read, clean, features, write), the baseline of ``benchmarks/bench_store_commands.py``."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--as-of", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--now", default=None, help="rows after this are dropped (default: the clock, as `churn` does)")
    args = p.parse_args(argv)
    frames = read_frames(args.data, pd.Timestamp(args.now) if args.now else pd.Timestamp.now())
    as_of = pd.Timestamp(args.as_of)
    features = pandas_features(frames, known_before(frames, as_of))
    features.to_parquet(args.out, index=False)


if __name__ == "__main__":
    main()
