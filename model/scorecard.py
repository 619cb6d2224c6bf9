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
API report them as rejected with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

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
    ScorecardField("churn_probability", float, "Calibrated P(no purchase in the next horizon_days)."),
    ScorecardField("risk_tier", str, "low / medium / high / critical by churn_probability thresholds."),
    ScorecardField("p_active_30d", float, "Survival: P(not churned 30 days after as_of)."),
    ScorecardField("p_active_60d", float, "Survival: P(not churned 60 days after as_of)."),
    ScorecardField("p_active_90d", float, "Survival: P(not churned 90 days after as_of)."),
    ScorecardField("p_active_180d", float, "Survival: P(not churned 180 days after as_of)."),
    ScorecardField("median_days_to_churn", float, "Median of the survival curve (0 if already lapsed)."),
    ScorecardField("expected_value_12m", float, "Expected spend in the next 12 months if the customer stays."),
    ScorecardField("value_at_risk", float, "churn_probability x expected_value_12m."),
    ScorecardField("lifecycle_stage", str, "new, active, loyal, at_risk, lapsed or reactivated."),
    ScorecardField("top_reasons", list[str], "Up to 3 strongest drivers of this customer's risk, in words."),
    ScorecardField("recommended_action", str, "From the retention policy.", source="policy"),
    ScorecardField("expected_value_saved", float, "value_at_risk x save rate - action cost.", source="policy"),
    ScorecardField("model_version", str, "Registered model version that produced the score."),
)
SCORECARD_COLUMNS: tuple[str, ...] = tuple(f.name for f in SCORECARD)
MODEL_COLUMNS: tuple[str, ...] = tuple(f.name for f in SCORECARD if f.source == "model")


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


def is_lapsed(features: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """Churned by definition at as_of: no order for at least H days, or a cancellation before as_of."""
    recency = features["recency_days"].to_numpy(float)
    return (recency >= horizon_days) | (features["cancelled"].to_numpy() == 1)


def lifecycle_stages(
    features: pd.DataFrame,
    churn_probability: np.ndarray,
    *,
    horizon_days: int,
    high_threshold: float,
    rules: LifecycleRules,
) -> np.ndarray:
    f = features
    lapsed = is_lapsed(f, horizon_days)
    new = f["first_purchase_days"].to_numpy(float) < rules.new_days
    reactivated = np.nan_to_num(f["last_gap_days"].to_numpy(float), nan=0.0) >= horizon_days
    at_risk = churn_probability >= high_threshold
    loyal = (f["frequency"].to_numpy() >= rules.loyal_min_orders) & (
        f["tenure_days"].to_numpy(float) >= rules.loyal_min_tenure_days
    )
    return np.select(
        [lapsed, new, reactivated, at_risk, loyal],
        ["lapsed", "new", "reactivated", "at_risk", "loyal"],
        default="active",
    ).astype(object)


# ------------------------------------------------------------------------------------------------ reasons


def _days(v: float) -> str:
    return f"{v:.0f} day{'s' if round(v) != 1 else ''}"


def _recency(row: pd.Series) -> str:
    text = f"no purchase for {_days(row['recency_days'])}"
    gap = row.get("gap_mean_days")
    if gap is not None and not _missing(gap):
        text += f"; usual gap is {_days(gap)}"
    return text


_TEMPLATES: dict[str, Callable[[pd.Series], str]] = {
    "recency_days": _recency,
    "recency_gap_ratio": lambda r: (
        f"{r['recency_gap_ratio']:.1f}x their usual gap since the last purchase ({_days(r['recency_days'])})"
    ),
    "frequency": lambda r: f"only {int(r['frequency'])} order{'s' if r['frequency'] != 1 else ''} so far",
    "purchase_days": lambda r: f"bought on only {int(r['purchase_days'])} day(s)",
    "orders_trend_90d": lambda r: (
        f"fewer orders lately: {int(r['orders_90d'])} in the last 90 days vs "
        f"{int(r['orders_prev_90d'])} in the 90 before"
    ),
    "spend_trend_90d": lambda r: (
        f"spend down: {r['spend_90d']:.0f} in the last 90 days vs {r['spend_prev_90d']:.0f} in the 90 before"
    ),
    "events_trend_30d": lambda r: (
        f"engagement fading: {int(r['events_30d'])} events in the last 30 days vs "
        f"{int(r['events_prev_30d'])} in the 30 before"
    ),
    "days_since_last_event": lambda r: f"no engagement for {_days(r['days_since_last_event'])}",
    "days_since_last_engagement": lambda r: f"no activity of any kind for {_days(r['days_since_last_engagement'])}",
    "gap_mean_days": lambda r: f"buys only every {_days(r['gap_mean_days'])} on average",
    "gap_std_days": lambda r: f"irregular buyer: gaps vary by {_days(r['gap_std_days'])}",
    "gap_max_days": lambda r: f"once went {_days(r['gap_max_days'])} without buying",
    "last_gap_days": lambda r: f"had gone {_days(r['last_gap_days'])} without buying before the last order",
    "days_since_signup": lambda r: f"signed up {_days(r['days_since_signup'])} ago",
    "cancelled": lambda r: "cancelled the subscription" if r["cancelled"] else "no cancellation",
    "refund_share": lambda r: f"{r['refund_share']:.0%} of spend refunded",
    "refund_total": lambda r: f"refunds of {r['refund_total']:.0f}",
    "tenure_days": lambda r: f"customer for only {_days(r['tenure_days'])}",
    "first_purchase_days": lambda r: f"first order {_days(r['first_purchase_days'])} ago",
    "monetary_total": lambda r: f"low total spend ({r['monetary_total']:.0f})",
    "monetary_mean": lambda r: f"small average order ({r['monetary_mean']:.0f})",
    "orders_per_month": lambda r: f"{r['orders_per_month']:.2f} orders per month",
}
_NULL_TEXT = {
    "days_since_last_event": "no engagement events recorded",
    "days_since_last_engagement": "no engagement recorded",
    "gap_mean_days": "no repeat purchase yet",
    "recency_gap_ratio": "no repeat purchase yet",
}


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def reason_text(feature: str, row: pd.Series, descriptions: dict[str, str]) -> str:
    value = row.get(feature)
    if _missing(value):
        if feature.endswith("_days_since_last"):
            return f"no {feature.removesuffix('_days_since_last').replace('_', ' ')} recorded"
        return _NULL_TEXT.get(feature, f"{descriptions.get(feature, feature).rstrip('.')}: unknown")
    if feature in _TEMPLATES:
        return _TEMPLATES[feature](row)
    if feature.endswith("_days_since_last"):
        return f"no {feature.removesuffix('_days_since_last').replace('_', ' ')} for {_days(value)}"
    window = _window_count(feature, value)
    if window:
        return window
    if feature.endswith("_trend_30d"):
        base = feature.removesuffix("_trend_30d")
        return (
            f"fewer {base.replace('_', ' ')} events: {int(row[base + '_30d'])} in the last 30 days vs "
            f"{int(row[base + '_prev_30d'])} in the 30 before"
        )
    text = descriptions.get(feature, feature).rstrip(".")
    return f"{text}: {value:.4g}" if isinstance(value, float) else f"{text}: {value}"


_COUNT_NOUNS = {
    "orders": "order",
    "events": "engagement event",
    "session": "session",
    "email_open": "e-mail open",
    "email_click": "e-mail click",
    "support_ticket": "support ticket",
    "app_login": "app login",
}


def _window_count(feature: str, value: float) -> str | None:
    """'orders_90d' = 2 -> 'only 2 orders in the last 90 days'; 'spend_30d' -> 'spent 0 in the last 30 days'."""
    head, _, tail = feature.rpartition("_")
    if not (tail.endswith("d") and tail[:-1].isdigit()):
        return None
    days = int(tail[:-1])
    prev = head.endswith("_prev")
    head = head.removesuffix("_prev")
    period = f"{days}-{2 * days} days ago" if prev else f"in the last {days} days"
    if head == "spend":
        return f"spent {value:.0f} {period}"
    noun = _COUNT_NOUNS.get(head, head.replace("_", " ") + " event")
    n = int(value)
    plural = noun + ("s" if n != 1 else "")
    if n == 0:
        return f"no {noun}s {period}"
    if prev or head == "support_ticket":
        return f"{n} {plural} {period}"
    return f"only {n} {plural} {period}"


def top_reasons(
    contributions: pd.DataFrame, features: pd.DataFrame, descriptions: dict[str, str], k: int = 3
) -> list[list[str]]:
    """The k features that push each customer's churn risk up the most, as sentences (risk-raising only)."""
    values = contributions.to_numpy()
    names = np.asarray(contributions.columns)
    order = np.argsort(-values, axis=1)[:, :k]
    out = []
    for i, idx in enumerate(order):
        row = features.iloc[i]
        reasons = [reason_text(names[j], row, descriptions) for j in idx if values[i, j] > 0]
        out.append(list(dict.fromkeys(reasons)))
    return out
