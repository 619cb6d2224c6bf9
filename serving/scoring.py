"""Scoring: the one path from a dataset to scorecards, shared by batch scoring and the API.

``score_dataset`` = ``build_features`` -> the registered ``ChurnModel`` -> the retention policy. The API calls it
for the customers of one request, batch scoring calls it chunk by chunk, so the same customer data gives the same
numbers on both paths (``tests/test_api.py`` checks that).

Batch accounting: every customer in the input is either scored or rejected with a reason: no purchase before
as_of (a prospect), first seen on or after as_of, or every row of theirs failed validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import build_features, entities_at
from features.dataset import Dataset
from features.engines import Engine
from model.churn_model import ChurnModel
from model.scorecard import NOT_SCORABLE, SCORECARD_COLUMNS, TIERS
from serving.policy import POLICY_COLUMNS, Policy, outreach_candidates, select_outreach
from serving.settings import ScoringSettings

OUTREACH_COLUMNS = (
    "rank",
    "customer_id",
    "control",
    "recommended_action",
    "expected_value_saved",
    "action_cost",
    "churn_probability",
    "risk_tier",
    "lifecycle_stage",
    "value_band",
    "expected_value_12m",
    "value_at_risk",
    "median_days_to_churn",
    "top_reasons",
    "model_version",
)
REJECTED_AFTER = "no purchase, event or sign-up before as_of: not a customer yet at that date"
REJECTED_INVALID = "every row of this customer failed validation (see `churn validate --rejects`)"


@dataclass
class Scored:
    scores: pd.DataFrame  # SCORECARD_COLUMNS + the policy's value_band and action_cost
    rejected: pd.DataFrame  # customer_id, reason
    features: pd.DataFrame | None = None  # the scored customers' feature rows, aligned with ``scores``


def score_dataset(
    data: Dataset,
    entities: pa.Table,
    model: ChurnModel,
    policy: Policy,
    *,
    engine: Engine | None = None,
    reasons: bool = False,
) -> Scored:
    features = build_features(data, entities, event_types=model.event_types, engine=engine).to_pandas()
    prospect = features["frequency"].to_numpy() < 1
    rejected = pd.DataFrame({"customer_id": features.loc[prospect, "customer_id"], "reason": NOT_SCORABLE})
    scorable = features.loc[~prospect].reset_index(drop=True)
    cards = model.score(scorable, reasons=reasons)
    return Scored(with_actions(cards, policy), rejected.reset_index(drop=True), scorable)


def with_actions(cards: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """The model's scorecards plus the policy's fields: the full scorecard, in its one column order."""
    scores = pd.concat([cards, policy.assign(cards)], axis=1)
    return scores[[*SCORECARD_COLUMNS, *POLICY_COLUMNS]]


# ------------------------------------------------------------------------------------------------ batch


@dataclass(frozen=True)
class BatchSummary:
    customers_scored: int
    customers_rejected: int
    rejected_by_reason: dict[str, int]
    share_per_tier: dict[str, float]
    share_per_stage: dict[str, float]
    total_value_at_risk: float
    outreach_size: int
    outreach_control: int
    outreach_expected_value_saved: float
    actions: dict[str, int]


@dataclass
class BatchResult:
    scores: pd.DataFrame
    outreach: pd.DataFrame
    rejected: pd.DataFrame
    n_input_customers: int
    summary: BatchSummary
    warnings: list[str] = field(default_factory=list)


def score_batch(
    data: Dataset,
    model: ChurnModel,
    policy: Policy,
    settings: ScoringSettings,
    *,
    as_of: datetime,
    invalid_customer_ids: pa.Array | pa.ChunkedArray | None = None,
    engine: Engine | None = None,
    progress: Callable[[int, str | None], None] | None = None,
) -> BatchResult:
    """Score every customer known before ``as_of``, in chunks, then pick the outreach list and explain it.

    ``settings`` (the scoring section) sets the chunk size, who gets reasons, the list's capacity and budget,
    and the control share and seed.
    """
    say = progress or (lambda n=1, d=None: None)
    chunk_size, capacity, reasons = settings.chunk_size, settings.capacity, settings.reasons
    entities = entities_at(data, as_of)
    parts, rejected, candidates = [], [_rejected_outside(data, entities, invalid_customer_ids)], []
    for start in range(0, entities.num_rows, chunk_size):
        chunk = entities.slice(start, chunk_size)
        scored = score_dataset(data, chunk, model, policy, engine=engine, reasons=reasons == "all")
        parts.append(scored.scores)
        rejected.append(scored.rejected)
        if reasons == "outreach":  # keep the feature rows the outreach list can draw from, not every customer's
            best = outreach_candidates(scored.scores, capacity)["customer_id"]
            candidates.append(scored.features[scored.features["customer_id"].isin(best)])
        say(chunk.num_rows, None)
    scores = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*SCORECARD_COLUMNS, *POLICY_COLUMNS])
    )
    rejected_df = pd.concat(rejected, ignore_index=True)
    outreach = select_outreach(
        scores,
        capacity=capacity,
        budget=settings.budget,
        control_share=settings.control_share,
        seed=settings.seed,
    )
    if reasons == "outreach" and len(outreach):
        say(0, f"explaining {len(outreach):,} outreach customers")
        _explain(model, scores, outreach, pd.concat(candidates, ignore_index=True))
    n_input = _count_input_customers(data, invalid_customer_ids)
    if len(scores) + len(rejected_df) != n_input:
        raise AssertionError(
            f"customer accounting broken: {len(scores)} scored + {len(rejected_df)} rejected != "
            f"{n_input} input customers"
        )
    summary = _summary(scores, outreach, rejected_df)
    return BatchResult(scores, outreach, rejected_df, n_input, summary, model.season_warnings(as_of))


def _explain(model: ChurnModel, scores: pd.DataFrame, outreach: pd.DataFrame, candidates: pd.DataFrame) -> None:
    """top_reasons for the outreach customers only: TreeSHAP costs ~1 ms per customer, everybody would be minutes.

    ``candidates`` holds the feature rows kept while scoring (a superset of the outreach list), so nothing is
    computed twice.
    """
    features = candidates[candidates["customer_id"].isin(outreach["customer_id"])]
    explained = dict(zip(features["customer_id"], model.reasons(features), strict=True))
    outreach["top_reasons"] = [explained[c] for c in outreach["customer_id"]]
    position = pd.Series(np.arange(len(scores)), index=scores["customer_id"])
    reasons_col = scores["top_reasons"].copy()
    for cid, text in explained.items():
        reasons_col.iat[position[cid]] = text
    scores["top_reasons"] = reasons_col


def _rejected_outside(data: Dataset, entities: pa.Table, invalid_ids: pa.Array | None) -> pd.DataFrame:
    """Customers with clean rows only on/after as_of, and customers whose every row was rejected."""
    known = entities["customer_id"]
    clean = data.customer_ids()
    after = pc.filter(clean, pc.invert(pc.is_in(clean, known)))
    frames = [pd.DataFrame({"customer_id": after.to_pylist(), "reason": REJECTED_AFTER})]
    if invalid_ids is not None:
        invalid = pc.unique(pc.drop_null(invalid_ids.cast(pa.string())))
        only_invalid = pc.filter(invalid, pc.invert(pc.is_in(invalid, clean)))
        frames.append(pd.DataFrame({"customer_id": only_invalid.to_pylist(), "reason": REJECTED_INVALID}))
    return pd.concat(frames, ignore_index=True)


def _count_input_customers(data: Dataset, invalid_ids: pa.Array | None) -> int:
    ids = data.customer_ids()
    if invalid_ids is not None:
        extra = pc.drop_null(invalid_ids.cast(pa.string()))
        ids = pc.unique(pa.chunked_array([ids, *getattr(extra, "chunks", [extra])], type=pa.string()))
    return len(ids)


def _summary(scores: pd.DataFrame, outreach: pd.DataFrame, rejected: pd.DataFrame) -> BatchSummary:
    n = max(len(scores), 1)
    contacted = outreach.loc[~outreach["control"]] if len(outreach) else outreach
    return BatchSummary(
        customers_scored=len(scores),
        customers_rejected=len(rejected),
        rejected_by_reason={str(k): int(v) for k, v in rejected["reason"].value_counts().items()},
        share_per_tier={t: float((scores["risk_tier"] == t).sum() / n) for t in TIERS},
        share_per_stage={
            str(k): round(float(v), 4) for k, v in scores["lifecycle_stage"].value_counts(normalize=True).items()
        },
        total_value_at_risk=float(scores["value_at_risk"].sum()),
        outreach_size=len(outreach),
        outreach_control=int(outreach["control"].sum()) if len(outreach) else 0,
        outreach_expected_value_saved=float(contacted["expected_value_saved"].sum()) if len(outreach) else 0.0,
        actions={str(k): int(v) for k, v in outreach["recommended_action"].value_counts().items()}
        if len(outreach)
        else {},
    )


def write_batch(
    result: BatchResult, out: Path | None, outreach_out: Path | None = None, rejects_out: Path | None = None
) -> None:
    """Scores, outreach list and customer rejects, each written atomically (CSV or Parquet by extension).
    ``out=None``: the scores are written already (the Spark path writes them from the executors)."""
    from features.io import write_table

    if out is not None:
        write_table(_to_arrow(result.scores[list(SCORECARD_COLUMNS)], out), out)
    if outreach_out is not None:
        write_table(_to_arrow(result.outreach[list(OUTREACH_COLUMNS)], outreach_out), outreach_out)
    if rejects_out is not None:
        write_table(pa.Table.from_pandas(result.rejected, preserve_index=False), rejects_out)


def _to_arrow(df: pd.DataFrame, path: Path) -> pa.Table:
    """Lists (top_reasons) stay lists in Parquet and become ' | '-joined text in CSV."""
    if str(path).lower().endswith(".csv"):
        df = df.assign(top_reasons=[" | ".join(r) for r in df["top_reasons"]])
    else:
        df = df.assign(top_reasons=[list(r) for r in df["top_reasons"]])
    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
