"""Linear predictors give the same bits for a row alone and in any batch (API == batch to the last bit)."""

from __future__ import annotations

import numpy as np

from model.rowwise import row_dot


def test_row_dot_by_hand_and_independent_of_the_batch() -> None:
    assert row_dot(np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]), np.array([2.0, 0.5, -1.0])).tolist() == [0.0, -3.5]
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(5000, 17)) * 1e3, rng.normal(size=17)
    batch = row_dot(x, w)
    assert all(row_dot(x[i : i + 1], w)[0] == batch[i] for i in range(0, 5000, 97))
    np.testing.assert_allclose(batch, x @ w, rtol=1e-12, atol=1e-9)


def test_the_logistic_baseline_equals_sklearn_and_is_batch_independent(trained) -> None:
    """rfm_logit's probabilities: sklearn's own predict_proba (to rounding), and one row alone == in the batch."""
    from training.candidates import fit_logistic

    rows = trained.holdout_features.head(2000)
    features = ["recency_days", "frequency", "monetary_total", "tenure_days"]
    model = fit_logistic("rfm_logit", rows, None, features, seed=0)
    ours = model.raw(rows)
    np.testing.assert_allclose(ours, model.pipeline.predict_proba(model.x(rows))[:, 1], rtol=1e-12)
    assert all(model.raw(rows.iloc[i : i + 1])[0] == ours[i] for i in range(0, len(rows), 37))
