"""From model outputs to what people read: the scorecard's fields, risk tiers, lifecycle stages and reasons in words.

Lifecycle stages (first rule that matches; thresholds in ``LifecycleRules``):

| stage        | rule |
|--------------|------|
| lapsed       | inactive for at least H days (churned by definition), or cancelled before as_of |
| new          | first order less than ``new_days`` ago |
| reactivated  | the latest order came after a gap of at least H days, and the customer is not lapsed now |
| at_risk      | churn_probability at or above the "high" tier threshold |
| loyal        | at least ``loyal_min_orders`` orders and ``loyal_min_tenure_days`` of tenure |
| active       | everybody else |

Customers with no order before as_of (prospects) are not scored: there is nothing to churn from yet; batch and
API report them as rejected with that reason. A free order (zero value) is an order: such a customer is scored.

Lapsed customers, read together: they have churned by the inactivity definition, so the survival view says so
(``p_active_*`` = 0, ``median_days_to_churn`` = 0, stage ``lapsed``), and ``churn_probability`` answers the one
open question about them, whether they stay away for another horizon (a win-back campaign's odds are
1 - churn_probability). ``tests/test_scorecard.py`` pins that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from features.labels import is_lapsed as lapsed_rule
from model.columns import Columns, column
from model.columns import row as feature_row

TIERS = ("low", "medium", "high", "critical")
STAGES = ("new", "active", "loyal", "at_risk", "lapsed", "reactivated")
NOT_SCORABLE = "no purchase before as_of (prospect): nothing to score yet"
DEFAULT_TIER_THRESHOLDS = (0.3, 0.5, 0.7)  # churn_probability cut-offs for medium, high, critical


@dataclass(frozen=True)
class ScorecardField:
    """One scorecard column: what the CRM reads, in the order it reads it."""

    name: str
    type: Any
    description: str
    source: str = "model"  # "model": ChurnModel.score; "policy": the retention policy (serving)


# The scorecard, defined once: ChurnModel.score returns the "model" fields in this order, batch scoring and the API
# add the "policy" fields, the API's response schema and the README's field table are generated from this list.
SCORECARD: tuple[ScorecardField, ...] = (
    ScorecardField("customer_id", str, "Your id for the customer."),
    ScorecardField("as_of", datetime, "The date the customer is scored at: only history before it is used."),
    ScorecardField(
        "churn_probability",
        float,
        "Calibrated P(no purchase in the next horizon_days). For a lapsed customer: P(they stay away another "
        "horizon_days); 1 - churn_probability is their chance to come back.",
    ),
    ScorecardField("risk_tier", str, "low / medium / high / critical by churn_probability thresholds."),
    ScorecardField(
        "p_active_30d",
        float,
        "Survival: P(not yet churned 30 days after as_of; churned = horizon_days without a purchase). "
        "0 for a lapsed customer, who has churned already.",
    ),
    ScorecardField("p_active_60d", float, "As p_active_30d, 60 days after as_of."),
    ScorecardField("p_active_90d", float, "As p_active_30d, 90 days after as_of."),
    ScorecardField("p_active_180d", float, "As p_active_30d, 180 days after as_of."),
    ScorecardField(
        "median_days_to_churn",
        float,
        "Median days until the customer reaches horizon_days without a purchase; 0 for a lapsed customer, who is "
        "there already.",
    ),
    ScorecardField(
        "expected_value_12m",
        float,
        "Expected net spend in the next 12 months if the customer stays (for a lapsed one: if they come back).",
    ),
    ScorecardField("value_at_risk", float, "churn_probability x expected_value_12m."),
    ScorecardField("lifecycle_stage", str, "new, active, loyal, at_risk, lapsed or reactivated."),
    ScorecardField("top_reasons", list[str], "Up to 3 strongest drivers of this customer's risk, in words."),
    ScorecardField("recommended_action", str, "From the retention policy.", source="policy"),
    ScorecardField("expected_value_saved", float, "value_at_risk x save rate - action cost.", source="policy"),
    ScorecardField("model_version", str, "Registered model version that produced the score."),
)
SCORECARD_COLUMNS: tuple[str, ...] = tuple(f.name for f in SCORECARD)
MODEL_COLUMNS: tuple[str, ...] = tuple(f.name for f in SCORECARD if f.source == "model")
Row = Mapping[str, Any]  # one customer's features by name (a frame's row, or a dict)


@dataclass(frozen=True)
class Contributions:
    """Per-feature contributions to a customer's raw churn log-odds, rows x ``names``: what ``top_reasons`` ranks
    (each classifier's ``contributions``)."""

    values: np.ndarray
    names: list[str]


class LifecycleRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    new_days: int = 60
    loyal_min_orders: int = 5
    loyal_min_tenure_days: int = 180


def check_tier_thresholds(v: tuple[float, float, float]) -> tuple[float, float, float]:
    """Tier cut-offs must be increasing and inside (0, 1); used by every setting that holds them."""
    if not (0 < v[0] < v[1] < v[2] < 1):
        raise ValueError("tier thresholds must be increasing and inside (0, 1)")
    return v


def risk_tiers(p: np.ndarray, thresholds: tuple[float, float, float]) -> np.ndarray:
    """low < t1 <= medium < t2 <= high < t3 <= critical."""
    return np.asarray(TIERS, dtype=object)[np.searchsorted(np.asarray(thresholds), p, side="right")]


def is_lapsed(features: Columns, horizon_days: int) -> np.ndarray:
    """The lapsed rule of ``features/labels.py`` on feature rows."""
    return lapsed_rule(column(features, "recency_days"), column(features, "cancelled", None), horizon_days)


def is_prospect(features: Columns) -> np.ndarray:
    """No purchase before as_of: nothing to score yet (batch and API list them as rejected, ``NOT_SCORABLE``)."""
    return column(features, "frequency") < 1


def lifecycle_stages(
    features: Columns,
    churn_probability: np.ndarray,
    *,
    horizon_days: int,
    high_threshold: float,
    rules: LifecycleRules,
) -> np.ndarray:
    f = features
    lapsed = is_lapsed(f, horizon_days)
    new = column(f, "first_purchase_days") < rules.new_days
    reactivated = np.nan_to_num(column(f, "last_gap_days"), nan=0.0) >= horizon_days
    at_risk = churn_probability >= high_threshold
    loyal = (column(f, "frequency", None) >= rules.loyal_min_orders) & (
        column(f, "tenure_days") >= rules.loyal_min_tenure_days
    )
    return np.select(
        [lapsed, new, reactivated, at_risk, loyal],
        ["lapsed", "new", "reactivated", "at_risk", "loyal"],
        default="active",
    ).astype(object)


# ------------------------------------------------------------------------------------------------ reasons
# Every feature has a sentence, for a known value and for a missing one, written as what a retention team would say
# about the customer. A reason is never a feature's raw description or an "unknown": ``reason_text`` covers the whole
# registry (``tests/test_scorecard.py`` checks every feature, with values and without).


def _days(v: float) -> str:
    return f"{v:.0f} day{'s' if round(v) != 1 else ''}"


def _money(v: float) -> str:
    return f"{v:,.0f}"


def _n(v: float, noun: str) -> str:
    n = int(round(v))
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _recency(row: Row) -> str:
    text = f"no purchase for {_days(row['recency_days'])}"
    gap = row.get("gap_mean_days")
    if gap is not None and not _missing(gap):
        text += f"; usual gap is {_days(gap)}"
    return text


def _trend(now: float, before: float, what: str, period: str, fmt: Callable[[float], str]) -> str:
    if now < before:
        return f"{what} down: {fmt(now)} in the last {period} vs {fmt(before)} in the {period} before"
    if now > before:
        return f"{what} up but uneven: {fmt(now)} in the last {period} vs {fmt(before)} in the {period} before"
    return f"{what} flat: {fmt(now)} in the last {period}, as in the {period} before"


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip


def _season(row: Row) -> str:
    angle = math.atan2(float(row["season_sin"]), float(row["season_cos"])) % (2 * math.pi)
    month = min(int(angle / (2 * math.pi) * 12), 11)
    return f"time of year: customers leave more often in {_MONTHS[month]}"


_TEMPLATES: dict[str, Callable[[Row], str]] = {
    "recency_days": _recency,
    "recency_gap_ratio": lambda r: (
        f"{r['recency_gap_ratio']:.1f}x their usual gap since the last purchase ({_days(r['recency_days'])})"
    ),
    "frequency": lambda r: f"only {_n(r['frequency'], 'order')} so far",
    "first_purchase_days": lambda r: f"first order {_days(r['first_purchase_days'])} ago",
    "purchase_days": lambda r: f"bought on only {_n(r['purchase_days'], 'day')}",
    "orders_per_month": lambda r: f"buys rarely: {r['orders_per_month']:.2f} orders per month",
    "monetary_total": lambda r: f"low net spend so far ({_money(r['monetary_total'])})",
    "monetary_mean": lambda r: f"small net spend per order ({_money(r['monetary_mean'])})",
    "monetary_std": lambda r: f"order values vary a lot (spread {_money(r['monetary_std'])})",
    "monetary_max": lambda r: f"largest order worth {_money(r['monetary_max'])}",
    "orders_trend_90d": lambda r: _trend(
        r["orders_90d"], r["orders_prev_90d"], "orders", "90 days", lambda v: f"{v:.0f}"
    ),
    "spend_trend_90d": lambda r: _trend(r["spend_90d"], r["spend_prev_90d"], "net spend", "90 days", _money),
    "refund_share": lambda r: f"{r['refund_share']:.0%} of the money spent was refunded",
    "refund_total": lambda r: f"refunds and cancellations worth {_money(r['refund_total'])}",
    "refund_lines": lambda r: f"{_n(r['refund_lines'], 'refund or cancellation line')}",
    "gap_mean_days": lambda r: f"buys only every {_days(r['gap_mean_days'])} on average",
    "gap_std_days": lambda r: f"irregular buyer: gaps vary by {_days(r['gap_std_days'])}",
    "gap_max_days": lambda r: f"once went {_days(r['gap_max_days'])} without buying",
    "last_gap_days": lambda r: f"had gone {_days(r['last_gap_days'])} without buying before the last order",
    "events_trend_30d": lambda r: _trend(
        r["events_30d"], r["events_prev_30d"], "engagement", "30 days", lambda v: _n(v, "event")
    ),
    "days_since_last_event": lambda r: f"no engagement for {_days(r['days_since_last_event'])}",
    "days_since_first_event": lambda r: f"first engaged {_days(r['days_since_first_event'])} ago",
    "days_since_last_engagement": lambda r: f"no activity of any kind for {_days(r['days_since_last_engagement'])}",
    "days_since_signup": lambda r: f"signed up {_days(r['days_since_signup'])} ago",
    "cancelled": lambda r: "cancelled the subscription" if r["cancelled"] else "has not cancelled, yet at risk",
    "tenure_days": lambda r: f"customer for only {_days(r['tenure_days'])}",
    "category_breadth": lambda r: f"buys from only {_n(r['category_breadth'], 'category')}",
    "channel_breadth": lambda r: f"buys through only {_n(r['channel_breadth'], 'channel')}",
    "season_sin": _season,
    "season_cos": _season,
}
_NULL_TEXT = {
    "monetary_std": "only one order so far",
    "monetary_mean": "no order yet",
    "monetary_max": "no order yet",
    "recency_days": "no order yet",
    "first_purchase_days": "no order yet",
    "gap_mean_days": "no repeat purchase yet",
    "gap_max_days": "no repeat purchase yet",
    "last_gap_days": "no repeat purchase yet",
    "recency_gap_ratio": "no repeat purchase yet",
    "gap_std_days": "only two purchase days so far",
    "refund_share": "nothing paid for yet",
    "days_since_last_event": "no engagement events recorded",
    "days_since_first_event": "no engagement events recorded",
    "days_since_last_engagement": "no activity recorded",
    "days_since_signup": "no sign-up date known",
    "tenure_days": "no activity recorded",
    "orders_per_month": "no order yet",
}
_COUNT_NOUNS = {
    "orders": "order",
    "events": "engagement event",
    "session": "session",
    "email_open": "e-mail open",
    "email_click": "e-mail click",
    "support_ticket": "support ticket",
    "app_login": "app login",
}


def _noun(event_type: str) -> str:
    return _COUNT_NOUNS.get(event_type, event_type.replace("_", " ") + " event")


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def reason_text(feature: str, row: Row) -> str:
    """One feature of one customer as a sentence a CRM user reads as a driver of their risk."""
    value = row.get(feature)
    if feature.endswith("_days_since_last"):
        noun = _noun(feature.removesuffix("_days_since_last"))
        return f"no {noun}s recorded" if _missing(value) else f"no {noun} for {_days(value)}"
    if _missing(value):
        return _NULL_TEXT.get(feature, "no history to go by")
    if feature in _TEMPLATES:
        return _TEMPLATES[feature](row)
    if feature.endswith("_trend_30d"):
        base = feature.removesuffix("_trend_30d")
        noun = _noun(base)
        return _trend(row[base + "_30d"], row[base + "_prev_30d"], f"{noun}s", "30 days", lambda v: f"{v:.0f}")
    window = _window_count(feature, value)
    if window:
        return window
    return f"{feature.replace('_', ' ')} is unusual for a customer who stays"


def _window_count(feature: str, value: float) -> str | None:
    """'orders_90d' = 2 -> 'only 2 orders in the last 90 days'; 'spend_30d' -> 'net spend 0 in the last 30 days'."""
    head, _, tail = feature.rpartition("_")
    if not (tail.endswith("d") and tail[:-1].isdigit()):
        return None
    days = int(tail[:-1])
    prev = head.endswith("_prev")
    head = head.removesuffix("_prev")
    period = f"{days}-{2 * days} days ago" if prev else f"in the last {days} days"
    if head == "spend":
        return f"net spend of {_money(value)} {period}"
    noun = _noun(head)
    n = int(value)
    if n == 0:
        return f"no {noun}s {period}"
    if prev or head == "support_ticket":
        return f"{_n(n, noun)} {period}"
    return f"only {_n(n, noun)} {period}"


def top_reasons(contributions: Contributions | pd.DataFrame, features: Columns, k: int = 3) -> list[list[str]]:
    """The k features that push each customer's churn risk up the most, as sentences (risk-raising only)."""
    if isinstance(contributions, pd.DataFrame):
        contributions = Contributions(contributions.to_numpy(), list(contributions.columns))
    values, names = contributions.values, list(contributions.names)
    if "season_sin" in names and "season_cos" in names:  # one reason, the time of year, from both parts
        sin, cos = names.index("season_sin"), names.index("season_cos")
        values = values.copy()
        values[:, sin] += values[:, cos]
        values = np.delete(values, cos, axis=1)
        del names[cos]
    order = np.argsort(-values, axis=1)[:, :k]
    out = []
    for i, idx in enumerate(order):
        features_i = feature_row(features, i)
        reasons = [reason_text(names[j], features_i) for j in idx if values[i, j] > 0]
        out.append(list(dict.fromkeys(reasons)))
    return out
