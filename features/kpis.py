"""Lifecycle KPIs per month and per acquisition cohort, and the stage inputs at every month end, from one dataset.

What the retention team reads in ``churn report`` (``serving/report.py`` renders it). Every KPI is defined once,
in ``KPIS`` below; the report page and ``docs/kpis.md`` (``kpi_markdown()``) print those definitions, and
``tests/test_kpis.py`` computes each KPI by hand on a small dataset.

The terms reuse the project's definitions:

* an **order** is what ``features/build.py`` calls one: the purchase lines (amount >= 0: a free order is an
  order) sharing an ``order_id`` (without an id, the lines sharing a time stamp). It belongs to the month of its
  first line; money is counted by line, in the month of the line (point in time: a line after a month's end is
  not known at it).
* a customer is **active** at time t when their last order started less than H days before t and they had not
  cancelled (``churn_date``) before t: not churned under the non-contractual definition of ``features/labels.py``
  (churned = no purchase within H). It is the complement of the ``lapsed`` stage (``recency_days >= H`` or
  ``cancelled``), with the same inputs.
* months are calendar months; the last one ends at ``as_of`` (flagged partial when ``as_of`` is not the first of a
  month). Everything uses only rows strictly before the end of its month, and nothing at or after ``as_of``.

**Stage inputs.** The lifecycle stage rules (``model/scorecard.py::lifecycle_stages``) read six registry
features: ``recency_days``, ``frequency``, ``first_purchase_days``, ``last_gap_days``, ``tenure_days`` and
``cancelled``. ``stage_inputs`` returns exactly those columns at every month end in one pass: each customer's
orders and purchase days are bucketed by month once and accumulated with window functions, instead of running the
whole feature query once per month end (24 month ends x ~15 s at 1M customers). The values are the registry's:
``tests/test_kpis.py`` checks them against ``build_features`` at several dates on random histories (null order ids,
orders over several days, refunds, sign-ups and cancels on either side, a mid-day ``as_of``).

All computations run as DuckDB SQL over the dataset's Arrow tables; results are small Arrow tables (one row per
month, cohort cell, or customer x month end for the stage inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dataset import Dataset
from features.duck import connect
from features.labels import is_lapsed

ROUND_DECIMALS = 9  # as features/build.py: floats are rounded so runs and engines agree to the bit
STAGE_INPUT_COLUMNS = (
    "recency_days",
    "frequency",
    "first_purchase_days",
    "last_gap_days",
    "tenure_days",
    "cancelled",
)


@dataclass(frozen=True)
class KpiSpec:
    """One KPI: its column name, a label for people, how to print it and its definition (one sentence)."""

    name: str
    label: str
    unit: str  # "count", "share" or "money"
    definition: str


KPIS: tuple[KpiSpec, ...] = (
    KpiSpec(
        "active_customers",
        "Active customers",
        "count",
        "Customers active at the end of the month: their last order started less than H days before it and they "
        "had not cancelled (the complement of the lapsed stage).",
    ),
    KpiSpec(
        "new_customers",
        "New customers",
        "count",
        "Customers whose first order started in the month.",
    ),
    KpiSpec(
        "churn_rate",
        "Churn rate",
        "share",
        "Of the customers active at the start of the month, the share not active at its end: they went H days "
        "without an order, or cancelled, during the month.",
    ),
    KpiSpec(
        "repeat_purchase_rate",
        "Repeat purchase rate",
        "share",
        "Of the customers who ordered in the month, the share who had ordered before it.",
    ),
    KpiSpec(
        "customer_retention_rate",
        "Customer retention rate",
        "share",
        "(active customers at the end - new customers) / active customers at the start. Customers won back from "
        "lapsed count as retained, so it is not 1 - churn rate.",
    ),
    KpiSpec(
        "average_order_value",
        "Average order value",
        "money",
        "Purchase lines in the month (refunds are not subtracted) / orders started in the month. "
        "A line of an order started in an earlier month counts in its own month, as nothing after a month's end "
        "is known at it.",
    ),
    KpiSpec(
        "revenue",
        "Revenue",
        "money",
        "Sum of all transaction amounts in the month: purchases minus refunds.",
    ),
    KpiSpec(
        "historic_clv",
        "Historic CLV",
        "money",
        "Net revenue from the first month to the end of this one / customers with an order by then: what an "
        "acquired customer has spent on average so far.",
    ),
)
COHORT_DEFINITION = (
    "Customers grouped by the month of their first order (the acquisition cohort); the cell at k months since "
    "the first purchase is the share of the cohort with an order started in month cohort + k (k = 0 is 100%)."
)
TERMS = (
    (
        "order",
        "The purchase lines (amount >= 0: a free order is an order) sharing an order id (without ids: sharing a "
        "time stamp), as in the features; it belongs to the month of its first line.",
    ),
    ("H", "The churn horizon (default 90 days): churned = no purchase within H days (features/labels.py)."),
    ("month", "A calendar month; the last one ends at as_of. Only rows before a month's end count for it."),
)


def kpi_markdown(horizon_days: int | None = None) -> str:
    """The KPI definitions as a Markdown table (``docs/kpis.md`` is this output; the report page prints the same)."""
    h = f" (H = {horizon_days} days)" if horizon_days else ""
    lines = [
        "# Lifecycle KPIs",
        "",
        f"Generated from `features/kpis.py` (`KPIS`); do not edit by hand. `churn report` prints the same "
        f"definitions on the page{h}.",
        "",
        "| KPI | column | unit | definition |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k.label} | `{k.name}` | {k.unit} | {k.definition} |" for k in KPIS]
    lines += ["", f"**Cohort retention.** {COHORT_DEFINITION}", "", "Terms:", ""]
    lines += [f"- **{term}**: {text}" for term, text in TERMS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LifecycleFacts:
    """Everything the lifecycle report computes from data alone (no model).

    ``months``: one row per month, ``period`` (0 = the month of the first order), ``month_start``, ``month_end``,
    ``partial`` and one column per KPI, plus the counts behind them (``active_at_start``, ``churned``,
    ``buyers``, ``returning_buyers``, ``orders``, ``customers_to_date``).
    ``cohorts``: ``cohort`` (month start), ``months_since``, ``customers`` (cohort size), ``retained``, ``retention``.
    ``stage_inputs``: one row per (customer with an order before the month end, month end), sorted by customer
    and period: ``customer_id``, ``period``, ``as_of`` (the month end) and ``STAGE_INPUT_COLUMNS``.
    ``customers``: one row per customer with an order before ``as_of``: ``orders``, ``order_value`` (gross),
    ``net_spend`` (all lines, refunds subtracted), ``first_order``.
    """

    as_of: datetime
    horizon_days: int
    month_ends: tuple[datetime, ...]
    months: pa.Table
    cohorts: pa.Table
    stage_inputs: pa.Table
    customers: pa.Table


def month_ends(first: datetime, as_of: datetime) -> list[datetime]:
    """The end of every calendar month from ``first``'s month on: first days of the next months, then ``as_of``."""
    ends = []
    m = datetime(first.year, first.month, 1)
    while True:
        m = datetime(m.year + (m.month == 12), m.month % 12 + 1, 1)
        if m >= as_of:
            break
        ends.append(m)
    ends.append(as_of)
    return ends


def lifecycle_facts(data: Dataset, as_of: datetime | date, *, horizon_days: int) -> LifecycleFacts:
    """Monthly KPIs, cohort retention, stage inputs at every month end and per-customer totals at ``as_of``.

    DuckDB does the three passes over raw rows (orders, purchase days, sums); each customer's months then live in a
    dense (customer x month) array, where running sums and maxima give every month end at once.
    """
    as_of = as_of if isinstance(as_of, datetime) else datetime(as_of.year, as_of.month, as_of.day)
    if as_of.microsecond:  # rows are whole seconds: "before 12:00:00.5" is "before 12:00:01"
        as_of = as_of.replace(microsecond=0) + timedelta(seconds=1)
    tx = data.transactions
    ids = pc.unique(tx["customer_id"])  # customer numbers: positions in this array
    tx = tx.select(["order_id", "timestamp", "amount"]).append_column(
        "cid", pc.index_in(tx["customer_id"], value_set=ids)
    )
    con = connect()
    try:
        con.register("tx", tx)
        con.register("ev", data.events.select(["customer_id", "timestamp"]))
        first = con.execute("SELECT min(timestamp) FROM tx WHERE amount >= 0 AND timestamp < ?", [as_of]).fetchone()[0]
        if first is None:
            raise ValueError(f"no purchase before as_of {as_of:%Y-%m-%d %H:%M}: nothing to report")
        ends = month_ends(first, as_of)
        cut = f"amount >= 0 AND timestamp < {_ts(as_of)}"  # a purchase: amount >= 0 (free orders count)
        # an order (features/build.py): purchase lines sharing an order id, else a time stamp; it starts at its
        # first line
        orders = con.sql(
            f"""SELECT cid, min(timestamp) AS started FROM tx WHERE {cut}
            GROUP BY cid, order_id, CASE WHEN order_id IS NULL THEN timestamp END"""
        ).to_arrow_table()
        # purchase days as in the registry's "days" source (whole UTC days since the epoch)
        days = con.sql(
            f"""SELECT DISTINCT cid, CAST(round(epoch(date_trunc('day', timestamp)) / 86400) AS BIGINT) AS day
            FROM tx WHERE {cut}"""
        ).to_arrow_table()
        period = _period_sql("timestamp", first)
        money = con.sql(
            f"""SELECT greatest({period}, 0) AS period, sum(amount) AS revenue,
                       coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS purchases
            FROM tx WHERE timestamp < {_ts(as_of)} GROUP BY ALL"""
        ).to_arrow_table()
        spend = con.sql(
            f"""SELECT cid, sum(amount) AS net_spend, coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS order_value
            FROM tx WHERE timestamp < {_ts(as_of)} GROUP BY ALL"""
        ).to_arrow_table()
        first_event = con.sql(
            f"SELECT customer_id, min(timestamp) AS first_event FROM ev WHERE timestamp < {_ts(as_of)} GROUP BY ALL"
        ).to_arrow_table()
    finally:
        con.close()
    timeline = _Timeline.build(ends, len(ids), orders, days)
    customers = data.customers
    per_customer = {
        "first_event": _by_customer(first_event, "first_event", ids),
        "signup": _by_customer(customers, "signup_date", ids),
        "churn": _by_customer(customers, "churn_date", ids),
    }
    stage_inputs = timeline.stage_inputs(ids, **per_customer)
    months = _months(ends, first, timeline, stage_inputs, money, horizon_days)
    cohorts = _cohorts(timeline, months)
    totals = _customer_totals(ids, timeline, spend)
    return LifecycleFacts(as_of, horizon_days, tuple(ends), months, cohorts, stage_inputs, totals)


_NONE = np.iinfo(np.int64).min  # "no time stamp" in arrays of epoch seconds


def _seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Time stamps as whole seconds since the epoch (the contract keeps them to the second); ``_NONE`` if null."""
    values = pc.fill_null(column.cast(pa.timestamp("s")).cast(pa.int64()), _NONE)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _by_customer(table: pa.Table, column: str, ids: pa.Array) -> np.ndarray:
    """``column`` (a time stamp) per customer number; ``_NONE`` where missing."""
    out = np.full(len(ids), _NONE, np.int64)
    cid = pc.index_in(table["customer_id"], value_set=ids).to_numpy(zero_copy_only=False)
    known = ~np.isnan(cid) if cid.dtype.kind == "f" else np.ones(len(cid), bool)
    out[cid[known].astype(np.int64)] = _seconds(table[column])[known]
    return out


def _days_if_before(when: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.where((when != _NONE) & (when < t), _days_between(t, when), np.nan)


def _days_between(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Seconds between two epoch-second time stamps, in days, rounded like the registry's features."""
    return np.round((later - earlier) / 86400.0, ROUND_DECIMALS)


@dataclass(frozen=True)
class _Timeline:
    """Per customer and month: orders started, the last order's start and the latest purchase day (with the gap
    before it), as dense (customer x month) arrays, plus each customer's first order and its month."""

    end_s: np.ndarray  # month ends, seconds since the epoch
    new_orders: np.ndarray  # (customers, months) orders started in the month
    last_start: np.ndarray  # (customers, months) latest order start in the month, _NONE if none
    day_code: np.ndarray  # (customers, months) latest purchase day * 1e6 + gap before it + 1 (0: first day); -1
    first_period: np.ndarray  # (customers,) month of the first order, -1 for customers without one
    first_order: np.ndarray  # (customers,) start of the first order (epoch s), _NONE if none

    @classmethod
    def build(cls, ends: list[datetime], n_customers: int, orders: pa.Table, days: pa.Table) -> _Timeline:
        epoch = datetime(1970, 1, 1)
        end_s = np.array([int((e - epoch).total_seconds()) for e in ends], dtype=np.int64)
        n_months = len(ends)
        cid = orders["cid"].to_numpy()
        started = _seconds(orders["started"])
        month = np.searchsorted(end_s, started, side="right")
        cell = cid.astype(np.int64) * n_months + month
        new_orders = np.bincount(cell, minlength=n_customers * n_months).reshape(n_customers, n_months)
        last_start = np.full(n_customers * n_months, _NONE, np.int64)
        np.maximum.at(last_start, cell, started)
        first_order = np.full(n_customers, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first_order, cid, started)
        has_order = new_orders.any(axis=1)
        first_period = np.where(has_order, (new_orders > 0).argmax(axis=1), -1)
        first_order[~has_order] = _NONE

        # sort the distinct (customer, day) pairs by customer, then day: one int64 key
        day0 = int(pc.min(days["day"]).as_py() or 0)
        key = np.sort(days["cid"].to_numpy().astype(np.int64) << 32 | (days["day"].to_numpy() - day0))
        d_cid, day = key >> 32, (key & 0xFFFFFFFF) + day0
        gap = np.full(len(day), -1, np.int64)
        if len(day) > 1:
            same = d_cid[1:] == d_cid[:-1]
            gap[1:][same] = (day[1:] - day[:-1])[same]
        # a day's month: the first month end after its start (a day cut by a mid-day as_of falls in the last month)
        d_month = np.minimum(np.searchsorted(end_s // 86_400, day, side="right"), n_months - 1)
        day_code = np.full(n_customers * n_months, -1, np.int64)
        np.maximum.at(day_code, d_cid * n_months + d_month, day * 1_000_000 + gap + 1)
        return cls(
            end_s,
            new_orders,
            last_start.reshape(n_customers, n_months),
            day_code.reshape(n_customers, n_months),
            first_period,
            first_order,
        )

    def stage_inputs(
        self, ids: pa.Array, *, first_event: np.ndarray, signup: np.ndarray, churn: np.ndarray
    ) -> pa.Table:
        """``STAGE_INPUT_COLUMNS`` for every customer at every month end after their first order."""
        n_months = len(self.end_s)
        frequency = np.cumsum(self.new_orders, axis=1)
        last = np.maximum.accumulate(self.last_start, axis=1)
        code = np.maximum.accumulate(self.day_code, axis=1)
        keep = (np.arange(n_months)[None, :] >= self.first_period[:, None]) & (self.first_period[:, None] >= 0)
        c, p = np.nonzero(keep)  # sorted by customer, then month
        t = self.end_s[p]
        gap = code[c, p] % 1_000_000
        first_purchase = _days_between(t, self.first_order[c])
        since_event = _days_if_before(first_event[c], t)
        since_signup = _days_if_before(signup[c], t)
        return pa.table(
            {
                "customer_id": ids.take(pa.array(c)),
                "period": pa.array(p.astype(np.int64)),
                "as_of": pa.array(t * 1_000_000, pa.timestamp("us")),
                "recency_days": pa.array(_days_between(t, last[c, p])),
                "frequency": pa.array(frequency[c, p].astype(np.int64)),
                "first_purchase_days": pa.array(first_purchase),
                "last_gap_days": pa.array(np.where(gap > 0, gap - 1, np.nan).astype(np.float64), from_pandas=True),
                # registry tenure_days: the largest known of first purchase, first event and sign-up ages
                "tenure_days": pa.array(np.fmax(np.fmax(first_purchase, since_event), since_signup)),
                "cancelled": pa.array(((churn[c] != _NONE) & (churn[c] < t)).astype(np.int64)),
            }
        )


def active_flags(stage_inputs: pa.Table, horizon_days: int) -> np.ndarray:
    """Active at the month end: not lapsed (``features/labels.py``: an order less than H days before it and no
    cancel before it)."""
    return ~is_lapsed(stage_inputs["recency_days"].to_numpy(), stage_inputs["cancelled"].to_numpy(), horizon_days)


def previous_rows(stage_inputs: pa.Table) -> np.ndarray:
    """For each stage-input row, the row of the same customer one month earlier, or -1 (first month with an order).

    Rows are sorted by customer and month, and a customer has a row at every month end after their first order.
    """
    period = stage_inputs["period"].to_numpy()
    prev = np.arange(-1, len(period) - 1)
    if len(period):
        prev[0] = -1
        prev[1:][period[1:] != period[:-1] + 1] = -1
    return prev


def _months(
    ends: list[datetime],
    first: datetime,
    timeline: _Timeline,
    stage_inputs: pa.Table,
    money: pa.Table,
    horizon_days: int,
) -> pa.Table:
    n = len(ends)
    period = stage_inputs["period"].to_numpy()
    active = active_flags(stage_inputs, horizon_days)
    prev = previous_rows(stage_inputs)
    was_active = np.where(prev >= 0, active[np.maximum(prev, 0)], False)
    active_end = np.bincount(period, weights=active, minlength=n)
    active_start = np.bincount(period, weights=was_active, minlength=n)
    churned = np.bincount(period, weights=was_active & ~active, minlength=n)

    bought = timeline.new_orders > 0
    first_month = np.arange(n)[None, :] == timeline.first_period[:, None]
    buyers = bought.sum(axis=0)
    new = first_month.sum(axis=0)
    returning = buyers - new
    orders = timeline.new_orders.sum(axis=0)
    customers_to_date = np.cumsum(new)
    revenue, purchases = np.zeros(n), np.zeros(n)
    revenue[money["period"].to_numpy()] = money["revenue"].to_numpy()
    purchases[money["period"].to_numpy()] = money["purchases"].to_numpy()

    def ratio(a: np.ndarray, b: np.ndarray) -> pa.Array:
        safe = np.where(b > 0, b, 1)
        return pa.array(a / safe, mask=b == 0)

    starts = [datetime(first.year, first.month, 1), *ends[:-1]]
    return pa.table(
        {
            "period": pa.array(np.arange(n, dtype=np.int64)),
            "month_start": pa.array(starts, pa.timestamp("us")),
            "month_end": pa.array(ends, pa.timestamp("us")),
            "partial": pa.array([e != datetime(e.year, e.month, 1) for e in ends]),
            "active_customers": pa.array(active_end.astype(np.int64)),
            "new_customers": pa.array(new.astype(np.int64)),
            "churn_rate": ratio(churned, active_start),
            "repeat_purchase_rate": ratio(returning, buyers),
            "customer_retention_rate": ratio(active_end - new, active_start),
            "average_order_value": ratio(purchases, orders),
            "revenue": pa.array(revenue),
            "historic_clv": ratio(np.cumsum(revenue), customers_to_date),
            "active_at_start": pa.array(active_start.astype(np.int64)),
            "churned": pa.array(churned.astype(np.int64)),
            "buyers": pa.array(buyers.astype(np.int64)),
            "returning_buyers": pa.array(returning.astype(np.int64)),
            "orders": pa.array(orders.astype(np.int64)),
            "customers_to_date": pa.array(customers_to_date.astype(np.int64)),
        }
    )


def _cohorts(timeline: _Timeline, months: pa.Table) -> pa.Table:
    n = months.num_rows
    has = timeline.first_period >= 0
    first = timeline.first_period[has]
    sizes = np.bincount(first, minlength=n)
    retained = np.zeros((n, n), np.int64)  # [cohort, month]
    for m in range(n):
        retained[:, m] = np.bincount(first, weights=timeline.new_orders[has, m] > 0, minlength=n)
    cohort, since = [], []
    for c in range(n):
        if sizes[c]:
            cohort += [c] * (n - c)
            since += list(range(n - c))
    cohort_a, since_a = np.array(cohort, np.int64), np.array(since, np.int64)
    kept = retained[cohort_a, cohort_a + since_a]
    return pa.table(
        {
            "cohort": months["month_start"].take(pa.array(cohort_a)),
            "cohort_period": pa.array(cohort_a),
            "months_since": pa.array(since_a),
            "customers": pa.array(sizes[cohort_a].astype(np.int64)),
            "retained": pa.array(kept),
            "retention": pa.array(kept / np.maximum(sizes[cohort_a], 1)),
        }
    )


def _customer_totals(ids: pa.Array, timeline: _Timeline, spend: pa.Table) -> pa.Table:
    has = np.flatnonzero(timeline.first_period >= 0)
    net = np.zeros(len(ids))
    value = np.zeros(len(ids))
    cid = spend["cid"].to_numpy()
    net[cid] = spend["net_spend"].to_numpy()
    value[cid] = spend["order_value"].to_numpy()
    return pa.table(
        {
            "customer_id": ids.take(pa.array(has)),
            "orders": pa.array(timeline.new_orders[has].sum(axis=1).astype(np.int64)),
            "order_value": pa.array(value[has]),
            "net_spend": pa.array(net[has]),
            "first_order": pa.array(timeline.first_order[has] * 1_000_000, pa.timestamp("us")),
        }
    )


def _ts(t: datetime) -> str:
    return f"TIMESTAMP '{t:%Y-%m-%d %H:%M:%S.%f}'"


def _period_sql(column: str, first: datetime) -> str:
    """Months since the first order's month (calendar arithmetic; rows at/after as_of are filtered out first)."""
    return f"CAST((year({column}) - {first.year}) * 12 + month({column}) - {first.month} AS INTEGER)"


if __name__ == "__main__":  # regenerate docs/kpis.md
    print(kpi_markdown(), end="")
