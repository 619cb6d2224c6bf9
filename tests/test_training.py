"""Tiny real training runs on generated data: quality, calibration, survival, reproducibility, refusals."""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from features.dataset import Dataset
from training.evaluation import BASELINES
from training.snapshots import NotEnoughDataError, plan_snapshots
from training.train import train

pytestmark = pytest.mark.slow


def test_model_beats_the_baselines_out_of_time(trained):
    """The winner is chosen by held-out log loss, so its log loss there is the lowest by construction (the rule
    itself is pinned in test_metrics.py). These checks can fail: the winner against each baseline on metrics it was
    not selected on, and its family against each baseline on the backtest's earlier snapshots, where nothing was
    selected."""
    ev = trained.evaluation
    winner = ev.candidates[ev.winner]
    earlier = pd.DataFrame(ev.backtest).query("origin < @ev.holdout_as_of")
    assert earlier["origin"].nunique() >= 2
    log_loss = earlier.pivot(index="origin", columns="model", values="log_loss")
    for name in (b for b in BASELINES if b != ev.winner):
        baseline = ev.candidates[name]
        assert winner["roc_auc"] > baseline["roc_auc"] + 0.01, name
        assert winner["pr_auc"] > baseline["pr_auc"], name
        assert winner["brier"] < baseline["brier"], name
        assert (log_loss[ev.winner] < log_loss[name]).all(), log_loss
    # the held-out snapshot is after every training snapshot's label window
    plan = trained.frame.plan
    assert all(d + timedelta(days=plan.horizon_days) <= plan.holdout for d in plan.train)


def test_probabilities_are_calibrated(trained):
    assert trained.evaluation.candidates[trained.evaluation.winner]["ece"] < 0.05


def test_metrics_are_logged_under_plain_names(trained):
    flat = trained.evaluation.flat_metrics()
    for name in (
        "roc_auc",
        "pr_auc",
        "brier",
        "log_loss",
        "ece",
        "lift_top_decile",
        "baseline_recency_roc_auc",
        "baseline_rfm_logit_brier",
        "survival_concordance",
        "survival_ibs",
    ):
        assert np.isfinite(flat[name]), name


def test_survival_curves_are_monotone_and_agree_with_the_classifier(trained):
    holdout = trained.holdout_features
    scores = trained.model.score(holdout)
    curve = scores[["p_active_30d", "p_active_60d", "p_active_90d", "p_active_180d"]].to_numpy()
    assert (np.diff(curve, axis=1) <= 1e-12).all()
    assert ((curve >= 0) & (curve <= 1)).all()
    rho = spearmanr(scores["churn_probability"], scores["p_active_90d"]).statistic
    assert rho < -0.5
    assert trained.evaluation.survival["survival_concordance"] > 0.65


def test_more_days_since_last_purchase_never_lowers_churn_risk_on_average(trained):
    holdout = trained.holdout_features
    active = holdout[holdout["recency_days"] < 60].copy()
    base = trained.model.classifier.predict_proba(active)
    later = active.copy()
    later["recency_days"] += 30
    later["days_since_last_engagement"] = np.minimum(later["recency_days"], later["days_since_last_event"].fillna(1e9))
    later["recency_gap_ratio"] = later["recency_days"] / later["gap_mean_days"]
    shifted = trained.model.classifier.predict_proba(later)
    assert shifted.mean() > base.mean()
    assert (shifted >= base - 0.02).mean() > 0.9


def test_invariant_to_relabelled_customer_ids(trained):
    holdout = trained.holdout_features.head(200)
    renamed = holdout.assign(customer_id="x" + holdout["customer_id"])
    a = trained.model.score(holdout)
    b = trained.model.score(renamed)
    np.testing.assert_allclose(a["churn_probability"], b["churn_probability"])


def test_value_model_ranks_future_spend(trained):
    assert trained.evaluation.value["value_spearman"] > 0.3


def test_training_is_reproducible(demo_data, test_settings):
    data, _ = demo_data
    small = test_settings.model_copy(
        update={"training": test_settings.training.model_copy(update={"max_training_rows": 6000})}
    )
    a = train(data, small.training, small.labels, small.features, run_backtest=False).evaluation.candidates
    b = train(data, small.training, small.labels, small.features, run_backtest=False).evaluation.candidates
    assert a == b


def test_short_history_and_transactions_only(demo_data, test_settings):
    data, _ = demo_data
    end = datetime(2023, 10, 1)  # 9 months of data, H = 90 days
    tx = data.transactions.filter(pa.compute.less(data.transactions["timestamp"], pa.scalar(end, pa.timestamp("us"))))
    short = Dataset(
        transactions=tx, events=data.events.schema.empty_table(), customers=data.customers.schema.empty_table()
    )
    settings = test_settings.model_copy(
        update={
            "training": test_settings.training.model_copy(update={"min_labelled_customers": 100, "min_churners": 10})
        }
    )
    result = train(short, settings.training, settings.labels, settings.features, run_backtest=False)
    assert len(result.frame.plan.train) >= 2
    assert result.evaluation.n_holdout > 100


def test_too_little_data_is_refused_with_what_is_missing(demo_data, test_settings):
    data, _ = demo_data
    few_ids = pa.compute.unique(data.transactions["customer_id"])[:3]
    tx = data.transactions.filter(pa.compute.is_in(data.transactions["customer_id"], few_ids))
    tiny = Dataset(tx, data.events.schema.empty_table(), data.customers.schema.empty_table())
    with pytest.raises(NotEnoughDataError, match="too few labelled customers"):
        train(tiny, test_settings.training, test_settings.labels, test_settings.features)


def test_too_short_history_is_refused():
    with pytest.raises(NotEnoughDataError, match="not enough history"):
        plan_snapshots(datetime(2024, 1, 1), datetime(2024, 5, 1), horizon_days=90, n_snapshots=6, step_days=30)


def test_long_history_spreads_snapshots_over_a_year_and_uses_season():
    plan = plan_snapshots(datetime(2022, 1, 1), datetime(2024, 12, 31), horizon_days=90, n_snapshots=6, step_days=30)
    assert plan.uses_season
    assert (plan.train[-1] - plan.train[0]).days >= 270
    short = plan_snapshots(datetime(2024, 1, 1), datetime(2024, 10, 1), horizon_days=90, n_snapshots=6, step_days=30)
    assert not short.uses_season
    assert short.holdout == datetime(2024, 7, 3)
    assert date(2024, 4, 4) >= short.train[-1].date()


def test_survival_closed_form_equals_the_sklearn_pipeline_and_lifelines(trained):
    """The registered model carries only fitted numbers; they must reproduce the pipeline and lifelines exactly."""
    from training.survival import fit_survival

    rows = trained.frame.at(sorted({*trained.production.fit_dates, trained.frame.plan.holdout}))
    fitted = fit_survival(rows, penalizer=0.01, seed=42)  # the production fit's survival rows
    survival = fitted.model
    rows = trained.holdout_features.head(500)
    covariates = fitted.covariates(rows)
    np.testing.assert_allclose(survival.transform(rows), covariates.to_numpy(), rtol=1e-12, atol=1e-12)
    expected = fitted.fitter.predict_survival_function(covariates, times=[30, 90]).T.to_numpy()
    got = survival.predict(rows)[["p_active_30d", "p_active_90d"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(
        survival.predict(rows)["median_days_to_churn"], fitted.fitter.predict_median(covariates).to_numpy(), rtol=1e-9
    )
    np.testing.assert_allclose(trained.model.survival.beta, survival.beta)  # what training registered


def test_season_warning_when_scoring_outside_the_training_seasons(trained):
    """Batch and API both take this warning from the model."""
    model = copy.copy(trained.model)
    model.training_snapshots = (datetime(2024, 1, 15), datetime(2024, 2, 15))
    assert model.season_warnings(datetime(2025, 2, 1)) == []
    (warning,) = model.season_warnings(datetime(2025, 7, 1))
    assert "2025-07-01" in warning and "Jan 15, Feb 15" in warning


def test_dense_snapshots_cover_the_history_and_production_reaches_the_holdout():
    plan = plan_snapshots(
        datetime(2010, 12, 1), datetime(2011, 9, 9, 12), horizon_days=90, n_snapshots=6, step_days=30,
        dense_step_days=14, max_snapshots=30,
    )  # fmt: skip
    assert plan.holdout == datetime(2011, 6, 11) and plan.overlap_days == 0
    assert all((b - a).days == 14 for a, b in zip(plan.train, plan.train[1:], strict=False))
    assert plan.train[0] >= datetime(2010, 12, 29) and (plan.holdout - plan.train[-1]).days == 90
    # production: every labelled date at the same spacing up to the holdout, which is the latest
    assert plan.production[: len(plan.train)] == plan.train and plan.production[-1] == plan.holdout
    assert all((b - a).days <= 14 for a, b in zip(plan.production, plan.production[1:], strict=False))


def test_short_history_overlaps_the_holdout_window_by_at_most_half_a_horizon():
    plan = plan_snapshots(
        datetime(2010, 12, 1), datetime(2011, 6, 10), horizon_days=90, n_snapshots=6, step_days=30,
        dense_step_days=14,
    )  # fmt: skip
    assert 0 < plan.overlap_days <= 45
    assert len(plan.train) >= 2 and plan.train[-1] < plan.holdout
    assert (plan.holdout - plan.train[-1]).days == 90 - plan.overlap_days


def test_the_registered_model_is_refitted_on_the_freshest_labels_and_its_card_says_so(trained):
    plan = trained.frame.plan
    card = trained.model.card()
    assert card.production_fit["method"] == "crossfit"
    # fitted on every labelled snapshot up to the held-out one, calibrated on the held-out one (out of fold)
    assert card.training_snapshots == [d.date().isoformat() for d in plan.production]
    assert card.training_snapshots[-1] == card.holdout_as_of == card.production_fit["calibration_snapshots"][0]
    # the selection that chose the family is recorded apart, with its out-of-time metrics
    assert card.selection_snapshots == [d.date().isoformat() for d in plan.train]
    assert card.holdout_metrics["log_loss"] == trained.evaluation.candidates[trained.evaluation.winner]["log_loss"]
    assert trained.model.classifier.name == trained.evaluation.winner
    # base-rate drift is reported: the trend ends at the held-out (latest) window's rate
    assert trained.evaluation.churn_rate_trend["latest"] == pytest.approx(trained.evaluation.holdout_churn_rate)
