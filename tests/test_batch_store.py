"""``churn score`` from the store, streamed a chunk of customers at a time (``score_store``), writes the very files
that scoring the whole store at once writes (``score_batch`` on ``store.dataset()`` + ``write_batch``): the
scorecards, the outreach list with its global ranking and control draw, the customers not scored, and the summary,
on both store backends, with rows the API appended (hot rows) on top of an ingested batch."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.policy import load_policy
from serving.scoring import REJECTED_AFTER, REJECTED_INVALID, score_batch, score_store, write_batch
from serving.settings import ScoringSettings
from tests.postgres import new_database

pytestmark = pytest.mark.slow

AS_OF = datetime(2024, 10, 1)
SETTINGS = {
    # chunks of 400 customers: ~9 chunks for the demo's 3,000; the outreach capacity spans several chunks
    "capped": ScoringSettings(chunk_size=400, capacity=150, control_share=0.2, seed=3),
    # no capacity: every eligible customer is a candidate; a budget cuts the list; no reasons
    "budget": ScoringSettings(chunk_size=400, budget=2_000.0, control_share=0.1, seed=5, reasons="none"),
    "all_reasons": ScoringSettings(chunk_size=1000, capacity=40, reasons="all"),
}


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def store(request, demo_dir, tmp_path_factory):
    from features.store import StoreSettings, ingest, open_store

    if request.param == "embedded":
        settings = StoreSettings(path=tmp_path_factory.mktemp("batch-store") / "store")
    else:
        settings = StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "batch"))
    s = open_store(settings, tmp_path_factory.mktemp("batch-store-data"))
    ingest(s, demo_dir, now=datetime(2026, 1, 1))
    known = s.customer_ids()[0].as_py()
    s.append(  # API rows: a purchase of a known customer, a customer seen only through the API, one after as_of
        transactions=[
            {"customer_id": known, "timestamp": datetime(2024, 9, 20, 12), "amount": 80.0, "order_id": "api-1"},
            {"customer_id": "zz-api-new", "timestamp": datetime(2024, 9, 1), "amount": 25.0},
        ],
        events=[{"customer_id": "zz-api-late", "timestamp": datetime(2024, 11, 1), "event_type": "session"}],
    )
    yield s
    s.close()


@pytest.mark.parametrize("case", SETTINGS)
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_streamed_scoring_writes_what_scoring_the_whole_store_writes(store, trained, tmp_path, case, suffix):
    settings, policy = SETTINGS[case], load_policy()
    # the store's rejected rows, plus a customer whose every row was rejected (the demo has none such)
    invalid = pa.chunked_array([*store.rejects()["customer_id"].chunks, pa.array(["zz-only-bad"])])
    whole_dir, chunked_dir = tmp_path / "whole", tmp_path / "chunked"
    whole = score_batch(store.dataset(), trained.model, policy, settings, as_of=AS_OF, invalid_customer_ids=invalid)
    write_batch(whole, whole_dir / f"scores{suffix}", whole_dir / "outreach.csv", whole_dir / "rejected.csv")
    seen: list[int] = []
    chunked = score_store(
        store,
        trained.model,
        policy,
        settings,
        chunked_dir / f"scores{suffix}",
        as_of=AS_OF,
        invalid_customer_ids=invalid,
        progress=lambda n=1, d=None: seen.append(n),
    )
    write_batch(chunked, None, chunked_dir / "outreach.csv", chunked_dir / "rejected.csv")

    # more than one chunk, and every customer of the store went through one
    assert sum(n > 0 for n in seen) == -(-len(store.customer_ids()) // settings.chunk_size) > 1
    assert sum(seen) == len(store.customer_ids())
    assert sorted(p.name for p in chunked_dir.iterdir()) == ["outreach.csv", "rejected.csv", f"scores{suffix}"]
    for name in ("outreach.csv", "rejected.csv"):
        assert (chunked_dir / name).read_bytes() == (whole_dir / name).read_bytes(), name
    if suffix == ".csv":
        assert (chunked_dir / "scores.csv").read_bytes() == (whole_dir / "scores.csv").read_bytes()
    else:
        written, expected = pq.read_table(chunked_dir / "scores.parquet"), pq.read_table(whole_dir / "scores.parquet")
        assert written.schema == expected.schema
        assert written.equals(expected)
    assert chunked.summary == whole.summary
    assert chunked.n_input_customers == whole.n_input_customers == len(whole.scores) + len(whole.rejected)
    # the outreach customers' scorecards come back (the full set is in the file)
    expected = whole.scores[whole.scores["customer_id"].isin(whole.outreach["customer_id"])]
    pd.testing.assert_frame_equal(
        chunked.scores.sort_values("customer_id").reset_index(drop=True),
        expected.sort_values("customer_id").reset_index(drop=True),
    )
    reasons = dict(whole.rejected.groupby("reason").size())
    assert reasons[REJECTED_AFTER] >= 1 and reasons[REJECTED_INVALID] == 1
    assert "zz-api-late" in set(whole.rejected["customer_id"]) and "zz-api-new" in set(whole.scores["customer_id"])
    if case == "capped":
        assert len(chunked.outreach) == 150 and chunked.outreach["control"].sum() == 30
        assert chunked.outreach["top_reasons"].map(len).gt(0).all()


def test_an_empty_chunk_run_is_accounted_for(tmp_path, trained):
    """A store with one customer known only after as_of: nothing to score, one customer listed with the reason."""
    from features.store import StoreSettings, open_store

    s = open_store(StoreSettings(path=tmp_path / "store"), tmp_path)
    try:
        s.append(events=[{"customer_id": "late", "timestamp": datetime(2025, 1, 1), "event_type": "session"}])
        result = score_store(s, trained.model, load_policy(), ScoringSettings(), tmp_path / "s.csv", as_of=AS_OF)
    finally:
        s.close()
    assert result.summary.customers_scored == 0 and result.rejected.to_dict("records") == [
        {"customer_id": "late", "reason": REJECTED_AFTER}
    ]
    assert (tmp_path / "s.csv").read_text().splitlines()[0].startswith('"customer_id","as_of"')
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1
