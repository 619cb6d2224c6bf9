"""Trigger rules: each condition on hand-made customers (fires / does not fire at its boundary), filters, cool-downs,
the contact cap, deterministic control groups, idempotent and resumable evaluation, YAML errors naming the rule and
the field, the pull page, and every default rule firing on the demo business.

The hand-made customers are scored by ``tests/hand_model.py``: churn probability = sigmoid(0.5 x recency_days - 20),
so the risk tier is a function of recency alone (medium from 38.3 days, high from 40, critical from 41.7)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.store import StoreSettings, open_store
from serving.outbox import page
from serving.policy import load_policy
from serving.scoring import score_dataset
from serving.triggers import (
    DEFAULT_TRIGGERS,
    TriggerRules,
    control_draw,
    evaluate_customers,
    evaluate_triggers,
    load_triggers,
)
from tests.conftest import dataset, ev, tx
from tests.hand_model import hand_model
from tests.postgres import new_database

AS_OF = datetime(2024, 6, 1)
POLICY = load_policy()
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def at(delta: timedelta, base: datetime = AS_OF) -> str:
    return (base - delta).isoformat()


def rules_of(*rules: tuple[str, dict], cap: tuple[int, int] = (100, 1), seed: int = 42) -> TriggerRules:
    """Rules with no control group unless a rule says otherwise, and a cap that never binds unless given."""
    return TriggerRules.model_validate(
        {
            "seed": seed,
            "contact_cap": {"max_contacts": cap[0], "period_days": cap[1]},
            "rules": {
                name: {"description": name, "action": "winback_discount", "cooldown_days": 1, "control_share": 0.0}
                | spec
                for name, spec in rules
            },
        }
    )


@pytest.fixture
def store(tmp_path):
    s = open_store(StoreSettings(path=tmp_path / "store"), tmp_path)
    yield s
    s.close()


@pytest.fixture(params=["embedded", "postgres"])
def any_store(request, tmp_path):
    if request.param == "embedded":
        settings = StoreSettings(path=tmp_path / "store")
    else:
        settings = StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "triggers"))
    s = open_store(settings, tmp_path)
    yield s
    s.close()


def fire(data, rules, store, as_of=AS_OF, model=None):
    return evaluate_triggers(data, model or hand_model(), rules, store, as_of, policy=POLICY, chunk_size=1000)


def fired(run, rule: str | None = None) -> set[str]:
    items = run.items()
    return {r["customer_id"] for r in items.to_pylist() if rule is None or r["rule"] == rule}


# --------------------------------------------------------------------------------------------- conditions


def test_inactive_past_usual_gap_fires_only_past_k_times_the_median_gap(store):
    def buyer(cid: str, last: timedelta, gaps: list[int]) -> list[dict]:
        day = AS_OF - last
        rows = [tx(cid, day.isoformat(), 20.0)]
        for g in reversed(gaps):
            day -= timedelta(days=g)
            rows.append(tx(cid, day.isoformat(), 20.0))
        return rows

    data = dataset(
        buyer("over", 20 * DAY + HOUR, [10, 30, 10])  # median gap 10 (gaps 10, 30, 10), 20.04 days since: > 2 x 10
        + buyer("exactly", 20 * DAY, [10, 30, 10])  # 20.0 days since: not above
        + buyer("one_gap", 50 * DAY, [10])  # only one gap: no usual rhythm yet (min_gaps 2)
        + buyer("regular", 15 * DAY, [10, 10])
    )
    rule = ("inactive", {"when": {"type": "inactive_past_usual_gap", "gap_multiple": 2.0, "min_gaps": 2}})
    run = fire(data, rules_of(rule), store)
    assert fired(run) == {"over"}
    (item,) = run.items().to_pylist()
    fields = json.loads(item["fields"])
    assert fields["median_gap_days"] == 10.0 and fields["gaps"] == 3
    assert fields["recency_days"] == pytest.approx(20 + 1 / 24, abs=1e-4)
    assert fields["risk_tier"] == "low"


def test_filters_on_tier_and_stage(tmp_path):
    data = dataset([tx("a", at(41 * DAY), 10.0), tx("a", at(300 * DAY), 10.0), tx("b", at(2 * DAY), 10.0)])
    always = {"when": {"type": "value_at_risk_above", "threshold": 0}}
    for tiers, stages, expected in (
        (["high", "critical"], None, {"a"}),  # recency 41: p = sigmoid(0.5) = 0.62, high
        (["critical"], None, set()),
        (None, ["new"], {"b"}),  # first order 2 days ago
        (None, ["lapsed"], set()),
    ):
        s = open_store(StoreSettings(path=tmp_path / uuid.uuid4().hex), tmp_path)
        run = fire(data, rules_of(("r", always | {"tiers": tiers, "stages": stages})), s)
        assert fired(run) == expected, (tiers, stages)
        s.close()


def test_cart_abandoned_after_n_hours_without_an_order_since(store):
    data = dataset(
        [
            *(tx(c, at(40 * DAY), 30.0) for c in ("old_enough", "too_fresh", "bought_after", "too_old", "no_cart")),
            tx("bought_after", at(29 * HOUR), 25.0),  # ordered after the cart
        ],
        [
            ev("old_enough", at(24 * HOUR), "cart_add"),  # exactly 24 h: fires
            ev("too_fresh", at(24 * HOUR - timedelta(minutes=6)), "cart_add"),
            ev("bought_after", at(30 * HOUR), "cart_add"),
            ev("too_old", at(3 * DAY + timedelta(seconds=1)), "cart_add"),  # outside within_days
            ev("no_cart", at(30 * HOUR), "session"),
        ],
    )
    rule = ("cart", {"when": {"type": "cart_abandoned", "event_type": "cart_add", "hours": 24, "within_days": 3}})
    run = fire(data, rules_of(rule), store)
    assert fired(run) == {"old_enough"}
    fields = json.loads(run.items()["fields"][0].as_py())
    assert fields["hours_since_cart_add"] == 24.0 and fields["cart_added_at"] == at(24 * HOUR)


def test_cart_abandoned_fires_for_prospects_with_the_scorecard_fields_null(any_store):
    """A visitor with a cart and no order yet has no scorecard: the event-only rule fires for them all the same (in
    batch and live), the rules that need a scorecard (or filter on one) never do."""
    txs = [tx("buyer", at(20 * DAY), 30.0)]
    evs = [
        ev("prospect", at(30 * HOUR), "cart_add"),
        ev("buyer", at(30 * HOUR), "cart_add"),
        ev("fresh_prospect", at(2 * HOUR), "cart_add"),  # not abandoned yet
        ev("browser", at(30 * HOUR), "session"),  # a prospect without a cart
    ]
    cart = ("cart", {"when": {"type": "cart_abandoned", "hours": 24, "within_days": 3}})
    filtered = ("cart_medium", {"when": {"type": "cart_abandoned", "hours": 24, "within_days": 3},
                                "tiers": ["low", "medium", "high", "critical"]})  # fmt: skip
    always = ("always", {"when": {"type": "value_at_risk_above", "threshold": 0}})
    rules = rules_of(cart, filtered, always)
    run = fire(dataset(txs, evs), rules, any_store)
    assert fired(run, "cart") == {"prospect", "buyer"}
    assert fired(run, "cart_medium") == {"buyer"} and fired(run, "always") == {"buyer"}
    assert run.customers_evaluated == 1 and run.prospects_evaluated == 3 and run.customers_not_evaluated == 0
    by_customer = {r["customer_id"]: json.loads(r["fields"]) for r in run.items().to_pylist() if r["rule"] == "cart"}
    assert by_customer["prospect"] == {"cart_added_at": at(30 * HOUR), "hours_since_cart_add": 30.0,
                                       "last_order_at": None, "churn_probability": None, "risk_tier": None,
                                       "lifecycle_stage": None}  # fmt: skip
    assert by_customer["buyer"]["risk_tier"] == "low"
    # live, from the store's rows: the same firing, and a rerun fires nothing new
    any_store.append(transactions=txs, events=evs)
    later = AS_OF + HOUR
    live = evaluate_customers(any_store, hand_model(), rules, ["prospect", "browser"], later, policy=POLICY)
    assert fired(live) == set() and live.rules["cart"].cooldown == 1  # fired by the batch run this morning
    other = rules_of(("cart2", cart[1]))
    live = evaluate_customers(any_store, hand_model(), other, ["prospect", "browser", "fresh_prospect"], later,
                              policy=POLICY)  # fmt: skip
    assert fired(live) == {"prospect"} and live.prospects_evaluated == 3
    # without an event-only rule, prospects are not evaluated at all
    none = fire(dataset(txs, evs), rules_of(always), any_store, AS_OF + 2 * DAY)
    assert none.prospects_evaluated == 0 and none.customers_not_evaluated == 3


def test_post_purchase_loyalty_after_the_second_order_in_the_last_day(store):
    data = dataset(
        [
            tx("second_now", at(90 * DAY), 10.0),
            tx("second_now", at(23 * HOUR), 10.0),
            tx("second_a_day_ago", at(90 * DAY), 10.0),
            tx("second_a_day_ago", at(24 * HOUR), 10.0),  # recency exactly 1 day: not "in the last day"
            *(tx("third_now", at(d * DAY), 10.0) for d in (90, 60)),
            tx("third_now", at(2 * HOUR), 10.0),
            tx("first_now", at(2 * HOUR), 10.0),
        ]
    )
    rule = ("loyal", {"when": {"type": "nth_order_recent", "order_number": 2, "within_days": 1}})
    assert fired(fire(data, rules_of(rule), store)) == {"second_now"}


def test_new_without_second_order_in_its_window(store):
    data = dataset(
        [
            tx("day_30", at(30 * DAY), 10.0),
            tx("day_29", at(30 * DAY - timedelta(minutes=10)), 10.0),
            tx("day_36", at(37 * DAY - timedelta(minutes=10)), 10.0),
            tx("day_37", at(37 * DAY), 10.0),
            tx("two_orders", at(31 * DAY), 10.0),
            tx("two_orders", at(10 * DAY), 10.0),
        ]
    )
    rule = ("new", {"when": {"type": "no_repeat_after", "days": 30, "within_days": 7}})
    assert fired(fire(data, rules_of(rule), store)) == {"day_30", "day_36"}


def test_risk_jump_compares_with_the_previous_evaluation(any_store):
    store = any_store
    day0 = AS_OF
    # recency at day0 -> day1: 39 -> 40 (medium -> high), 40.5 -> 41.5 (high -> high), 37 -> 38 (low -> low),
    # 41 -> 42 (high -> critical)
    data = dataset(
        [
            tx("medium_to_high", at(39 * DAY), 10.0),
            tx("high_stays", at(40.5 * DAY), 10.0),
            tx("low_stays", at(37 * DAY), 10.0),
            tx("high_to_critical", at(41 * DAY), 10.0),
        ]
    )
    rule = ("jump", {"when": {"type": "tier_rose", "to": ["high", "critical"]}})
    first = fire(data, rules_of(rule), store, day0)
    assert fired(first) == set()  # a first evaluation has nothing to compare with
    second = fire(data, rules_of(rule), store, day0 + DAY)
    assert fired(second) == {"medium_to_high", "high_to_critical"}
    by_customer = {r["customer_id"]: json.loads(r["fields"]) for r in second.items().to_pylist()}
    assert by_customer["medium_to_high"]["previous_tier"] == "medium"
    assert by_customer["medium_to_high"]["risk_tier"] == "high"
    assert by_customer["high_to_critical"]["previous_as_of"] == day0.isoformat()
    again = fire(data, rules_of(rule), store, day0 + DAY)  # the same evaluation again: nothing new
    assert again.added == 0 and fired(again) == set()
    assert again.rules["jump"].matched == 2  # it still compares with day0's tiers, not with its own first run


def test_value_at_risk_above_its_threshold(store):
    data = dataset([tx("a", at(39 * DAY), 80.0), tx("a", at(100 * DAY), 50.0)])
    scored = score_dataset(data, pa.table({"customer_id": ["a"], "as_of": pa.array([AS_OF], pa.timestamp("us"))}),
                           hand_model(), POLICY)  # fmt: skip
    var = float(scored.scores["value_at_risk"].iloc[0])
    assert var > 1
    above = ("above", {"when": {"type": "value_at_risk_above", "threshold": var - 0.01}})
    equal = ("equal", {"when": {"type": "value_at_risk_above", "threshold": var}})
    run = fire(data, rules_of(above, equal), store)
    assert {r["rule"] for r in run.items().to_pylist()} == {"above"}
    assert json.loads(run.items()["fields"][0].as_py())["value_at_risk"] == pytest.approx(var, abs=1e-4)


# --------------------------------------------------------------------------------------------- cool-down, cap, control


def test_cool_down_per_customer_per_rule(store):
    data = dataset([tx("a", at(10 * DAY), 10.0), tx("b", at(10 * DAY), 10.0)])
    always = ("r", {"when": {"type": "value_at_risk_above", "threshold": 0}, "cooldown_days": 7})
    assert fired(fire(data, rules_of(always), store, AS_OF)) == {"a", "b"}
    held = fire(data, rules_of(always), store, AS_OF + 6 * DAY)
    assert fired(held) == set() and held.rules["r"].cooldown == 2
    assert fired(fire(data, rules_of(always), store, AS_OF + 7 * DAY)) == {"a", "b"}  # 7 days later: again
    assert store.outbox_after(0, 100).num_rows == 4


def test_contact_cap_across_rules_first_rules_win(store):
    data = dataset([tx("a", at(10 * DAY), 10.0)])
    always = {"when": {"type": "value_at_risk_above", "threshold": 0}}
    rules = rules_of(("first", always), ("second", always), ("third", always), cap=(2, 7))
    run = fire(data, rules, store, AS_OF)
    assert sorted(r["rule"] for r in run.items().to_pylist()) == ["first", "second"]
    assert run.rules["third"].capped == 1
    next_day = fire(data, rules, store, AS_OF + DAY)  # two contacts in the last 7 days already
    assert fired(next_day) == set() and next_day.rules["first"].capped == 1
    week = fire(data, rules, store, AS_OF + 7 * DAY)  # the first contacts are 7 days old: out of the period
    assert sorted(r["rule"] for r in week.items().to_pylist()) == ["first", "second"]


def test_control_draw_is_deterministic_and_close_to_its_share():
    ids = [f"C{i:06d}" for i in range(20_000)]
    draw = control_draw(42, "cart_abandoned", ids, AS_OF.date())
    assert np.array_equal(draw, control_draw(42, "cart_abandoned", ids, AS_OF.date()))
    assert abs((draw < 0.2).mean() - 0.2) < 0.012  # 4 standard deviations of a binomial share
    other = control_draw(42, "cart_abandoned", ids, (AS_OF + DAY).date())
    assert abs(np.corrcoef(draw, other)[0, 1]) < 0.05  # another day is another draw
    assert not np.array_equal(draw, control_draw(7, "cart_abandoned", ids, AS_OF.date()))


def test_control_items_are_recorded_and_marked_the_same_on_reruns(tmp_path):
    data = dataset([tx(f"c{i:04d}", at((10 + i % 20) * DAY), 10.0) for i in range(400)])
    rule = ("r", {"when": {"type": "value_at_risk_above", "threshold": 0}, "control_share": 0.3})
    runs = []
    for name in ("one", "two"):
        s = open_store(StoreSettings(path=tmp_path / name), tmp_path)
        runs.append(fire(data, rules_of(rule), s).items().sort_by("customer_id"))
        s.close()
    assert runs[0]["control"].equals(runs[1]["control"])
    share = np.mean(runs[0]["control"].to_pylist())
    assert 0.2 < share < 0.4


# --------------------------------------------------------------------------------------------- evaluation runs


def test_same_evaluation_twice_fires_nothing_new(any_store):
    data = dataset([tx(f"c{i}", at((5 + i) * DAY), 10.0) for i in range(30)])
    rules = load_triggers(policy=POLICY)
    first = fire(data, rules, any_store)
    again = fire(data, rules, any_store)
    assert again.added == 0 and again.items().num_rows == 0
    assert any_store.outbox_after(0, 1000).num_rows == first.added


def test_evaluating_the_store_rows_equals_evaluating_the_files(any_store, tmp_path):
    rows = [tx(f"c{i:03d}", at((5 + i % 50) * DAY), 10.0 + i) for i in range(90)]
    rows += [tx(f"c{i:03d}", at((60 + i % 30) * DAY), 5.0) for i in range(0, 90, 3)]
    events = [ev(f"c{i:03d}", at(30 * HOUR), "cart_add") for i in range(0, 90, 4)]
    any_store.append(transactions=rows, events=events)
    rules = load_triggers(policy=POLICY)
    from_store = evaluate_triggers(None, hand_model(), rules, any_store, AS_OF, policy=POLICY, chunk_size=40)
    files = open_store(StoreSettings(path=tmp_path / "files"), tmp_path)
    from_files = fire(dataset(rows, events), rules, files)
    key = ["id", "customer_id", "rule", "control", "fields"]
    assert from_store.items().num_rows > 0
    assert from_store.items().select(key).sort_by("id").equals(from_files.items().select(key).sort_by("id"))
    assert "cart_abandoned" in {r["rule"] for r in from_store.items().to_pylist()}  # events read from the store too
    files.close()


class _DiesOnSecondChunk:
    """A store whose second outbox commit fails (as if the process were killed there)."""

    def __init__(self, store):
        self.store, self.commits = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add_outbox(self, items, *, evaluations=None):
        self.commits += 1
        if self.commits == 2:
            raise KeyboardInterrupt("killed")
        return self.store.add_outbox(items, evaluations=evaluations)


def test_a_killed_run_rerun_completes_without_duplicates(tmp_path):
    data = dataset([tx(f"c{i:03d}", at((10 + i % 40) * DAY), 10.0) for i in range(120)])
    always = ("r", {"when": {"type": "value_at_risk_above", "threshold": 0}, "control_share": 0.2})
    clean = open_store(StoreSettings(path=tmp_path / "clean"), tmp_path)
    expected = evaluate_triggers(data, hand_model(), rules_of(always), clean, AS_OF, policy=POLICY, chunk_size=50)
    store = open_store(StoreSettings(path=tmp_path / "killed"), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        evaluate_triggers(data, hand_model(), rules_of(always), _DiesOnSecondChunk(store), AS_OF, policy=POLICY,
                          chunk_size=50)  # fmt: skip
    assert store.outbox_after(0, 1000).num_rows == 50  # the first chunk was committed
    resumed = evaluate_triggers(data, hand_model(), rules_of(always), store, AS_OF, policy=POLICY, chunk_size=50)
    assert resumed.added == 70
    got, want = store.outbox_after(0, 1000), clean.outbox_after(0, 1000)
    assert got.num_rows == 120 == len(set(got["id"].to_pylist()))
    key = ["id", "customer_id", "rule", "control", "fields"]
    assert got.select(key).sort_by("id").equals(want.select(key).sort_by("id"))
    assert expected.added == 120


def test_live_evaluation_of_a_few_customers_from_the_store(store):
    store.append(transactions=[tx("a", at(90 * DAY), 10.0), tx("a", at(2 * HOUR), 10.0), tx("b", at(5 * DAY), 10.0)])
    rule = ("loyal", {"when": {"type": "nth_order_recent", "order_number": 2, "within_days": 1}})
    run = evaluate_customers(store, hand_model(), rules_of(rule), ["a", "b"], AS_OF, policy=POLICY)
    assert fired(run) == {"a"} and run.added == 1
    again = evaluate_customers(store, hand_model(), rules_of(rule), ["a"], AS_OF + HOUR, policy=POLICY)
    assert again.added == 0  # the same day: the same id, and the cool-down
    # a caller that scored the customers already (the route) passes its rows and scorecards: the same firings
    later = AS_OF + 2 * HOUR
    data = store.rows_for(["a", "b", "nobody"])
    entities = pa.table({"customer_id": ["a", "b", "nobody"], "as_of": pa.array([later] * 3, pa.timestamp("us"))})
    scored = score_dataset(data, entities, hand_model(), POLICY)
    other = open_store(StoreSettings(path=store.path.parent / "other"), store.path.parent)
    given = evaluate_customers(other, hand_model(), rules_of(rule), ["a", "b", "nobody"], later, policy=POLICY,
                               data=data, scored=scored)  # fmt: skip
    fresh = evaluate_customers(store.__class__(store.path.parent / "third"), hand_model(), rules_of(rule),
                               ["a", "b", "nobody"], later, policy=POLICY, data=data)  # fmt: skip
    assert fired(given) == fired(fresh) == {"a"}
    assert given.customers_evaluated == 2 and given.customers_not_evaluated == 1  # "nobody": no order
    other.close()


# --------------------------------------------------------------------------------------------- the pull page


def test_pull_page_with_cursor_marks_control_items(store):
    data = dataset([tx(f"c{i:03d}", at(10 * DAY), 10.0) for i in range(25)])
    rule = ("r", {"when": {"type": "value_at_risk_above", "threshold": 0}, "control_share": 0.3})
    fire(data, rules_of(rule), store)
    seen, cursor = [], 0
    while True:
        body = page(store, after=cursor, limit=10)
        assert len(body["items"]) <= 10
        seen += body["items"]
        if not body["items"]:
            assert body["next_after"] == cursor
            break
        cursor = body["next_after"]
    assert len(seen) == 25 == len({i["id"] for i in seen})
    assert [i["seq"] for i in seen] == sorted(i["seq"] for i in seen)
    control = [i for i in seen if i["control"]]
    assert control and all(i["state"] == "control" for i in control)
    first = seen[0]
    assert isinstance(first["fields"], dict) and first["as_of"] == AS_OF.isoformat(timespec="seconds") + "Z"
    assert set(first) >= {"id", "seq", "customer_id", "rule", "action", "fired_at", "as_of", "fields", "control",
                          "state", "attempts", "next_attempt_at", "last_error"}  # fmt: skip
    with pytest.raises(ValueError, match="limit"):
        page(store, after=0, limit=0)
    with pytest.raises(ValueError, match="after"):
        page(store, after=-1, limit=10)


# --------------------------------------------------------------------------------------------- the YAML


def test_the_shipped_rules_load_and_name_real_policy_actions():
    rules = load_triggers(policy=POLICY)
    assert list(rules.rules) == [
        "high_value_at_risk",
        "risk_jump",
        "cart_abandoned",
        "inactive_past_usual_gap",
        "post_purchase_loyalty",
        "new_without_second_order",
    ]
    assert all(r.description for r in rules.rules.values())


TYPO_FIELD = "cooldown_days: 7\n    control_share: 0.1\n\n  inactive"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("hours: 24", "hours: -1"), "rules.cart_abandoned.when.hours: Input should be greater than 0"),
        ((TYPO_FIELD, TYPO_FIELD.replace("cooldown", "cooldwn")),
         "rules.cart_abandoned.cooldwn_days: Extra inputs are not permitted"),
        (("action: cart_reminder", "action: cart_remindr"),
         "rules.cart_abandoned.action: unknown action 'cart_remindr'"),
        (("type: cart_abandoned", "type: cart_abandonned"), "rules.cart_abandoned.when: Input tag 'cart_abandonned'"),
        (("to: [high, critical]", "to: [high, extreme]"), "rules.risk_jump.when.to.1: Input should be"),
        (("control_share: 0.1\n\n  cart", "control_share: 1.5\n\n  cart"), "rules.risk_jump.control_share"),
        (("max_contacts: 2", "max_contacts: 0"), "contact_cap.max_contacts"),
        (("hours: 24, within_days: 3", "hours: 96, within_days: 3"),
         "rules.cart_abandoned.when: Value error, within_days"),
    ],
)  # fmt: skip
def test_yaml_errors_name_the_rule_and_the_field(tmp_path, edit, message):
    text = DEFAULT_TRIGGERS.read_text()
    assert edit[0] in text
    path = tmp_path / "triggers.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ValueError) as e:
        load_triggers(path, policy=POLICY)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_triggers(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_triggers(tmp_path / "bad.yaml")


# --------------------------------------------------------------------------------------------- the demo business


@pytest.mark.slow
def test_every_default_rule_fires_on_the_demo_business(demo_data, trained, tmp_path):
    """Daily evaluations over the demo's last week: every shipped rule fires, the control share is near 10%."""
    data, _ = demo_data
    store = open_store(StoreSettings(path=tmp_path / "store"), tmp_path)
    rules = load_triggers(policy=POLICY)
    end = datetime(2025, 1, 1)
    totals: dict[str, int] = dict.fromkeys(rules.rules, 0)
    for day in range(7, 0, -1):
        run = evaluate_triggers(data, trained.model, rules, store, end - day * DAY, policy=POLICY)
        for name, counts in run.rules.items():
            totals[name] += counts.fired
    assert all(n > 0 for n in totals.values()), totals
    items = store.outbox_after(0, 1_000_000)
    assert items.num_rows == sum(totals.values()) == len(set(items["id"].to_pylist()))
    assert 0.03 < np.mean(items["control"].to_pylist()) < 0.2


@pytest.mark.slow
def test_cli_triggers_exports_this_runs_firings(demo_dir, registered, test_settings, tmp_path, monkeypatch):
    from churnguard.cli import app

    monkeypatch.setenv("CHURN_DATA_DIR", str(test_settings.data_dir))
    monkeypatch.setenv("CHURN_STORE__PATH", str(tmp_path / "store"))
    monkeypatch.setenv("CHURN_MLFLOW__TRACKING_URI", test_settings.mlflow.tracking_uri)
    out = tmp_path / "fired.parquet"
    args = ["triggers", "--data", str(demo_dir), "--as-of", "2024-12-31", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows > 0 and {"rule", "control"} <= set(table.column_names)
    assert "cart_abandoned" in result.output
    again = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "again.csv")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.csv").read_text().count("\n") == 1  # header only: nothing new fired
    bad = CliRunner().invoke(app, [*args, "--rules", str(Path(tmp_path / "missing.yaml"))])
    assert bad.exit_code == 2 and "trigger rules file not found" in bad.output
