"""Measured campaign lift: for each trigger rule, what the customers it fired for did next, treated vs control.

A rule that fires records every firing in the outbox, and a seeded random share of them as ``control``: recorded,
never contacted. Because the draw is random *within* the firings of a rule, the control firings are a fair picture of
what the treated customers would have done without the contact, and the difference between the two groups is the
effect of the action (intention to treat: a treated firing counts whether or not its webhook was delivered, since
the draw decided who was *meant* to be contacted; ``delivered`` says how many were).

A firing happens at the ``as_of`` it was evaluated at (the customer's history strictly before it made the rule fire):
for the live and the daily evaluation that is when it fired, for an evaluation of a past date that date. Its outcome
window is ``[as_of, as_of + H)``, the window of the churn labels (``features/labels.py``), with the same
definitions:

- **purchased**: at least one transaction line with amount >= 0 in the window (an order is an order, a free one
  too; a refund is not a purchase);
- **revenue**: net spend in the window, purchases minus refunds dated in it (the labels' ``future_spend``);
- **churned**: no purchase in the window, or a cancellation (``churn_date``) before its end.

Only firings whose whole window is observed are judged (``as_of + H <= data end``, the last transaction time
stamp); the others are counted as ``too_recent``. A customer a rule fired for several times (after its cool-down)
counts once per rule, at their first judged firing in the range, so the units are independent customers.

Intervals are 95 %: Newcombe's hybrid score interval for a difference of two proportions (purchase and churn
rates), Welch's t interval for the difference in mean revenue, and the log-adjusted interval of the churn risk ratio
for the **observed save rate**, ``1 - churn_treated / churn_control``: the share of the customers who would have
churned that the action kept, which is what the retention policy's ``save_rate`` assumes (``serving/policy.yaml``;
expected value saved = value at risk x save rate - cost).

**Revenue with small groups.** Spend is very skewed (the demo's 90-day spend after a firing: skewness 7, the top 1 %
above 1,000 against a mean of 82), and Welch's interval assumes the means are close to normal. Resampling that
distribution into groups of 10 % control, its interval excluded 0 when there was no effect 14 % of the time with 25
controls, 10 % with 100, 7.7 % with 200, 6.7 % with 400 and 5.7 % with 1,000 (2,000 draws each); a BCa bootstrap
did no better (16 % at 25). So ``revenue_p_value`` comes from a permutation test (9,999 seeded relabellings of
treated and control: exact when the action does nothing; 6.3 % and 5.3 % at 25 and 100 controls), and a rule with
fewer than 200 customers in a group gets a note that its revenue interval is too narrow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.dataset import Dataset

if TYPE_CHECKING:
    from features.store import Store
    from serving.policy import Policy

FIRING_COLUMNS = ("customer_id", "rule", "action", "as_of", "control")
CONFIDENCE = 0.95
PERMUTATIONS = 9_999  # resamples of the revenue permutation test
PERMUTATION_MAX_CUSTOMERS = 200_000  # above: Welch's p-value (its error rate is nominal at that size)
REVENUE_SMALL_GROUP = 200  # below: Welch's interval is too narrow on skewed spend (measured, see the docstring)


@dataclass(frozen=True)
class RuleLift:
    """One rule (and action): treated vs control among the customers it fired for. Rates are shares of customers."""

    rule: str
    action: str
    treated: int
    control: int
    treated_rate: float | None  # purchase rate within H days
    control_rate: float | None
    lift: float | None  # treated_rate - control_rate
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # two-sided score test of equal purchase rates
    treated_revenue: float | None  # mean net spend per customer within H days
    control_revenue: float | None
    revenue_lift: float | None
    revenue_ci_low: float | None
    revenue_ci_high: float | None
    revenue_p_value: float | None  # two-sided permutation test of equal mean revenue (exact under no effect)
    treated_churn_rate: float | None
    control_churn_rate: float | None
    churn_diff: float | None  # treated - control: negative is good
    churn_ci_low: float | None
    churn_ci_high: float | None
    observed_save_rate: float | None  # 1 - churn_treated / churn_control
    save_rate_ci_low: float | None
    save_rate_ci_high: float | None
    assumed_save_rate: float | None  # the policy's, None when the action is not in the policy
    delivered: int | None  # treated firings whose webhook was delivered (None: delivery state unknown)
    note: str = ""


@dataclass(frozen=True)
class LiftResult:
    horizon_days: int
    data_end: datetime
    fired_from: datetime | None
    fired_to: datetime | None
    firings: int  # in the as_of range
    too_recent: int  # in the range, window not yet observed
    repeats: int  # later firings of a rule for a customer already counted
    rules: list[RuleLift] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "horizon_days": self.horizon_days,
                "data_end": self.data_end.isoformat(),
                "fired_from": self.fired_from.isoformat() if self.fired_from else None,
                "fired_to": self.fired_to.isoformat() if self.fired_to else None,
                "firings": self.firings,
                "too_recent": self.too_recent,
                "repeats": self.repeats,
                "rules": [asdict(r) for r in self.rules],
            }
        )


def measure_lift(
    firings: pd.DataFrame,
    data: Dataset,
    *,
    horizon_days: int,
    policy: Policy | None = None,
    fired_from: datetime | None = None,
    fired_to: datetime | None = None,
) -> LiftResult:
    """Lift per (rule, action) of the ``firings`` (outbox rows: customer_id, rule, action, as_of, control and
    optionally state) on the purchases in ``data``. The range [``fired_from``, ``fired_to``) selects on as_of."""
    missing = [c for c in FIRING_COLUMNS if c not in firings.columns]
    if missing:
        raise ValueError(f"firings: missing column(s) {', '.join(missing)}")
    data_end = data.data_end
    f = firings.copy()
    f["as_of"] = _naive_utc(f["as_of"])
    f["control"] = f["control"].astype(bool)
    if fired_from is not None:
        f = f[f["as_of"] >= pd.Timestamp(fired_from)]
    if fired_to is not None:
        f = f[f["as_of"] < pd.Timestamp(fired_to)]
    in_range = len(f)
    judged = f[f["as_of"] + pd.Timedelta(days=horizon_days) <= pd.Timestamp(data_end)]
    too_recent = in_range - len(judged)
    judged = judged.sort_values(["rule", "customer_id", "as_of"], kind="stable")
    first = judged.drop_duplicates(["rule", "customer_id"], keep="first")
    repeats = len(judged) - len(first)
    if first.empty:
        return LiftResult(horizon_days, data_end, fired_from, fired_to, in_range, too_recent, repeats, [])
    outcomes = _outcomes(first, data, horizon_days)
    rules = [
        compare(rule, action, group, policy)
        for (rule, action), group in outcomes.groupby(["rule", "action"], sort=True)
    ]
    return LiftResult(horizon_days, data_end, fired_from, fired_to, in_range, too_recent, repeats, rules)


def _naive_utc(values: pd.Series) -> pd.Series:
    t = pd.to_datetime(values, utc=True)
    return t.dt.tz_convert("UTC").dt.tz_localize(None)


def read_firings(store: Store, page: int = 100_000) -> pd.DataFrame:
    """Every outbox item of the store (the columns ``measure_lift`` needs, and the delivery state)."""
    parts, cursor = [], 0
    while True:
        chunk = store.outbox_after(cursor, page)
        if chunk.num_rows == 0:
            break
        parts.append(chunk.select(["seq", *FIRING_COLUMNS, "fired_at", "state"]))
        cursor = chunk["seq"][-1].as_py()
    if not parts:
        from features.store.outbox import OUTBOX_SCHEMA

        return OUTBOX_SCHEMA.empty_table().select(["seq", *FIRING_COLUMNS, "fired_at", "state"]).to_pandas()
    return pa.concat_tables(parts).to_pandas()


def _outcomes(firings: pd.DataFrame, data: Dataset, horizon_days: int) -> pd.DataFrame:
    """purchased, revenue and churned of each firing's window, one DuckDB pass over the transactions."""
    from features.duck import connect

    cols = [*FIRING_COLUMNS, *(["state"] if "state" in firings else [])]
    table = firings[cols].reset_index(drop=True).assign(k=np.arange(len(firings), dtype=np.int64))
    con = connect()
    con.register("f", pa.Table.from_pandas(table[["k", "customer_id", "as_of"]], preserve_index=False))
    con.register("tx", data.transactions.select(["customer_id", "timestamp", "amount"]))
    con.register("cu", data.customers.select(["customer_id", "churn_date"]))
    sql = f"""
        WITH w AS (
            SELECT f.k,
                   coalesce(bool_or(t.amount >= 0), false) AS purchased,
                   coalesce(sum(t.amount), 0.0) AS revenue
            FROM f LEFT JOIN tx t
              ON t.customer_id = f.customer_id
             AND t.timestamp >= f.as_of
             AND t.timestamp < f.as_of + INTERVAL {int(horizon_days)} DAY
            GROUP BY f.k
        )
        SELECT w.k, w.purchased, w.revenue,
               (NOT w.purchased) OR coalesce(c.churn_date < f.as_of + INTERVAL {int(horizon_days)} DAY, false)
                 AS churned
        FROM w JOIN f USING (k) LEFT JOIN (SELECT customer_id, max(churn_date) AS churn_date FROM cu GROUP BY 1) c
          ON c.customer_id = f.customer_id
    """
    out = con.sql(sql).to_arrow_table().to_pandas()
    con.close()
    return table.merge(out, on="k", how="left", validate="one_to_one")


def compare(rule: str, action: str, g: pd.DataFrame, policy: Policy | None) -> RuleLift:
    """Treated vs control of one rule's firings ``g`` (columns control, purchased, revenue, churned; optional
    state), with the 95 % intervals of the module docstring."""
    from scipy import stats
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    t, c = g[~g["control"]], g[g["control"]]
    nt, nc = len(t), len(c)
    assumed = policy.actions[action].save_rate if policy is not None and action in policy.actions else None
    delivered = int((t["state"] == "delivered").sum()) if "state" in g else None
    empty: dict[str, Any] = {f.name: None for f in fields(RuleLift)[4:-3]}  # treated_rate ... save_rate_ci_high
    if nt == 0 or nc == 0:
        note = "no control firings: lift cannot be measured" if nc == 0 else "no treated firings"
        return RuleLift(rule, action, nt, nc, **empty, assumed_save_rate=assumed, delivered=delivered, note=note)
    alpha = 1 - CONFIDENCE
    bt, bc = int(t["purchased"].sum()), int(c["purchased"].sum())
    low, high = confint_proportions_2indep(bt, nt, bc, nc, method="newcomb", compare="diff", alpha=alpha)
    p_value = test_proportions_2indep(bt, nt, bc, nc, method="score", compare="diff").pvalue
    out = {
        **empty,
        "treated_rate": bt / nt,
        "control_rate": bc / nc,
        "lift": bt / nt - bc / nc,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
    }
    rt, rc = t["revenue"].to_numpy(float), c["revenue"].to_numpy(float)
    out |= {"treated_revenue": rt.mean(), "control_revenue": rc.mean(), "revenue_lift": rt.mean() - rc.mean()}
    if nt >= 2 and nc >= 2 and (rt.std() > 0 or rc.std() > 0):
        welch = stats.ttest_ind(rt, rc, equal_var=False)
        ci = welch.confidence_interval(CONFIDENCE)
        out |= {"revenue_ci_low": ci.low, "revenue_ci_high": ci.high}
        out["revenue_p_value"] = revenue_p_value(rt, rc) if nt + nc <= PERMUTATION_MAX_CUSTOMERS else welch.pvalue
    ct, cc = int(t["churned"].sum()), int(c["churned"].sum())
    low, high = confint_proportions_2indep(ct, nt, cc, nc, method="newcomb", compare="diff", alpha=alpha)
    out |= {"treated_churn_rate": ct / nt, "control_churn_rate": cc / nc, "churn_diff": ct / nt - cc / nc}
    out |= {"churn_ci_low": low, "churn_ci_high": high}
    notes = []
    if cc > 0:
        out["observed_save_rate"] = 1 - (ct / nt) / (cc / nc)
        if ct > 0:  # the log-adjusted ratio interval needs a churner in each group
            r_low, r_high = confint_proportions_2indep(ct, nt, cc, nc, method="log-adjusted", compare="ratio")
            out |= {"save_rate_ci_low": 1 - r_high, "save_rate_ci_high": 1 - r_low}
    else:
        notes.append("no churner among the controls: save rate undefined")
    if min(nt, nc) < 30:
        notes.append(f"only {min(nt, nc)} {'control' if nc < nt else 'treated'} customers: wide interval")
    if min(nt, nc) < REVENUE_SMALL_GROUP and out["revenue_ci_low"] is not None:
        notes.append("revenue interval too narrow for so few customers with skewed spend: judge it by its p-value")
    return RuleLift(
        rule, action, nt, nc, **_floats(out), assumed_save_rate=assumed, delivered=delivered, note="; ".join(notes)
    )


def revenue_p_value(treated: np.ndarray, control: np.ndarray, seed: int = 0) -> float:
    """Two-sided permutation test of equal mean revenue (seeded: the same data gives the same p-value)."""
    from scipy import stats

    def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return x.mean(axis=axis) - y.mean(axis=axis)

    batch = max(1, 20_000_000 // (len(treated) + len(control)))  # bounds memory: resamples x customers floats
    result = stats.permutation_test(
        (treated, control),
        mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=PERMUTATIONS,
        batch=batch,
        random_state=seed,
    )
    return float(result.pvalue)


def _floats(values: dict[str, Any]) -> dict[str, float | None]:
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in values.items()}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------ outputs


TABLE_COLUMNS = (
    "rule (action)",
    "treated / control",
    "bought: treated / control",
    "lift [95 % CI]",
    "revenue/customer: treated / control",
    "difference [95 % CI] p",
    "churned: treated / control",
    "save rate [95 % CI]",
    "assumed",
)
STACKED_COLUMNS = (  # the same columns, headers stacked like the cells of ``table_rows(stacked=True)``
    "rule\n(action)",
    "customers\ntreated\ncontrol",
    "bought\ntreated\ncontrol",
    "lift\n[95 % CI]",
    "revenue/customer\ntreated\ncontrol",
    "difference\n[95 % CI]\np (permutation)",
    "churned\ntreated\ncontrol",
    "save rate\n[95 % CI]",
    "assumed\nsave rate",
)
NUMERIC_COLUMNS = range(1, len(TABLE_COLUMNS))


def table_rows(result: LiftResult, *, stacked: bool = False) -> list[list[str]]:
    """The lift table's cells (``TABLE_COLUMNS``): the terminal and the Markdown file show the same numbers.
    Rates are shares of customers within H days; lifts and differences are treated minus control. ``stacked``:
    treated above control and intervals below their estimate (narrow cells for a terminal)."""
    pair = "\n" if stacked else " / "
    gap = "\n" if stacked else " "

    def est(value: str, interval: str) -> str:
        return f"{value}{gap}{interval}" if interval else value

    return [
        [
            f"{r.rule}{gap}({r.action})",
            f"{r.treated:,}{pair}{r.control:,}",
            f"{fmt_pct(r.treated_rate)}{pair}{fmt_pct(r.control_rate)}",
            est(fmt_pts(r.lift), fmt_ci(r.ci_low, r.ci_high, fmt_pts)),
            f"{fmt_money(r.treated_revenue)}{pair}{fmt_money(r.control_revenue)}",
            est(
                fmt_money(r.revenue_lift, sign=True),
                fmt_ci(r.revenue_ci_low, r.revenue_ci_high, fmt_money)
                + ("" if r.revenue_p_value is None else f"{gap}{fmt_p(r.revenue_p_value)}"),
            ),
            f"{fmt_pct(r.treated_churn_rate)}{pair}{fmt_pct(r.control_churn_rate)}",
            est(fmt_pct(r.observed_save_rate), fmt_ci(r.save_rate_ci_low, r.save_rate_ci_high, fmt_pct)),
            fmt_pct(r.assumed_save_rate),
        ]
        for r in result.rules
    ]


def table_notes(result: LiftResult) -> list[str]:
    return [f"{r.rule}: {r.note}" for r in result.rules if r.note]


def table_caption(result: LiftResult) -> str:
    return (
        f"firings (as_of) from {_day(result.fired_from) or 'the start'} to {_day(result.fired_to) or 'the end'}, "
        f"purchases within {result.horizon_days} days of each, data end {result.data_end:%Y-%m-%d %H:%M}; "
        f"{result.firings:,} firings in the range, {result.too_recent:,} too recent to judge, {result.repeats:,} "
        "repeat firings of a rule for a customer not counted"
    )


def lift_markdown(result: LiftResult) -> str:
    """The lift table: one row per rule, purchase rates within H days, their difference with its 95 % interval."""
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "".join("---:|" if i in NUMERIC_COLUMNS else "---|" for i in range(len(TABLE_COLUMNS))),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    notes = "".join(f"\n- {n}" for n in table_notes(result))
    return "\n".join(lines) + f"\n\n{table_caption(result)}\n{notes}\n"


def lift_chart(result: LiftResult, path: Path) -> Path:
    """Purchase rates treated vs control per rule, and the lift with its 95 % interval."""
    from matplotlib.figure import Figure

    rules = [r for r in result.rules if r.lift is not None]
    names = [f"{r.rule}\n({r.action})" for r in rules]
    fig = Figure(figsize=(11, 2.0 + 0.7 * max(len(rules), 1)))
    a1, a2 = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rules))
    a1.barh(y - 0.2, [r.treated_rate for r in rules], height=0.4, label="treated")
    a1.barh(y + 0.2, [r.control_rate for r in rules], height=0.4, label="control", color="grey")
    a1.set(yticks=y, yticklabels=names, xlabel=f"purchase rate within {result.horizon_days} days", xlim=(0, 1))
    a1.invert_yaxis()
    a1.legend(fontsize=8, loc="lower right")
    lift = np.array([r.lift for r in rules], dtype=float)
    err = np.array([[r.lift - r.ci_low for r in rules], [r.ci_high - r.lift for r in rules]], dtype=float)
    a2.errorbar(lift, y, xerr=err.reshape(2, -1), fmt="o", capsize=4)
    a2.axvline(0, ls="--", c="grey", lw=1)
    a2.set(xlabel="lift: treated - control (95 % CI)")
    fig.suptitle("Trigger campaigns: measured lift", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    return path


def write_lift(result: LiftResult, out: Path) -> dict[str, Path]:
    """lift.md, lift.json and lift.png into ``out`` (each written atomically)."""
    from features.io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "lift.md", "json": out / "lift.json", "plot": out / "lift.png"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(lift_markdown(result))
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    with atomic_path(paths["plot"]) as tmp:
        lift_chart(result, tmp)
    return paths


def lift_metrics(result: LiftResult) -> dict[str, float]:
    """Flat metrics for MLflow: ``<rule>.<name>`` per rule."""
    keys = ("treated", "control", "treated_rate", "control_rate", "lift", "ci_low", "ci_high", "p_value")
    keys += ("revenue_lift", "revenue_p_value", "churn_diff", "observed_save_rate")
    out = {}
    for r in result.rules:
        for k in keys:
            v = getattr(r, k)
            if v is not None:
                out[f"{_metric_name(r.rule)}.{_metric_name(r.action)}.{k}"] = float(v)
    return out


def _metric_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in s)


def _day(t: datetime | None) -> str | None:
    return f"{t:%Y-%m-%d}" if t else None


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def fmt_pts(v: float | None) -> str:
    """A difference of two rates, in percentage points."""
    return "-" if v is None else f"{v * 100:+.1f} pts"


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_money(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+,.2f}" if sign else f"{v:,.2f}")


def fmt_ci(low: float | None, high: float | None, fmt: Any) -> str:
    if low is None or high is None:
        return ""
    if fmt is fmt_pts:
        return f"[{low * 100:+.1f}, {high * 100:+.1f}]"
    return f"[{fmt(low)}, {fmt(high)}]"
