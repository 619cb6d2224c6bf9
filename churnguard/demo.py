"""A realistic synthetic retail + subscription business, for demos, tests and benchmarks.

``generate(out_dir)`` writes ``transactions``, ``events`` and ``customers`` (CSV or Parquet, with the
contract's column names and order, see ``features/contract.py``) and a ``manifest.json``. The same seed and
arguments give byte-identical files; the clock is never read.

The generative story, and why it is told this way
-------------------------------------------------
Churn models are only worth demonstrating on data whose churn behaves like real churn, so the data come from
the textbook models of customer behaviour rather than from independent random columns:

1. **Acquisition.** ``initial_share`` of the customers are customers already at ``start`` (signed up to
   ``initial_max_tenure_days`` before). Their history before ``start`` is *not* generated: the window opens
   on a live customer base, as an extract from a real system does, and their dropout rate is drawn given
   that they lasted until ``start`` (long-tenured customers are the loyal ones). The others sign up
   throughout the window with mild growth and seasonality. Customer ids increase with the sign-up time.
2. **Retail (non-contractual, ~90%): Pareto/NBD.** Each customer has a purchase rate ``lambda ~ Gamma`` (a
   median customer buys every two months, a heavy tail weekly, many only once) and an unobserved lifetime
   ``~ Exponential(mu)`` with ``mu ~ Gamma``. While alive they buy as a Poisson process modulated by
   seasonality (Nov/Dec peak, summer dip, weekly and daily rhythm); then they stop without a word (no cancel
   date). New customers buy first at or a little after sign-up. A few who dropped out come back later
   (reactivation); some sign-ups never buy (prospects).
3. **Baskets: Gamma-Gamma.** Each customer has their own mean spend; an order's value is Gamma around it,
   split over 1..k lines of distinct products (Zipf-like popularity over a catalogue, one category per
   product). The channel is per order, with a per-customer preference.
4. **Refunds** (~3% of orders, more often just before a customer leaves): a later row with the negative
   amount of one line and the same order id. Valid rows, and a churn signal.
5. **Subscriptions (contractual, ~10%).** A charge of the plan's price every month on the sign-up day of
   month, until the customer cancels; the cancel hazard is highest in the first months. ``churn_date`` is
   the cancel time when it falls inside the window (null otherwise), and no charge follows it.
6. **Engagement events.** Each customer's engagement level is correlated with their purchase rate. Sessions
   and app logins happen in the background and just before orders; e-mail opens follow a twice-weekly
   campaign cadence, clicks follow opens. A customer who drops out goes quiet about a week after their
   last order, and their engagement *fades* (linearly, to ``fade_floor``) over the 4-8 weeks before that,
   then lingers at a low residual rate for a while; support tickets pile up before a share of the
   departures (and before subscription cancels). Loyal customers keep a steady engagement. This is what
   makes engagement features worth having.
7. **Mess.** A small known share of rows (~1% of transactions, ~0.5% of events) is broken in exactly one
   way: exact duplicates of clean rows, missing customer id, bad time stamps (unparseable text in CSV, null
   in Parquet), time stamps in the far future, missing or (CSV only) non-numeric amounts. A messy row is an
   extra row made from a distinct clean row and placed right after it, so dropping the messy rows gives
   back exactly the clean data. ``manifest.json`` counts them per table and kind.

Every clean row lies in ``[start, end)``, ``end = start + months``. All parameters of the story are in
``DemoProcess``. All of it is vectorised numpy, no loop over customers or rows: events are inhomogeneous
Poisson processes, drawn through the inverse of the cumulative seasonal intensity on an hourly grid, and
fading is done by thinning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS
from features.io import atomic_path
from features.registry import DEFAULT_EVENT_TYPES

Format = Literal["csv", "parquet"]
DAY = 86_400  # seconds
# the event types the features know by default, plus cart_add (read by the trigger rules' abandoned-cart condition)
EVENT_TYPES = (*DEFAULT_EVENT_TYPES, "cart_add")
SESSION, EMAIL_OPEN, EMAIL_CLICK, SUPPORT_TICKET, APP_LOGIN, CART_ADD = range(len(EVENT_TYPES))
CHANNELS = ("web", "app", "store")
WEB, APP, STORE = range(len(CHANNELS))
MESS_KINDS = (
    "duplicate",
    "missing_customer_id",
    "bad_timestamp",
    "future_timestamp",
    "missing_amount",
    "non_numeric_amount",
)


@dataclass(frozen=True)
class DemoProcess:
    """Every parameter of the generative process. Rates are per day, durations in days, money in currency
    units."""

    # acquisition
    initial_share: float = 0.30  # customers already signed up at `start`
    initial_max_tenure_days: float = 3 * 365.0
    annual_growth: float = 0.25  # sign-ups per day grow by 25% a year
    subscription_share: float = 0.10
    prospect_share: float = 0.05  # new retail sign-ups who never buy
    prospect_life_days: float = 30.0
    first_order_same_day_share: float = 0.5  # the rest buy first after an exponential delay
    first_order_delay_days: float = 4.0
    regions: tuple[str, ...] = ("north", "south", "east", "west", "central")
    region_weights: tuple[float, ...] = (0.26, 0.22, 0.19, 0.18, 0.15)
    # Pareto/NBD: lambda ~ Gamma(r, rate alpha), mu ~ Gamma(s, rate beta)
    purchase_r: float = 1.0
    purchase_alpha: float = 42.0  # mean lambda = r / alpha: an order every 6 weeks; median every 2 months
    dropout_s: float = 1.0
    dropout_beta: float = 80.0  # lifetimes: half end within ~3 months, 1 in 5 lasts over a year
    reactivation_share: float = 0.08  # of those who drop out inside the window
    reactivation_min_gap_days: float = 30.0
    reactivation_mean_gap_days: float = 150.0
    # seasonality of purchases, sign-ups and browsing (relative; normalised to mean 1)
    month_factors: tuple[float, ...] = (0.95, 0.85, 0.9, 0.95, 1.0, 0.85, 0.8, 0.8, 0.95, 1.0, 1.35, 1.6)
    weekday_factors: tuple[float, ...] = (0.95, 0.95, 0.95, 1.0, 1.05, 1.15, 0.95)  # Monday first
    hour_factors: tuple[float, ...] = (
        0.25,
        0.12,
        0.08,
        0.06,
        0.06,
        0.1,
        0.25,
        0.5,
        0.8,
        1.0,
        1.1,
        1.2,
        1.3,
        1.2,
        1.1,
        1.1,
        1.2,
        1.3,
        1.5,
        1.7,
        1.8,
        1.6,
        1.1,
        0.55,
    )
    # Gamma-Gamma spend: order value ~ Gamma(p, rate nu), nu ~ Gamma(q, rate gamma); mean p * gamma / (q - 1)
    spend_p: float = 6.0
    spend_q: float = 4.0
    spend_gamma: float = 30.0
    extra_lines_mean: float = 0.9  # lines per order = 1 + Poisson, capped
    max_lines: int = 8
    line_weight_shape: float = 1.5  # how unevenly an order's value splits over its lines
    extra_quantity_mean: float = 0.3
    n_products: int = 3000
    zipf_exponent: float = 1.05
    categories: tuple[str, ...] = (
        "apparel",
        "home",
        "beauty",
        "electronics",
        "grocery",
        "toys",
        "sports",
        "books",
        "garden",
        "pets",
        "jewelry",
        "stationery",
    )
    channel_weights: tuple[float, ...] = (0.5, 0.3, 0.2)  # preferred channel: web, app, store
    channel_loyalty: float = 0.75  # share of orders through the preferred channel (others: uniform)
    # refunds
    refund_share: float = 0.025
    refund_share_near_dropout: float = 0.08  # for orders in the last `near_dropout_days` of a lifetime
    near_dropout_days: float = 45.0
    refund_min_days: float = 1.0
    refund_mean_extra_days: float = 5.0
    # subscriptions: cancel hazard after charge k = floor + (initial - floor) * exp(-k / decay)
    plans: tuple[tuple[str, float], ...] = (("SUB-BASIC", 9.99), ("SUB-PLUS", 19.99), ("SUB-PREMIUM", 34.99))
    plan_weights: tuple[float, ...] = (0.5, 0.35, 0.15)
    churn_hazard_initial: float = 0.12
    churn_hazard_floor: float = 0.025
    churn_hazard_decay_months: float = 4.0
    # engagement: level = lognormal, correlated with log(lambda)
    engagement_corr: float = 0.6
    engagement_sigma: float = 0.6
    browse_rate: float = 0.035  # background sessions / app logins per day at engagement 1
    app_share_by_channel: tuple[float, ...] = (0.15, 0.75, 0.3)  # share of app logins, by preferred channel
    sessions_per_order: float = 1.2  # browsing just before an order (x 0.3 for store orders)
    pre_order_lag_days: float = 0.4
    email_open_rate: float = 0.03  # opens per day at engagement 1 (two campaigns a week)
    campaign_weekdays: tuple[int, ...] = (1, 4)  # Tuesday and Friday
    campaign_hour: float = 9.0
    open_delay_hours: float = 8.0
    click_share: float = 0.25
    click_delay_minutes: float = 3.0
    fade_days: tuple[float, float] = (28.0, 56.0)  # engagement ramps down over these days before going quiet
    quiet_lag_days: float = 7.0  # leavers go quiet this long (mean, exponential) after their last order
    fade_floor: float = 0.2
    residual_level: float = 0.15  # browsing after dropout, relative
    residual_days: tuple[float, float] = (30.0, 180.0)
    email_residual_level: float = 0.25
    email_residual_days: tuple[float, float] = (60.0, 300.0)
    ticket_rate: float = 0.4 / 365
    # carts (cart_add events): most web and app orders start with one a little before the order; engaged customers
    # also fill carts they never check out (abandoned carts), fading like their browsing before they leave
    cart_before_order_share: float = 0.7
    cart_lead_minutes: float = 20.0
    abandoned_cart_rate: float = 0.004  # per day at engagement 1
    leaver_ticket_share: float = 0.3  # share of retail leavers who file tickets before leaving
    subscriber_leaver_ticket_share: float = 0.5
    leaver_tickets_mean: float = 1.5
    leaver_ticket_window_days: float = 45.0
    # mess: share of clean rows, per kind
    transaction_mess: tuple[tuple[str, float], ...] = (
        ("duplicate", 0.004),
        ("missing_customer_id", 0.0015),
        ("bad_timestamp", 0.0015),
        ("future_timestamp", 0.0005),
        ("missing_amount", 0.0015),
        ("non_numeric_amount", 0.001),
    )
    event_mess: tuple[tuple[str, float], ...] = (
        ("duplicate", 0.003),
        ("missing_customer_id", 0.001),
        ("bad_timestamp", 0.0005),
        ("future_timestamp", 0.0005),
    )
    future_year: int = 2099

    def __post_init__(self) -> None:
        factors = {"month_factors": 12, "weekday_factors": 7, "hour_factors": 24}
        for name, size in factors.items():
            values = getattr(self, name)
            if len(values) != size or min(values) <= 0:
                raise ValueError(f"{name} needs {size} positive numbers")
        for name, kinds in (("transaction_mess", self.transaction_mess), ("event_mess", self.event_mess)):
            unknown = {k for k, _ in kinds} - set(MESS_KINDS)
            if unknown:
                known = ", ".join(MESS_KINDS)
                raise ValueError(f"{name}: unknown mess kinds {sorted(unknown)} (known: {known})")


@dataclass(frozen=True)
class DemoSummary:
    """What ``generate`` wrote. ``messy[table][kind]`` counts the injected rows; ``end`` is exclusive."""

    out_dir: Path
    paths: dict[str, Path]
    rows: dict[str, int]
    messy: dict[str, dict[str, int]]
    start: date
    end: date
    n_customers: int
    seed: int
    fmt: Format
    process: DemoProcess = field(default_factory=DemoProcess, repr=False)


def generate(
    out_dir: Path,
    *,
    customers: int = 20_000,
    seed: int = 42,
    start: date = date(2023, 1, 1),
    months: int = 24,
    fmt: Format = "csv",
    progress: Callable[[str], None] | None = None,
    process: DemoProcess | None = None,
) -> DemoSummary:
    """Write ``transactions``, ``events``, ``customers`` (``fmt``) and ``manifest.json`` into ``out_dir``."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', not {fmt!r}")
    if customers < 1 or months < 1:
        raise ValueError("customers and months must be at least 1")
    P = process or DemoProcess()
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(seed)
    cal = _calendar(start, months, P)

    say(f"population: {customers:,} customers")
    pop = _population(rng, customers, cal, P)
    cat = _catalogue(rng, P)
    spells = _retail_spells(rng, pop, cal, P)
    say("purchases and subscriptions")
    subs = _subscriptions(rng, pop, cal, P)
    retail = _retail_orders(rng, spells, pop, cal, P)
    spells = _quiet_after_last_order(rng, spells, retail, cal, P)
    orders = _all_orders(rng, retail, subs.charges, pop, cal, P)
    say(f"order lines and refunds ({orders.cust.size:,} orders)")
    tx = _transactions(rng, orders, spells, pop, cal, cat, P)
    say("engagement events")
    # carts from their own stream, so adding them left every other draw of the story as it was
    cart_rng = np.random.default_rng([seed, 0xCA27])
    ev = _events(rng, _concat_spells(spells, subs.spells), orders, spells, pop, cal, P, cart_rng)

    say("mess")
    tx_mess = _plan_mess(rng, tx, dict(P.transaction_mess), cal, P, fmt)
    ev_mess = _plan_mess(rng, ev, dict(P.event_mess), cal, P, fmt)
    messy = {TRANSACTIONS.name: tx_mess.counts, EVENTS.name: ev_mess.counts}
    say(
        f"tables ({tx.size:,} + {sum(tx_mess.counts.values()):,} transaction rows, "
        f"{ev.size:,} + {sum(ev_mess.counts.values()):,} events)"
    )
    tables = {
        TRANSACTIONS.name: _transactions_table(tx, tx_mess, orders, customers, cal, cat, P, fmt),
        EVENTS.name: _events_table(ev, ev_mess, customers, cal, P, fmt),
        CUSTOMERS.name: _customers_table(pop, subs, cal, P, fmt),
    }
    del tx, ev, tx_mess, ev_mess

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.{fmt}" for name in tables}
    say(f"writing {', '.join(p.name for p in paths.values())}")
    with ThreadPoolExecutor(max_workers=len(tables)) as pool:  # the writers release the GIL
        for done in [pool.submit(_write, table, paths[name], fmt) for name, table in tables.items()]:
            done.result()
    rows = {name: t.num_rows for name, t in tables.items()}
    paths["manifest"] = out_dir / "manifest.json"
    summary = DemoSummary(out_dir, paths, rows, messy, cal.start, cal.end, customers, seed, fmt, P)
    _write_manifest(summary, paths["manifest"], months)
    return summary


# --- calendar: seasonal intensity on an hourly grid ---------------------------------------------------------


@dataclass(frozen=True)
class _Bins:
    """``searchsorted(edges, u, side="right") - 1`` for many ``u`` in O(1) each (``np.interp`` and
    ``np.searchsorted`` binary-search every value, which is the slowest step at a million customers): a
    uniform grid of cells narrower than the smallest gap between edges, each cell knowing the last edge at
    its left end."""

    edges: np.ndarray
    first: np.ndarray | None  # per cell; None: fall back to a binary search
    width: float

    @classmethod
    def of(cls, edges: np.ndarray) -> _Bins:
        gap = float(np.diff(edges).min()) if edges.size > 1 else 0.0
        span = float(edges[-1] - edges[0])
        if gap <= 0 or span / gap > 2**23:
            return cls(edges, None, 0.0)
        n_cells = int(np.ceil(span / gap * 1.01)) + 1
        width = span / n_cells
        left = edges[0] + np.arange(n_cells + 2) * width
        first = np.clip(np.searchsorted(edges, left, side="right") - 1, 0, edges.size - 2)
        return cls(edges, first.astype(np.int64), width)

    def index(self, u: np.ndarray) -> np.ndarray:
        last = self.edges.size - 2
        if self.first is None:
            return np.clip(np.searchsorted(self.edges, u, side="right") - 1, 0, last)
        cell = u - self.edges[0]
        cell /= self.width
        i = self.first[np.clip(cell, 0, self.first.size - 1, out=cell).astype(np.int64)]
        i -= (u < self.edges[i]) & (i > 0)  # float rounding at a cell border
        i += (u >= self.edges[i + 1]) & (i < last)
        return i


@dataclass(frozen=True)
class _Calendar:
    start: date
    end: date
    days: float  # window length
    start_dow: int
    cum_season: np.ndarray  # cumulative seasonal intensity (mean 1 per day) at each hour boundary
    bins: _Bins  # to invert cum_season
    cum_signup: np.ndarray  # the same times the acquisition growth

    def cum(self, t: np.ndarray) -> np.ndarray:
        """Cumulative intensity at ``t`` (days since start); linear within an hour."""
        x = np.clip(t, 0.0, self.days) * 24.0
        h = np.minimum(x.astype(np.int64), self.cum_season.size - 2)
        return self.cum_season[h] + (x - h) * (self.cum_season[h + 1] - self.cum_season[h])

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """The time at which the cumulative intensity reaches ``u``."""
        h = self.bins.index(u)
        lo = self.cum_season[h]
        t = u - lo
        t /= self.cum_season[h + 1] - lo
        t += h
        t /= 24.0
        return t

    @property
    def seconds(self) -> int:
        return int(round(self.days * DAY))

    @property
    def epoch_seconds(self) -> int:
        start = datetime(self.start.year, self.start.month, self.start.day)
        return int((start - datetime(1970, 1, 1)).total_seconds())


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    m64 = np.datetime64(f"{d.year + y:04d}-{m + 1:02d}", "M")
    month_len = int(((m64 + 1).astype("datetime64[D]") - m64.astype("datetime64[D]")).astype(int))
    return date(d.year + y, m + 1, min(d.day, month_len))


def _calendar(start: date, months: int, P: DemoProcess) -> _Calendar:
    end = _add_months(start, months)
    n_days = (end - start).days
    day = np.arange(n_days * 24) // 24
    dates = np.datetime64(start, "D") + day
    month = dates.astype("datetime64[M]").astype(np.int64) % 12
    dow = (start.weekday() + day) % 7
    hour = np.arange(n_days * 24) % 24
    w = np.asarray(P.month_factors)[month] * np.asarray(P.weekday_factors)[dow]
    w = w * np.asarray(P.hour_factors)[hour]
    w /= w.mean()
    hours = np.arange(n_days * 24 + 1) / 24.0
    growth = np.exp(np.log1p(P.annual_growth) * (hours[:-1] + 1 / 48) / 365.0)
    cum = np.concatenate([[0.0], np.cumsum(w) / 24.0])
    cum_signup = np.concatenate([[0.0], np.cumsum(w * growth) / 24.0])
    return _Calendar(start, end, float(n_days), start.weekday(), cum, _Bins.of(cum), cum_signup)


def _poisson_times(
    rng: np.random.Generator, cal: _Calendar, lo: np.ndarray, hi: np.ndarray, rate: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal Poisson process with intensity ``rate[i] * season(t)`` on each ``[lo[i], hi[i])`` (clipped to
    the window). Returns (interval index, time) for every point: counts are Poisson, and given the count
    the points are uniform in cumulative intensity, mapped back through the inverse of the cumulative
    intensity."""
    lo = np.clip(lo, 0.0, cal.days)
    hi = np.clip(hi, lo, cal.days)
    c_lo, c_hi = cal.cum(lo), cal.cum(hi)
    n = rng.poisson(np.asarray(rate, dtype=np.float64) * (c_hi - c_lo))
    idx = np.repeat(np.arange(lo.size, dtype=np.int32), n)
    u = rng.random(idx.size)
    u *= (c_hi - c_lo)[idx]
    u += c_lo[idx]
    return idx, cal.inverse(u)


def _to_seconds(t: np.ndarray, cal: _Calendar) -> np.ndarray:
    """Days since start (>= 0) -> whole seconds since start (int64), never past the window's last second.
    The microsecond guards against a whole second coming back from float days as 0.99999 below it."""
    return np.minimum((t * DAY + 1e-6).astype(np.int64), cal.seconds - 1)


# --- population ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Population:
    signup: np.ndarray  # days since start (negative: before the window)
    subscriber: np.ndarray  # bool
    prospect: np.ndarray  # bool: signs up, never buys
    region: np.ndarray  # int8
    lam: np.ndarray  # purchase rate per day while alive
    mu: np.ndarray  # dropout rate per day
    nu: np.ndarray  # Gamma-Gamma spend rate (mean order value = p / nu)
    channel: np.ndarray  # preferred channel, int8
    engagement: np.ndarray  # mean 1, lognormal
    app_share: np.ndarray  # share of background visits that are app logins

    @property
    def n(self) -> int:
        return self.signup.size


def _population(rng: np.random.Generator, n: int, cal: _Calendar, P: DemoProcess) -> _Population:
    n_initial = int(round(n * P.initial_share))
    before = -rng.uniform(1 / DAY, P.initial_max_tenure_days, n_initial)
    hours = np.arange(cal.cum_signup.size) / 24.0
    arrival = np.interp(rng.random(n - n_initial) * cal.cum_signup[-1], cal.cum_signup, hours)
    signup = np.sort(np.concatenate([before, arrival]))  # ids increase with sign-up time
    initial = signup < 0
    subscriber = rng.random(n) < P.subscription_share
    prospect = ~initial & ~subscriber & (rng.random(n) < P.prospect_share)
    lam = rng.gamma(P.purchase_r, 1.0 / P.purchase_alpha, n)
    tenure = np.where(initial, -signup, 0.0)  # survivors to `start`: mu | alive ~ Gamma(s, beta + tenure)
    mu = rng.gamma(P.dropout_s, 1.0 / (P.dropout_beta + tenure))
    nu = rng.gamma(P.spend_q, 1.0 / P.spend_gamma, n)
    channel = rng.choice(len(CHANNELS), n, p=_normalised(P.channel_weights)).astype(np.int8)
    z = np.log(lam)
    z = (z - z.mean()) / (z.std() + 1e-12)
    noise = rng.standard_normal(n)
    latent = P.engagement_corr * z + np.sqrt(1 - P.engagement_corr**2) * noise
    engagement = np.exp(P.engagement_sigma * latent - P.engagement_sigma**2 / 2)
    region = rng.choice(len(P.regions), n, p=_normalised(P.region_weights)).astype(np.int8)
    app_share = np.asarray(P.app_share_by_channel)[channel]
    return _Population(signup, subscriber, prospect, region, lam, mu, nu, channel, engagement, app_share)


def _normalised(w: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(w, dtype=np.float64)
    return a / a.sum()


# --- retail lifetimes (spells) and purchases ----------------------------------------------------------------


@dataclass(frozen=True)
class _Spells:
    """Alive periods. Purchases (if ``buys``) from ``first`` (an order right at ``first`` if ``forced``) to
    ``end`` (the unobserved dropout). Engagement from ``eng_start``, fading before ``quiet``, then at a
    residual rate until ``next_start``; ``quiet`` is the dropout, or shortly after the last order when the
    customer drops out."""

    cust: np.ndarray
    first: np.ndarray
    end: np.ndarray
    quiet: np.ndarray
    eng_start: np.ndarray
    next_start: np.ndarray
    forced: np.ndarray
    buys: np.ndarray
    fade: np.ndarray
    residual: np.ndarray
    email_residual: np.ndarray
    subscription: np.ndarray


def _spells(
    rng: np.random.Generator,
    P: DemoProcess,
    cust: np.ndarray,
    first: np.ndarray,
    end: np.ndarray,
    eng_start: np.ndarray,
    forced: np.ndarray,
    buys: np.ndarray,
    subscription: bool,
) -> _Spells:
    n = cust.size
    fade, residual = rng.uniform(*P.fade_days, n), rng.uniform(*P.residual_days, n)
    email_residual = rng.uniform(*P.email_residual_days, n)
    return _Spells(
        cust.astype(np.int32),
        first,
        end,
        end,
        eng_start,
        np.full(n, np.inf),
        forced,
        buys,
        fade,
        residual,
        email_residual,
        np.full(n, subscription),
    )


def _retail_spells(rng: np.random.Generator, pop: _Population, cal: _Calendar, P: DemoProcess) -> _Spells:
    """First lifetime of every retail customer, plus a second one for the few who come back."""
    cust = np.flatnonzero(~pop.subscriber)
    signup = pop.signup[cust]
    initial = signup < 0
    delay = np.where(
        rng.random(cust.size) < P.first_order_same_day_share, 0.0, rng.exponential(P.first_order_delay_days, cust.size)
    )
    first = np.where(initial, 0.0, signup + delay)
    lifetime = rng.exponential(1.0, cust.size) / pop.mu[cust]
    prospect = pop.prospect[cust]
    end = np.where(prospect, signup + rng.exponential(P.prospect_life_days, cust.size), first + lifetime)
    eng_start = np.maximum(signup, 0.0)
    one = _spells(rng, P, cust, first, end, eng_start, ~initial & ~prospect, ~prospect, False)

    gap = P.reactivation_min_gap_days + rng.exponential(P.reactivation_mean_gap_days, cust.size)
    back = ~prospect & (end + gap < cal.days) & (rng.random(cust.size) < P.reactivation_share)
    first2 = (end + gap)[back]
    end2 = first2 + rng.exponential(1.0, first2.size) / pop.mu[cust[back]]
    eng2 = np.maximum(first2 - rng.uniform(0, 7, first2.size), end[back])
    next_start = one.next_start.copy()
    next_start[back] = eng2
    one = _replace(one, next_start=next_start)
    yes = np.ones(first2.size, bool)
    two = _spells(rng, P, cust[back], first2, end2, eng2, yes, yes, False)
    return _concat_spells(one, two)


def _replace(s: _Spells, **changes: np.ndarray) -> _Spells:
    return _Spells(**{**s.__dict__, **changes})


def _concat_spells(a: _Spells, b: _Spells) -> _Spells:
    return _Spells(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dict__})


@dataclass(frozen=True)
class _Orders:
    cust: np.ndarray  # int32
    t: np.ndarray  # days since start
    spell: np.ndarray  # int32 index into the retail spells; -1 for subscription charges
    plan: np.ndarray  # int8 plan index; -1 for retail orders


def _retail_orders(
    rng: np.random.Generator, spells: _Spells, pop: _Population, cal: _Calendar, P: DemoProcess
) -> _Orders:
    """Pareto/NBD: while alive, orders arrive as a seasonal Poisson process with the customer's rate."""
    lam = np.where(spells.buys, pop.lam[spells.cust], 0.0)
    idx, t = _poisson_times(rng, cal, spells.first, spells.end, lam)
    forced = np.flatnonzero(spells.forced & (spells.first < cal.days))
    idx = np.concatenate([forced.astype(np.int32), idx])
    t = np.concatenate([spells.first[forced], t])
    return _Orders(spells.cust[idx], t, idx, np.full(idx.size, -1, np.int8))


def _quiet_after_last_order(
    rng: np.random.Generator, spells: _Spells, orders: _Orders, cal: _Calendar, P: DemoProcess
) -> _Spells:
    """Customers who drop out go quiet about a week after their last order: the fade of engagement then covers
    the weeks before that order (they lose interest, buy one last time, and are gone). The dropout itself
    is not observable: in Pareto/NBD it is anywhere between the last order and the next one that never
    comes."""
    last = np.full(spells.cust.size, -np.inf)
    np.maximum.at(last, orders.spell, orders.t)
    lag = rng.exponential(P.quiet_lag_days, last.size)
    left = (spells.end < cal.days) & np.isfinite(last)
    return _replace(spells, quiet=np.where(left, np.minimum(spells.end, last + lag), spells.end))


# --- subscriptions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subscriptions:
    cust: np.ndarray
    plan: np.ndarray
    cancel: np.ndarray  # days since start; inf if beyond the horizon
    charges: _Orders
    spells: _Spells


def _subscriptions(rng: np.random.Generator, pop: _Population, cal: _Calendar, P: DemoProcess) -> _Subscriptions:
    """Monthly charges on the sign-up day of month from sign-up until the cancel, with a decreasing hazard.
    Customers signed up before ``start`` are alive at ``start``: their number of charges is drawn given
    that."""
    cust = np.flatnonzero(pop.subscriber)
    n = cust.size
    plan = rng.choice(len(P.plans), n, p=_normalised(P.plan_weights)).astype(np.int8)
    bill = _BillingDay.of(pop.signup[cust], cal)
    k0 = np.maximum((np.datetime64(cal.start, "M") - bill.month0).astype(np.int64), 0)
    k_first = k0 + (bill.day(k0) < 0)  # charges made before the window
    horizon = int(k_first.max(initial=0)) + round(cal.days / 28) + 2
    k = np.arange(horizon)
    decay = np.exp(-k / P.churn_hazard_decay_months)
    hazard = P.churn_hazard_floor + (P.churn_hazard_initial - P.churn_hazard_floor) * decay
    surv = np.concatenate([[1.0], np.cumprod(1 - hazard)])  # surv[j] = P(at least j + 1 charges)
    u = rng.random(n) * surv[k_first]  # given at least k_first + 1 charges
    n_charges = np.searchsorted(-surv, -u, side="left")  # number of j with surv[j] > u
    never = n_charges >= surv.size  # still subscribed at the end of the horizon
    last = np.minimum(n_charges, surv.size - 1) - 1
    between = rng.uniform(0.01, 0.99, n)
    cancel = np.where(never, np.inf, bill.day(last) + between * (bill.day(last + 1) - bill.day(last)))

    per = np.clip(n_charges - k_first, 0, horizon)
    owner = np.repeat(np.arange(n), per)
    kk = k_first[owner] + np.arange(owner.size) - np.repeat(np.cumsum(per) - per, per)
    t = bill.take(owner).day(kk)
    keep = (t >= 0) & (t < cal.days) & (t < cancel[owner])
    owner, t = owner[keep], t[keep]
    charges = _Orders(cust[owner].astype(np.int32), t, np.full(t.size, -1, np.int32), plan[owner])
    since = np.maximum(pop.signup[cust], 0.0)
    none = np.zeros(n, bool)
    spells = _spells(rng, P, cust, since, cancel, since, none, none, True)
    return _Subscriptions(cust, plan, cancel, charges, spells)


@dataclass(frozen=True)
class _BillingDay:
    """Calendar arithmetic of monthly charges: the sign-up day of month (clamped in short months) and time."""

    start: np.datetime64
    month0: np.ndarray  # datetime64[M] of the sign-up
    dom: np.ndarray  # 0-based day of month
    tod: np.ndarray  # seconds into the day

    @classmethod
    def of(cls, signup_days: np.ndarray, cal: _Calendar) -> _BillingDay:
        start = np.datetime64(cal.start, "s")
        signup = start + np.floor(signup_days * DAY).astype(np.int64)
        month0 = signup.astype("datetime64[M]")
        dom = (signup.astype("datetime64[D]") - month0.astype("datetime64[D]")).astype(np.int64)
        tod = (signup - signup.astype("datetime64[D]")).astype(np.int64)
        return cls(start, month0, dom, tod)

    def take(self, idx: np.ndarray) -> _BillingDay:
        return _BillingDay(self.start, self.month0[idx], self.dom[idx], self.tod[idx])

    def day(self, k: np.ndarray) -> np.ndarray:
        """Days since start of the k-th charge (k = 0 is the sign-up)."""
        m = self.month0 + k
        first = m.astype("datetime64[D]")
        length = ((m + 1).astype("datetime64[D]") - first).astype(np.int64)
        ts = first.astype("datetime64[s]") + np.minimum(self.dom, length - 1) * DAY + self.tod
        return (ts - self.start).astype(np.int64) / DAY


# --- orders, lines, refunds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OrderBook:
    """All orders (retail and subscription charges) in time order; order number = position + 1."""

    cust: np.ndarray  # int32
    ts: np.ndarray  # int64 seconds since start
    spell: np.ndarray  # int32 retail spell, -1 for charges
    plan: np.ndarray  # int8 plan, -1 for retail
    channel: np.ndarray  # int8

    @property
    def retail(self) -> np.ndarray:
        return self.plan < 0


def _all_orders(
    rng: np.random.Generator, retail: _Orders, charges: _Orders, pop: _Population, cal: _Calendar, P: DemoProcess
) -> _OrderBook:
    cust = np.concatenate([retail.cust, charges.cust])
    ts = _to_seconds(np.concatenate([retail.t, charges.t]), cal)
    order = np.argsort(ts << 32 | cust.astype(np.int64))  # time, then customer
    cust, ts = cust[order], ts[order]
    spell = np.concatenate([retail.spell, charges.spell])[order]
    plan = np.concatenate([retail.plan, charges.plan])[order]
    preferred = pop.channel[cust]
    loyal = rng.random(cust.size) < P.channel_loyalty
    channel = np.where(loyal, preferred, rng.integers(0, len(CHANNELS), cust.size))
    online = np.where(preferred == STORE, WEB, preferred)  # subscriptions are paid online
    channel = np.where(plan >= 0, online, channel).astype(np.int8)
    return _OrderBook(cust, ts, spell, plan, channel)


@dataclass(frozen=True)
class _Catalogue:
    popularity: _Bins  # cumulative popularity of the products (Zipf-like): a uniform draw -> a product
    category: np.ndarray  # category index per product, then per plan
    products: list[str]  # labels: products, then plans
    categories: list[str]  # labels: categories, then "subscription"
    plan_price: np.ndarray

    @property
    def n_products(self) -> int:
        return self.popularity.edges.size - 1


def _catalogue(rng: np.random.Generator, P: DemoProcess) -> _Catalogue:
    rank = rng.permutation(P.n_products)
    weight = 1.0 / (rank + 1.0) ** P.zipf_exponent
    cdf = np.concatenate([[0.0], np.cumsum(weight) / weight.sum()])
    cat_weight = rng.dirichlet(np.full(len(P.categories), 2.0))
    category = rng.choice(len(P.categories), P.n_products, p=cat_weight)
    category = np.concatenate([category, np.full(len(P.plans), len(P.categories))]).astype(np.int16)
    products = [f"P{i:05d}" for i in range(1, P.n_products + 1)] + [name for name, _ in P.plans]
    prices = np.array([price for _, price in P.plans])
    return _Catalogue(_Bins.of(cdf), category, products, [*P.categories, "subscription"], prices)


@dataclass(frozen=True)
class _Rows:
    """One table's rows as numpy columns of codes (not strings yet), and the permutation into file order."""

    columns: dict[str, np.ndarray]
    order: np.ndarray | None = None  # file position -> row; None when the rows are in file order already

    @property
    def size(self) -> int:
        return self.order.size if self.order is not None else next(iter(self.columns.values())).size


def _transactions(
    rng: np.random.Generator,
    orders: _OrderBook,
    spells: _Spells,
    pop: _Population,
    cal: _Calendar,
    cat: _Catalogue,
    P: DemoProcess,
) -> _Rows:
    """Order lines (distinct products, Gamma-Gamma values) and the refunds, merged in time order. Rows keep
    the order's index; customer, channel and order id come from the order when the table is built."""
    n = orders.cust.size
    plan = orders.plan
    k = np.where(plan < 0, 1 + np.minimum(rng.poisson(P.extra_lines_mean, n), P.max_lines - 1), 1)
    line_order = np.repeat(np.arange(n, dtype=np.int32), k)
    product = cat.popularity.index(rng.random(line_order.size)).astype(np.int32)
    charge = np.flatnonzero(plan >= 0)  # a subscription charge is one line: the plan
    product[(np.cumsum(k) - k)[charge]] = cat.n_products + plan[charge].astype(np.int32)
    keep = ~_repeated_in_order(line_order, product, P.max_lines)
    line_order, product = line_order[keep], product[keep]
    k = np.bincount(line_order, minlength=n)
    charge_line = (np.cumsum(k) - k)[charge]

    order_value = rng.gamma(P.spend_p, 1.0 / pop.nu[orders.cust])
    amount = rng.gamma(P.line_weight_shape, 1.0, line_order.size)  # the line's share of its order's value
    amount /= np.bincount(line_order, weights=amount, minlength=n)[line_order]
    amount *= order_value[line_order]
    amount = np.maximum(np.round(amount, 2, out=amount), 0.5, out=amount)
    amount[charge_line] = cat.plan_price[plan[charge]]
    quantity = (1 + rng.poisson(P.extra_quantity_mean, line_order.size)).astype(np.float64)
    quantity[charge_line] = 1
    lines = {
        "order": line_order,
        "ts": orders.ts[line_order],
        "amount": amount,
        "quantity": quantity,
        "product": product,
    }
    return _with_refunds(rng, lines, orders, k, spells, cal, P)


def _repeated_in_order(line_order: np.ndarray, product: np.ndarray, max_lines: int) -> np.ndarray:
    """True for a line whose product already appears earlier in the same order (orders are contiguous)."""
    dup = np.zeros(line_order.size, bool)
    for d in range(1, max_lines):
        same = (line_order[d:] == line_order[:-d]) & (product[d:] == product[:-d])
        dup[d:] |= same
    return dup


def _with_refunds(
    rng: np.random.Generator,
    lines: dict[str, np.ndarray],
    orders: _OrderBook,
    k: np.ndarray,
    spells: _Spells,
    cal: _Calendar,
    P: DemoProcess,
) -> _Rows:
    """A refund is a later row for one line of an order, with its negative amount; likelier before leaving."""
    retail = np.flatnonzero(orders.retail)
    left = spells.quiet[orders.spell[retail]] - orders.ts[retail] / DAY
    p = np.where(left < P.near_dropout_days, P.refund_share_near_dropout, P.refund_share)
    refunded = retail[rng.random(retail.size) < p]
    first_line = np.cumsum(k) - k
    line = first_line[refunded] + (rng.random(refunded.size) * k[refunded]).astype(np.int64)
    delay = P.refund_min_days + rng.exponential(P.refund_mean_extra_days, refunded.size)
    ts = orders.ts[refunded] + np.floor(delay * DAY).astype(np.int64)
    ok = ts < cal.seconds
    line, ts = line[ok], ts[ok]
    line, ts = line[np.lexsort((line, ts))], np.sort(ts)
    refunds = {name: col[line] for name, col in lines.items()}
    refunds["ts"], refunds["amount"] = ts, -refunds["amount"]
    n = lines["ts"].size  # lines are in time order: slot each refund in after the lines of its second
    order = np.insert(np.arange(n), np.searchsorted(lines["ts"], ts, side="right"), n + np.arange(ts.size))
    return _Rows({name: np.concatenate([lines[name], refunds[name]]) for name in lines}, order)


# --- engagement events --------------------------------------------------------------------------------------


def _events(
    rng: np.random.Generator,
    engaged: _Spells,
    orders: _OrderBook,
    retail: _Spells,
    pop: _Population,
    cal: _Calendar,
    P: DemoProcess,
    cart_rng: np.random.Generator,
) -> _Rows:
    """Browsing, pre-purchase sessions, e-mail opens and clicks, support tickets, carts; sorted, no exact
    repeats."""
    key = _EventKey(pop, cal)
    keys = [
        key.encode(*_browsing(rng, engaged, pop, cal, P)),
        key.encode(*_pre_order_sessions(rng, orders, retail, cal, P)),
        *(key.encode(*part) for part in _emails(rng, engaged, pop, cal, P)),
        key.encode(*_tickets(rng, engaged, cal, P)),
        *(key.encode(*part) for part in _carts(cart_rng, engaged, orders, pop, cal, P)),
    ]
    return key.decode_unique(np.concatenate(keys))


EventPart = tuple[np.ndarray, np.ndarray, np.ndarray]


def _fade(t: np.ndarray, end: np.ndarray, fade_days: np.ndarray, floor: float) -> np.ndarray:
    """1 until ``fade_days`` before going quiet at ``end``, then linearly down to ``floor`` at ``end``."""
    with np.errstate(invalid="ignore"):
        x = np.clip((end - t) / fade_days, 0.0, 1.0)
    return floor + (1.0 - floor) * np.nan_to_num(x, nan=1.0)


def _engaged_times(
    rng: np.random.Generator,
    cal: _Calendar,
    s: _Spells,
    rate: np.ndarray,
    residual_level: float,
    residual_days: np.ndarray,
    P: DemoProcess,
) -> tuple[np.ndarray, np.ndarray]:
    """A spell's engagement: full rate, fading before it goes quiet (by thinning), then a residual rate."""
    idx, t = _poisson_times(rng, cal, s.eng_start, s.quiet, rate)
    keep = rng.random(t.size) < _fade(t, s.quiet[idx], s.fade[idx], P.fade_floor)
    after_hi = np.minimum(s.quiet + residual_days, s.next_start)
    idx2, t2 = _poisson_times(rng, cal, s.quiet, after_hi, rate * residual_level)
    return np.concatenate([idx[keep], idx2]), np.concatenate([t[keep], t2])


def _browsing(rng: np.random.Generator, s: _Spells, pop: _Population, cal: _Calendar, P: DemoProcess) -> EventPart:
    rate = P.browse_rate * pop.engagement[s.cust]
    idx, t = _engaged_times(rng, cal, s, rate, P.residual_level, s.residual, P)
    cust = s.cust[idx]
    kind = np.where(rng.random(cust.size) < pop.app_share[cust], APP_LOGIN, SESSION)
    return cust, t, kind


def _pre_order_sessions(
    rng: np.random.Generator, orders: _OrderBook, spells: _Spells, cal: _Calendar, P: DemoProcess
) -> EventPart:
    """Sessions (app logins for app orders) in the hours before a retail order; fewer before store orders."""
    o = np.flatnonzero(orders.retail)
    sp = orders.spell[o]
    t_order = orders.ts[o] / DAY
    mean = P.sessions_per_order * np.where(orders.channel[o] == STORE, 0.3, 1.0)
    mean = mean * _fade(t_order, spells.quiet[sp], spells.fade[sp], P.fade_floor)
    rep = np.repeat(np.arange(o.size), rng.poisson(mean))
    t = t_order[rep] - rng.exponential(P.pre_order_lag_days, rep.size) - 1.0 / DAY
    kind = np.where(orders.channel[o][rep] == APP, APP_LOGIN, SESSION)
    return orders.cust[o][rep], t, kind


def _emails(
    rng: np.random.Generator, s: _Spells, pop: _Population, cal: _Calendar, P: DemoProcess
) -> tuple[EventPart, EventPart]:
    """Opens of the twice-weekly campaigns (sent at ``campaign_hour``); clicks a few minutes after some."""
    rate = P.email_open_rate * np.sqrt(pop.engagement[s.cust])
    idx, t = _engaged_times(rng, cal, s, rate, P.email_residual_level, s.email_residual, P)
    back = np.array([min((d - c) % 7 for c in P.campaign_weekdays) for d in range(7)])
    day = np.floor(t)
    sent = day - back[(cal.start_dow + day.astype(np.int64)) % 7] + P.campaign_hour / 24
    opened = sent + rng.exponential(P.open_delay_hours / 24, t.size)
    cust = s.cust[idx]
    clicked = rng.random(cust.size) < P.click_share
    click_t = opened[clicked] + (1 + rng.exponential(P.click_delay_minutes * 60, int(clicked.sum()))) / DAY
    opens = (cust, opened, np.full(cust.size, EMAIL_OPEN))
    clicks = (cust[clicked], click_t, np.full(click_t.size, EMAIL_CLICK))
    return opens, clicks


def _tickets(rng: np.random.Generator, s: _Spells, cal: _Calendar, P: DemoProcess) -> EventPart:
    """A low background rate, plus a burst in the weeks before a share of the departures."""
    idx, t = _poisson_times(rng, cal, s.eng_start, s.quiet, P.ticket_rate)
    share = np.where(s.subscription, P.subscriber_leaver_ticket_share, P.leaver_ticket_share)
    leaver = (s.quiet < cal.days) & (rng.random(s.cust.size) < share)
    n = np.where(leaver, 1 + rng.poisson(max(P.leaver_tickets_mean - 1, 0.0), s.cust.size), 0)
    burst = np.repeat(np.arange(s.cust.size), n)
    t2 = s.quiet[burst] - rng.random(burst.size) * P.leaver_ticket_window_days
    t2 = np.where(t2 >= s.eng_start[burst], t2, -1.0)
    cust = np.concatenate([s.cust[idx], s.cust[burst]])
    return cust, np.concatenate([t, t2]), np.full(cust.size, SUPPORT_TICKET)


def _carts(
    rng: np.random.Generator, s: _Spells, orders: _OrderBook, pop: _Population, cal: _Calendar, P: DemoProcess
) -> tuple[EventPart, EventPart]:
    """A cart_add minutes before a share of the web and app orders, and carts never checked out."""
    o = np.flatnonzero(orders.retail & (orders.channel != STORE))
    o = o[rng.random(o.size) < P.cart_before_order_share]
    t = orders.ts[o] / DAY - (1 + rng.exponential(P.cart_lead_minutes * 60, o.size)) / DAY
    before = (orders.cust[o], t, np.full(o.size, CART_ADD))
    rate = P.abandoned_cart_rate * pop.engagement[s.cust]
    idx, t2 = _engaged_times(rng, cal, s, rate, P.residual_level, s.residual, P)
    abandoned = (s.cust[idx], t2, np.full(idx.size, CART_ADD))
    return before, abandoned


class _EventKey:
    """An event as one int64: seconds since start, then customer, then type. Sorting the keys sorts the events
    by time; equal keys are exact repeats (same customer, second and type), which are dropped."""

    def __init__(self, pop: _Population, cal: _Calendar):
        self.pop, self.cal = pop, cal
        self.c_bits = max(pop.n - 1, 1).bit_length()
        if cal.seconds.bit_length() + self.c_bits + 3 > 62:
            raise ValueError("too many customers or months for the event key")

    def encode(self, cust: np.ndarray, t: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Keys of the events inside the window and not before the customer's sign-up."""
        ok = (t >= np.maximum(self.pop.signup[cust], 0.0)) & (t < self.cal.days)
        seconds = _to_seconds(t[ok], self.cal)
        return (seconds << (self.c_bits + 3)) | (cust[ok].astype(np.int64) << 3) | kind[ok]

    def decode_unique(self, key: np.ndarray) -> _Rows:
        key.sort()
        if key.size:
            key = key[np.concatenate([[True], key[1:] != key[:-1]])]
        cust = (key >> 3 & ((1 << self.c_bits) - 1)).astype(np.int32)
        return _Rows({"cust": cust, "ts": key >> (self.c_bits + 3), "kind": (key & 7).astype(np.int8)})


# --- mess ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mess:
    """The file's rows: ``rows[i]`` is the row at file position ``i`` (a messy row repeats its source row),
    ``kind[i]`` its mess kind (index into MESS_KINDS, -1 for clean rows), ``text[kind]`` the bad strings of
    CSV in file order."""

    rows: np.ndarray
    kind: np.ndarray
    text: dict[int, np.ndarray]
    counts: dict[str, int]

    def has(self, kind: str) -> np.ndarray:
        return self.kind == MESS_KINDS.index(kind)


def _plan_mess(
    rng: np.random.Generator, rows: _Rows, shares: dict[str, float], cal: _Calendar, P: DemoProcess, fmt: Format
) -> _Mess:
    """Pick distinct clean rows, break a copy of each in exactly one way, and place the copy right after it.

    Two broken copies of one kind can come out equal (two events of a customer that differ only in the time
    stamp both lose it); they would then also be duplicates, so the later ones are dropped and every messy row
    has exactly one reason: the counts are what a validator finds."""
    n = rows.size
    kinds = [k for k in MESS_KINDS if k in shares and (fmt == "csv" or k != "non_numeric_amount")]
    wanted = np.array([int(round(shares[k] * n)) for k in kinds], dtype=np.int64)
    if wanted.sum() > n - 1:
        wanted = wanted * max(n - 1, 0) // wanted.sum()
    source = rng.choice(n, size=int(wanted.sum()), replace=False)  # file positions, never two alike
    positions, codes, texts, counts = [], [], [], {}
    for kind, part in zip(kinds, np.split(source, np.cumsum(wanted)[:-1]), strict=True):
        pos = np.sort(part)
        row = pos if rows.order is None else rows.order[pos]
        values = {name: col[row] for name, col in rows.columns.items()}
        text = _break(rng, kind, values, cal, P, fmt)
        if kind != "duplicate":
            keep = ~pd.DataFrame(values).duplicated().to_numpy()
            pos, text = pos[keep], text[keep]
        positions.append(pos)
        codes.append(np.full(pos.size, MESS_KINDS.index(kind), np.int8))
        texts.append(text)
        counts[kind] = int(pos.size)
    pos = np.concatenate([np.zeros(0, np.int64), *positions])
    code = np.concatenate([np.zeros(0, np.int8), *codes])
    text = np.concatenate([np.zeros(0, object), *texts])
    o = np.argsort(pos, kind="stable")
    pos, code, text = pos[o], code[o], text[o]
    file_pos = np.insert(np.arange(n), pos + 1, pos)
    kind_at = np.insert(np.full(n, -1, np.int8), pos + 1, code)
    file_rows = file_pos if rows.order is None else rows.order[file_pos]
    by_kind = {int(c): text[code == c] for c in np.unique(code)}
    return _Mess(file_rows, kind_at, by_kind, counts)


def _break(
    rng: np.random.Generator, kind: str, values: dict[str, np.ndarray], cal: _Calendar, P: DemoProcess, fmt: Format
) -> np.ndarray:
    """Apply ``kind`` to the copied rows' values (for the duplicate check). Returns the CSV text that replaces
    the broken value where the break is a text, None elsewhere."""
    text = np.full(values["ts"].size, None, dtype=object)
    if text.size == 0:
        return text
    if kind == "missing_customer_id":
        values["cust"] = np.full(text.size, -1)
    elif kind == "bad_timestamp":
        if fmt == "csv":
            text = _bad_timestamps(rng, values["ts"], cal)
        values["ts"] = text
    elif kind == "future_timestamp":
        values["ts"] = values["ts"] + _future_shift(cal, P)
    elif kind == "missing_amount":
        values["amount"] = np.full(text.size, np.nan)
    elif kind == "non_numeric_amount":
        text = _non_numeric(rng, values["amount"])
        values["amount"] = text
    return text


def _future_shift(cal: _Calendar, P: DemoProcess) -> int:
    """Seconds that move a time stamp of the window into ``future_year``."""
    return int((datetime(P.future_year, 1, 1) - datetime(cal.start.year, 1, 1)).total_seconds())


def _bad_timestamps(rng: np.random.Generator, ts: np.ndarray, cal: _Calendar) -> np.ndarray:
    """Text no ISO parser accepts: impossible days (Feb 30, Apr 31), day-first dates (day > 12), words."""
    when = np.datetime64(cal.start, "s") + ts
    iso = np.datetime_as_string(when, unit="s").astype("S19")  # YYYY-MM-DDTHH:MM:SS
    chars = iso.view("S1").reshape(-1, 19)

    def part(a: int, b: int) -> np.ndarray:
        return np.ascontiguousarray(chars[:, a:b]).view(f"S{b - a}").ravel().astype(str)

    yyyy, mm, dd, clock = part(0, 4), part(5, 7), part(8, 10), np.char.add(" ", part(11, 19))
    feb30 = np.char.add(np.char.add(yyyy, "-02-30"), clock)
    apr31 = np.char.add(np.char.add(yyyy, "-04-31"), clock)
    day_first = np.char.add(np.char.add(np.char.add(np.char.add(dd, "/"), mm), np.char.add("/", yyyy)), clock)
    variant = rng.integers(0, 4, ts.size)
    variant = np.where((variant == 3) & (dd.astype(np.int64) <= 12), 0, variant)
    return np.choose(
        variant,
        [
            feb30.astype(object),
            apr31.astype(object),
            np.full(ts.size, "not a date", dtype=object),
            day_first.astype(object),
        ],
    )


def _non_numeric(rng: np.random.Generator, amount: np.ndarray) -> np.ndarray:
    """Amounts that do not parse as numbers: a decimal comma, a currency prefix, a question mark."""
    fixed = np.char.mod("%.2f", amount)
    variant = rng.integers(0, 3, amount.size)
    out = np.where(
        variant == 0, np.char.replace(fixed, ".", ","), np.where(variant == 1, np.char.add("EUR ", fixed), "?")
    )
    return out.astype(object)


# --- tables -------------------------------------------------------------------------------------------------


def _transactions_table(
    rows: _Rows,
    mess: _Mess,
    orders: _OrderBook,
    n_customers: int,
    cal: _Calendar,
    cat: _Catalogue,
    P: DemoProcess,
    fmt: Format,
) -> pa.Table:
    def col(name: str) -> np.ndarray:
        return rows.columns[name][mess.rows]

    order, product = col("order"), col("product")
    columns = {
        "customer_id": _ids("C", orders.cust[order], n_customers, valid=~mess.has("missing_customer_id")),
        "timestamp": _timestamp_column(col("ts"), mess, cal, P, fmt),
        "amount": _amount_column(col("amount"), mess, fmt),
        "order_id": _ids("O", order, orders.cust.size),
        "quantity": pa.array(col("quantity")),
        "product_id": _labels(product, cat.products),
        "category": _labels(cat.category[product], cat.categories),
        "channel": _labels(orders.channel[order], list(CHANNELS)),
    }
    return pa.table({name: columns[name] for name in TRANSACTIONS.column_names})


def _events_table(rows: _Rows, mess: _Mess, n_customers: int, cal: _Calendar, P: DemoProcess, fmt: Format) -> pa.Table:
    def col(name: str) -> np.ndarray:
        return rows.columns[name][mess.rows]

    columns = {
        "customer_id": _ids("C", col("cust"), n_customers, valid=~mess.has("missing_customer_id")),
        "timestamp": _timestamp_column(col("ts"), mess, cal, P, fmt),
        "event_type": _labels(col("kind"), list(EVENT_TYPES)),
    }
    return pa.table({name: columns[name] for name in EVENTS.column_names})


def _customers_table(pop: _Population, subs: _Subscriptions, cal: _Calendar, P: DemoProcess, fmt: Format) -> pa.Table:
    n = pop.n
    in_window = subs.cancel < cal.days
    cancelled = np.zeros(n, bool)
    cancelled[subs.cust[in_window]] = True
    churn = np.zeros(n, np.int64)
    churn[subs.cust[in_window]] = _to_seconds(subs.cancel[in_window], cal)
    columns = {
        "customer_id": _ids("C", np.arange(n), n),
        "signup_date": _timestamps(np.floor(pop.signup * DAY).astype(np.int64), cal, fmt),
        "churn_date": _timestamps(churn, cal, fmt, null=~cancelled),
    }
    table = pa.table({name: columns[name] for name in CUSTOMERS.column_names})
    segment = _labels(pop.subscriber.astype(np.int8), ["retail", "subscription"])
    table = table.append_column("segment", segment)
    return table.append_column("region", _labels(pop.region, list(P.regions)))


def _ids(prefix: str, codes: np.ndarray, count: int, valid: np.ndarray | None = None) -> pa.Array:
    """Zero-padded ids (code 0 -> C0000001): a fixed-width byte table of ``count`` ids, gathered by code."""
    width = max(7, len(str(count)))
    size = len(prefix) + width
    table = np.empty((count, size), dtype=np.uint8)
    table[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    for j in range(width):  # the digit for 10**j of 1..count: runs of 10**j equal digits, cycling 0..9
        step = 10**j
        col = len(prefix) + width - 1 - j
        if step > count:
            table[:, col] = 48
            continue
        runs = np.arange((count + 1) // step + 1, dtype=np.int64) % 10 + 48
        table[:, col] = np.repeat(runs.astype(np.uint8), step)[1 : count + 1]
    data = table.view(f"S{size}").ravel()[codes]
    n = codes.size
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    if n * size < 2**31:
        offsets = np.arange(0, (n + 1) * size, size, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int64)
    big = pa.Array.from_buffers(pa.large_string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
    return big.cast(pa.string())


def _labels(codes: np.ndarray, labels: list[str]) -> pa.Array:
    """Few-valued text as a dictionary array (codes + labels); it is written as text."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(labels))


def _timestamps(seconds: np.ndarray, cal: _Calendar, fmt: Format, null: np.ndarray | None = None) -> pa.Array:
    """Typed ``timestamp[us]`` for Parquet; ``YYYY-MM-DD HH:MM:SS`` text for CSV."""
    us = ((seconds + cal.epoch_seconds) * 1_000_000).view("datetime64[us]")
    arr = pa.array(us, mask=null)
    return arr.cast(pa.timestamp("s")).cast(pa.string()) if fmt == "csv" else arr


def _timestamp_column(ts: np.ndarray, mess: _Mess, cal: _Calendar, P: DemoProcess, fmt: Format) -> pa.Array:
    future = mess.has("future_timestamp")
    if future.any():
        ts = np.where(future, ts + _future_shift(cal, P), ts)
    bad = mess.has("bad_timestamp")
    if fmt == "parquet":
        return _timestamps(ts, cal, fmt, null=bad)
    return _with_text(_timestamps(ts, cal, fmt), bad, mess.text.get(MESS_KINDS.index("bad_timestamp")))


def _amount_column(amount: np.ndarray, mess: _Mess, fmt: Format) -> pa.Array:
    arr = pa.array(amount, mask=mess.has("missing_amount"))
    if fmt == "parquet":
        return arr
    bad = mess.has("non_numeric_amount")
    return _with_text(arr.cast(pa.string()), bad, mess.text.get(MESS_KINDS.index("non_numeric_amount")))


def _with_text(arr: pa.Array, mask: np.ndarray, text: np.ndarray | None) -> pa.Array:
    """Replace the masked values of a text column by ``text`` (in order)."""
    if text is None or not mask.any():
        return arr
    return pc.replace_with_mask(arr, pa.array(mask), pa.array(text.astype(object), pa.string()))


# --- writing ------------------------------------------------------------------------------------------------


LOW_CARDINALITY = ("product_id", "category", "channel", "event_type", "segment", "region")


def _write(table: pa.Table, path: Path, fmt: Format) -> None:
    """Atomically (temp file in the same folder, then rename). Parquet: zstd, dictionaries for the few-valued
    text columns, delta-encoded time stamps (``timestamp[us]``, naive)."""
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            names = table.column_names
            times = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
            pq.write_table(  # store_schema=False: readers see plain text, not the in-memory dictionaries
                table,
                tmp,
                coerce_timestamps="us",
                compression="zstd",
                compression_level=1,
                store_schema=False,
                use_dictionary=[c for c in names if c in LOW_CARDINALITY],
                column_encoding=dict.fromkeys(times, "DELTA_BINARY_PACKED"),
            )
        else:
            pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))
        os.chmod(tmp, 0o644)


DESCRIPTION = (
    "Synthetic retail + subscription business (churnguard/demo.py). Retail customers (non-contractual) "
    "follow Pareto/NBD: Gamma-distributed purchase rates, exponential unobserved lifetimes with "
    "Gamma-distributed dropout rates, seasonal Poisson orders (Nov/Dec peak), a few reactivations, no "
    "cancel date. Order values follow Gamma-Gamma, split over 1..k lines of distinct Zipf-popular "
    "products; ~3% of orders get a later refund row (negative amount, same order id; likelier before "
    "dropout). Subscribers pay a monthly plan price on the sign-up day of month until they cancel "
    "(churn_date; hazard highest in the first months). Engagement events correlate with the purchase "
    "rate, fade over the 4-8 weeks before a leaver goes quiet (about a week after their last order), "
    "linger at a low rate after, and support tickets rise before a share of departures. Customers signed "
    "up before `start` have no history before it. Messy rows are extra rows, each made from a distinct "
    "clean row and broken in exactly one way, placed right after it; `messy` counts them per table and "
    "kind (bad_timestamp: unparseable text in CSV, null in Parquet; future_timestamp: year ~2099). Every "
    "other row lies in [start, end)."
)


def _write_manifest(summary: DemoSummary, path: Path, months: int) -> None:
    manifest = {
        "generator": "churnguard.demo.generate",
        "seed": summary.seed,
        "start": summary.start.isoformat(),
        "end": summary.end.isoformat(),
        "end_is_exclusive": True,
        "months": months,
        "customers": summary.n_customers,
        "format": summary.fmt,
        "timestamp_format": "%Y-%m-%d %H:%M:%S" if summary.fmt == "csv" else "timestamp[us], naive UTC",
        "files": {
            name: {"path": p.name, "rows": summary.rows[name]}
            for name, p in summary.paths.items()
            if name in summary.rows
        },
        "messy": summary.messy,
        "messy_total": {name: sum(kinds.values()) for name, kinds in summary.messy.items()},
        "description": DESCRIPTION,
        "process": asdict(summary.process),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o644)
