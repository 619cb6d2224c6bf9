"""MLflow: log a training run, register the model, and move the ``champion`` alias only through a gate.

Every training registers a new version of the model with alias ``challenger``. The very first version also becomes
``champion`` so ``churn train`` then ``churn score`` just works. After that ``promote`` moves ``champion`` only when
the challenger is at least as good as the current champion on the *same* held-out data (log loss, the selection
metric). Aliases, not the deprecated stages (mlflow/mlflow#10336).

The tracking URI comes from the settings (``MLFLOW_TRACKING_URI`` works too); the default is SQLite with local
artifacts under the project's data dir, so nothing needs a server.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnguard.settings import Settings
from training.train import TrainResult

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from features.dataset import Dataset
    from training.model import ChurnModel

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTION_TOLERANCE = 1e-4  # log loss difference treated as a tie
RUNTIME_PACKAGES = (
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "lightgbm",
    "lifelines",
    "scipy",
    "mlflow",
    "duckdb",
    "ibis-framework",
    "pydantic",
    "cloudpickle",
)


def configure(settings: Settings) -> None:
    """Point MLflow at the configured store; for the embedded default, create the data dir first."""
    import mlflow

    warnings.filterwarnings("ignore", message=".*noload.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow.*")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")  # never null here
    # MLflow's INFO chatter (table creation, uv detection) and the cloudpickle notice are not news to our users
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    if settings.tracking_uri.startswith("sqlite:///"):
        Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow also writes the URI into os.environ["MLFLOW_TRACKING_URI"], which Settings honours: left there, every
    # Settings built later in this process (and every child process) would silently use this store instead of its own.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _experiment_id(settings: Settings, name: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    local = settings.tracking_uri.startswith("sqlite:")
    location = settings.artifact_root.as_uri() if local else None
    return mlflow.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: str
    became_champion: bool
    model_uri: str


def log_training(
    result: TrainResult, settings: Settings, *, experiment: str | None = None, model_name: str | None = None
) -> LoggedModel:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    configure(settings)
    name = model_name or settings.mlflow.model_name
    exp_id = _experiment_id(settings, experiment or settings.mlflow.experiment)
    evaluation = result.evaluation
    with mlflow.start_run(experiment_id=exp_id, run_name=f"train-{datetime.now():%Y%m%d-%H%M%S}") as run:
        result.model.model_version = f"run:{run.info.run_id}"
        mlflow.log_params(result.params)
        mlflow.log_metrics({k: float(v) for k, v in evaluation.flat_metrics().items() if np.isfinite(v)})
        mlflow.log_metrics({f"time_{k}_s": v for k, v in result.timings.items()})
        mlflow.log_dict(evaluation.to_dict(), "evaluation/evaluation.json")
        mlflow.log_text("\n".join(result.model.feature_names), "evaluation/features.txt")
        for path in result.plots.values():
            mlflow.log_artifact(str(path), "evaluation/plots")
        example = _input_example(result.holdout_features, result.model.feature_names)
        signature = infer_signature(example, result.model.score(example), params={"reasons": False})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=result.model,
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            registered_model_name=name,
            metadata={
                "feature_set": result.model.feature_set,
                "horizon_days": result.model.horizon_days,
                "churnguard_version": pkg_version("churnguard"),
            },
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    tags = {
        "holdout_as_of": evaluation.holdout_as_of,
        "winner": evaluation.winner,
        "horizon_days": str(result.model.horizon_days),
        "data_fingerprint": _fingerprint(result.params),
        "log_loss": f"{evaluation.candidates[evaluation.winner]['log_loss']:.6f}",
        "roc_auc": f"{evaluation.candidates[evaluation.winner]['roc_auc']:.6f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    first = _alias_version(client, name, CHAMPION) is None
    if first:
        client.set_registered_model_alias(name, CHAMPION, version)
    return LoggedModel(run.info.run_id, version, first, f"models:/{name}/{version}")


def _input_example(holdout: pd.DataFrame, feature_names: list[str]) -> pd.DataFrame:
    cols = ["customer_id", "as_of", *feature_names]
    return holdout[cols].head(3).reset_index(drop=True)


def _pip_requirements() -> list[str]:
    return [f"{p}=={pkg_version(p)}" for p in RUNTIME_PACKAGES]


def _fingerprint(params: dict) -> str:
    keys = ("data_transactions", "data_events", "data_customers", "data_start", "data_end")
    return json.dumps({k: params[k] for k in keys}, sort_keys=True)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


# ------------------------------------------------------------------------------------------------ promotion


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    challenger: str | None
    champion_before: str | None


def promote(settings: Settings, *, data: Dataset | None = None, model_name: str | None = None) -> Promotion:
    """Move ``champion`` to the challenger if it is at least as good on the challenger's held-out snapshot.

    With ``data`` both models are scored on freshly built held-out features and labels; without it the stored
    held-out metrics are compared, which is only allowed when both were measured on the same snapshot of the
    same data.
    """
    from mlflow.tracking import MlflowClient

    configure(settings)
    name = model_name or settings.mlflow.model_name
    client = MlflowClient()
    challenger = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    if challenger is None:
        raise ValueError(f"model {name!r} has no '{CHALLENGER}' version: run `churn train` first")
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger)
        return Promotion(True, f"no champion yet: version {challenger} becomes champion", challenger, None)
    if champion == challenger:
        return Promotion(False, f"version {challenger} is already the champion", challenger, champion)
    ch_tags = client.get_model_version(name, challenger).tags
    cp_tags = client.get_model_version(name, champion).tags
    if data is not None:
        scores = _score_on_holdout(settings, name, {"challenger": challenger, "champion": champion}, data, ch_tags)
        basis = f"re-scored on held-out snapshot {ch_tags['holdout_as_of']} ({scores['n']:,} customers)"
    else:
        same = (
            ch_tags.get("holdout_as_of") == cp_tags.get("holdout_as_of")
            and ch_tags.get("data_fingerprint") == cp_tags.get("data_fingerprint")
            and ch_tags.get("horizon_days") == cp_tags.get("horizon_days")
        )
        if not same:
            raise ValueError(
                f"champion (v{champion}) and challenger (v{challenger}) were evaluated on different held-out data "
                "(snapshot, horizon or data differ): pass --data to score both on the challenger's held-out snapshot"
            )
        scores = {
            "challenger": {"log_loss": float(ch_tags["log_loss"]), "roc_auc": float(ch_tags["roc_auc"])},
            "champion": {"log_loss": float(cp_tags["log_loss"]), "roc_auc": float(cp_tags["roc_auc"])},
        }
        basis = f"stored metrics on the same held-out snapshot {ch_tags['holdout_as_of']}"
    ch, cp = scores["challenger"], scores["champion"]
    better = ch["log_loss"] <= cp["log_loss"] + PROMOTION_TOLERANCE
    verdict = "promoted" if better else "kept the champion"
    reason = (
        f"{verdict}: challenger v{challenger} log loss {ch['log_loss']:.4f} (AUC {ch['roc_auc']:.3f}) vs "
        f"champion v{champion} {cp['log_loss']:.4f} (AUC {cp['roc_auc']:.3f}); {basis}"
    )
    if better:
        client.set_registered_model_alias(name, CHAMPION, challenger)
    return Promotion(better, reason, challenger, champion)


def _score_on_holdout(settings: Settings, name: str, versions: dict[str, str], data: Dataset, tags: dict) -> dict:
    import mlflow
    import pyarrow as pa

    from features.build import build_features, entities_at
    from features.labels import build_labels
    from training.metrics import classification_metrics

    as_of = datetime.fromisoformat(tags["holdout_as_of"])
    horizon = int(tags["horizon_days"])
    labels = build_labels(data, entities_at(data, as_of), horizon_days=horizon).to_pandas()
    entities = pa.Table.from_pandas(labels[["customer_id", "as_of"]], preserve_index=False)
    labelled: dict[tuple[str, ...], pd.DataFrame] = {}  # features per event-type set: usually both models share one
    out: dict = {"n": len(labels)}
    for role, version in versions.items():
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
        if model.horizon_days != horizon:
            raise ValueError(
                f"the {role} (v{version}) predicts a {model.horizon_days}-day horizon, the challenger "
                f"{horizon} days: they cannot be compared"
            )
        if model.event_types not in labelled:
            feats = build_features(data, entities, event_types=model.event_types).to_pandas()
            labelled[model.event_types] = feats.merge(labels, on=["customer_id", "as_of"])
        merged = labelled[model.event_types]
        p = model.classifier.predict_proba(merged)
        out[role] = classification_metrics(merged["churned"].to_numpy(), p)
    return out


def resolve_version(settings: Settings, model_uri: str) -> str:
    """'models:/churnguard@champion' -> 'churnguard/3' (what the scorecards call model_version)."""
    from mlflow.tracking import MlflowClient

    configure(settings)
    if not model_uri.startswith("models:/"):
        return model_uri
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        try:
            return f"{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
        except Exception:
            raise ValueError(f"no model behind {model_uri}: train one first (`churn train`)") from None
    return ref


def load_model(settings: Settings, model_uri: str | None = None) -> ChurnModel:
    """Load a registered ChurnModel once, resolving an alias to its version for the scorecards."""
    import mlflow

    uri = model_uri or settings.model_uri
    version = resolve_version(settings, uri)  # resolve first: the alias could move while we load
    model = mlflow.pyfunc.load_model(uri if not uri.startswith("models:/") else f"models:/{version}")
    model = model.unwrap_python_model()
    if uri.startswith("models:/"):
        model.model_version = version
    if settings.scoring.tier_thresholds:  # an explicit setting overrides the thresholds stored at training
        model.tier_thresholds = tuple(settings.scoring.tier_thresholds)
    return model
