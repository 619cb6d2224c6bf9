"""A ``ChurnModel`` assembled from hand-set parts whose outputs can be computed on paper (shared by the scorecard
and registry tests): a logistic classifier on ``recency_days`` alone, raw = sigmoid(0.5 x recency - 20), with an
identity Platt calibration; a constant-hazard survival model, S(t) = exp(-t / 100); a value model with given
parameters. Every part is the real class a trained model carries, with the numbers fitting would have left."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from model.churn_model import ChurnModel
from model.classifiers import Calibrator, LogisticClassifier
from model.scorecard import DEFAULT_TIER_THRESHOLDS, LifecycleRules
from model.survival import SurvivalModel
from model.value import ValueModel

H = 90


def _logistic(coef: float, intercept: float) -> LogisticRegression:
    """A one-feature logistic regression with given parameters (what fitting would leave behind)."""
    model = LogisticRegression()
    model.classes_ = np.array([0, 1])
    model.coef_ = np.array([[coef]])
    model.intercept_ = np.array([intercept])
    model.n_features_in_ = 1
    return model


def hand_model(tier_thresholds: tuple[float, float, float] = DEFAULT_TIER_THRESHOLDS) -> ChurnModel:
    """churn probability = sigmoid(0.5 x recency_days - 20): recency 40 -> 0.5 exactly, 39 -> sigmoid(-0.5),
    42 -> sigmoid(1); S(t) = exp(-t / 100); value: r=1, alpha=165, p=2, q=3, gamma=60."""
    classifier = LogisticClassifier(
        name="recency_by_hand",
        features=["recency_days"],
        medians=np.array([0.0]),
        pipeline=Pipeline([("logistic", _logistic(0.5, -20.0))]),
        calibrator=Calibrator("sigmoid", _logistic(1.0, 0.0)),  # identity: sigmoid(1 x logit(raw) + 0)
    )
    survival = SurvivalModel(
        features=["recency_days"],
        columns=["recency_days"],
        medians=np.array([0.0]),
        indicators=np.array([], dtype=int),
        mean=np.array([0.0]),
        scale=np.array([1.0]),
        beta=np.array([0.0]),
        intercept=math.log(100.0),  # lambda = 100 days
        rho=1.0,
    )
    return ChurnModel(
        classifier=classifier,
        survival=survival,
        value=ValueModel(r=1.0, alpha=165.0, p=2.0, q=3.0, gamma=60.0),
        horizon_days=H,
        event_types=(),
        tier_thresholds=tier_thresholds,
        lifecycle=LifecycleRules(),
        training_snapshots=(datetime(2024, 1, 1),),
        holdout=datetime(2024, 4, 1),
        metrics={},
        model_version="hand/1",
    )
