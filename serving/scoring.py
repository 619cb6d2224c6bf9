"""Scoring: the one path from a dataset to scorecards, shared by batch scoring and the API.

``score_dataset`` = ``build_features`` -> the registered ``ChurnModel`` -> the retention policy. The API calls it
for the customers of one request, batch scoring calls it chunk by chunk, so the same customer data gives the same
numbers on both paths (``tests/test_api.py`` checks that).

Batch accounting: every customer in the input is either scored or rejected with a reason: no purchase before
as_of (a prospect), first seen on or after as_of, or every row of theirs failed validation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import build_features, entities_at
from features.dataset import Dataset
from features.engines import Engine
from model.churn_model import ChurnModel
from model.columns import from_arrow, take
from model.scorecard import NOT_SCORABLE, SCORECARD, SCORECARD_COLUMNS, TIERS, is_prospect
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
# the scorecard file's columns (Parquet; CSV has top_reasons as ' | '-joined text)
_ARROW_TYPES = {str: pa.string(), float: pa.float64(), datetime: pa.timestamp("us"), list[str]: pa.list_(pa.string())}
SCORECARD_SCHEMA = pa.schema([pa.field(f.name, _ARROW_TYPES[f.type]) for f in SCORECARD])
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
    prospect = is_prospect(features)
    rejected = pd.DataFrame({"customer_id": features.loc[prospect, "customer_id"], "reason": NOT_SCORABLE})
    scorable = features.loc[~prospect].reset_index(drop=True)
    cards = model.score(scorable, reasons=reasons)
    return Scored(with_actions(cards, policy), rejected.reset_index(drop=True), scorable)


@dataclass
class ScoredRows:
    """``Scored`` as plain Python rows, for an API answer: scorecards (``SCORECARD_COLUMNS``, in that order) and
    the customers not scored (``customer_id``, ``reason``)."""

    scores: list[dict[str, Any]]
    rejected: list[dict[str, Any]]


def score_rows(
    data: Dataset,
    entities: pa.Table,
    model: ChurnModel,
    policy: Policy,
    *,
    engine: Engine | None = None,
    reasons: bool = False,
) -> ScoredRows:
    """``score_dataset`` for the few customers of one request, without pandas (whose fixed cost per operation
    dominated a one-customer answer): the same features, prospect rule, model and policy, on plain columns
    (``model/columns.py``), so the same scorecards (``tests/test_columns.py`` compares the two on many customers)."""
    features = from_arrow(build_features(data, entities, event_types=model.event_types, engine=engine))
    prospect = is_prospect(features)
    rejected = [{"customer_id": c, "reason": NOT_SCORABLE} for c in features["customer_id"][prospect]]
    scorable = take(features, ~prospect)
    if not prospect.all():
        cards = model.score_columns(scorable, reasons=reasons)
        cards.update(policy.assign_columns(cards))
        scores = records(cards, SCORECARD_COLUMNS)
    else:
        scores = []
    return ScoredRows(scores, rejected)


def records(columns: dict[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Columns (name -> array) as rows of Python values (numpy numbers as floats and ints, time stamps as
    ``datetime``), with the given names in that order."""
    values = []
    for name in names:
        v = columns[name]
        if isinstance(v, np.ndarray):
            v = v.astype("datetime64[us]").tolist() if v.dtype.kind == "M" else v.tolist()
        values.append(v)
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


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
    outreach_explained: int = 0  # the head of the list with top_reasons (scoring.reasons_limit)


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
    and the control share and seed. Every scorecard is kept in ``scores``; ``score_store`` is the same job over the
    customer store in bounded memory.
    """
    say = progress or (lambda n=1, d=None: None)
    entities = entities_at(data, as_of)
    run = _BatchRun(model, policy, settings, engine, keep_scores=True)
    run.rejected.append(_not_known_yet(data, entities))
    run.rejected.append(_only_invalid(data.customer_ids(), invalid_customer_ids))
    for start in range(0, entities.num_rows, settings.chunk_size):
        chunk = entities.slice(start, settings.chunk_size)
        run.score(data, chunk)
        say(chunk.num_rows, None)
    return run.finish(_count_input(data.customer_ids(), invalid_customer_ids), as_of, say)


def score_store(
    store: Any,
    model: ChurnModel,
    policy: Policy,
    settings: ScoringSettings,
    out: Path,
    *,
    as_of: datetime,
    invalid_customer_ids: pa.Array | pa.ChunkedArray | None = None,
    engine: Engine | None = None,
    progress: Callable[[int, str | None], None] | None = None,
) -> BatchResult:
    """``score_batch`` over the customer store, streamed: its rows are read ``settings.chunk_size`` customers at a
    time (``store.chunks``: customer-id ranges of one snapshot), and a customer's features depend on their own rows
    only, so each chunk is scored from its own rows. The scorecards go to a spill file beside ``out`` as they are
    made, and are written to ``out`` (atomically) once the outreach list is known, with its customers'
    ``top_reasons``. Memory holds one chunk, the outreach candidates, and three summary columns per customer; the
    files written equal ``score_batch`` + ``write_batch`` on ``store.dataset()`` (``tests/test_batch_store.py``).

    Returns the outreach list, the customers not scored and the summary; ``scores`` holds the outreach customers'
    scorecards only (the full set is in ``out``), as on Spark.
    """
    say = progress or (lambda n=1, d=None: None)
    out = Path(out)
    spill = _Spill(out)
    try:
        run = _BatchRun(model, policy, settings, engine, keep_scores=False, spill=spill)
        for chunk in store.chunks(settings.chunk_size):
            entities = entities_at(chunk, as_of)
            run.rejected.append(_not_known_yet(chunk, entities))
            run.score(chunk, entities)
            say(len(chunk.customer_ids()), None)
        clean = store.customer_ids()
        run.rejected.append(_only_invalid(clean, invalid_customer_ids))
        result = run.finish(_count_input(clean, invalid_customer_ids), as_of, say)
        say(0, f"writing {result.summary.customers_scored:,} scorecards")
        explained = result.outreach if settings.reasons == "outreach" else result.outreach.iloc[:0]
        spill.write(out, explained=dict(zip(explained["customer_id"], explained["top_reasons"], strict=True)))
    finally:
        spill.close()
    return result


class _BatchRun:
    """What one batch keeps while its chunks are scored: every scorecard (``keep_scores``) or, when streaming,
    the spill file, the summary's columns and the outreach candidates with their feature rows."""

    def __init__(
        self,
        model: ChurnModel,
        policy: Policy,
        settings: ScoringSettings,
        engine: Engine | None,
        *,
        keep_scores: bool,
        spill: _Spill | None = None,
    ) -> None:
        self.model, self.policy, self.settings, self.engine = model, policy, settings, engine
        self.keep_scores, self.spill = keep_scores, spill
        self.parts: list[pd.DataFrame] = []  # whole scorecards (keep_scores) or the summary's columns
        self.rejected: list[pd.DataFrame] = []
        self.candidates: pd.DataFrame | None = None
        self.candidate_features: pd.DataFrame | None = None

    def score(self, data: Dataset, entities: pa.Table) -> None:
        if entities.num_rows == 0:
            return
        settings = self.settings
        scored = score_dataset(
            data, entities, self.model, self.policy, engine=self.engine, reasons=settings.reasons == "all"
        )
        self.rejected.append(scored.rejected)
        scores = scored.scores
        if self.spill is not None:
            self.spill.add(scores)
        self.parts.append(scores if self.keep_scores else scores[list(_SUMMARY_COLUMNS)])
        # the best ``capacity`` of the batch are among the best ``capacity`` of its chunks (a total order)
        best = outreach_candidates(scores, settings.capacity)
        merged = best if self.candidates is None else pd.concat([self.candidates, best], ignore_index=True)
        capped = settings.capacity is not None  # then only the best ``capacity`` so far can still make the list
        self.candidates = outreach_candidates(merged, settings.capacity) if capped else merged
        if settings.reasons == "outreach":  # the feature rows the explained head of the list can draw from
            n = _explained_size(settings)
            wanted = outreach_candidates(scores, n)["customer_id"]
            rows = scored.features[scored.features["customer_id"].isin(wanted)]
            kept = rows if self.candidate_features is None else pd.concat([self.candidate_features, rows])
            if n is not None:  # only the best n so far can still be explained
                kept = kept[kept["customer_id"].isin(outreach_candidates(self.candidates, n)["customer_id"])]
            self.candidate_features = kept

    def finish(self, n_input: int, as_of: datetime, say: Callable[[int, str | None], None]) -> BatchResult:
        settings = self.settings
        empty = pd.DataFrame(columns=[*SCORECARD_COLUMNS, *POLICY_COLUMNS])
        scores = pd.concat(self.parts, ignore_index=True) if self.parts else empty
        candidates = self.candidates if self.candidates is not None else empty
        rejected = pd.concat(self.rejected, ignore_index=True)
        rejected = rejected.sort_values("customer_id", kind="stable", ignore_index=True)
        outreach = select_outreach(
            candidates,
            capacity=settings.capacity,
            budget=settings.budget,
            control_share=settings.control_share,
            seed=settings.seed,
        )
        if settings.reasons == "outreach" and len(outreach):
            n = min(len(outreach), _explained_size(settings) or len(outreach))
            say(0, f"explaining {n:,} of {len(outreach):,} outreach customers")
            _explain(self.model, scores if self.keep_scores else None, outreach, self.candidate_features, n)
        if len(scores) + len(rejected) != n_input:
            raise AssertionError(
                f"customer accounting broken: {len(scores)} scored + {len(rejected)} rejected != "
                f"{n_input} input customers"
            )
        summary = _summary(scores, outreach, rejected)
        kept = scores if self.keep_scores else outreach[[*SCORECARD_COLUMNS, *POLICY_COLUMNS]].copy()
        return BatchResult(kept, outreach, rejected, n_input, summary, self.model.season_warnings(as_of))


_SUMMARY_COLUMNS = ("risk_tier", "lifecycle_stage", "value_at_risk")


class _Spill:
    """Scorecards of a streamed batch, chunk by chunk, in an Arrow IPC file beside the output (removed at the end)."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".spill.arrow", dir=out.parent)
        os.close(fd)
        self.path = Path(name)
        self._writer: pa.ipc.RecordBatchFileWriter | None = pa.ipc.new_file(str(self.path), SCORECARD_SCHEMA)

    def add(self, scores: pd.DataFrame) -> None:
        assert self._writer is not None
        self._writer.write_table(_scorecard_table(scores))

    def write(self, out: Path, *, explained: dict[str, list[str]]) -> None:
        """The spilled scorecards to ``out`` (CSV or Parquet, atomically), the outreach customers' reasons put in."""
        from features.io import write_batches

        assert self._writer is not None
        self._writer.close()
        self._writer = None
        reader = pa.ipc.open_file(pa.memory_map(str(self.path)))
        wanted = pa.array(list(explained), pa.string())

        def batches() -> Iterator[pa.Table]:
            for i in range(reader.num_record_batches):
                batch = pa.Table.from_batches([reader.get_batch(i)])
                hits = pc.is_in(batch["customer_id"], value_set=wanted)
                if len(wanted) and pc.any(hits).as_py():
                    reasons = batch["top_reasons"].to_pylist()
                    for j in np.flatnonzero(hits.to_numpy(zero_copy_only=False)):
                        reasons[j] = list(explained[batch["customer_id"][j].as_py()])
                    column = pa.array(reasons, pa.list_(pa.string()))
                    batch = batch.set_column(batch.schema.get_field_index("top_reasons"), "top_reasons", column)
                yield _for_file(batch, out)

        write_batches(_for_file(SCORECARD_SCHEMA.empty_table(), out).schema, batches(), out)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.path.unlink(missing_ok=True)


def _explained_size(settings: ScoringSettings) -> int | None:
    """How many of the outreach list's head get reasons: the list is a prefix of the ranked candidates (capacity
    and budget both cut its tail), so its first n are the best n candidates."""
    limits = [n for n in (settings.capacity, settings.reasons_limit) if n is not None]
    return min(limits) if limits else None


def _explain(
    model: ChurnModel, scores: pd.DataFrame | None, outreach: pd.DataFrame, candidates: pd.DataFrame, n: int
) -> None:
    """top_reasons for the first ``n`` outreach customers only: TreeSHAP costs 1-5 ms per customer, everybody
    would take longer than scoring them.

    ``candidates`` holds the feature rows kept while scoring (a superset of the list's head), so nothing is
    computed twice. ``scores`` (when all are kept) gets them too.
    """
    features = candidates[candidates["customer_id"].isin(outreach["customer_id"].iloc[:n])]
    explained = dict(zip(features["customer_id"], model.reasons(features), strict=True))
    outreach["top_reasons"] = [explained.get(c, []) for c in outreach["customer_id"]]
    if scores is None:
        return
    position = pd.Series(np.arange(len(scores)), index=scores["customer_id"])
    reasons_col = scores["top_reasons"].copy()
    for cid, text in explained.items():
        reasons_col.iat[position[cid]] = text
    scores["top_reasons"] = reasons_col


def _rejected_outside(data: Dataset, entities: pa.Table, invalid_ids: pa.Array | None) -> pd.DataFrame:
    """Customers with clean rows only on/after as_of, and customers whose every row was rejected."""
    return pd.concat(
        [_not_known_yet(data, entities), _only_invalid(data.customer_ids(), invalid_ids)], ignore_index=True
    )


def _not_known_yet(data: Dataset, entities: pa.Table) -> pd.DataFrame:
    """Customers of ``data`` with clean rows only on/after as_of (not among ``entities``)."""
    clean = data.customer_ids()
    after = pc.filter(clean, pc.invert(pc.is_in(clean, entities["customer_id"])))
    return pd.DataFrame({"customer_id": after.to_pylist(), "reason": REJECTED_AFTER})


def _only_invalid(clean: pa.Array, invalid_ids: pa.Array | pa.ChunkedArray | None) -> pd.DataFrame:
    """Customers whose every row was rejected: in the rejects, not among the ``clean`` ids."""
    if invalid_ids is None:
        return pd.DataFrame({"customer_id": pd.Series([], dtype=object), "reason": REJECTED_INVALID})
    invalid = pc.unique(pc.drop_null(invalid_ids.cast(pa.string())))
    only_invalid = pc.filter(invalid, pc.invert(pc.is_in(invalid, clean)))
    return pd.DataFrame({"customer_id": only_invalid.to_pylist(), "reason": REJECTED_INVALID})


def _count_input_customers(data: Dataset, invalid_ids: pa.Array | None) -> int:
    return _count_input(data.customer_ids(), invalid_ids)


def _count_input(clean: pa.Array, invalid_ids: pa.Array | pa.ChunkedArray | None) -> int:
    """Distinct customers in the input: the clean ids and those of rejected rows."""
    if invalid_ids is None:
        return len(clean)
    extra = pc.drop_null(invalid_ids.cast(pa.string()))
    chunks = [*getattr(clean, "chunks", [clean]), *getattr(extra, "chunks", [extra])]
    return len(pc.unique(pa.chunked_array(chunks, type=pa.string())))


def explained_count(outreach: pd.DataFrame) -> int:
    """Outreach customers whose ``top_reasons`` were computed."""
    return int(sum(len(r) > 0 for r in outreach["top_reasons"])) if len(outreach) else 0


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
        outreach_explained=explained_count(outreach),
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
    ``out=None``: the scores are written already (``score_store`` streams them, the Spark path writes them from
    the executors)."""
    from features.io import write_table

    if out is not None:
        write_table(_for_file(_scorecard_table(result.scores), out), out)
    if outreach_out is not None:
        write_table(_to_arrow(result.outreach[list(OUTREACH_COLUMNS)], outreach_out), outreach_out)
    if rejects_out is not None:
        write_table(pa.Table.from_pandas(result.rejected, preserve_index=False), rejects_out)


def _scorecard_table(scores: pd.DataFrame) -> pa.Table:
    """Scorecards as Arrow in ``SCORECARD_SCHEMA`` (whatever a chunk's values: an all-empty column keeps its type)."""
    df = scores[list(SCORECARD_COLUMNS)].reset_index(drop=True)
    df = df.assign(top_reasons=[list(r) for r in df["top_reasons"]])
    return pa.Table.from_pandas(df, schema=SCORECARD_SCHEMA, preserve_index=False).replace_schema_metadata(None)


def _for_file(scorecards: pa.Table, path: Path) -> pa.Table:
    """Lists (top_reasons) stay lists in Parquet and become ' | '-joined text in CSV."""
    if not str(path).lower().endswith(".csv"):
        return scorecards
    i = scorecards.schema.get_field_index("top_reasons")
    return scorecards.set_column(i, "top_reasons", pc.binary_join(scorecards["top_reasons"], " | "))


def _to_arrow(df: pd.DataFrame, path: Path) -> pa.Table:
    """Lists (top_reasons) stay lists in Parquet and become ' | '-joined text in CSV."""
    if str(path).lower().endswith(".csv"):
        df = df.assign(top_reasons=[" | ".join(r) for r in df["top_reasons"]])
    else:
        df = df.assign(top_reasons=[list(r) for r in df["top_reasons"]])
    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
