"""A realistic synthetic retail + subscription business, for demos, tests and benchmarks.

``generate(out_dir)`` writes ``transactions``, ``events`` and ``customers`` (CSV or Parquet, in the contract's
column names and order, see ``features/contract.py``) plus a ``manifest.json``. Same seed and arguments give
byte-identical files; the clock is never read.

The generative story, and why it is told this way
-------------------------------------------------
Churn models are only worth demonstrating on data whose churn behaves like real churn, so the data come from the
textbook models of customer behaviour rather than from independent random columns:

1. **Acquisition.** ``initial_share`` of the customers are already customers at ``start`` (signed up up to
   ``initial_max_tenure_days`` before it). Their history before ``start`` is *not* generated: the window opens on
   a live customer base, as an extract from a real system does. Their dropout rate is drawn from its posterior
   given that they survived to ``start`` (long-tenured customers are the loyal ones). The rest sign up throughout
   the window with mild growth and seasonality; customer ids increase with the sign-up time.
2. **Retail (non-contractual, ~90%): Pareto/NBD.** Each customer has a purchase rate ``lambda ~ Gamma`` (most buy
   every month or two, a heavy tail buys weekly, many buy once) and an unobserved lifetime ``~ Exponential(mu)``
   with ``mu ~ Gamma``. While alive they buy as a Poisson process modulated by seasonality (Nov/Dec peak, summer
   dip, weekly and daily rhythm); then they silently stop, with no cancel date. New customers buy first a little
   after sign-up. A few dropped-out customers come back later (reactivation). Some sign-ups never buy (prospects).
3. **Baskets: Gamma-Gamma.** Each customer has their own mean spend; an order's value is Gamma around it and is
   split over 1..k lines of distinct products (Zipf-like popularity over a catalogue, category fixed per product);
   the channel is per order, with a per-customer preference.
4. **Refunds** (~3% of orders, more often shortly before a customer leaves): a later row with a negative amount
   and the same order id. They are valid rows, and a churn signal.
5. **Subscriptions (contractual, ~10%).** A monthly charge of the plan's price on the sign-up day of month until
   the customer cancels; the cancel hazard is highest in the first months. ``churn_date`` is the cancel time when
   it falls inside the window (null otherwise), and no charge follows it.
6. **Engagement events.** Every customer has an engagement level correlated with their purchase rate. Sessions and
   app logins happen in the background and just before purchases; e-mail opens follow a twice-weekly campaign
   cadence, clicks follow opens. Engagement *fades* over the 4-8 weeks before a customer drops out (linearly to
   ``fade_floor``), continues at a low residual rate for a while after, and support tickets pile up before a
   share of departures. Loyal customers keep steady engagement. This is what makes engagement features useful.
7. **Mess.** A small known share of rows (about 1% of transactions, 0.5% of events) is broken in exactly one way:
   exact duplicates of clean rows, missing customer id, bad time stamps (unparseable text in CSV, null in Parquet),
   time stamps in the far future, and missing or (CSV only) non-numeric amounts. Each messy row is an extra row
   derived from a distinct clean row and placed right after it, so dropping the messy rows gives back exactly the
   clean data. ``manifest.json`` counts them per table and kind.

Every clean row lies in ``[start, end)`` with ``end = start + months``. All parameters of the story are in
``DemoProcess``. Everything is vectorised numpy: events are drawn as inhomogeneous Poisson processes through the
inverse of the cumulative seasonal intensity on an hourly grid (``np.interp``), fading by thinning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS
from features.io import atomic_path

Format = Literal["csv", "parquet"]
DAY = 86_400  # seconds
EVENT_TYPES = ("session", "email_open", "email_click", "support_ticket", "app_login")
SESSION, EMAIL_OPEN, EMAIL_CLICK, SUPPORT_TICKET, APP_LOGIN = range(len(EVENT_TYPES))
CHANNELS = ("web", "app", "store")
WEB, APP, STORE = range(len(CHANNELS))
MESS_KINDS = ("duplicate", "missing_customer_id", "bad_timestamp", "future_timestamp", "missing_amount",
              "non_numeric_amount")


@dataclass(frozen=True)
class DemoProcess:
    """Every parameter of the generative process. Rates are per day, durations in days, money in currency units."""

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
    hour_factors: tuple[float, ...] = (0.25, 0.12, 0.08, 0.06, 0.06, 0.1, 0.25, 0.5, 0.8, 1.0, 1.1, 1.2,
                                       1.3, 1.2, 1.1, 1.1, 1.2, 1.3, 1.5, 1.7, 1.8, 1.6, 1.1, 0.55)
    # Gamma-Gamma spend: order value ~ Gamma(p, rate nu), nu ~ Gamma(q, rate gamma); mean = p * gamma / (q - 1)
    spend_p: float = 6.0
    spend_q: float = 4.0
    spend_gamma: float = 30.0
    extra_lines_mean: float = 0.9  # lines per order = 1 + Poisson, capped
    max_lines: int = 8
    line_weight_shape: float = 1.5  # how unevenly an order's value splits over its lines
    extra_quantity_mean: float = 0.3
    n_products: int = 3000
    zipf_exponent: float = 1.05
    categories: tuple[str, ...] = ("apparel", "home", "beauty", "electronics", "grocery", "toys", "sports",
                                   "books", "garden", "pets", "jewelry", "stationery")
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
    fade_days: tuple[float, float] = (28.0, 56.0)  # engagement ramps down over this many days before dropout
    fade_floor: float = 0.2
    residual_level: float = 0.15  # browsing after dropout, relative
    residual_days: tuple[float, float] = (30.0, 180.0)
    email_residual_level: float = 0.25
    email_residual_days: tuple[float, float] = (60.0, 300.0)
    ticket_rate: float = 0.4 / 365
    leaver_ticket_share: float = 0.3  # share of retail leavers who file tickets before leaving
    subscriber_leaver_ticket_share: float = 0.5
    leaver_tickets_mean: float = 1.5
    leaver_ticket_window_days: float = 45.0
    # mess: share of clean rows, per kind
    transaction_mess: tuple[tuple[str, float], ...] = (
        ("duplicate", 0.004), ("missing_customer_id", 0.0015), ("bad_timestamp", 0.0015),
        ("future_timestamp", 0.0005), ("missing_amount", 0.0015), ("non_numeric_amount", 0.001),
    )
    event_mess: tuple[tuple[str, float], ...] = (
        ("duplicate", 0.003), ("missing_customer_id", 0.001), ("bad_timestamp", 0.0005),
        ("future_timestamp", 0.0005),
    )
    future_year: int = 2099


@dataclass(frozen=True)
class DemoSummary:
    """What ``generate`` wrote. ``messy[table][kind]`` counts the injected messy rows; ``end`` is exclusive."""

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
    orders = _all_orders(rng, _retail_orders(rng, spells, pop, cal, P), subs.charges, pop, cal, P)
    say(f"order lines and refunds ({orders.cust.size:,} orders)")
    tx = _transactions(rng, orders, spells, pop, cal, cat, P)
    say("engagement events")
    ev = _events(rng, _concat_spells(spells, subs.spells), orders, spells, pop, cal, P)

    say(f"tables ({tx.cust.size:,} transaction rows, {ev.cust.size:,} events)")
    tables = {
        TRANSACTIONS.name: _transactions_table(tx, customers, cal, cat),
        EVENTS.name: _events_table(ev, customers, cal),
        CUSTOMERS.name: _customers_table(pop, subs, cal, P),
    }
    del tx, ev
    say("mess")
    messy: dict[str, dict[str, int]] = {}
    for name, kinds in ((TRANSACTIONS.name, P.transaction_mess), (EVENTS.name, P.event_mess)):
        tables[name], messy[name] = _inject_mess(rng, tables[name], dict(kinds), cal, P, fmt)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, table in tables.items():
        say(f"writing {name}.{fmt}")
        paths[name] = out_dir / f"{name}.{fmt}"
        _write(table, paths[name], fmt)
    rows = {name: t.num_rows for name, t in tables.items()}
    summary = DemoSummary(out_dir, paths, rows, messy, cal.start, cal.end, customers, seed, fmt, P)
    paths["manifest"] = out_dir / "manifest.json"
    _write_manifest(summary, paths["manifest"], months)
    return summary


# --- calendar: seasonal intensity on an hourly grid ------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    start: date
    end: date
    days: float  # window length
    start_dow: int
    hours: np.ndarray  # grid of hour boundaries, in days since start
    cum_season: np.ndarray  # cumulative seasonal intensity (mean 1 per day) at the grid points
    cum_signup: np.ndarray  # the same times the acquisition growth

    def cum(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.hours, self.cum_season)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        return np.interp(u, self.cum_season, self.hours)

    @property
    def seconds(self) -> int:
        return int(round(self.days * DAY))

    @property
    def epoch_seconds(self) -> int:
        return int((datetime(self.start.year, self.start.month, self.start.day) - datetime(1970, 1, 1)).total_seconds())


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
    w = np.asarray(P.month_factors)[month] * np.asarray(P.weekday_factors)[dow] * np.asarray(P.hour_factors)[hour]
    w /= w.mean()
    hours = np.arange(n_days * 24 + 1) / 24.0
    growth = np.exp(np.log1p(P.annual_growth) * (hours[:-1] + 1 / 48) / 365.0)
    cum = np.concatenate([[0.0], np.cumsum(w) / 24.0])
    cum_signup = np.concatenate([[0.0], np.cumsum(w * growth) / 24.0])
    return _Calendar(start, end, float(n_days), start.weekday(), hours, cum, cum_signup)


def _poisson_times(
    rng: np.random.Generator, cal: _Calendar, lo: np.ndarray, hi: np.ndarray, rate: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal Poisson process with intensity ``rate[i] * season(t)`` on each ``[lo[i], hi[i])`` (clipped to the
    window). Returns (interval index, time) for every point: counts are Poisson, and given the count the points are
    uniform in cumulative intensity, mapped back through the inverse of the cumulative intensity."""
    lo = np.clip(lo, 0.0, cal.days)
    hi = np.clip(hi, lo, cal.days)
    c_lo, c_hi = cal.cum(lo), cal.cum(hi)
    n = rng.poisson(np.asarray(rate, dtype=np.float64) * (c_hi - c_lo))
    idx = np.repeat(np.arange(lo.size, dtype=np.int32), n)
    u = c_lo[idx] + rng.random(idx.size) * (c_hi - c_lo)[idx]
    return idx, cal.inverse(u)


def _to_seconds(t: np.ndarray, cal: _Calendar) -> np.ndarray:
    """Days since start -> whole seconds since start (int64), never past the window's last second."""
    return np.minimum(np.floor(t * DAY).astype(np.int64), cal.seconds - 1)


# --- population ------------------------------------------------------------------------------------------------


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
    arrival = np.interp(rng.random(n - n_initial) * cal.cum_signup[-1], cal.cum_signup, cal.hours)
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


# --- retail lifetimes (spells) and purchases -------------------------------------------------------------------


@dataclass(frozen=True)
class _Spells:
    """Alive periods. Purchases (if ``buys``) from ``first`` (an order right at ``first`` if ``forced``) to ``end``
    (the unobserved dropout); engagement from ``eng_start``, fading before ``end``, residual until ``next_start``."""

    cust: np.ndarray
    first: np.ndarray
    end: np.ndarray
    eng_start: np.ndarray
    next_start: np.ndarray
    forced: np.ndarray
    buys: np.ndarray
    fade: np.ndarray
    residual: np.ndarray
    email_residual: np.ndarray
    subscription: np.ndarray


def _spells(rng: np.random.Generator, P: DemoProcess, cust, first, end, eng_start, forced, buys, sub) -> _Spells:
    n = cust.size
    return _Spells(
        cust.astype(np.int32), first, end, eng_start, np.full(n, np.inf), forced, buys,
        rng.uniform(*P.fade_days, n), rng.uniform(*P.residual_days, n), rng.uniform(*P.email_residual_days, n),
        np.full(n, sub),
    )


def _retail_spells(rng: np.random.Generator, pop: _Population, cal: _Calendar, P: DemoProcess) -> _Spells:
    """First lifetime of every retail customer, plus a second one for the few who come back."""
    cust = np.flatnonzero(~pop.subscriber)
    signup = pop.signup[cust]
    initial = signup < 0
    delay = np.where(rng.random(cust.size) < P.first_order_same_day_share, 0.0,
                     rng.exponential(P.first_order_delay_days, cust.size))
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
    two = _spells(rng, P, cust[back], first2, end2, eng2, np.ones(first2.size, bool), np.ones(first2.size, bool),
                  False)
    return _concat_spells(one, two)


def _replace(s: _Spells, **changes: np.ndarray) -> _Spells:
    return _Spells(**{**s.__dict__, **changes})


def _concat_spells(a: _Spells, b: _Spells) -> _Spells:
    return _Spells(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dict__})


@dataclass(frozen=True)
class _Orders:
    cust: np.ndarray  # int32
    t: np.ndarray  # days since start (float64), or seconds (int64) once merged
    spell: np.ndarray  # int32 index into the retail spells; -1 for subscription charges
    plan: np.ndarray  # int8 plan index; -1 for retail orders


def _retail_orders(rng: np.random.Generator, spells: _Spells, pop: _Population, cal: _Calendar,
                   P: DemoProcess) -> _Orders:
    """Pareto/NBD: while alive, orders arrive as a seasonal Poisson process with the customer's rate."""
    lam = np.where(spells.buys, pop.lam[spells.cust], 0.0)
    idx, t = _poisson_times(rng, cal, spells.first, spells.end, lam)
    forced = np.flatnonzero(spells.forced & (spells.first < cal.days))
    idx = np.concatenate([forced.astype(np.int32), idx])
    t = np.concatenate([spells.first[forced], t])
    return _Orders(spells.cust[idx], t, idx, np.full(idx.size, -1, np.int8))


# --- subscriptions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subscriptions:
    cust: np.ndarray
    plan: np.ndarray
    cancel: np.ndarray  # days since start; inf if beyond the horizon
    charges: _Orders
    spells: _Spells



def _subscriptions(rng: np.random.Generator, pop: _Population, cal: _Calendar, P: DemoProcess) -> _Subscriptions:
    """Monthly charges on the sign-up day of month from sign-up until the cancel, with a decreasing hazard.
    Customers signed up before ``start`` are alive at ``start``: their number of charges is drawn given that."""
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
    """Calendar arithmetic for monthly charges: the sign-up day of month (clamped to short months) and time."""

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


# --- orders, lines, refunds ------------------------------------------------------------------------------------


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


def _all_orders(rng: np.random.Generator, retail: _Orders, charges: _Orders, pop: _Population, cal: _Calendar,
                P: DemoProcess) -> _OrderBook:
    cust = np.concatenate([retail.cust, charges.cust])
    ts = _to_seconds(np.concatenate([retail.t, charges.t]), cal)
    order = np.lexsort((cust, ts))
    cust, ts = cust[order], ts[order]
    spell = np.concatenate([retail.spell, charges.spell])[order]
    plan = np.concatenate([retail.plan, charges.plan])[order]
    preferred = pop.channel[cust]
    loyal = rng.random(cust.size) < P.channel_loyalty
    channel = np.where(loyal, preferred, rng.integers(0, len(CHANNELS), cust.size)).astype(np.int8)
    channel = np.where((plan >= 0) & (preferred == STORE), WEB, np.where(plan >= 0, preferred, channel))
    return _OrderBook(cust, ts, spell, plan, channel.astype(np.int8))


@dataclass(frozen=True)
class _Catalogue:
    cdf: np.ndarray  # popularity of the products (Zipf-like), cumulative
    category: np.ndarray  # category index per product, then per plan
    products: list[str]  # labels: products, then plans
    categories: list[str]  # labels: categories, then "subscription"
    plan_price: np.ndarray

    @property
    def n_products(self) -> int:
        return self.cdf.size


def _catalogue(rng: np.random.Generator, P: DemoProcess) -> _Catalogue:
    rank = rng.permutation(P.n_products)
    weight = 1.0 / (rank + 1.0) ** P.zipf_exponent
    cdf = np.cumsum(weight) / weight.sum()
    cat_weight = rng.dirichlet(np.full(len(P.categories), 2.0))
    category = rng.choice(len(P.categories), P.n_products, p=cat_weight)
    category = np.concatenate([category, np.full(len(P.plans), len(P.categories))]).astype(np.int16)
    products = [f"P{i:05d}" for i in range(1, P.n_products + 1)] + [name for name, _ in P.plans]
    prices = np.array([price for _, price in P.plans])
    return _Catalogue(cdf, category, products, [*P.categories, "subscription"], prices)


@dataclass(frozen=True)
class _Rows:
    """One table's rows as numpy columns of codes (not strings yet), and the permutation into file order."""

    columns: dict[str, np.ndarray]
    order: np.ndarray | None = None  # file position -> row; None when the rows are in file order already

    @property
    def size(self) -> int:
        return self.order.size if self.order is not None else next(iter(self.columns.values())).size


def _transactions(rng: np.random.Generator, orders: _OrderBook, spells: _Spells, pop: _Population,
                  cal: _Calendar, cat: _Catalogue, P: DemoProcess) -> _Rows:
    """Order lines (distinct products, Gamma-Gamma values) and the refunds, merged in time order."""
    n = orders.cust.size
    retail = orders.retail
    k = np.where(retail, 1 + np.minimum(rng.poisson(P.extra_lines_mean, n), P.max_lines - 1), 1)
    line_order = np.repeat(np.arange(n, dtype=np.int32), k)
    product = np.searchsorted(cat.cdf, rng.random(line_order.size), side="right").astype(np.int32)
    product = np.minimum(product, cat.n_products - 1)
    product = np.where(retail[line_order], product, cat.n_products + orders.plan[line_order].astype(np.int32)).astype(np.int32)
    keep = ~_repeated_in_order(line_order, product, P.max_lines)
    line_order, product = line_order[keep], product[keep]
    k = np.bincount(line_order, minlength=n)

    order_value = rng.gamma(P.spend_p, 1.0 / pop.nu[orders.cust])
    weight = rng.gamma(P.line_weight_shape, 1.0, line_order.size)
    share = weight / np.bincount(line_order, weights=weight, minlength=n)[line_order]
    amount = np.maximum(np.round(order_value[line_order] * share, 2), 0.5)
    is_retail = retail[line_order]
    amount = np.where(is_retail, amount, cat.plan_price[np.maximum(orders.plan[line_order], 0)])
    quantity = np.where(is_retail, 1 + rng.poisson(P.extra_quantity_mean, line_order.size), 1).astype(np.float64)
    lines = {"cust": orders.cust[line_order], "ts": orders.ts[line_order], "amount": amount,
             "order_no": line_order.astype(np.int64) + 1, "quantity": quantity, "product": product,
             "channel": orders.channel[line_order]}
    return _with_refunds(rng, lines, orders, k, spells, cal, P)


def _repeated_in_order(line_order: np.ndarray, product: np.ndarray, max_lines: int) -> np.ndarray:
    """True for a line whose product already appears earlier in the same order (orders are contiguous)."""
    dup = np.zeros(line_order.size, bool)
    for d in range(1, max_lines):
        same = (line_order[d:] == line_order[:-d]) & (product[d:] == product[:-d])
        dup[d:] |= same
    return dup


def _with_refunds(rng: np.random.Generator, lines: dict[str, np.ndarray], orders: _OrderBook, k: np.ndarray,
                  spells: _Spells, cal: _Calendar, P: DemoProcess) -> _Rows:
    """A refund is a later row for one line of an order, with the negative amount; likelier before a dropout."""
    retail = np.flatnonzero(orders.retail)
    left = spells.end[orders.spell[retail]] - orders.ts[retail] / DAY
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


# --- engagement events -----------------------------------------------------------------------------------------


def _events(rng: np.random.Generator, engaged: _Spells, orders: _OrderBook, retail: _Spells, pop: _Population,
            cal: _Calendar, P: DemoProcess) -> _Rows:
    """Browsing, pre-purchase sessions, e-mail opens and clicks, support tickets; sorted, no exact repeats."""
    parts = [
        _browsing(rng, engaged, pop, cal, P),
        _pre_order_sessions(rng, orders, retail, cal, P),
        *_emails(rng, engaged, pop, cal, P),
        _tickets(rng, engaged, cal, P),
    ]
    cust = np.concatenate([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    kind = np.concatenate([p[2] for p in parts]).astype(np.int8)
    ok = (t >= np.maximum(pop.signup[cust], 0.0)) & (t < cal.days)
    return _sorted_unique_events(cust[ok], _to_seconds(t[ok], cal), kind[ok], cal)


EventPart = tuple[np.ndarray, np.ndarray, np.ndarray]


def _fade(t: np.ndarray, end: np.ndarray, fade_days: np.ndarray, floor: float) -> np.ndarray:
    """1 until ``fade_days`` before the dropout, then linearly down to ``floor`` at the dropout."""
    with np.errstate(invalid="ignore"):
        x = np.clip((end - t) / fade_days, 0.0, 1.0)
    return floor + (1.0 - floor) * np.nan_to_num(x, nan=1.0)


def _engaged_times(rng: np.random.Generator, cal: _Calendar, s: _Spells, rate: np.ndarray, residual_level: float,
                   residual_days: np.ndarray, P: DemoProcess) -> tuple[np.ndarray, np.ndarray]:
    """A spell's engagement process: full rate, fading before the dropout (by thinning), then a residual rate."""
    idx, t = _poisson_times(rng, cal, s.eng_start, s.end, rate)
    keep = rng.random(t.size) < _fade(t, s.end[idx], s.fade[idx], P.fade_floor)
    after_hi = np.minimum(s.end + residual_days, s.next_start)
    idx2, t2 = _poisson_times(rng, cal, s.end, after_hi, rate * residual_level)
    return np.concatenate([idx[keep], idx2]), np.concatenate([t[keep], t2])


def _browsing(rng: np.random.Generator, s: _Spells, pop: _Population, cal: _Calendar, P: DemoProcess) -> EventPart:
    rate = P.browse_rate * pop.engagement[s.cust]
    idx, t = _engaged_times(rng, cal, s, rate, P.residual_level, s.residual, P)
    cust = s.cust[idx]
    kind = np.where(rng.random(cust.size) < pop.app_share[cust], APP_LOGIN, SESSION)
    return cust, t, kind


def _pre_order_sessions(rng: np.random.Generator, orders: _OrderBook, spells: _Spells, cal: _Calendar,
                        P: DemoProcess) -> EventPart:
    """Sessions (app logins for app orders) in the hours before a retail order; fewer before store orders."""
    o = np.flatnonzero(orders.retail)
    sp = orders.spell[o]
    t_order = orders.ts[o] / DAY
    mean = P.sessions_per_order * np.where(orders.channel[o] == STORE, 0.3, 1.0)
    mean = mean * _fade(t_order, spells.end[sp], spells.fade[sp], P.fade_floor)
    rep = np.repeat(np.arange(o.size), rng.poisson(mean))
    t = t_order[rep] - rng.exponential(P.pre_order_lag_days, rep.size) - 1.0 / DAY
    kind = np.where(orders.channel[o][rep] == APP, APP_LOGIN, SESSION)
    return orders.cust[o][rep], t, kind


def _emails(rng: np.random.Generator, s: _Spells, pop: _Population, cal: _Calendar,
            P: DemoProcess) -> tuple[EventPart, EventPart]:
    """Opens of the twice-weekly campaigns (sent at ``campaign_hour``), then clicks a few minutes after some."""
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
    idx, t = _poisson_times(rng, cal, s.eng_start, s.end, P.ticket_rate)
    share = np.where(s.subscription, P.subscriber_leaver_ticket_share, P.leaver_ticket_share)
    leaver = (s.end < cal.days) & (rng.random(s.cust.size) < share)
    n = np.where(leaver, 1 + rng.poisson(max(P.leaver_tickets_mean - 1, 0.0), s.cust.size), 0)
    burst = np.repeat(np.arange(s.cust.size), n)
    t2 = s.end[burst] - rng.random(burst.size) * P.leaver_ticket_window_days
    t2 = np.where(t2 >= s.eng_start[burst], t2, -1.0)
    cust = np.concatenate([s.cust[idx], s.cust[burst]])
    return cust, np.concatenate([t, t2]), np.full(cust.size, SUPPORT_TICKET)


def _sorted_unique_events(cust: np.ndarray, ts: np.ndarray, kind: np.ndarray, cal: _Calendar) -> _Rows:
    """Sort by (time, customer, type) in one int64 key and drop exact repeats (same customer, second and type)."""
    c_bits = max(int(cust.max(initial=0)).bit_length(), 1)
    if cal.seconds.bit_length() + c_bits + 3 <= 62:
        key = (ts << (c_bits + 3)) | (cust.astype(np.int64) << 3) | kind.astype(np.int64)
        key.sort()
        key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
        cust = (key >> 3 & ((1 << c_bits) - 1)).astype(np.int32)
        return _Rows({"cust": cust, "ts": key >> (c_bits + 3), "kind": (key & 7).astype(np.int8)})
    order = np.lexsort((kind, cust, ts))
    cust, ts, kind = cust[order], ts[order], kind[order]
    new = np.ones(ts.size, bool)
    new[1:] = (ts[1:] != ts[:-1]) | (cust[1:] != cust[:-1]) | (kind[1:] != kind[:-1])
    return _Rows({"cust": cust[new], "ts": ts[new], "kind": kind[new]})


# --- tables ----------------------------------------------------------------------------------------------------


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded ids such as C0000123, built as one fixed-width byte buffer (no Python loop over rows)."""
    n = numbers.size
    size = len(prefix) + width
    buf = np.empty((n, size), dtype=np.uint8)
    buf[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    x = numbers.astype(np.int64)
    for j in range(size - 1, len(prefix) - 1, -1):  # one pass per digit
        buf[:, j] = 48 + x % 10
        x = x // 10
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int64)
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                      pa.py_buffer(buf)])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf)]).cast(
        pa.string())


def _id_width(n: int) -> int:
    return max(7, len(str(n)))


def _labels(codes: np.ndarray, labels: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(labels)).dictionary_decode()


def _timestamps(seconds: np.ndarray, cal: _Calendar) -> pa.Array:
    return pa.array(((seconds + cal.epoch_seconds) * 1_000_000).view("datetime64[us]"))


def _transactions_table(rows: _Rows, n_customers: int, cal: _Calendar, cat: _Catalogue) -> pa.Table:
    columns = {
        "customer_id": _ids("C", rows.cust + 1, _id_width(n_customers)),
        "timestamp": _timestamps(rows.ts, cal),
        "amount": pa.array(rows.amount),
        "order_id": _ids("O", rows.order_no, _id_width(int(rows.order_no.max(initial=0)))),
        "quantity": pa.array(rows.quantity),
        "product_id": _labels(rows.product, cat.products),
        "category": _labels(cat.category[rows.product], cat.categories),
        "channel": _labels(rows.channel, list(CHANNELS)),
    }
    return pa.table({name: columns[name] for name in TRANSACTIONS.column_names})


def _events_table(ev: _EventRows, n_customers: int, cal: _Calendar) -> pa.Table:
    columns = {
        "customer_id": _ids("C", ev.cust + 1, _id_width(n_customers)),
        "timestamp": _timestamps(ev.ts, cal),
        "event_type": _labels(ev.kind, list(EVENT_TYPES)),
    }
    return pa.table({name: columns[name] for name in EVENTS.column_names})


def _customers_table(pop: _Population, subs: _Subscriptions, cal: _Calendar, P: DemoProcess) -> pa.Table:
    n = pop.n
    signup = np.floor(pop.signup * DAY).astype(np.int64)
    churn = np.full(n, -1, np.int64)
    cancelled = subs.cancel < cal.days
    churn[subs.cust[cancelled]] = _to_seconds(subs.cancel[cancelled], cal)
    columns = {
        "customer_id": _ids("C", np.arange(1, n + 1), _id_width(n)),
        "signup_date": _timestamps(signup, cal),
        "churn_date": pc.if_else(pa.array(churn >= 0), _timestamps(np.maximum(churn, 0), cal),
                                 pa.scalar(None, pa.timestamp("us"))),
    }
    table = pa.table({name: columns[name] for name in CUSTOMERS.column_names})
    table = table.append_column("segment", _labels(pop.subscriber.astype(np.int8), ["retail", "subscription"]))
    return table.append_column("region", _labels(pop.region, list(P.regions)))


# --- mess ------------------------------------------------------------------------------------------------------


def _inject_mess(rng: np.random.Generator, table: pa.Table, shares: dict[str, float], cal: _Calendar,
                 P: DemoProcess, fmt: Format) -> tuple[pa.Table, dict[str, int]]:
    """Add messy rows, each derived from a distinct clean row, broken in exactly one way, placed right after it.

    A corrupted row could equal another corrupted row of the same kind (two events of one customer that differ only
    in the time stamp both lose it), which would make it a duplicate too: such rows are dropped, so every messy row
    has exactly one reason and the counts are what a validator finds."""
    n = table.num_rows
    kinds = [k for k in MESS_KINDS if k in shares and (fmt == "csv" or k != "non_numeric_amount")]
    wanted = [int(round(shares[k] * n)) for k in kinds]
    scale = min(1.0, (n - 1) / max(sum(wanted), 1))
    wanted = [int(w * scale) for w in wanted]
    source = rng.choice(n, size=sum(wanted), replace=False) if n else np.zeros(0, np.int64)
    base = _as_text(table) if fmt == "csv" else table
    parts, sources, counts = [], [], {}
    offset = 0
    for kind, m in zip(kinds, wanted, strict=True):
        src = np.sort(source[offset : offset + m])
        offset += m
        part = _corrupt(rng, kind, table.take(src), cal, P, fmt)
        if kind != "duplicate" and part.num_rows:
            unique = ~part.to_pandas().duplicated().to_numpy()
            part, src = part.filter(pa.array(unique)), src[unique]
        parts.append(part)
        sources.append(src)
        counts[kind] = part.num_rows
    if not parts:
        return base, counts
    messy = pa.concat_tables(parts)
    src = np.concatenate(sources)
    order = np.argsort(src, kind="stable")
    perm = np.insert(np.arange(n), src[order] + 1, n + order)
    return pa.concat_tables([base, messy]).take(perm), counts


def _corrupt(rng: np.random.Generator, kind: str, part: pa.Table, cal: _Calendar, P: DemoProcess,
             fmt: Format) -> pa.Table:
    m = part.num_rows
    ts_i = part.schema.get_field_index("timestamp")
    if kind == "missing_customer_id":
        part = part.set_column(part.schema.get_field_index("customer_id"), "customer_id", pa.nulls(m, pa.string()))
    elif kind == "future_timestamp":
        shift = datetime(P.future_year, 1, 1) - datetime(cal.start.year, cal.start.month, cal.start.day)
        shifted = pc.add(part["timestamp"], pa.scalar(shift, pa.duration("us")))
        part = part.set_column(ts_i, "timestamp", shifted)
    elif kind == "missing_amount":
        part = part.set_column(part.schema.get_field_index("amount"), "amount", pa.nulls(m, pa.float64()))
    elif kind == "bad_timestamp" and fmt == "parquet":
        part = part.set_column(ts_i, "timestamp", pa.nulls(m, pa.timestamp("us")))
    text = _as_text(part) if fmt == "csv" else part
    if kind == "bad_timestamp" and fmt == "csv":
        text = text.set_column(ts_i, "timestamp", _bad_timestamps(rng, part["timestamp"]))
    elif kind == "non_numeric_amount":
        text = text.set_column(text.schema.get_field_index("amount"), "amount", _non_numeric(rng, part["amount"]))
    return text


def _bad_timestamps(rng: np.random.Generator, ts: pa.ChunkedArray) -> pa.Array:
    """Strings no ISO parser accepts: impossible days, day-first dates (day > 12), plain text."""
    ts = ts.cast(pa.timestamp("s"))
    feb30 = pc.strftime(ts, format="%Y-02-30 %H:%M:%S").to_numpy(zero_copy_only=False)
    apr31 = pc.strftime(ts, format="%Y-04-31 %H:%M:%S").to_numpy(zero_copy_only=False)
    dayfirst = pc.strftime(ts, format="%d/%m/%Y %H:%M:%S").to_numpy(zero_copy_only=False)
    day = pc.day(ts).to_numpy(zero_copy_only=False)
    variant = rng.integers(0, 4, len(ts))
    out = np.where(variant == 0, feb30, np.where(variant == 1, apr31, np.where(variant == 2, "not a date",
                                                                             dayfirst)))
    out = np.where((variant == 3) & (day <= 12), feb30, out)
    return pa.array(out.astype(object), pa.string())


def _non_numeric(rng: np.random.Generator, amount: pa.ChunkedArray) -> pa.Array:
    """Amounts that do not parse as numbers: decimal comma, a currency prefix, a question mark."""
    a = amount.to_numpy(zero_copy_only=False)
    fixed = np.char.mod("%.2f", a)
    variant = rng.integers(0, 3, a.size)
    out = np.where(variant == 0, np.char.replace(fixed, ".", ","), np.where(variant == 1, np.char.add("EUR ", fixed),
                                                                           "?"))
    return pa.array(out.astype(object), pa.string())


def _as_text(table: pa.Table) -> pa.Table:
    """CSV form: time stamps as 'YYYY-MM-DD HH:MM:SS' and amounts as text, so bad values can sit beside good ones."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) or (f.name == "amount" and pa.types.is_floating(f.type)):
            col = table.column(i)
            if pa.types.is_timestamp(f.type):
                col = col.cast(pa.timestamp("s"))
            table = table.set_column(i, f.name, col.cast(pa.string()))
    return table


# --- writing ---------------------------------------------------------------------------------------------------


def _write(table: pa.Table, path: Path, fmt: Format) -> None:
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp, coerce_timestamps="us", compression="zstd")
        else:
            pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))


DESCRIPTION = (
    "Synthetic retail + subscription business (features/demo.py). Retail customers (non-contractual) follow "
    "Pareto/NBD: Gamma-distributed purchase rates, exponential unobserved lifetimes with Gamma-distributed dropout "
    "rates, seasonal Poisson orders (Nov/Dec peak), a few reactivations, no cancel date. Order values follow "
    "Gamma-Gamma, split over 1..k lines of distinct Zipf-popular products; ~3% of orders are refunded later "
    "(negative amount, same order id; likelier before dropout). Subscribers pay a monthly plan price on the sign-up "
    "day of month until they cancel (churn_date; hazard highest in the first months). Engagement events correlate "
    "with the purchase rate, fade over the 4-8 weeks before dropout, linger after it, and support tickets rise "
    "before a share of departures. Customers signed up before `start` have no history before it. Messy rows are "
    "extra rows, each derived from a distinct clean row and broken in exactly one way, placed right after it; "
    "`messy` counts them per table and kind (bad_timestamp: unparseable text in CSV, null in Parquet; "
    "future_timestamp: year ~2099). Every other row lies in [start, end)."
)


def _write_manifest(summary: DemoSummary, path: Path, months: int) -> None:
    manifest = {
        "generator": "features.demo.generate",
        "seed": summary.seed,
        "start": summary.start.isoformat(),
        "end": summary.end.isoformat(),
        "end_is_exclusive": True,
        "months": months,
        "customers": summary.n_customers,
        "format": summary.fmt,
        "timestamp_format": "%Y-%m-%d %H:%M:%S" if summary.fmt == "csv" else "timestamp[us], naive UTC",
        "files": {name: {"path": p.name, "rows": summary.rows[name]} for name, p in summary.paths.items()
                  if name in summary.rows},
        "messy": summary.messy,
        "messy_total": {name: sum(kinds.values()) for name, kinds in summary.messy.items()},
        "description": DESCRIPTION,
        "process": asdict(summary.process),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
