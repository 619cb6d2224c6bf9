"""The feature registry: every feature's name, dtype, description and definition, in one place.

Training, batch scoring and the API all compute features through ``features.build.build_features``, which builds
one Ibis query from these specs. A spec's ``expr`` is an Ibis expression over one *source* (below); each source
holds only rows strictly before the entity's ``as_of`` and an ``age`` column = days from the row to ``as_of``.
Day differences are epoch-second arithmetic, never ``delta(unit="day")`` (DuckDB and Spark disagree on that).

Sources, per (customer_id, as_of):

* ``orders``  one row per order: transaction lines grouped by ``order_id`` (or by time stamp when the data has no
  order ids) that hold at least one line with an amount >= 0. An order is an order: a free one (zero value, a
  100 % discount) counts for recency and frequency like any other. ``value`` = the order's net total (refund
  lines that share its id are subtracted), ``age`` = age of its first purchase line. A group of refund lines
  alone (a cancellation invoice, a refund without an order id) is not an order.
* ``lines``   every transaction line (purchases and refunds). Spend is net: money spent minus money refunded,
  each counted on the day it happened, so a cancelled order is not spend (nor a sign of loyalty).
* ``days``    one row per distinct purchase day, with ``gap`` = days since the previous purchase day.
* ``event_types`` one row per event type seen: counts per window and the ages of the first and last event.
* ``customers`` the customer's static record (sign-up, cancel date *before* as_of only).
* ``derived`` combinations of the features above (``expr`` receives the table of all earlier features).

The sources pre-aggregate where that makes the query cheap (per-type event counts instead of 25 filtered counts
over every event). There is no product breadth: distinct customer x product pairs cost more than the rest of the
query together.

Counts and sums of a customer with no rows in a source are 0; "days since" and ratios are null (LightGBM and the
survival preprocessing handle nulls explicitly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import ibis
import ibis.expr.types as ir

FEATURE_SET = "rfm_engagement_v2"  # v2: zero-value orders are orders; spend is net of refunds
# event types that get their own features unless the settings say otherwise (the demo simulator emits these)
DEFAULT_EVENT_TYPES = ("session", "email_open", "email_click", "support_ticket", "app_login")
WINDOWS = (30, 90, 180, 365)

Source = Literal["orders", "lines", "firsts", "days", "event_types", "customers", "derived"]
Dtype = Literal["int64", "float64"]


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: Dtype
    description: str
    source: Source
    expr: Callable[[ir.Table], ir.Value]
    fill: float | None = None  # value when the customer has no rows in the source (counts and sums: 0)
    group: str = "rfm"  # for docs and for model feature subsets: rfm, behaviour, engagement, season


def _count(
    name: str, desc: str, source: Source, cond: Callable[[ir.Table], ir.BooleanValue] | None = None, group: str = "rfm"
) -> FeatureSpec:
    def expr(t: ir.Table) -> ir.Value:
        return t.count(where=cond(t)) if cond is not None else t.count()

    return FeatureSpec(name, "int64", desc, source, expr, fill=0, group=group)


def _rfm() -> list[FeatureSpec]:
    return [
        FeatureSpec("recency_days", "float64", "Days since the last order.", "orders", lambda o: o.age.min()),
        _count("frequency", "Orders before as_of (free orders included).", "orders"),
        FeatureSpec("first_purchase_days", "float64", "Days since the first order.", "orders", lambda o: o.age.max()),
        FeatureSpec(
            "monetary_std",
            "float64",
            "Sample standard deviation of net order values (2+ orders).",
            "orders",
            lambda o: o.value.std(how="sample"),
        ),
        FeatureSpec("monetary_max", "float64", "Largest net order value.", "orders", lambda o: o.value.max()),
    ]


def _windows() -> list[FeatureSpec]:
    specs: list[FeatureSpec] = []
    for w in WINDOWS:
        specs.append(
            _count(f"orders_{w}d", f"Orders in the {w} days before as_of.", "orders", lambda o, w=w: o.age < w)
        )
        specs.append(
            FeatureSpec(
                f"spend_{w}d",
                "float64",
                f"Net spend (purchases minus refunds) in the {w} days before as_of.",
                "lines",
                lambda t, w=w: t.amount.sum(where=t.age < w),
                fill=0.0,
            )
        )
    specs.append(
        _count(
            "orders_prev_90d",
            "Orders 90-180 days before as_of (the window before orders_90d).",
            "orders",
            lambda o: (o.age >= 90) & (o.age < 180),
        )
    )
    specs.append(
        FeatureSpec(
            "spend_prev_90d",
            "float64",
            "Net spend 90-180 days before as_of.",
            "lines",
            lambda t: t.amount.sum(where=(t.age >= 90) & (t.age < 180)),
            fill=0.0,
        )
    )
    return specs


def _lines() -> list[FeatureSpec]:
    def breadth(column: str, what: str) -> FeatureSpec:
        return FeatureSpec(
            f"{column.removesuffix('_id')}_breadth",
            "int64",
            f"Distinct {what} bought.",
            "firsts",
            lambda f, c=column: f.count(where=f.kind == c),
            fill=0,
            group="behaviour",
        )

    return [
        FeatureSpec(
            "monetary_total",
            "float64",
            "Net spend: every purchase minus every refund and cancellation before as_of.",
            "lines",
            lambda t: t.amount.sum(),
            fill=0.0,
        ),
        FeatureSpec(
            "refund_total",
            "float64",
            "Money refunded (absolute value of negative lines).",
            "lines",
            lambda t: -t.refund.sum(),
            fill=0.0,
            group="behaviour",
        ),
        FeatureSpec(
            "refund_lines",
            "int64",
            "Refund / cancellation lines.",
            "lines",
            lambda t: t.refund_lines.sum(),
            fill=0,
            group="behaviour",
        ),
        breadth("category", "categories"),
        breadth("channel", "sales channels"),
    ]


def _days() -> list[FeatureSpec]:
    return [
        _count("purchase_days", "Distinct days with an order.", "days"),
        FeatureSpec(
            "gap_mean_days",
            "float64",
            "Mean days between consecutive purchase days (2+ days).",
            "days",
            lambda d: d.gap.mean(),
        ),
        FeatureSpec(
            "gap_std_days",
            "float64",
            "Sample std of the gaps between purchase days (3+ days).",
            "days",
            lambda d: d.gap.std(how="sample"),
        ),
        FeatureSpec("gap_max_days", "float64", "Longest gap between purchase days.", "days", lambda d: d.gap.max()),
        FeatureSpec(
            "last_gap_days",
            "float64",
            "Gap before the most recent purchase day (reactivation signal).",
            "days",
            lambda d: d.gap.argmax(d.day),
        ),
    ]


def _events(event_types: tuple[str, ...]) -> list[FeatureSpec]:
    """Over ``event_types``: one row per (customer, as_of, event type) with counts per window (``n_30``: last 30
    days, ``n_prev_30``: 30-60 days, ``n_90``) and the ages of the type's last and first event."""

    def count(name: str, column: str, desc: str, event_type: str | None = None) -> FeatureSpec:
        def expr(e: ir.Table) -> ir.Value:
            return e[column].sum(where=e.event_type == event_type) if event_type else e[column].sum()

        return FeatureSpec(name, "int64", desc, "event_types", expr, fill=0, group="engagement")

    specs = [
        count("events_30d", "n_30", "Engagement events of any type in the last 30 days."),
        count("events_90d", "n_90", "Engagement events of any type in the last 90 days."),
        count("events_prev_30d", "n_prev_30", "Events 30-60 days before as_of."),
        FeatureSpec(
            "days_since_last_event",
            "float64",
            "Days since the last engagement event.",
            "event_types",
            lambda e: e.last_age.min(),
            group="engagement",
        ),
        FeatureSpec(
            "days_since_first_event",
            "float64",
            "Days since the first engagement event.",
            "event_types",
            lambda e: e.first_age.max(),
            group="engagement",
        ),
    ]
    for et in event_types:
        specs += [
            count(f"{et}_30d", "n_30", f"'{et}' events in the last 30 days.", et),
            count(f"{et}_90d", "n_90", f"'{et}' events in the last 90 days.", et),
            count(f"{et}_prev_30d", "n_prev_30", f"'{et}' events 30-60 days before as_of.", et),
            FeatureSpec(
                f"{et}_days_since_last",
                "float64",
                f"Days since the last '{et}' event.",
                "event_types",
                lambda e, et=et: e.last_age.min(where=e.event_type == et),
                group="engagement",
            ),
        ]
    return specs


def _customers() -> list[FeatureSpec]:
    return [
        FeatureSpec(
            "days_since_signup",
            "float64",
            "Days since sign-up (null without a sign-up date before as_of).",
            "customers",
            lambda c: c.signup_age.max(),
            group="behaviour",
        ),
        FeatureSpec(
            "cancelled",
            "int64",
            "1 if the customer cancelled (churn_date) before as_of.",
            "customers",
            lambda c: c.cancelled.max(),
            fill=0,
            group="behaviour",
        ),
    ]


def _safe_div(a: ir.NumericValue, b: ir.NumericValue) -> ir.NumericValue:
    return ibis.ifelse(b > 0, a / b, ibis.null("float64"))


_NONE = 1e18  # stands in for "no value" inside max/min: engines disagree on GREATEST/LEAST with NULL arguments


def _max_known(*ages: ir.NumericValue) -> ir.NumericValue:
    """The largest non-null age (null if all are null), identical on DuckDB, SQLite and Spark."""
    largest = ibis.greatest(*[ibis.coalesce(a, -_NONE) for a in ages])
    return ibis.ifelse(largest <= -_NONE, ibis.null("float64"), largest)


def _min_known(*ages: ir.NumericValue) -> ir.NumericValue:
    smallest = ibis.least(*[ibis.coalesce(a, _NONE) for a in ages])
    return ibis.ifelse(smallest >= _NONE, ibis.null("float64"), smallest)


def _year_angle(w: ir.Table) -> ir.FloatingValue:
    return w.as_of.day_of_year() * (2 * math.pi / 365.25)


def _derived(event_types: tuple[str, ...]) -> list[FeatureSpec]:
    specs = [
        FeatureSpec(
            "orders_trend_90d",
            "float64",
            "orders_90d - orders_prev_90d: buying more or less than before.",
            "derived",
            lambda w: (w.orders_90d - w.orders_prev_90d).cast("float64"),
        ),
        FeatureSpec(
            "monetary_mean",
            "float64",
            "Net spend per order: monetary_total / frequency.",
            "derived",
            lambda w: _safe_div(w.monetary_total, w.frequency.cast("float64")),
        ),
        FeatureSpec(
            "spend_trend_90d",
            "float64",
            "ln(1+spend_90d) - ln(1+spend_prev_90d), net spends below 0 counted as 0.",
            "derived",
            lambda w: (ibis.greatest(w.spend_90d, 0.0) + 1).ln() - (ibis.greatest(w.spend_prev_90d, 0.0) + 1).ln(),
        ),
        FeatureSpec(
            "refund_share",
            "float64",
            "Share of the money spent that was refunded: refund_total / (monetary_total + refund_total).",
            "derived",
            lambda w: _safe_div(w.refund_total, w.monetary_total + w.refund_total),
            group="behaviour",
        ),
        FeatureSpec(
            "recency_gap_ratio",
            "float64",
            "recency_days / gap_mean_days: how overdue the customer is against their own rhythm.",
            "derived",
            lambda w: _safe_div(w.recency_days, w.gap_mean_days),
        ),
        FeatureSpec(
            "tenure_days",
            "float64",
            "Days since the first known activity (order, event or sign-up).",
            "derived",
            lambda w: _max_known(w.first_purchase_days, w.days_since_first_event, w.days_since_signup),
        ),
        FeatureSpec(
            "orders_per_month",
            "float64",
            "frequency per 30 days of tenure (tenure of at least 30 days).",
            "derived",
            lambda w: w.frequency / ibis.greatest(ibis.coalesce(w.tenure_days, 0.0), 30.0) * 30.0,
        ),
        FeatureSpec(
            "days_since_last_engagement",
            "float64",
            "Days since the last order or event, whichever is later.",
            "derived",
            lambda w: _min_known(w.recency_days, w.days_since_last_event),
            group="engagement",
        ),
        FeatureSpec(
            "events_trend_30d",
            "float64",
            "events_30d - events_prev_30d.",
            "derived",
            lambda w: (w.events_30d - w.events_prev_30d).cast("float64"),
            group="engagement",
        ),
    ]
    for et in event_types:
        specs.append(
            FeatureSpec(
                f"{et}_trend_30d",
                "float64",
                f"{et}_30d - {et}_prev_30d.",
                "derived",
                lambda w, et=et: (w[f"{et}_30d"] - w[f"{et}_prev_30d"]).cast("float64"),
                group="engagement",
            )
        )
    specs += [
        FeatureSpec(
            "season_sin",
            "float64",
            "sin(2 pi day-of-year(as_of) / 365.25): where in the year we stand.",
            "derived",
            lambda w: _year_angle(w).sin(),
            group="season",
        ),
        FeatureSpec(
            "season_cos",
            "float64",
            "cos(2 pi day-of-year(as_of) / 365.25).",
            "derived",
            lambda w: _year_angle(w).cos(),
            group="season",
        ),
    ]
    return specs


def feature_registry(event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES) -> tuple[FeatureSpec, ...]:
    """All features for the given event types, in the order they appear in feature tables."""
    _check_event_types(event_types)
    specs = _rfm() + _windows() + _lines() + _days() + _events(event_types) + _customers() + _derived(event_types)
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate feature names: {sorted(duplicates)}")
    return tuple(specs)


def _check_event_types(event_types: tuple[str, ...]) -> None:
    for et in event_types:
        if not et.isidentifier() or et != et.lower():
            raise ValueError(f"event type {et!r} cannot name a feature (use lower_case_identifiers)")


def registry_markdown(event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES) -> str:
    """The feature table of the docs, generated from the registry (``docs/features.md`` is this output)."""
    specs = feature_registry(event_types)
    lines = [
        f"# Features: `{FEATURE_SET}` ({len(specs)} features)",
        "",
        "Generated by `churn features --list --markdown`; do not edit by hand. Every feature uses only rows "
        "strictly before `as_of`; ages are in days. Source: where the value comes from (see "
        "`features/registry.py`). Empty: the value for a customer with no rows in the source.",
        "",
        "| name | dtype | group | source | empty | description |",
        "|---|---|---|---|---|---|",
    ]
    for s in specs:
        empty = "null" if s.fill is None else f"{s.fill:g}"
        lines.append(f"| `{s.name}` | {s.dtype} | {s.group} | {s.source} | {empty} | {s.description} |")
    return "\n".join(lines) + "\n"
