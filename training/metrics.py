"""Evaluation metrics: discrimination, calibration and ranking for the classifier; concordance, Brier and
calibration over time for the survival model. Plain functions of arrays, so they are easy to check by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

CLASSIFIER_METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile")


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "lift_top_decile": lift_at(y, p, 0.1),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Weighted mean |observed rate - mean prediction| over equal-width probability bins."""
    bins = np.minimum((np.asarray(p) * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() * abs(np.mean(y[mask]) - np.mean(p[mask]))
    return float(total / len(y))


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    bins = np.minimum((np.asarray(p) * n_bins).astype(int), n_bins - 1)
    df = pd.DataFrame({"bin": bins, "y": y, "p": p})
    out = df.groupby("bin").agg(mean_predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size"))
    return out.reset_index()


def lift_at(y: np.ndarray, p: np.ndarray, share: float) -> float:
    """Churn rate among the top ``share`` by score, divided by the overall churn rate."""
    n = max(int(round(len(y) * share)), 1)
    top = np.argsort(-np.asarray(p), kind="stable")[:n]
    base = np.mean(y)
    return float(np.mean(np.asarray(y)[top]) / base) if base > 0 else float("nan")


def gain_curve(y: np.ndarray, p: np.ndarray, points: int = 20) -> pd.DataFrame:
    """Share of all churners captured when contacting the top x% (cumulative gain) and the lift there."""
    order = np.argsort(-np.asarray(p), kind="stable")
    ys = np.asarray(y)[order]
    cum = np.cumsum(ys) / max(ys.sum(), 1)
    shares = np.linspace(1 / points, 1, points)
    idx = np.maximum((shares * len(ys)).astype(int) - 1, 0)
    return pd.DataFrame({"share_contacted": shares, "gain": cum[idx], "lift": cum[idx] / shares})


# ------------------------------------------------------------------------------------------------ survival


def survival_metrics(
    duration: np.ndarray,
    event: np.ndarray,
    surv: pd.DataFrame,
    median_time: np.ndarray,
    times: tuple[int, ...] = (30, 60, 90),
) -> dict[str, float]:
    """Concordance of predicted median time, integrated IPCW Brier score over ``times``, calibration at each t.

    ``surv`` holds predicted S(t) with one column per time in ``times`` (as ``p_active_<t>d``).
    """
    duration = np.asarray(duration, float)
    event = np.asarray(event, int)
    out = {"survival_concordance": float(concordance_index(duration, np.nan_to_num(median_time, nan=1e6), event))}
    briers = []
    km = KaplanMeierFitter().fit(duration, event)
    for t in times:
        s = surv[f"p_active_{t}d"].to_numpy()
        briers.append(ipcw_brier(duration, event, s, t))
        observed = float(1 - km.survival_function_at_times(t).iloc[0])
        predicted = float(np.mean(1 - s))
        out[f"survival_churned_by_{t}d_observed"] = observed
        out[f"survival_churned_by_{t}d_predicted"] = predicted
    out["survival_ibs"] = float(np.trapezoid(briers, times) / (times[-1] - times[0])) if len(times) > 1 else briers[0]
    return out


def ipcw_brier(duration: np.ndarray, event: np.ndarray, surv_at_t: np.ndarray, t: float) -> float:
    """Brier score at time t with inverse-probability-of-censoring weights (Graf et al., 1999)."""
    censor_km = KaplanMeierFitter().fit(duration, 1 - event)

    def g(x: np.ndarray) -> np.ndarray:
        return np.clip(censor_km.survival_function_at_times(x).to_numpy(), 1e-6, None)

    died = (duration <= t) & (event == 1)
    alive = duration > t
    score = np.zeros(len(duration))
    score[died] = (surv_at_t[died] ** 2) / g(duration[died])
    score[alive] = ((1 - surv_at_t[alive]) ** 2) / g(np.full(alive.sum(), t))
    return float(np.mean(score))


def value_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """How well expected value ranks and scales the spend actually seen afterwards (customers who bought)."""
    from scipy.stats import spearmanr

    if len(predicted) < 3:
        return {}
    rho = spearmanr(predicted, actual).statistic
    return {
        "value_spearman": float(rho),
        "value_ratio_predicted_to_actual": float(np.sum(predicted) / max(np.sum(actual), 1e-9)),
    }
