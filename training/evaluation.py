"""Honest evaluation on the held-out snapshot: every candidate side by side, the winner picked by a stated rule,
survival and value checks, and a rolling-origin backtest for stability.

Selection rule: lowest held-out log loss (it rewards calibrated probabilities, which the scorecard needs); on an
exact tie the higher ROC AUC, then the simpler model (recency < rfm_logit < blend < lightgbm). So the registered
model is never worse than a baseline on the selection metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from model.survival import TIMES
from training.candidates import TARGET, fit_candidates
from training.metrics import classification_metrics, gain_curve, reliability_table, survival_metrics, value_metrics

if TYPE_CHECKING:
    from model.classifiers import Classifier
    from model.survival import SurvivalModel
    from model.value import ValueModel
    from training.settings import TrainingSettings
    from training.snapshots import SnapshotFrame

BASELINES = ("recency", "rfm_logit")
SIMPLICITY = {"recency": 0, "rfm_logit": 1, "blend": 2, "lightgbm": 3}
TIE_LOG_LOSS = 1e-12
BACKTEST_MAX_ROWS = 100_000


@dataclass
class Evaluation:
    holdout_as_of: str
    n_holdout: int
    holdout_churn_rate: float
    candidates: dict[str, dict[str, float]]
    winner: str
    winner_description: str
    selection: str
    survival: dict[str, float] = field(default_factory=dict)
    value: dict[str, float] = field(default_factory=dict)
    backtest: list[dict] = field(default_factory=list)
    snapshot_churn_rates: dict[str, float] = field(default_factory=dict)
    labelled_per_snapshot: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    top_features: dict[str, float] = field(default_factory=dict)
    churn_rate_trend: dict[str, float] = field(default_factory=dict)  # base-rate drift across snapshots
    production: dict = field(default_factory=dict)  # what the registered model was refitted on (ProductionFit.card)

    def flat_metrics(self) -> dict[str, float]:
        """Plain names for MLflow: the winner's metrics bare, baselines and candidates prefixed."""
        out = dict(self.candidates[self.winner])
        for name, metrics in self.candidates.items():
            prefix = f"baseline_{name}_" if name in BASELINES else f"candidate_{name}_"
            out.update({prefix + k: v for k, v in metrics.items()})
        out.update(self.survival)
        out.update(self.value)
        out["holdout_churn_rate"] = self.holdout_churn_rate
        out["n_holdout"] = float(self.n_holdout)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        """Back from the ``evaluation.json`` a run logged (unknown keys from newer versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def choose_winner(candidates: dict[str, dict[str, float]]) -> tuple[str, str]:
    best_loss = min(m["log_loss"] for m in candidates.values())
    close = [n for n, m in candidates.items() if m["log_loss"] <= best_loss + TIE_LOG_LOSS]
    winner = max(close, key=lambda n: (round(candidates[n]["roc_auc"], 4), -SIMPLICITY.get(n, 9)))
    runner_up = min((n for n in candidates if n != winner), key=lambda n: candidates[n]["log_loss"])
    w, r = candidates[winner], candidates[runner_up]
    why = (
        f"{winner} wins on held-out log loss {w['log_loss']:.4f} vs {r['log_loss']:.4f} for {runner_up}, "
        f"{(r['log_loss'] - w['log_loss']) / r['log_loss']:.1%} lower (ROC AUC {w['roc_auc']:.3f} vs "
        f"{r['roc_auc']:.3f})"
    )
    if winner not in ("lightgbm",) and "lightgbm" in candidates:
        lg = candidates["lightgbm"]
        why += f"; LightGBM reached {lg['log_loss']:.4f} / AUC {lg['roc_auc']:.3f}"
    return winner, why


@dataclass(frozen=True)
class Curves:
    """One candidate's held-out predictions and the curves the plots draw from them."""

    p: np.ndarray
    reliability: pd.DataFrame  # mean predicted vs observed churn per probability bin
    gain: pd.DataFrame  # cumulative share of churners captured vs share contacted


def evaluate_candidates(
    models: dict[str, Classifier], holdout: pd.DataFrame
) -> tuple[dict[str, dict[str, float]], dict[str, Curves]]:
    y = holdout[TARGET].to_numpy()
    metrics, curves = {}, {}
    for name, model in models.items():
        p = model.predict_proba(holdout)
        metrics[name] = classification_metrics(y, p)
        curves[name] = Curves(p, reliability_table(y, p), gain_curve(y, p))
    return metrics, curves


def evaluate_survival(survival: SurvivalModel, holdout: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """On customers still active at the holdout date (the ones the survival model describes)."""
    active = holdout[holdout["duration_days"] > 0]
    pred = survival.predict(active)
    metrics = survival_metrics(
        active["duration_days"].to_numpy(),
        active["event"].to_numpy(),
        pred,
        pred["median_days_to_churn"].to_numpy(),
        times=TIMES[:3],
    )
    return metrics, pred


def evaluate_value(value_model: ValueModel, holdout: pd.DataFrame, horizon_days: int) -> dict[str, float]:
    """Expected value scaled to the label window vs the spend seen in it, among customers who did buy."""
    buyers = holdout[holdout["future_spend"] > 0]
    predicted = value_model.predict(buyers) * horizon_days / 365.0
    return value_metrics(predicted, buyers["future_spend"].to_numpy())


def backtest(
    frame: SnapshotFrame,
    features: list[str],
    settings: TrainingSettings,
    tree_size: tuple[int, int],
    n_jobs: int | None = None,
) -> list[dict]:
    """Rolling origin: each earlier snapshot with enough labelled history before it becomes a holdout in turn.

    Refits use the main model's tree size and at most BACKTEST_MAX_ROWS rows: the backtest measures how stable
    the method is across time, it does not re-tune it.
    """
    plan = frame.plan
    horizon = pd.Timedelta(days=plan.horizon_days)
    rows = []
    for origin in (*plan.train, plan.holdout):
        origin = pd.Timestamp(origin)
        before = sorted(d for d in pd.to_datetime(list(plan.train)) if d <= origin - horizon)
        if len(before) < 2:
            continue
        df = frame.frame
        fit = _cap(df[df["as_of"].isin(before[:-1])], settings.seed)
        val = _cap(df[df["as_of"] == before[-1]], settings.seed)
        test = df[df["as_of"] == origin]
        candidates = fit_candidates(fit, val, features, settings, n_jobs=n_jobs, tree_size=tree_size)
        y = test[TARGET].to_numpy()
        for model in candidates.values():
            m = classification_metrics(y, model.predict_proba(test))
            rows.append(
                {
                    "origin": f"{origin:%Y-%m-%d}",
                    "model": model.name,
                    "n": len(test),
                    "churn_rate": float(np.mean(y)),
                    **{k: m[k] for k in ("roc_auc", "log_loss", "brier", "ece")},
                }
            )
    return rows


def _cap(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df.sample(BACKTEST_MAX_ROWS, random_state=seed) if len(df) > BACKTEST_MAX_ROWS else df
