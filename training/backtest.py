"""``churn backtest``: the production protocol replayed at past dates, judged on what happened next.

For each cutoff T the data is cut at T (transactions, events and sign-ups before T; cancel dates at or after T are
not known yet), and exactly what ``churn train`` does runs on it: snapshots, selection on the held-out snapshot,
production fit (nothing is registered). Every customer known at T is scored from features before T, as batch
scoring would, and the scores are compared with what they did in [T, T + H): churned = no order in that window.
Customers are judged if they had ordered before T and had not cancelled before it (the labelled customers; the
others are scored, and counted, but have no outcome to compare with).

Baselines are scored the same way on the same customers, each fitted on the rows before T only:

* ``recency``: logistic regression on days since the last order, fitted on the latest labelled window
  (the snapshot H days before the data ends);
* ``rfm_logit``: logistic regression on log recency, frequency, monetary value and tenure, fitted on that window.

This is the number to trust: the held-out comparison of ``churn train`` judges the selection fit, the backtest
judges the model that is registered and used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import build_features, entities_at
from features.dataset import Dataset
from features.labels import build_labels
from training.candidates import RFM_FEATURES, TARGET, fit_logistic
from training.metrics import classification_metrics
from training.snapshots import NotEnoughDataError

if TYPE_CHECKING:
    from features.settings import FeatureSettings, LabelSettings
    from model.churn_model import ChurnModel
    from model.settings import MlflowSettings
    from training.settings import TrainingSettings

PRODUCTION = "production"
BASELINE_FEATURES = {"recency": ["recency_days"], "rfm_logit": RFM_FEATURES}
METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile", "mean_predicted", "observed")
LOWER_IS_BETTER = {"brier", "log_loss", "ece"}

Progress = Callable[[int, str | None], None]


@dataclass
class CutoffResult:
    """One cutoff: who was scored and judged, each model's metrics, and what the production protocol did."""

    cutoff: str
    n_scored: int
    n_judged: int
    churn_rate: float
    metrics: dict[str, dict[str, float]]  # model -> metric -> value
    winner: str = ""
    selection_holdout: str = ""
    production: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class BacktestResult:
    horizon_days: int
    cutoffs: list[CutoffResult]
    refused: dict[str, str] = field(default_factory=dict)  # cutoff -> why the protocol could not run there
    settings: dict = field(default_factory=dict)  # the training settings the protocol ran with

    def rows(self) -> list[dict]:
        """One row per (cutoff, model): the table printed, logged and drawn."""
        return [
            {"cutoff": c.cutoff, "model": m, "n": c.n_judged, "churn_rate": c.churn_rate, **values}
            for c in self.cutoffs
            for m, values in c.metrics.items()
        ]

    def mean(self) -> dict[str, dict[str, float]]:
        """Each model's metrics averaged over the cutoffs."""
        df = pd.DataFrame(self.rows())
        if df.empty:
            return {}
        means = df.groupby("model", sort=False)[list(METRICS)].mean()
        return {str(m): {k: float(v) for k, v in row.items()} for m, row in means.iterrows()}

    def to_dict(self) -> dict:
        return asdict(self)


def data_before(data: Dataset, cutoff: datetime) -> Dataset:
    """What was known at ``cutoff``: rows strictly before it; cancel dates at or after it are not known yet."""
    ts = pa.scalar(cutoff, pa.timestamp("us"))
    tx = data.transactions.filter(pc.less(data.transactions["timestamp"], ts))
    ev = data.events.filter(pc.less(data.events["timestamp"], ts))
    cu = data.customers
    known = pc.or_(pc.is_null(cu["signup_date"]), pc.less(cu["signup_date"], ts))
    cu = cu.filter(pc.fill_null(known, True))
    churn = cu["churn_date"]
    hidden = pc.fill_null(pc.greater_equal(churn, ts), False)
    cu = cu.set_column(
        cu.schema.get_field_index("churn_date"), "churn_date", pc.if_else(hidden, pa.scalar(None, churn.type), churn)
    )
    return Dataset(transactions=tx, events=ev, customers=cu)


@dataclass
class CutoffData:
    """Features of every scorable customer at the cutoff, and the outcome of those who can be judged."""

    cutoff: datetime
    known: Dataset
    features: pd.DataFrame  # scorable customers (an order before the cutoff), feature columns
    labels: pd.DataFrame  # customer_id, churned: the judged customers, aligned with ``judged`` rows of features

    @property
    def judged(self) -> pd.DataFrame:
        return self.features.merge(self.labels, on=["customer_id", "as_of"], how="inner")


def prepare_cutoff(data: Dataset, cutoff: datetime, horizon_days: int, event_types: tuple[str, ...]) -> CutoffData:
    if cutoff + timedelta(days=horizon_days) > data.data_end:
        raise ValueError(
            f"cutoff {cutoff:%Y-%m-%d}: its {horizon_days}-day outcome window ends after the data "
            f"({data.data_end:%Y-%m-%d}); the last cutoff that can be judged is "
            f"{data.data_end - timedelta(days=horizon_days):%Y-%m-%d}"
        )
    known = data_before(data, cutoff)
    entities = entities_at(known, cutoff)
    features = build_features(known, entities, event_types=event_types).to_pandas()
    scorable = features[features["frequency"] >= 1].reset_index(drop=True)
    labels = build_labels(data, entities, horizon_days=horizon_days).to_pandas()
    return CutoffData(cutoff, known, scorable, labels[["customer_id", "as_of", TARGET]])


def fit_baselines(
    known: Dataset, latest: datetime, horizon_days: int, event_types: tuple[str, ...], seed: int
) -> dict[str, Callable[[pd.DataFrame], np.ndarray]]:
    """The simple models, fitted on the latest labelled window of the data known at the cutoff."""
    entities = entities_at(known, latest)
    labels = build_labels(known, entities, horizon_days=horizon_days).to_pandas()
    rows = build_features(
        known, pa.Table.from_pandas(labels[["customer_id", "as_of"]], preserve_index=False), event_types=event_types
    ).to_pandas()
    rows = rows.merge(labels, on=["customer_id", "as_of"])
    return {
        name: fit_logistic(name, rows, None, columns, seed=seed).predict_proba
        for name, columns in BASELINE_FEATURES.items()
    }


def judge(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {**classification_metrics(y, p), "mean_predicted": float(np.mean(p)), "observed": float(np.mean(y))}


def run_backtest(
    data: Dataset,
    cutoffs: list[datetime],
    training: TrainingSettings,
    labels: LabelSettings,
    features: FeatureSettings,
    *,
    progress: Progress | None = None,
) -> BacktestResult:
    """The production protocol at each cutoff (see the module docstring); cutoffs where it refuses to train
    (too little history before them) are listed in ``refused`` with the reason."""
    from training.train import train

    horizon = labels.horizon_days
    say = progress or (lambda n=1, d=None: None)
    result = BacktestResult(horizon, [], settings=training.model_dump(mode="json"))
    for cutoff in sorted(cutoffs):
        say(0, f"cutoff {cutoff:%Y-%m-%d}: features at the cutoff and outcomes")
        prepared = prepare_cutoff(data, cutoff, horizon, features.event_types)
        say(0, f"cutoff {cutoff:%Y-%m-%d}: training on the {prepared.known.transactions.num_rows:,} rows before it")
        try:
            trained = train(prepared.known, training, labels, features)
        except NotEnoughDataError as e:
            result.refused[f"{cutoff:%Y-%m-%d}"] = str(e)
            say(1, None)
            continue
        latest = trained.frame.plan.holdout
        models = {PRODUCTION: lambda df, m=trained.model: _production_probability(m, df)}
        models |= fit_baselines(prepared.known, latest, horizon, features.event_types, training.seed)
        judged = prepared.judged
        y = judged[TARGET].to_numpy()
        ev = trained.evaluation
        result.cutoffs.append(
            CutoffResult(
                cutoff=f"{cutoff:%Y-%m-%d}",
                n_scored=len(prepared.features),
                n_judged=len(judged),
                churn_rate=float(np.mean(y)),
                metrics={name: judge(y, predict(judged)) for name, predict in models.items()},
                winner=ev.winner,
                selection_holdout=ev.holdout_as_of,
                production=ev.production,
                warnings=list(ev.warnings),
            )
        )
        say(1, None)
    return result


def _production_probability(model: ChurnModel, features: pd.DataFrame) -> np.ndarray:
    """churn_probability exactly as the scorecard gives it."""
    return model.score(features)["churn_probability"].to_numpy()


def backtest_markdown(result: BacktestResult) -> str:
    """The table of the README: one row per cutoff and model, then the mean over cutoffs."""
    head = (
        "| cutoff | model | judged | churn rate | ROC AUC | PR AUC | Brier | log loss | ECE | lift top decile "
        "| mean predicted |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 9]
    for r in result.rows():
        lines.append(
            f"| {r['cutoff']} | {r['model']} | {r['n']:,} | {r['churn_rate']:.3f} | {r['roc_auc']:.4f} | "
            f"{r['pr_auc']:.4f} | {r['brier']:.4f} | {r['log_loss']:.4f} | {r['ece']:.4f} | "
            f"{r['lift_top_decile']:.2f} | {r['mean_predicted']:.3f} |"
        )
    for model, m in result.mean().items():
        lines.append(
            f"| mean | {model} | | | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['brier']:.4f} | "
            f"{m['log_loss']:.4f} | {m['ece']:.4f} | {m['lift_top_decile']:.2f} | {m['mean_predicted']:.3f} |"
        )
    for cutoff, why in result.refused.items():
        lines.append(f"| {cutoff} | (refused) | {why} | | | | | | | | |")
    return "\n".join(lines) + "\n"


def write_backtest(result: BacktestResult, out: Path) -> dict[str, Path]:
    """backtest.md, backtest.csv, backtest.json and backtest.png into ``out``."""
    import json

    from training.plots import backtest_cutoffs_chart

    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "backtest.md", "csv": out / "backtest.csv", "json": out / "backtest.json"}
    paths["markdown"].write_text(backtest_markdown(result))
    pd.DataFrame(result.rows()).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    if result.cutoffs:
        paths["plot"] = backtest_cutoffs_chart(result.rows(), out / "backtest.png")
    return paths


@dataclass
class BacktestRun:
    result: BacktestResult
    files: dict[str, Path]
    run_id: str


def backtest(
    data: Dataset,
    cutoffs: list[datetime],
    training: TrainingSettings,
    labels: LabelSettings,
    features: FeatureSettings,
    mlflow: MlflowSettings,
    out: Path,
    *,
    progress: Progress | None = None,
) -> BacktestRun:
    """``churn backtest``: run the protocol at every cutoff, write the table and plot into ``out``, log to MLflow."""
    from training.tracking import log_backtest

    result = run_backtest(data, cutoffs, training, labels, features, progress=progress)
    files = write_backtest(result, out)
    return BacktestRun(result, files, log_backtest(result, files, mlflow))
