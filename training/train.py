"""``train``: from a validated dataset to a scored, evaluated ``ChurnModel`` (MLflow logging is separate).

Stages (each timed, see ``TrainResult.timings``): snapshot features and labels -> candidate classifiers ->
survival model -> value model -> evaluation on the held-out snapshot (selection) -> production fit of the winner
on the freshest labels (``training/production.py``) -> plots.
"""

from __future__ import annotations

import resource
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.dataset import Dataset
from features.engines import Engine
from features.settings import FeatureSettings, LabelSettings
from model.churn_model import ChurnModel
from model.scorecard import LifecycleRules
from model.seasons import seasons_covered
from training import plots
from training.candidates import fit_candidates
from training.drift import drift_reference, reference_date
from training.evaluation import (
    Curves,
    Evaluation,
    backtest,
    choose_winner,
    evaluate_candidates,
    evaluate_survival,
    evaluate_value,
)
from training.production import ProductionFit, fit_production
from training.settings import TrainingSettings
from training.snapshots import (
    NotEnoughDataError,
    SnapshotFrame,
    build_snapshot_frame,
    check_enough,
    labelled_buyers_before,
    plan_snapshots,
)
from training.survival import fit_survival
from training.value import fit_value_model

if TYPE_CHECKING:
    from model.classifiers import Classifier, LightGBMClassifier
    from training.snapshots import SnapshotPlan

Progress = Callable[[int, str | None], None]


@dataclass
class TrainResult:
    model: ChurnModel
    evaluation: Evaluation
    frame: SnapshotFrame
    production: ProductionFit
    plots: dict[str, Path]
    params: dict[str, str | int | float]
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def holdout_features(self) -> pd.DataFrame:
        return self.frame.part("holdout")


def train(
    data: Dataset,
    settings: TrainingSettings,
    labels: LabelSettings,
    features: FeatureSettings,
    *,
    as_of: datetime | None = None,
    plot_dir: Path | None = None,
    progress: Progress | None = None,
    run_backtest: bool = False,
    engine: Engine | None = None,
) -> TrainResult:
    """Train on ``data`` with the training section; the horizon and the event types come from the labels and
    features sections, which scoring and ``churn labels`` read too, so all of them share one definition.
    ``engine`` computes the snapshots' features (default DuckDB; ``churn train --engine spark`` passes Spark's)."""
    horizon_days, event_types = labels.horizon_days, features.event_types
    fit_warnings: list[str] = []
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    say = progress or (lambda n=1, d=None: None)

    with _stage("features", timings, peaks):
        plan = plan_training_snapshots(data, settings, horizon_days, as_of)
        say(
            0,
            f"snapshots: train {_dates(plan.train)}; holdout {plan.holdout:%Y-%m-%d}; "
            f"refit on {_dates(plan.production)}",
        )
        frame = build_snapshot_frame(
            data,
            plan,
            event_types=event_types,
            max_rows=settings.max_training_rows,
            seed=settings.seed,
            progress=say,
            engine=engine,
        )
        check_enough(frame, min_labelled=settings.min_labelled_customers, min_churners=settings.min_churners)
    used = [f for f in frame.feature_names if plan.uses_season or not f.startswith("season_")]
    fit, val, holdout = frame.part("fit"), frame.part("validation"), frame.part("holdout")

    with _stage("classifier", timings, peaks), _collect_warnings(fit_warnings):
        say(1, "fitting candidate classifiers")
        candidates = fit_candidates(fit, val, used, settings)
    with _stage("survival", timings, peaks), _collect_warnings(fit_warnings):
        say(1, "fitting the survival model")
        survival = fit_survival(frame.part("train"), penalizer=settings.survival_penalizer, seed=settings.seed).model
        value = fit_value_model(val, seed=settings.seed)

    with _stage("evaluation", timings, peaks):
        say(1, "evaluating on the held-out snapshot")
        metrics, curves = evaluate_candidates(candidates, holdout)
        winner, why = choose_winner(metrics)
        surv_metrics, _ = evaluate_survival(survival, holdout)
        evaluation = Evaluation(
            holdout_as_of=f"{plan.holdout:%Y-%m-%d}",
            n_holdout=len(holdout),
            holdout_churn_rate=float(holdout["churned"].mean()),
            candidates=metrics,
            winner=winner,
            winner_description=candidates[winner].description,
            selection=why,
            survival=surv_metrics,
            value=evaluate_value(value, holdout, horizon_days),
            backtest=backtest(frame, used, settings, _tree_size(candidates["lightgbm"])) if run_backtest else [],
            snapshot_churn_rates=frame.churn_rates,
            labelled_per_snapshot=frame.labelled_counts,
            churn_rate_trend=churn_rate_trend(frame.churn_rates),
            warnings=_season_warnings(plan) + _overlap_warnings(plan) + fit_warnings,
            top_features=_normalised(candidates[winner].importance()).head(15).round(4).to_dict(),
        )
    with _stage("production", timings, peaks), _collect_warnings(fit_warnings):
        say(1, f"production fit of {winner} on the freshest labels")
        production = fit_production(
            frame, winner, candidates, used, settings, selection_survival=survival, selection_value=value
        )
        evaluation.production = {**production.card(), "description": production.describe()}
        evaluation.warnings += _drift_warnings(evaluation.churn_rate_trend, production)
        evaluation.warnings += [w for w in fit_warnings if w not in evaluation.warnings]
        model = ChurnModel(
            classifier=production.classifier,
            survival=production.survival,
            value=production.value,
            horizon_days=horizon_days,
            event_types=event_types,
            tier_thresholds=settings.tier_thresholds,
            lifecycle=LifecycleRules(),
            training_snapshots=production.fit_dates,
            holdout=plan.holdout,
            metrics=evaluation.flat_metrics(),
            selection_snapshots=plan.train,
            production_fit=evaluation.production,
        )
        reference_at = reference_date(production.fit_dates, production.calibration_dates)
        model.drift_reference = drift_reference(frame.at([reference_at]), production.classifier, reference_at)
    with _stage("plots", timings, peaks):
        say(1, "drawing the plots")
        plot_paths = _plots(evaluation, curves, production.classifier, plot_dir)

    params = {
        "horizon_days": horizon_days,
        "feature_set": model.feature_set,
        "n_features": len(used),
        "uses_season": plan.uses_season,
        "train_snapshots": ",".join(f"{d:%Y-%m-%d}" for d in plan.train),
        "holdout_snapshot": f"{plan.holdout:%Y-%m-%d}",
        "snapshot_step_days": plan.step_days,
        "n_fit_rows": len(fit),
        "n_validation_rows": len(val),
        "n_holdout_rows": len(holdout),
        "winner": winner,
        "production_fit": production.method,
        "production_fit_snapshots": ",".join(f"{d:%Y-%m-%d}" for d in production.fit_dates),
        "production_calibration_snapshots": ",".join(f"{d:%Y-%m-%d}" for d in production.calibration_dates),
        "n_production_fit_rows": production.n_fit_rows,
        "recency_half_life_days": str(settings.recency_half_life_days),
        "seed": settings.seed,
        **data_fingerprint(data),
    }
    return TrainResult(model, evaluation, frame, production, plot_paths, params, timings, peaks)


def plan_training_snapshots(
    data: Dataset, settings: TrainingSettings, horizon_days: int, as_of: datetime | None = None
) -> SnapshotPlan:
    """Monthly snapshots; dense ones (every ``dense_step_days``) when the history is too short for monthly ones,
    or when monthly ones would hold fewer labelled rows than ``dense_below_rows``. Production dates only when the
    production fit uses them."""
    end = min(data.data_end, as_of) if as_of else data.data_end
    few_rows = (
        settings.dense_below_rows > 0
        and labelled_buyers_before(data, end - timedelta(days=2 * horizon_days)) * max(settings.n_snapshots - 1, 2)
        < settings.dense_below_rows
    )

    def plan(dense: bool) -> SnapshotPlan:
        return plan_snapshots(
            data.data_start,
            data.data_end,
            horizon_days=horizon_days,
            n_snapshots=settings.n_snapshots,
            step_days=settings.snapshot_step_days,
            as_of=as_of,
            dense_step_days=settings.dense_step_days if dense else None,
            max_snapshots=settings.max_snapshots,
        )

    try:
        planned = plan(few_rows)
    except NotEnoughDataError:
        if few_rows or settings.dense_step_days >= settings.snapshot_step_days:
            raise
        planned = plan(True)  # too short for monthly snapshots: denser ones still fit two before the holdout
    if settings.production_fit in ("selection", "latest"):
        planned = replace(planned, production=(*planned.train, planned.holdout))
    return planned


def churn_rate_trend(rates: dict[str, float]) -> dict[str, float]:
    """Base-rate drift across snapshots: least-squares slope per 30 days, first and latest rate."""
    if len(rates) < 2:
        return {}
    days = np.array([(datetime.fromisoformat(d) - datetime.fromisoformat(next(iter(rates)))).days for d in rates])
    values = np.array(list(rates.values()))
    slope = float(np.polyfit(days, values, 1)[0]) * 30 if days[-1] > 0 else 0.0
    return {
        "per_30_days": slope,
        "first": float(values[0]),
        "latest": float(values[-1]),
        "training_mean": float(values[:-1].mean()),
    }


def _dates(dates: tuple[datetime, ...]) -> str:
    if len(dates) > 4:
        return f"{dates[0]:%Y-%m-%d} .. {dates[-1]:%Y-%m-%d} ({len(dates)} dates)"
    return ", ".join(f"{d:%Y-%m-%d}" for d in dates)


def _tree_size(lightgbm: LightGBMClassifier) -> tuple[int, int]:
    return lightgbm.num_leaves, lightgbm.min_child_samples


def data_fingerprint(data: Dataset) -> dict[str, str | int]:
    """Enough to tell whether two runs saw the same data: row counts and the time span."""
    return {
        "data_transactions": data.transactions.num_rows,
        "data_events": data.events.num_rows,
        "data_customers": data.customers.num_rows,
        "data_start": f"{data.data_start:%Y-%m-%d %H:%M:%S}",
        "data_end": f"{data.data_end:%Y-%m-%d %H:%M:%S}",
    }


DRIFT_WARNING = 0.05  # churn-rate moves of this size between training and the latest window get a warning


def _drift_warnings(trend: dict[str, float], production: ProductionFit) -> list[str]:
    if not trend or abs(trend["latest"] - trend["training_mean"]) < DRIFT_WARNING:
        return []
    level = (
        "the production fit calibrates on the latest window, so its level sets the probabilities"
        if production.method != "selection"
        else "the registered model was calibrated on an older window: expect its probabilities to be off"
    )
    return [
        f"the churn rate moved: {trend['training_mean']:.1%} on average over the training snapshots, "
        f"{trend['latest']:.1%} in the latest labelled window ({trend['per_30_days']:+.1%} per 30 days); {level}"
    ]


def _overlap_warnings(plan: SnapshotPlan) -> list[str]:
    if not plan.overlap_days:
        return []
    return [
        f"short history: the training snapshots' label windows overlap the held-out window by {plan.overlap_days} "
        f"days, so the held-out comparison is less strict than out of time; check it with `churn backtest` "
        "once more data has arrived"
    ]


def _season_warnings(plan: SnapshotPlan) -> list[str]:
    if seasons_covered(plan.train, plan.holdout):
        return []
    return [
        f"the held-out snapshot ({plan.holdout:%Y-%m-%d}) falls in a season no training snapshot covers "
        f"({', '.join(f'{d:%b}' for d in plan.train)}): churn rates may shift; compare the per-snapshot "
        "churn rates and prefer more than a year of history"
    ]


def _normalised(s: pd.Series) -> pd.Series:
    total = s.sum()
    return s / total if total > 0 else s


def _plots(
    evaluation: Evaluation,
    curves: dict[str, Curves],
    winner: Classifier,
    plot_dir: Path | None,
) -> dict[str, Path]:
    out = Path(plot_dir or tempfile.mkdtemp(prefix="churnguard-plots-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "reliability": plots.reliability_diagram(curves, out / "reliability.png"),
        "gain_lift": plots.gain_chart(curves, out / "gain_lift.png"),
        "survival_calibration": plots.survival_calibration(evaluation.survival, out / "survival_calibration.png"),
        "feature_importance": plots.feature_importance(
            _normalised(winner.importance()), out / "importance.png", f"What drives churn risk ({winner.name})"
        ),
        "churn_rate": plots.churn_rate_chart(evaluation.snapshot_churn_rates, out / "churn_rate_per_snapshot.png"),
    }
    if evaluation.backtest:
        paths["backtest"] = plots.backtest_chart(evaluation.backtest, out / "backtest.png")
    return paths


@contextmanager
def _collect_warnings(into: list[str]) -> Iterator[None]:
    """Fits that struggle warn (sklearn's and lifelines' ConvergenceWarning, our value model's): the report keeps
    them, so a model that did not converge never ships silently."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "converge" in w.category.__name__.lower() or "converge" in str(w.message).lower():
            text = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
            if text not in into:
                into.append(text)


@contextmanager
def _stage(name: str, timings: dict[str, float], peaks: dict[str, float]):
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    peaks[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
