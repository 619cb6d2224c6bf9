"""Evaluation plots as PNG files.

Figures are built with matplotlib's object API (``Figure`` + its Agg canvas), not ``pyplot``: no backend is chosen
for the whole process, nothing is kept in pyplot's global figure list, and no display is ever needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from training.evaluation import Curves


def _subplots(ncols: int = 1, figsize: tuple[float, float] = (5.5, 5)) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def reliability_diagram(curves: dict[str, Curves], path: Path) -> Path:
    fig, ax = _subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    for name, c in curves.items():
        r = c.reliability
        ax.plot(r["mean_predicted"], r["observed"], marker="o", ms=3, label=name)
    ax.set(
        xlabel="predicted churn probability",
        ylabel="observed churn rate",
        title="Reliability (held-out)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def gain_chart(curves: dict[str, Curves], path: Path) -> Path:
    fig, (a1, a2) = _subplots(2, figsize=(10, 4.2))
    a1.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="random")
    for name, c in curves.items():
        g = c.gain
        a1.plot(g["share_contacted"], g["gain"], label=name)
        a2.plot(g["share_contacted"], g["lift"], label=name)
    a1.set(
        xlabel="share of customers contacted (by risk)",
        ylabel="share of churners reached",
        title="Cumulative gain (held-out)",
    )
    a2.axhline(1, ls="--", c="grey", lw=1)
    a2.set(xlabel="share of customers contacted", ylabel="lift", title="Lift (held-out)")
    a1.legend(fontsize=8)
    return _save(fig, path)


def survival_calibration(metrics: dict, path: Path, times: tuple[int, ...] = (30, 60, 90)) -> Path:
    observed = [metrics[f"survival_churned_by_{t}d_observed"] for t in times]
    predicted = [metrics[f"survival_churned_by_{t}d_predicted"] for t in times]
    fig, ax = _subplots(figsize=(5.5, 4))
    ax.plot(times, observed, marker="o", label="observed (Kaplan-Meier)")
    ax.plot(times, predicted, marker="s", label="predicted (mean of curves)")
    ax.set(xlabel="days after as_of", ylabel="share churned", title="Survival calibration (held-out, active)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def feature_importance(importance: pd.Series, path: Path, title: str, k: int = 20) -> Path:
    top = importance.head(k)[::-1]
    fig, ax = _subplots(figsize=(6, 0.28 * len(top) + 1.2))
    ax.barh(top.index, top.values)
    ax.set(title=title, xlabel="importance (normalised)")
    return _save(fig, path)


def backtest_chart(rows: list[dict], path: Path) -> Path:
    df = pd.DataFrame(rows)
    fig, (a1, a2) = _subplots(2, figsize=(10, 4))
    for model, g in df.groupby("model"):
        a1.plot(g["origin"], g["roc_auc"], marker="o", label=model)
        a2.plot(g["origin"], g["log_loss"], marker="o", label=model)
    a1.set(title="Backtest: ROC AUC per origin", xlabel="held-out snapshot")
    a2.set(title="Backtest: log loss per origin", xlabel="held-out snapshot")
    a1.legend(fontsize=8)
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def churn_rate_chart(rates: dict[str, float], path: Path) -> Path:
    fig, ax = _subplots(figsize=(6, 3.5))
    ax.bar(list(rates), list(rates.values()))
    ax.set(title="Churn rate per snapshot (last bar: held-out)", ylabel="churn rate")
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def backtest_cutoffs_chart(rows: list[dict], path: Path) -> Path:
    """``churn backtest``: ROC AUC, Brier and log loss per cutoff for each model, and the mean predicted churn
    against what was observed."""
    df = pd.DataFrame(rows)
    fig, axes = _subplots(4, figsize=(17, 4))
    for model, g in df.groupby("model", sort=False):
        for ax, metric in zip(axes[:3], ("roc_auc", "brier", "log_loss"), strict=True):
            ax.plot(g["cutoff"], g[metric], marker="o", label=model)
        axes[3].plot(g["cutoff"], g["mean_predicted"], marker="o", label=f"{model} (predicted)")
    observed = df.drop_duplicates("cutoff")
    axes[3].plot(observed["cutoff"], observed["observed"], marker="s", c="black", ls="--", label="observed")
    titles = ("ROC AUC (higher is better)", "Brier (lower is better)", "log loss (lower is better)", "mean churn")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="cutoff")
        ax.tick_params(axis="x", rotation=30)
    axes[0].legend(fontsize=8)
    axes[3].legend(fontsize=7)
    return _save(fig, path)
