"""The request-sized scoring path runs the model, scorecard and policy rules on plain numpy columns
(``model/columns.py``, ``serving/scoring.py::score_rows``); batch scoring runs the same rules on pandas frames
(``score_dataset``). They must give the same scorecards to the last bit: here on every customer of the demo at two
dates, on random customers scored one at a time (as the lookup route does, on SQLite), and for the hand-made
model and a blend, whose numbers are known."""

from __future__ import annotations

import math
import random
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from model.classifiers import BlendClassifier
from model.columns import from_arrow, matrix
from model.scorecard import SCORECARD_COLUMNS
from serving.policy import load_policy
from serving.scoring import score_dataset, score_rows
from tests.hand_model import _logistic, hand_model

POLICY = load_policy()


def _same(a, b, plain: bool = True) -> bool:
    """Equal to the bit (NaN equals NaN); ``plain``: b is a JSON-ready Python value too."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, list | tuple | np.ndarray):
        return list(a) == list(b)
    return a == b and (not plain or type(b) in (str, float, int, bool, list, datetime))


def _batch_cards(scored) -> dict[str, dict]:
    return {r["customer_id"]: r for r in scored.scores[list(SCORECARD_COLUMNS)].to_dict(orient="records")}


def _assert_cards_equal(rows: list[dict], batch: dict[str, dict]) -> None:
    for card in rows:
        assert list(card) == list(SCORECARD_COLUMNS)
        want = batch[card["customer_id"]]
        for column in SCORECARD_COLUMNS:
            assert _same(want[column], card[column]), (card["customer_id"], column, want[column], card[column])


@pytest.mark.slow
@pytest.mark.parametrize("as_of", [datetime(2024, 10, 1), datetime(2025, 3, 15, 12)])
def test_score_rows_equals_score_dataset_for_every_customer(trained, demo_data, as_of):
    from features.build import entities_at

    data, _ = demo_data
    entities = entities_at(data, as_of)
    batch = score_dataset(data, entities, trained.model, POLICY, reasons=True)
    rows = score_rows(data, entities, trained.model, POLICY, reasons=True)
    assert len(rows.scores) == len(batch.scores) > 1000
    assert [c["customer_id"] for c in rows.scores] == batch.scores["customer_id"].tolist()
    _assert_cards_equal(rows.scores, _batch_cards(batch))
    assert rows.rejected == batch.rejected.to_dict(orient="records") and rows.rejected


@pytest.mark.slow
def test_random_customers_scored_alone_on_sqlite_equal_the_batch(trained, demo_data):
    """What the lookup route does: one customer's rows, the SQLite engine, the plain path; vs the batch on DuckDB."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from features.build import as_entities, entities_at
    from features.dataset import Dataset
    from features.engines import SQLiteEngine

    data, _ = demo_data
    as_of = datetime(2025, 3, 15, 12)
    batch = _batch_cards(score_dataset(data, entities_at(data, as_of), trained.model, POLICY, reasons=True))
    engine = SQLiteEngine()
    ids = random.Random(3).sample(sorted(batch), 40)
    for cid in ids:
        one = Dataset(
            *(t.filter(pc.equal(t["customer_id"], pa.scalar(cid))) for t in (data.transactions, data.events)),
            data.customers.filter(pc.equal(data.customers["customer_id"], pa.scalar(cid))),
        )
        rows = score_rows(one, as_entities([cid], as_of), trained.model, POLICY, engine=engine, reasons=True)
        assert len(rows.scores) == 1 and rows.rejected == []
        _assert_cards_equal(rows.scores, batch)


def test_hand_model_scorecards_from_columns_equal_the_frame_path():
    """recency 39, 40, 42 -> churn probability sigmoid(-0.5), 0.5, sigmoid(1) (tests/hand_model.py); the column
    form gives the frame form's scorecard, reasons included."""
    model = hand_model()
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "as_of": pd.to_datetime(["2024-06-01"] * 3),
            **{name: [1.0, 2.0, 3.0] for name in model.feature_names},
        }
    )
    frame["recency_days"] = [39.0, 40.0, 42.0]
    frame["frequency"] = [1.0, 4.0, 7.0]
    frame["monetary_mean"] = [np.nan, 20.0, 35.0]
    cards = model.score(frame, reasons=True)
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    plain = model.score_columns(columns, reasons=True)
    assert list(plain) == list(cards.columns)
    assert plain["churn_probability"].tolist() == pytest.approx([1 / (1 + math.exp(0.5)), 0.5, 1 / (1 + math.exp(-1))])
    for name in cards.columns:
        if name == "as_of":
            assert list(pd.to_datetime(plain[name])) == list(cards[name])
        else:
            assert all(_same(a, b, plain=False) for a, b in zip(cards[name], plain[name], strict=True)), name
    actions = POLICY.assign(cards)
    plain_actions = POLICY.assign_columns(plain)
    for name in actions.columns:
        assert actions[name].tolist() == plain_actions[name].tolist(), name


def test_a_blend_averages_its_members_contributions_feature_by_feature():
    """recency 40, frequency 3: member A (0.5 x recency) gives 20 and nothing for frequency, member B (2 x
    frequency) gives 6 and nothing for recency: the blend, 10 and 3, in either form."""
    from sklearn.pipeline import Pipeline

    from model.classifiers import Calibrator, LogisticClassifier

    def member(feature: str, coef: float) -> LogisticClassifier:
        return LogisticClassifier(
            name=feature,
            features=[feature],
            medians=np.array([0.0]),
            pipeline=Pipeline([("logistic", _logistic(coef, 0.0))]),
            calibrator=Calibrator("sigmoid", _logistic(1.0, 0.0)),
        )

    blend = BlendClassifier([member("recency_days", 0.5), member("frequency", 2.0)])
    frame = pd.DataFrame({"recency_days": [40.0], "frequency": [3.0]})
    for rows in (frame, {"recency_days": np.array([40.0]), "frequency": np.array([3.0])}):
        c = blend.contributions(rows)
        assert c.names == ["recency_days", "frequency"]
        assert c.values.tolist() == [[10.0, 3.0]]


def test_columns_from_arrow_hold_what_to_pandas_holds():
    import pyarrow as pa

    table = pa.table(
        {
            "customer_id": ["a", "b"],
            "as_of": pa.array([datetime(2024, 1, 1), datetime(2024, 1, 2, 3)], pa.timestamp("us")),
            "x": pa.array([1.5, None], pa.float64()),
            "n": pa.array([3, 0], pa.int64()),
        }
    )
    columns, frame = from_arrow(table), table.to_pandas()
    for name in frame.columns:
        assert columns[name].dtype == frame[name].dtype, name
        np.testing.assert_array_equal(columns[name], frame[name].to_numpy())
    m_columns, m_frame = matrix(columns, ["x", "n"]), matrix(frame, ["x", "n"])
    np.testing.assert_array_equal(m_columns, m_frame)  # NaN where NaN
    assert m_columns[0].tolist() == [1.5, 3.0] and np.isnan(m_columns[1, 0]) and m_columns[1, 1] == 0.0
