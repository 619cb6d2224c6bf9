"""Trigger rules: when a customer's scorecard or recent history calls for an action now, written once to the outbox.

The rules are a small YAML file (``serving/triggers.yaml`` is the default; ``CHURN_SCORING__TRIGGERS_FILE`` points to
your own), validated when loaded like the retention policy: a typo fails at start-up with the rule and the field at
fault. A rule is

* a **condition** (``when``, one of the kinds below) over the scorecard and the customer's recent history,
* optional filters on the scorecard (``tiers``, ``stages``),
* an **action** (one of the retention policy's actions, so its cost and assumed save rate are known),
* a **cool-down** (``cooldown_days``, at least 1): a rule fires at most once per customer in that many days,
* a **control share**: that share of its firings, drawn by a seeded hash of (rule, customer, as_of date), is held out
  as control: recorded in the outbox with ``control = true``, never contacted, so the lift can be measured.

and one **contact cap** across all rules: at most ``max_contacts`` firings per customer in ``period_days``. When
more rules match than the cap allows, the rules listed first win. Cool-downs and the cap count control firings too:
the rule engine treats a control customer exactly as a treated one; only the contact differs.

Condition kinds (``when.type``):

============================  =========================================================================================
``inactive_past_usual_gap``   days since the last order > ``gap_multiple`` x the customer's own median gap between
                              purchase days (at least ``min_gaps`` gaps)
``cart_abandoned``            the latest ``event_type`` event (``cart_add``) is ``hours`` to ``within_days`` old and no
                              order came at or after it
``nth_order_recent``          the customer has exactly ``order_number`` orders and the last one is less than
                              ``within_days`` old
``no_repeat_after``           one order only, placed ``days`` to ``days + within_days`` ago
``tier_rose``                 the risk tier is one of ``to`` and higher than at the customer's previous evaluation
                              (kept in the store; a first evaluation has nothing to compare with and does not fire)
``value_at_risk_above``       value_at_risk (churn probability x expected 12-month value) > ``threshold``
============================  =========================================================================================

A prospect (no purchase before as_of, so no scorecard) is evaluated on the event-only conditions (``cart_abandoned``):
a visitor who filled a cart and never ordered gets the reminder too, with the scorecard fields null in ``fields``.
A rule with ``tiers`` or ``stages`` filters never fires for a prospect; every other condition needs a scorecard.
The median gap is computed here from the same
purchase days the features' ``gap_*`` use (calendar days with an order line of amount >= 0 before as_of): the
feature set holds the mean gap only.

Evaluation (:func:`evaluate_triggers` in batch, :func:`evaluate_customers` for a few customers after new events, run
off the request path by ``serving/live_triggers.py``)
scores each chunk of customers with the registered model exactly as batch scoring does, applies the rules, the
cool-downs and the cap, and commits the chunk's firings and its customers' evaluation state in one store
transaction. A killed run, run again, completes without duplicates: its committed firings are found by the
cool-down (and, failing that, by the outbox's id), and the evaluation state keeps the previous tier of a customer
evaluated twice at the same as_of.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.build import entities_at
from features.dataset import Dataset
from features.engines import Engine
from features.store.outbox import EVALUATION_INPUT, ITEM_SCHEMA, outbox_id
from model.churn_model import ChurnModel
from model.scorecard import NOT_SCORABLE, STAGES, TIERS
from serving.policy import Policy
from serving.scoring import Scored, score_dataset

DEFAULT_TRIGGERS = Path(__file__).with_name("triggers.yaml")
# columns of an exported run (``churn triggers --out``)
EXPORT_COLUMNS = ("id", "customer_id", "rule", "action", "control", "as_of", "fired_at", "fields")
_TIER_RANK = {t: i for i, t in enumerate(TIERS)}
Tier = Literal[TIERS]  # type: ignore[valid-type]
Stage = Literal[STAGES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------------ conditions


class InactivePastUsualGap(_Strict):
    type: Literal["inactive_past_usual_gap"]
    gap_multiple: float = Field(2.0, gt=0)
    min_gaps: int = Field(2, ge=1)


class CartAbandoned(_Strict):
    type: Literal["cart_abandoned"]
    event_type: str = Field("cart_add", min_length=1)
    hours: float = Field(24.0, gt=0)
    within_days: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _window(self) -> CartAbandoned:
        if self.within_days * 24 <= self.hours:
            raise ValueError("within_days must be longer than hours (the cart must be old enough and recent enough)")
        return self


class NthOrderRecent(_Strict):
    type: Literal["nth_order_recent"]
    order_number: int = Field(2, ge=1)
    within_days: float = Field(1.0, gt=0)


class NoRepeatAfter(_Strict):
    type: Literal["no_repeat_after"]
    days: float = Field(30.0, gt=0)
    within_days: float = Field(7.0, gt=0)


class TierRose(_Strict):
    type: Literal["tier_rose"]
    to: list[Tier] = Field(default_factory=lambda: ["high", "critical"], min_length=1)  # type: ignore[valid-type]


class ValueAtRiskAbove(_Strict):
    type: Literal["value_at_risk_above"]
    threshold: float = Field(ge=0)


# conditions over the customer's events alone: evaluated for prospects (no scorecard) too
EVENT_ONLY = (CartAbandoned,)

Condition = Annotated[
    InactivePastUsualGap | CartAbandoned | NthOrderRecent | NoRepeatAfter | TierRose | ValueAtRiskAbove,
    Field(discriminator="type"),
]


class TriggerRule(_Strict):
    description: str = Field(min_length=1)
    when: Condition
    tiers: list[Tier] | None = None  # type: ignore[valid-type]
    stages: list[Stage] | None = None  # type: ignore[valid-type]
    action: str = Field(min_length=1)
    cooldown_days: int = Field(ge=1)
    control_share: float = Field(0.1, ge=0, lt=1)


class ContactCap(_Strict):
    max_contacts: int = Field(ge=1)
    period_days: int = Field(ge=1)


class TriggerRules(_Strict):
    seed: int = 42
    contact_cap: ContactCap
    rules: dict[str, TriggerRule] = Field(min_length=1)

    @property
    def lookback_days(self) -> int:
        """How far back firings matter (cool-downs, the cap)."""
        return max(self.contact_cap.period_days, *(r.cooldown_days for r in self.rules.values()))

    def check_actions(self, actions: Sequence[str]) -> None:
        for name, rule in self.rules.items():
            if rule.action not in actions:
                raise ValueError(
                    f"rules.{name}.action: unknown action {rule.action!r} (the policy's actions: {', '.join(actions)})"
                )


def load_triggers(path: Path | None = None, *, policy: Policy | None = None) -> TriggerRules:
    """The trigger rules of ``path`` (default: the shipped ``serving/triggers.yaml``), validated; with ``policy``,
    every action must be one of its actions. Errors name the file, the rule and the field."""
    path = Path(path or DEFAULT_TRIGGERS)
    if not path.exists():
        raise FileNotFoundError(f"trigger rules file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    try:
        rules = TriggerRules.model_validate(raw or {})
        if policy is not None:
            rules.check_actions(list(policy.actions))
    except ValidationError as e:
        # every problem (a misspelt key is both "field required" and "extra input"), each as rule.field: message
        raise ValueError(f"{path}: " + "; ".join(_where(err) for err in e.errors()[:5])) from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return rules


def _where(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    # a condition's own fields sit under its kind in pydantic's path (rules.x.when.cart_abandoned.hours)
    if len(loc) >= 4 and loc[0] == "rules" and loc[2] == "when" and loc[3] in _KINDS:
        del loc[3]
    return f"{'.'.join(loc) or '(top level)'}: {err['msg']}"


_KINDS = {"inactive_past_usual_gap", "cart_abandoned", "nth_order_recent", "no_repeat_after", "tier_rose",
          "value_at_risk_above"}  # fmt: skip


# ------------------------------------------------------------------------------------------------ control groups


def control_draw(seed: int, rule: str, customer_ids: Sequence[str], as_of: date) -> np.ndarray:
    """A uniform number in [0, 1) per customer from a hash of (seed, rule, customer, as_of date): the same firing
    always gets the same draw, so reruns agree; ``draw < control_share`` puts it in the control group."""
    day = as_of.isoformat()
    out = np.empty(len(customer_ids), dtype=np.float64)
    for i, c in enumerate(customer_ids):
        digest = hashlib.blake2b(f"{seed}|{rule}|{c}|{day}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


# ------------------------------------------------------------------------------------------------ history facts


def history_facts(data: Dataset, as_of: datetime, rules: TriggerRules) -> pd.DataFrame:
    """Per customer, what the rules read from the raw history before ``as_of`` that the features do not hold:
    ``median_gap_days`` and ``gaps`` (between purchase days), ``cart_added_at`` (latest cart event in the rules'
    window) and ``last_order_at``. Indexed by customer_id; only what the rules need is computed.

    Plain Arrow and numpy, no query engine: the same code serves a million customers in batch (about a second per
    10M rows) and one customer after an API call (well under a millisecond, where a DuckDB connection alone costs
    several)."""
    kinds = [r.when for r in rules.rules.values()]
    cut = pa.scalar(as_of, pa.timestamp("us"))
    tx = data.transactions
    bought = tx.filter(pc.and_(pc.greater_equal(tx["amount"], 0.0), pc.less(tx["timestamp"], cut)))
    frames = []
    if any(isinstance(k, InactivePastUsualGap) for k in kinds):
        frames.append(_median_gaps(bought))
    carts = [k for k in kinds if isinstance(k, CartAbandoned)]
    if carts:
        ev = data.events
        since = pa.scalar(as_of - timedelta(days=max(k.within_days for k in carts)), pa.timestamp("us"))
        types = pa.array(sorted({k.event_type for k in carts}), pa.string())
        window = pc.and_(pc.less(ev["timestamp"], cut), pc.greater_equal(ev["timestamp"], since))
        cart_rows = ev.filter(pc.and_(pc.is_in(ev["event_type"], types), window))
        frames.append(_latest(cart_rows, "cart_added_at"))
        frames.append(_latest(bought, "last_order_at"))
    if not frames:
        return pd.DataFrame(index=pd.Index([], name="customer_id"))
    return pd.concat(frames, axis=1)


def _latest(rows: pa.Table, name: str) -> pd.DataFrame:
    latest = rows.group_by("customer_id").aggregate([("timestamp", "max")])
    return pd.DataFrame(
        {name: latest["timestamp_max"].to_pandas().to_numpy()},
        index=pd.Index(latest["customer_id"].to_pylist(), name="customer_id"),
    )


def _median_gaps(bought: pa.Table) -> pd.DataFrame:
    """Median and count of the gaps between consecutive purchase days (calendar days with an order line of amount
    >= 0, as the features' ``gap_*``), per customer with at least one gap."""
    empty = pd.DataFrame({"median_gap_days": [], "gaps": []}, index=pd.Index([], name="customer_id"))
    if bought.num_rows == 0:
        return empty
    encoded = pc.dictionary_encode(bought["customer_id"]).combine_chunks()
    code = encoded.indices.to_numpy().astype(np.int64)
    day = np.floor_divide(bought["timestamp"].cast(pa.int64()).to_numpy(), 86_400_000_000)
    day -= day.min()  # small non-negative numbers: (customer, day) packs into one int64
    key = np.sort(code * (int(day.max()) + 1) + day)
    key = key[np.r_[True, key[1:] != key[:-1]]]  # distinct purchase days, by customer then day
    cust, d = np.divmod(key, int(day.max()) + 1)
    same = cust[1:] == cust[:-1]
    gap_cust, gaps = cust[1:][same], (d[1:] - d[:-1])[same].astype(np.float64)
    if gaps.size == 0:
        return empty
    order = np.lexsort((gaps, gap_cust))
    gap_cust, gaps = gap_cust[order], gaps[order]
    starts = np.flatnonzero(np.r_[True, gap_cust[1:] != gap_cust[:-1]])
    counts = np.diff(np.r_[starts, gaps.size])
    median = (gaps[starts + (counts - 1) // 2] + gaps[starts + counts // 2]) / 2
    ids = encoded.dictionary.take(pa.array(gap_cust[starts])).to_pylist()
    return pd.DataFrame({"median_gap_days": median, "gaps": counts}, index=pd.Index(ids, name="customer_id"))


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class RuleCounts:
    matched: int = 0  # condition and filters true
    cooldown: int = 0  # held back: fired for this customer within the cool-down
    capped: int = 0  # held back: the customer's contact cap was reached
    fired: int = 0  # written to the outbox (treated + control)
    control: int = 0


@dataclass
class TriggerRun:
    as_of: datetime
    fired_at: datetime
    customers_evaluated: int = 0  # scored: every rule
    prospects_evaluated: int = 0  # no purchase yet (no scorecard): the event-only rules
    customers_not_evaluated: int = 0  # prospects, when no rule is event-only
    added: int = 0  # items the store added (equals len(fired) unless another run raced this one)
    rules: dict[str, RuleCounts] = field(default_factory=dict)
    fired: list[pa.Table] = field(default_factory=list)

    def items(self) -> pa.Table:
        """This run's firings (``ITEM_SCHEMA``)."""
        return pa.concat_tables(self.fired) if self.fired else ITEM_SCHEMA.empty_table()


def evaluate_triggers(
    data: Dataset | None,
    model: ChurnModel,
    rules: TriggerRules,
    store: Any,
    as_of: datetime,
    *,
    policy: Policy,
    chunk_size: int = 100_000,
    fired_at: datetime | None = None,
    engine: Engine | None = None,
    progress: Callable[[int, str | None], None] | None = None,
) -> TriggerRun:
    """Evaluate every customer known before ``as_of``: from ``data`` when given (files), else from the ``store``'s
    own rows, ``chunk_size`` customers at a time. Each chunk's firings and evaluation state are committed to the
    store's outbox in one transaction (so a killed run re-run completes without duplicates)."""
    say = progress or (lambda n=1, d=None: None)
    as_of = _naive(as_of)
    run = TriggerRun(as_of, _naive(fired_at or datetime.now(UTC)).replace(microsecond=0))
    run.rules = {name: RuleCounts() for name in rules.rules}
    since = as_of - timedelta(days=rules.lookback_days)
    firings = store.firings_since(since).to_pandas()
    previous = store.evaluations().to_pandas().set_index("customer_id")
    for chunk, entities, facts in _chunks(data, store, as_of, rules, chunk_size):
        _evaluate_chunk(chunk, entities, facts, model, rules, store, policy, run, firings, previous, engine)
        say(entities.num_rows, None)
    return run


def evaluate_customers(
    store: Any,
    model: ChurnModel,
    rules: TriggerRules,
    customer_ids: Sequence[str],
    now: datetime,
    *,
    policy: Policy,
    engine: Engine | None = None,
    data: Dataset | None = None,
    scored: Scored | None = None,
    claimed: pa.Table | None = None,
) -> TriggerRun:
    """Evaluate a few customers (those a ``POST /v1/events`` touched) at ``now`` and commit what fires.

    ``data`` is their rows (default: read from the store) and ``scored`` their scorecards at ``now`` when the
    caller has them already: then nothing is computed twice. ``claimed``: the pending evaluations these customers
    came from (``store.claim_evaluations``), retired in the transaction that writes the firings. The rules, ids,
    cool-downs, cap and control draw are the batch's, so a customer evaluated live and then by ``churn triggers``
    the same day fires once. An event reveals at once a second order, a risk jump or a high value at risk; a cart
    becomes abandoned only ``hours`` later, so mostly the next batch run (or a later event) finds it. Customers with
    no order before ``now`` are evaluated on the event-only rules (prospects)."""
    now = _naive(now)
    ids = sorted(set(customer_ids))
    run = TriggerRun(now, now.replace(microsecond=0))
    run.rules = {name: RuleCounts() for name in rules.rules}
    if not ids:
        if claimed is not None and claimed.num_rows:
            run.added += store.add_outbox(ITEM_SCHEMA.empty_table(), evaluated=claimed)
        return run
    data = data if data is not None else store.rows_for(ids)
    # every given customer at now: build_features gives a customer with no order before now frequency 0, and
    # scoring lists them as not scorable, as entities_at would have left out one with no row before now at all
    entities = pa.table(
        {"customer_id": pa.array(ids, pa.string()), "as_of": pa.array([now] * len(ids), pa.timestamp("us"))}
    )
    firings = store.firings_since(now - timedelta(days=rules.lookback_days), ids).to_pandas()
    previous = store.evaluations(ids).to_pandas().set_index("customer_id")
    facts = history_facts(data, now, rules)
    _evaluate_chunk(data, entities, facts, model, rules, store, policy, run, firings, previous, engine, scored, claimed)
    return run


def _chunks(
    data: Dataset | None, store: Any, as_of: datetime, rules: TriggerRules, chunk_size: int
) -> Iterator[tuple[Dataset, pa.Table, pd.DataFrame]]:
    if data is not None:
        entities = entities_at(data, as_of)
        facts = history_facts(data, as_of, rules)
        for start in range(0, entities.num_rows, chunk_size):
            yield data, entities.slice(start, chunk_size), facts
        return
    for chunk in store.chunks(chunk_size):
        entities = entities_at(chunk, as_of)
        if entities.num_rows:
            yield chunk, entities, history_facts(chunk, as_of, rules)


def _evaluate_chunk(
    data: Dataset,
    entities: pa.Table,
    facts: pd.DataFrame,
    model: ChurnModel,
    rules: TriggerRules,
    store: Any,
    policy: Policy,
    run: TriggerRun,
    firings: pd.DataFrame,
    previous: pd.DataFrame,
    engine: Engine | None,
    scored: Scored | None = None,
    claimed: pa.Table | None = None,
) -> None:
    if scored is None:
        scored = score_dataset(data, entities, model, policy, engine=engine)
    elif scored.features is None:
        raise ValueError("scored: the feature rows are needed (score_dataset returns them)")
    cards, feats = scored.scores, scored.features
    prospects = np.empty(0, dtype=object)
    if any(isinstance(r.when, EVENT_ONLY) for r in rules.rules.values()):
        rejected = scored.rejected
        prospects = rejected.loc[rejected["reason"] == NOT_SCORABLE, "customer_id"].to_numpy(object)
    run.customers_evaluated += len(cards)
    run.prospects_evaluated += len(prospects)
    run.customers_not_evaluated += len(scored.rejected) - len(prospects)
    if len(cards) == 0 and len(prospects) == 0 and (claimed is None or claimed.num_rows == 0):
        return
    ids = cards["customer_id"].to_numpy(object)
    frame = _frame(cards, feats, facts.reindex(ids), previous.reindex(ids), run.as_of)
    if len(prospects):
        frame = _with_prospects(frame, facts.reindex(prospects), prospects)
    scored_rows = np.arange(len(frame)) < len(cards)
    candidates = []
    for priority, (name, rule) in enumerate(rules.rules.items()):
        mask, shown = _condition(rule.when, frame, run.as_of)
        if not isinstance(rule.when, EVENT_ONLY):
            mask &= scored_rows
        if rule.tiers:
            mask &= frame["risk_tier"].isin(rule.tiers).to_numpy()
        if rule.stages:
            mask &= frame["lifecycle_stage"].isin(rule.stages).to_numpy()
        rows = np.flatnonzero(mask)
        run.rules[name].matched += len(rows)
        if len(rows):
            candidates.append(
                pd.DataFrame({"row": rows, "rule": name, "priority": priority, "shown": [shown] * len(rows)})
            )
    items = _select(candidates, frame, rules, run, firings) if candidates else None
    evaluations = pa.table(
        {"customer_id": pa.array(ids, pa.string()), "as_of": pa.array([run.as_of] * len(ids), pa.timestamp("us")),
         "risk_tier": pa.array(cards["risk_tier"].to_numpy(object), pa.string())},
        schema=EVALUATION_INPUT,
    )  # fmt: skip
    table = items if items is not None else ITEM_SCHEMA.empty_table()
    retire = {"evaluated": claimed} if claimed is not None else {}  # live evaluations only
    run.added += store.add_outbox(table, evaluations=evaluations, **retire)
    if table.num_rows:
        run.fired.append(table)


def _frame(
    cards: pd.DataFrame, feats: pd.DataFrame, facts: pd.DataFrame, previous: pd.DataFrame, as_of: datetime
) -> pd.DataFrame:
    """Everything a rule may read, one row per scored customer (aligned with ``cards``)."""
    out = cards[["customer_id", "churn_probability", "risk_tier", "lifecycle_stage", "expected_value_12m",
                 "value_at_risk"]].reset_index(drop=True)  # fmt: skip
    for col in ("recency_days", "frequency", "first_purchase_days"):
        out[col] = feats[col].to_numpy()
    for col in ("median_gap_days", "gaps", "cart_added_at", "last_order_at"):
        out[col] = facts[col].to_numpy() if col in facts.columns else np.nan
    # the tier to compare with: the latest evaluation before this as_of (or, when this as_of was evaluated already,
    # the one before that: a rerun compares with the same tier as the first run)
    if len(previous.columns):
        latest = pd.to_datetime(previous["as_of"]).to_numpy()
        now = np.datetime64(as_of, "us")
        prev_tier = np.where(latest < now, previous["risk_tier"], np.where(latest == now, previous["prev_tier"], None))
        prev_at = np.where(latest < now, previous["as_of"], np.where(latest == now, previous["prev_as_of"], None))
        prev_tier[pd.isna(latest)] = None
    else:
        prev_tier = prev_at = np.full(len(out), None, dtype=object)
    out["previous_tier"] = prev_tier
    out["previous_as_of"] = prev_at
    return out


def _with_prospects(frame: pd.DataFrame, facts: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """``frame`` with a row per prospect after the scored ones: the history facts, every scorecard field null."""
    out = {}
    for col in frame.columns:
        if col == "customer_id":
            extra = ids
        elif col in facts.columns:
            extra = facts[col].to_numpy()
        elif pd.api.types.is_numeric_dtype(frame[col].dtype):
            extra = np.full(len(ids), np.nan)
        else:
            extra = np.full(len(ids), None, dtype=object)
        out[col] = np.concatenate([frame[col].to_numpy(), extra])
    return pd.DataFrame(out)


def _condition(kind: Any, f: pd.DataFrame, as_of: datetime) -> tuple[np.ndarray, tuple[str, ...]]:
    """(who matches, the fields that show why) for one condition."""
    if isinstance(kind, InactivePastUsualGap):
        gap = f["median_gap_days"].to_numpy(float)
        enough = np.nan_to_num(f["gaps"].to_numpy(float), nan=0.0) >= kind.min_gaps
        with np.errstate(invalid="ignore"):
            mask = enough & (f["recency_days"].to_numpy(float) > kind.gap_multiple * gap)
        return mask, ("recency_days", "median_gap_days", "gaps")
    if isinstance(kind, CartAbandoned):
        cart = pd.to_datetime(f["cart_added_at"])
        last = pd.to_datetime(f["last_order_at"])
        age_h = (pd.Timestamp(as_of) - cart).dt.total_seconds().to_numpy() / 3600
        bought_since = (last >= cart).to_numpy()  # NaT compares False
        with np.errstate(invalid="ignore"):
            mask = cart.notna().to_numpy() & (age_h >= kind.hours) & ~bought_since
        f["hours_since_cart_add"] = np.round(age_h, 2)
        return mask, ("cart_added_at", "hours_since_cart_add", "last_order_at")
    if isinstance(kind, NthOrderRecent):
        mask = (f["frequency"].to_numpy() == kind.order_number) & (f["recency_days"].to_numpy(float) < kind.within_days)
        return mask, ("frequency", "recency_days")
    if isinstance(kind, NoRepeatAfter):
        first = f["first_purchase_days"].to_numpy(float)
        mask = (f["frequency"].to_numpy() == 1) & (first >= kind.days) & (first < kind.days + kind.within_days)
        return mask, ("frequency", "first_purchase_days")
    if isinstance(kind, TierRose):
        now = f["risk_tier"].map(_TIER_RANK).to_numpy(float)
        before = f["previous_tier"].map(_TIER_RANK).to_numpy(float)  # None -> NaN: no previous evaluation
        with np.errstate(invalid="ignore"):
            mask = f["risk_tier"].isin(kind.to).to_numpy() & (now > before)
        return mask, ("previous_tier", "previous_as_of")
    if isinstance(kind, ValueAtRiskAbove):
        return f["value_at_risk"].to_numpy(float) > kind.threshold, ("value_at_risk", "expected_value_12m")
    raise TypeError(f"unknown condition {kind!r}")


def _select(
    candidates: list[pd.DataFrame], frame: pd.DataFrame, rules: TriggerRules, run: TriggerRun, firings: pd.DataFrame
) -> pa.Table | None:
    """Cool-downs, then the contact cap in rule order, then the control draw: the outbox items of one chunk."""
    c = pd.concat(candidates, ignore_index=True)
    c["customer_id"] = frame["customer_id"].to_numpy(object)[c["row"].to_numpy()]
    as_of = pd.Timestamp(run.as_of)
    if len(firings):
        past = firings[firings["customer_id"].isin(set(c["customer_id"]))]
        last = past.groupby(["customer_id", "rule"])["as_of"].max().rename("last_fired")
        c = c.join(last, on=["customer_id", "rule"])
        cooldown = c["rule"].map({n: r.cooldown_days for n, r in rules.rules.items()}).to_numpy()
        recent = (as_of - pd.to_datetime(c["last_fired"])) < pd.to_timedelta(cooldown, unit="D")
        held = recent.fillna(False).to_numpy(bool)
        cap_since = as_of - pd.Timedelta(days=rules.contact_cap.period_days)
        window = past[(pd.to_datetime(past["as_of"]) > cap_since)]
        prior = c["customer_id"].map(window.groupby("customer_id").size()).fillna(0).to_numpy(int)
    else:
        held = np.zeros(len(c), bool)
        prior = np.zeros(len(c), int)
    for name, n in c.loc[held, "rule"].value_counts().items():
        run.rules[str(name)].cooldown += int(n)
    c, prior = c.loc[~held].copy(), prior[~held]
    c["prior"] = prior
    c = c.sort_values(["customer_id", "priority"], kind="stable")
    order_in_run = c.groupby("customer_id").cumcount().to_numpy()
    within = (c["prior"].to_numpy() + order_in_run) < rules.contact_cap.max_contacts
    for name, n in c.loc[~within, "rule"].value_counts().items():
        run.rules[str(name)].capped += int(n)
    c = c.loc[within].sort_values(["priority", "customer_id"], kind="stable")
    if c.empty:
        return None
    parts = []
    day = run.as_of.date()
    for name, group in c.groupby("priority", sort=True):
        rule_name = group["rule"].iat[0]
        rule = rules.rules[rule_name]
        cids = group["customer_id"].tolist()
        control = control_draw(rules.seed, rule_name, cids, day) < rule.control_share
        rows = frame.iloc[group["row"].to_numpy()]
        shown = group["shown"].iat[0]
        fields = [_fields(r, shown) for r in rows.to_dict("records")]
        parts.append(
            pa.table(
                {
                    "id": [outbox_id(rule_name, cid, day) for cid in cids],
                    "customer_id": cids,
                    "rule": [rule_name] * len(cids),
                    "action": [rule.action] * len(cids),
                    "fired_at": pa.array([run.fired_at] * len(cids), pa.timestamp("us")),
                    "as_of": pa.array([run.as_of] * len(cids), pa.timestamp("us")),
                    "fields": fields,
                    "control": control,
                },
                schema=ITEM_SCHEMA,
            )
        )
        counts = run.rules[rule_name]
        counts.fired += len(cids)
        counts.control += int(control.sum())
        del name
    return pa.concat_tables(parts)


_CONTEXT = ("churn_probability", "risk_tier", "lifecycle_stage")


def _fields(row: dict, shown: tuple[str, ...]) -> str:
    """The JSON of what fired an item: the condition's fields, then the scorecard context."""
    out = {}
    for name in (*shown, *_CONTEXT):
        out[name] = _json_value(row.get(name))
    return json.dumps(out)


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp | datetime | np.datetime64):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        return round(float(v), 4)
    return v


def _naive(when: datetime) -> datetime:
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def items_for_export(items: pa.Table) -> pa.Table:
    """A run's items for ``--out`` (CSV or Parquet), with ``rule`` and ``control`` up front."""
    return items.select(list(EXPORT_COLUMNS))
