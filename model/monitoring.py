"""Model health at a date: has the population drifted from training, and did the model predict the last window?

``model_health(data, model, as_of=..., settings=...)`` measures, for a registered ``ChurnModel``:

* **Drift.** The features the classifier reads and its churn score, on today's population, binned with the bins
  the model recorded at training (``model/drift.py``), and their PSI against the training shares. The population
  is the one the model learned from: customers with an order before ``as_of`` who had not cancelled before it
  (the labelled population of ``features/labels.py``). Season features are left out: they are a function of the
  date alone (every customer has the same value at one as_of), so they would always "drift". Features that grow
  with the length of the history (``settings.expected_drift``: days since the first order, activity or event) are
  measured and shown but do not raise the status: while the history is shorter than customers' lifetimes they
  shift by construction between the training snapshot and today (on the demo data, unchanged, 90 days after the
  reference: PSI 0.45 for ``first_purchase_days``, 0.79 for ``days_since_first_event``).
* **Predicted vs observed** for the last window whose outcome is known: the model scores the customers at
  ``end - H`` (``end`` = as_of, or the end of the data when as_of is later) and their labels say who churned in
  ``[end - H, end)``. When the model learned from that window's labels the comparison is in-sample and says so.

Both use a seeded random sample of at most ``settings.max_customers`` (50,000) customers per date: PSI and rates on
it are as good as on everyone (the PSI of two samples of one population over ~11 bins averages about
10 x (1/n + 1/m): under 0.001 at 50,000 against a reference of 20,000 rows or more, a hundredth of the 0.1 warn line;
a decile of 5,000 customers pins its observed churn rate to +-1.4 points), at a fraction of the feature query's
cost. A model trained before references were recorded has no drift part (``ModelHealth.no_reference`` says why);
its outcome check still runs.

A caller that needs the churn probability of given customers at as_of (the lifecycle report's ``at_risk`` stage)
passes them as ``also_score``: they join today's feature query and scoring pass (one pass, not two), their
probabilities come back in ``ModelHealth.scores``, and the drift numbers still use the sample alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import build_features, entities_at
from features.dataset import Dataset
from features.labels import build_labels
from features.registry import feature_registry
from model.churn_model import ChurnModel
from model.drift import EPSILON, Distribution, DriftReference, Status, status
from model.settings import MonitorSettings

NO_REFERENCE = (
    "this model was registered before churnguard recorded training distributions, so there is nothing to compare "
    "today's data with (no PSI): retrain it (`churn train`) to get them"
)
STATUS_ORDER = {"ok": 0, "warn": 1, "alert": 2}


@dataclass(frozen=True)
class ColumnDrift:
    """One feature's (or the score's) PSI, its status and the shares per bin on both sides."""

    name: str
    psi: float
    status: Status
    bins: list[str]
    training: list[float]
    current: list[float]
    expected: bool = False  # grows with the history's length (settings.expected_drift): shown, never judged


@dataclass(frozen=True)
class OutcomeCheck:
    """Predicted vs observed churn on the last window whose outcome is known."""

    window_start: datetime
    window_end: datetime
    customers: int
    predicted: float  # mean churn probability at window_start
    observed: float  # share churned in [window_start, window_end)
    roc_auc: float | None  # None when only one class was observed
    brier: float
    in_sample: bool  # the model learned from (part of) this window's labels
    deciles: list[dict[str, float]] = field(default_factory=list)  # per score decile: n, predicted, observed


@dataclass(frozen=True)
class ModelHealth:
    model_version: str
    as_of: datetime
    horizon_days: int
    psi_warn: float
    psi_alert: float
    customers: int  # today's population rows the drift part used
    sampled_from: int  # customers known before as_of (before sampling and the population filter)
    reference_as_of: str | None
    reference_rows: int | None
    score: ColumnDrift | None
    features: list[ColumnDrift]  # highest PSI first
    mean_score: float  # today's mean churn probability
    training_mean_score: float | None
    training_churn_rate: float | None
    outcome: OutcomeCheck | None
    notes: list[str] = field(default_factory=list)
    no_reference: str | None = None
    # churn probability at as_of of the customers asked for with ``also_score`` (customer_id, churn_probability);
    # not a health metric: left out of ``metrics`` and ``to_dict``
    scores: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def columns(self) -> list[ColumnDrift]:
        """The score first, then every feature."""
        return ([self.score] if self.score else []) + self.features

    @property
    def judged(self) -> list[ColumnDrift]:
        """The columns that decide the status: all but the expected-drift features."""
        return [c for c in self.columns if not c.expected and np.isfinite(c.psi)]

    @property
    def worst(self) -> ColumnDrift | None:
        return max(self.judged, key=lambda c: c.psi) if self.judged else None

    @property
    def status(self) -> Status:
        worst = self.worst
        return worst.status if worst else "ok"

    def count(self, which: Status) -> int:
        return sum(c.status == which for c in self.judged)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: psi_<feature>, psi_score, psi_max, the means and the outcome check."""
        out: dict[str, float] = {"customers": float(self.customers), "mean_score": self.mean_score}
        if self.score:
            out["psi_score"] = self.score.psi
        out.update({f"psi_{c.name}": c.psi for c in self.features})
        if self.worst:
            out["psi_max"] = self.worst.psi
            out["n_warn"] = float(self.count("warn"))
            out["n_alert"] = float(self.count("alert"))
        if self.training_mean_score is not None:
            out["training_mean_score"] = self.training_mean_score
        if self.outcome:
            o = self.outcome
            out.update(
                outcome_customers=float(o.customers),
                outcome_predicted=o.predicted,
                outcome_observed=o.observed,
                outcome_brier=o.brier,
            )
            if o.roc_auc is not None:
                out["outcome_roc_auc"] = o.roc_auc
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    def to_dict(self) -> dict:
        d = asdict(replace(self, scores=None))
        del d["scores"]
        d["status"] = self.status
        d["worst"] = self.worst.name if self.worst else None
        return d


def model_health(
    data: Dataset,
    model: ChurnModel,
    *,
    as_of: datetime,
    settings: MonitorSettings,
    also_score: pa.Array | None = None,
) -> ModelHealth:
    """Drift of today's population against the model's training reference, and the last known window's outcome.

    ``also_score``: customer ids (customers with an order before as_of who had not cancelled) whose churn
    probability at as_of the caller needs; scored in the same pass as the sample, returned in ``scores``."""
    reference: DriftReference | None = getattr(model, "drift_reference", None)
    notes: list[str] = []
    known = entities_at(data, as_of)
    sample = _sample(known, settings)
    entities = sample
    if also_score is not None:
        extra = pc.filter(also_score, pc.invert(pc.is_in(also_score, value_set=sample["customer_id"])))
        timestamps = pa.array([as_of] * len(extra), sample.schema.field("as_of").type)
        entities = pa.concat_tables([sample, pa.table({"customer_id": extra, "as_of": timestamps}, sample.schema)])
    rows = _population(data, model, entities, notes, "today")
    p_rows = model.classifier.predict_proba(rows) if len(rows) else np.array([])
    in_sample = rows["customer_id"].isin(sample["customer_id"].to_pandas()).to_numpy()
    now, p_now = rows.loc[in_sample].reset_index(drop=True), p_rows[in_sample]
    scores = None
    if also_score is not None:
        wanted = rows["customer_id"].isin(also_score.to_pandas()).to_numpy()
        scores = pd.DataFrame(
            {"customer_id": rows["customer_id"].to_numpy()[wanted], "churn_probability": p_rows[wanted]}
        )
    features, score = [], None
    if reference is not None:
        for name in monitored_features(model, reference):
            drift = _drift(reference.features[name], now[name], settings)
            features.append(replace(drift, expected=name in settings.expected_drift))
        features.sort(key=lambda c: -c.psi)
        score = _drift(reference.score, p_now, settings)
    return ModelHealth(
        model_version=model.model_version,
        as_of=as_of,
        horizon_days=model.horizon_days,
        psi_warn=settings.psi_warn,
        psi_alert=settings.psi_alert,
        customers=len(now),
        sampled_from=known.num_rows,
        reference_as_of=reference.as_of if reference else None,
        reference_rows=reference.n_rows if reference else None,
        score=score,
        features=features,
        mean_score=float(p_now.mean()) if len(p_now) else float("nan"),
        training_mean_score=reference.mean_score if reference else None,
        training_churn_rate=reference.churn_rate if reference else None,
        outcome=outcome_check(data, model, as_of=as_of, settings=settings, notes=notes),
        notes=notes,
        no_reference=None if reference is not None else NO_REFERENCE,
        scores=scores,
    )


def monitored_features(model: ChurnModel, reference: DriftReference) -> list[str]:
    """The classifier's features that the reference binned, without the date-only season features."""
    season = {s.name for s in feature_registry(model.event_types) if s.group == "season"}
    return [f for f in model.classifier.features if f in reference.features and f not in season]


def outcome_check(
    data: Dataset, model: ChurnModel, *, as_of: datetime, settings: MonitorSettings, notes: list[str] | None = None
) -> OutcomeCheck | None:
    """Score the customers at ``end - H`` and compare with who churned by ``end`` (see the module docstring)."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    notes = notes if notes is not None else []
    end = min(as_of, data.data_end)
    start = end - timedelta(days=model.horizon_days)
    if start <= data.data_start:
        notes.append(
            f"no window with a known outcome: {model.horizon_days} days before {end:%Y-%m-%d} is before the data starts"
        )
        return None
    entities = _sample(entities_at(data, start), settings)
    labels = build_labels(data, entities, horizon_days=model.horizon_days, data_end=end).to_pandas()
    if labels.empty:
        notes.append(f"no customer with an order before {start:%Y-%m-%d}: no outcome to compare with")
        return None
    keys = pa.Table.from_pandas(labels[["customer_id", "as_of"]], preserve_index=False)
    rows = build_features(data, keys, event_types=model.event_types).to_pandas()
    rows = rows.merge(labels[["customer_id", "as_of", "churned"]], on=["customer_id", "as_of"])
    p = model.classifier.predict_proba(rows)
    y = rows["churned"].to_numpy()
    deciles = []
    if len(rows) >= 10:
        groups = pd.qcut(pd.Series(p).rank(method="first"), 10, labels=False)
        for _, idx in pd.Series(np.arange(len(p))).groupby(groups.to_numpy()):
            deciles.append({"n": float(len(idx)), "predicted": float(p[idx].mean()), "observed": float(y[idx].mean())})
    seen = labels_seen_until(model)
    return OutcomeCheck(
        window_start=start,
        window_end=end,
        customers=len(rows),
        predicted=float(p.mean()),
        observed=float(y.mean()),
        roc_auc=float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        brier=float(brier_score_loss(y, p)),
        in_sample=seen is not None and seen > start,
        deciles=deciles,
    )


def labels_seen_until(model: ChurnModel) -> datetime | None:
    """The end of the latest label window a model learned from (fit or calibration), None if unknown."""
    dates = [*model.training_snapshots, *model.selection_snapshots]
    dates += [datetime.fromisoformat(d) for d in model.production_fit.get("calibration_snapshots", [])]
    return max(dates) + timedelta(days=model.horizon_days) if dates else None


def _sample(entities: pa.Table, settings: MonitorSettings) -> pa.Table:
    if entities.num_rows <= settings.max_customers:
        return entities
    rng = np.random.default_rng(settings.seed)
    keep = np.sort(rng.choice(entities.num_rows, settings.max_customers, replace=False))
    return entities.take(pa.array(keep))


def _population(data: Dataset, model: ChurnModel, entities: pa.Table, notes: list[str], when: str) -> pd.DataFrame:
    """Feature rows of the customers with an order before as_of who had not cancelled: the training population."""
    rows = build_features(data, entities, event_types=model.event_types).to_pandas()
    keep = (rows["frequency"].to_numpy() >= 1) & (rows["cancelled"].to_numpy() == 0)
    if not keep.any():
        notes.append(f"no customer with an order {when} (before as_of): nothing to compare")
    return rows.loc[keep].reset_index(drop=True)


def _drift(reference: Distribution, values: pd.Series | np.ndarray, settings: MonitorSettings) -> ColumnDrift:
    current = reference.shares_of(values)
    value = reference.psi_of(values, EPSILON) if len(values) else float("nan")
    return ColumnDrift(
        name=reference.name,
        psi=value,
        status=status(value, settings.psi_warn, settings.psi_alert) if np.isfinite(value) else "ok",
        bins=reference.labels,
        training=list(reference.shares),
        current=current.tolist(),
    )
