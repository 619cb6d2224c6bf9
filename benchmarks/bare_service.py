"""The baseline for the API latency benchmark: a BentoML service that only calls the champion's LightGBM booster
on a ready feature row. Same model, same BentoML, no feature computation, no scorecard."""

from __future__ import annotations

import bentoml
import numpy as np

from churnguard.settings import load_settings


@bentoml.service(name="bare_booster", workers=1)
class BareBooster:
    def __init__(self) -> None:
        from model.registry import load_model

        model = load_model(load_settings().mlflow, "models:/churnguard@champion")
        classifier = model.classifier
        if not hasattr(classifier, "booster"):
            raise RuntimeError(f"the champion is {classifier.name}, not LightGBM: retrain on demo data")
        self.booster = classifier.booster
        self.iterations = classifier.best_iteration
        self.n_features = len(classifier.features)

    @bentoml.api
    def predict(self, features: list[float | None]) -> float:
        row = np.array([np.nan if v is None else v for v in features], dtype="float64").reshape(1, -1)
        return float(self.booster.predict(row, num_iteration=self.iterations)[0])
