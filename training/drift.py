"""The training side of drift monitoring: bin the rows the registered model learned from, once, at training.

The reference is the latest snapshot the production fit learned from (fit or calibration): the freshest picture
of the population the model knows, and the closest in time to the dates it will score. Every feature the
classifier reads and the classifier's churn probability on those rows are binned by ``Distribution.fit``
(``model/drift.py``: deciles, categories, nulls); the result travels inside the registered ``ChurnModel``, so
``churn monitor`` and the report never need this module or the training data.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from model.classifiers import Classifier
from model.drift import Distribution, DriftReference

SCORE = "churn_probability"


def reference_date(fit_dates: tuple[datetime, ...], calibration_dates: tuple[datetime, ...]) -> datetime:
    """The latest snapshot the registered model learned from."""
    return max((*fit_dates, *calibration_dates))


def drift_reference(rows: pd.DataFrame, classifier: Classifier, as_of: datetime) -> DriftReference:
    """Bins and shares of every classifier feature and of the churn score on ``rows`` (one snapshot)."""
    if rows.empty:
        raise ValueError(f"no training rows at {as_of:%Y-%m-%d} to record the drift reference from")
    scores = classifier.predict_proba(rows)
    return DriftReference(
        as_of=f"{as_of:%Y-%m-%d}",
        n_rows=len(rows),
        features={name: Distribution.fit(name, rows[name]) for name in classifier.features},
        score=Distribution.fit(SCORE, scores),
        mean_score=float(np.mean(scores)),
        churn_rate=float(rows["churned"].mean()),
    )
