"""Batch scoring: every customer accounted for, outreach ranking and control group, policy checks, atomic files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.build import as_entities
from model.scorecard import NOT_SCORABLE
from serving.policy import load_policy, select_outreach
from serving.scoring import REJECTED_AFTER, REJECTED_INVALID, score_batch, score_dataset, write_batch
from serving.settings import ScoringSettings

AS_OF = datetime(2024, 10, 1)


def _score_demo(demo_data, trained, chunk_size: int):
    data, rejects = demo_data
    return score_batch(
        data,
        trained.model,
        load_policy(),
        ScoringSettings(chunk_size=chunk_size, capacity=150, control_share=0.2, seed=3),
        as_of=AS_OF,
        invalid_customer_ids=rejects["customer_id"],
    )


@pytest.fixture(scope="module")
def batch(demo_data, trained):
    return _score_demo(demo_data, trained, chunk_size=700)


@pytest.mark.slow
def test_every_input_customer_is_scored_or_rejected_with_a_reason(batch, demo_data):
    data, rejects = demo_data
    all_ids = set(data.customer_ids().to_pylist()) | set(rejects["customer_id"].drop_null().to_pylist())
    scored, rejected = set(batch.scores["customer_id"]), set(batch.rejected["customer_id"])
    assert scored.isdisjoint(rejected)
    assert scored | rejected == all_ids
    assert batch.n_input_customers == len(all_ids)
    assert set(batch.rejected["reason"]) <= {NOT_SCORABLE, REJECTED_AFTER, REJECTED_INVALID}
    assert (batch.rejected["reason"] == REJECTED_AFTER).sum() > 0  # customers who arrive after as_of


@pytest.mark.slow
def test_chunking_does_not_change_scores(batch, demo_data, trained):
    one_chunk = _score_demo(demo_data, trained, chunk_size=100_000)
    a = batch.scores.set_index("customer_id").sort_index()
    b = one_chunk.scores.set_index("customer_id").sort_index()
    pd.testing.assert_series_equal(a["churn_probability"], b["churn_probability"])
    assert list(batch.outreach["customer_id"]) == list(one_chunk.outreach["customer_id"])
    assert batch.outreach["top_reasons"].map(list).tolist() == one_chunk.outreach["top_reasons"].map(list).tolist()


@pytest.mark.slow
def test_outreach_is_ranked_capped_and_has_an_exact_control_share(batch):
    out = batch.outreach
    assert len(out) == 150
    assert out["expected_value_saved"].is_monotonic_decreasing
    assert (out["expected_value_saved"] > 0).all() and (out["recommended_action"] != "no_action").all()
    assert out["control"].sum() == 30
    assert list(out["rank"]) == list(range(1, 151))
    assert out["top_reasons"].map(len).gt(0).all()  # reasons are computed for the outreach list
    others = batch.scores[~batch.scores["customer_id"].isin(out["customer_id"])]
    assert others["top_reasons"].map(len).eq(0).all()  # ... and only for it, by default
    eligible = batch.scores[
        (batch.scores["recommended_action"] != "no_action") & (batch.scores["expected_value_saved"] > 0)
    ]
    assert out["expected_value_saved"].min() >= eligible["expected_value_saved"].nlargest(150).min()


@pytest.mark.slow
def test_outreach_reasons_equal_explaining_those_customers_afresh(batch, demo_data, trained):
    """The reasons come from feature rows kept while scoring chunk by chunk; they must be what a fresh call gives."""
    data, _ = demo_data
    ids = batch.outreach["customer_id"].tolist()
    fresh = score_dataset(data, as_entities(ids, AS_OF), trained.model, load_policy(), reasons=True).scores
    expected = dict(zip(fresh["customer_id"], fresh["top_reasons"].map(list), strict=True))
    assert [list(r) for r in batch.outreach["top_reasons"]] == [expected[c] for c in ids]


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [700, 100_000])
def test_only_the_head_of_an_uncapped_list_is_explained(demo_data, trained, batch, chunk_size):
    """Without a capacity the list can hold half the customers; reasons go to its first ``reasons_limit`` (best
    first), the same ones whatever the chunking, and equal to those of a capped list's head."""
    data, rejects = demo_data
    settings = ScoringSettings(chunk_size=chunk_size, control_share=0.2, seed=3, reasons_limit=40)
    result = score_batch(
        data, trained.model, load_policy(), settings, as_of=AS_OF, invalid_customer_ids=rejects["customer_id"]
    )
    out = result.outreach
    assert len(out) > 150  # uncapped
    has = out["top_reasons"].map(len).gt(0)
    assert has.iloc[:40].all() and not has.iloc[40:].any()
    assert result.summary.outreach_explained == 40 and result.summary.outreach_size == len(out)
    head = batch.outreach.iloc[:40]  # the capped list (150) ranks the same customers first
    assert out["customer_id"].iloc[:40].tolist() == head["customer_id"].tolist()
    assert out["top_reasons"].iloc[:40].map(list).tolist() == head["top_reasons"].map(list).tolist()
    scored = result.scores.set_index("customer_id")["top_reasons"].map(len)
    assert scored.gt(0).sum() == 40


@pytest.mark.slow
def test_summary_counts(batch):
    s = batch.summary
    assert s.customers_scored == len(batch.scores)
    assert sum(s.share_per_tier.values()) == pytest.approx(1.0)
    assert s.total_value_at_risk == pytest.approx(batch.scores["value_at_risk"].sum())
    assert s.outreach_size == 150 and s.outreach_control == 30


@pytest.mark.slow
def test_outputs_are_written_as_csv_and_parquet(batch, tmp_path):
    write_batch(batch, tmp_path / "scores.parquet", tmp_path / "outreach.csv", tmp_path / "rejected.csv")
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.num_rows == len(batch.scores)
    assert scores.schema.field("top_reasons").type == pa.list_(pa.string())
    outreach = pd.read_csv(tmp_path / "outreach.csv")
    assert len(outreach) == 150 and outreach["top_reasons"].str.contains(" | ").any()
    assert len(pd.read_csv(tmp_path / "rejected.csv")) == len(batch.rejected)


@pytest.mark.slow
def test_a_crash_while_writing_keeps_the_previous_file(batch, tmp_path, monkeypatch):
    target = tmp_path / "scores.parquet"
    write_batch(batch, target)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        Path(args[1]).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_batch(batch, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]


def _scores(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "expected_value_saved": [float(n - i) for i in range(n)],
            "recommended_action": ["winback_discount"] * n,
            "action_cost": [4.0] * n,
        }
    )


def test_budget_caps_the_list_and_control_costs_nothing():
    out = select_outreach(_scores(100), budget=40.0, control_share=0.5, seed=1)
    treated = out[~out["control"]]
    assert treated["action_cost"].sum() <= 40.0
    assert len(treated) == 10


def test_control_share_is_exact_and_seeded():
    a = select_outreach(_scores(1000), capacity=500, control_share=0.1, seed=5)
    b = select_outreach(_scores(1000), capacity=500, control_share=0.1, seed=5)
    assert a["control"].sum() == 50
    assert list(a["control"]) == list(b["control"])


def test_default_policy_maps_segments_to_actions():
    policy = load_policy()
    cards = pd.DataFrame(
        {
            "lifecycle_stage": ["lapsed", "new", "at_risk", "loyal", "active", "at_risk"],
            "risk_tier": ["critical", "high", "critical", "medium", "low", "high"],
            "expected_value_12m": [1000.0, 50.0, 900.0, 800.0, 900.0, 50.0],
            "value_at_risk": [900.0, 40.0, 800.0, 300.0, 100.0, 40.0],
        }
    )
    actions = policy.assign(cards)["recommended_action"].tolist()
    assert actions == [
        "reactivation_campaign",
        "onboarding_nudge",
        "personal_call",
        "vip_offer",
        "no_action",
        "winback_discount",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "value_bands: {high: 5, medium: 1}\nactions: {a: {cost: 1, save_rate: 0.1}}\nrules: [{action: b}]",
            "unknown action 'b'",
        ),
        (
            "value_bands: {high: 5, medium: 1}\nactions: {a: {cost: 1, save_rate: 0.1}}\n"
            "rules: [{tier: [high], action: a}]",
            "last rule must match everybody",
        ),
        (
            "value_bands: {high: 5, medium: 1}\nactions: {a: {cost: 1, save_rate: 1.5}}\nrules: [{action: a}]",
            "actions.a.save_rate",
        ),
        (
            "value_bands: {high: 5, medium: 1}\nactions: {a: {cost: 1, save_rate: 0.1}}\n"
            "rules: [{tier: [urgent], action: a}, {action: a}]",
            "rules.0.tier.0",
        ),
        (
            "value_bands: {high: 1, medium: 5}\nactions: {a: {cost: 1, save_rate: 0.1}}\nrules: [{action: a}]",
            "medium must be below high",
        ),
        ("rules: [", "not valid YAML"),
    ],
)
def test_policy_file_errors_are_clear(tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_policy(path)
