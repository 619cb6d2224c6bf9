"""MLflow: log a training run, register the model, and move the ``champion`` alias only through a gate.

Every training registers a new version of the model with alias ``challenger``. The very first version also becomes
``champion`` so ``churn train`` then ``churn score`` just works. After that ``promote`` moves ``champion`` only when
the challenger is at least as good as the current champion on the *same* held-out data (log loss, the selection
metric). Aliases, not the deprecated stages (mlflow/mlflow#10336).

Everything goes through an ``MlflowClient`` bound to the configured store (``model/registry.py``): no process-wide
MLflow state and no environment variables are changed. The model is saved with ``code_paths`` (the ``model`` and
``features`` packages), so a fresh environment or a bento loads it from its artifact alone.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from model.churn_model import IncompatibleModelError
from model.monitoring import ModelHealth, labels_seen_until
from model.registry import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    load_model,
    mlflow_client,
    model_version,
    registry_errors,
)
from model.settings import MlflowSettings
from training.train import TrainResult, data_fingerprint

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from features.dataset import Dataset
    from training.backtest import BacktestResult

PROMOTION_TOLERANCE = 1e-4  # log loss difference treated as a tie
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = ("model", "features")  # the packages a registered model needs at run time (code_paths)
RUNTIME_PACKAGES = (
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "lightgbm",
    "scipy",
    "mlflow",
    "duckdb",
    "ibis-framework",
    "pydantic",
    "cloudpickle",
)


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: str
    became_champion: bool
    model_uri: str


def log_training(result: TrainResult, settings: MlflowSettings) -> LoggedModel:
    """One run with params, metrics, the evaluation and its plots, and the pyfunc; registered as challenger."""
    from mlflow.entities import Metric, Param

    client = mlflow_client(settings)
    name = settings.model_name
    evaluation = result.evaluation
    with registry_errors(settings, "logging the training run"):
        run = client.create_run(_experiment_id(client, settings), run_name=f"train-{datetime.now():%Y%m%d-%H%M%S}")
        run_id = run.info.run_id
        now = int(datetime.now().timestamp() * 1000)
        metrics = {k: float(v) for k, v in evaluation.flat_metrics().items() if np.isfinite(v)}
        metrics.update({f"time_{k}_s": float(v) for k, v in result.timings.items()})
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in result.params.items()],
        )
        client.log_dict(run_id, evaluation.to_dict(), "evaluation/evaluation.json")
        client.log_text(run_id, "\n".join(result.model.feature_names), "evaluation/features.txt")
        for path in result.plots.values():
            client.log_artifact(run_id, str(path), "evaluation/plots")
        result.model.model_version = f"run:{run_id}"
        with tempfile.TemporaryDirectory(prefix="churnguard-model-") as tmp:
            _save_pyfunc(result, Path(tmp) / "model")
            client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
        client.set_terminated(run_id)
        version = _register(client, name, f"{run.info.artifact_uri}/model", run_id, _version_tags(result))
        client.set_registered_model_alias(name, CHALLENGER, version)
    first = alias_version(client, settings, name, CHAMPION) is None
    if first:
        with registry_errors(settings, "setting the first champion"):
            client.set_registered_model_alias(name, CHAMPION, version)
    return LoggedModel(run_id, version, first, f"models:/{name}/{version}")


def log_backtest(result: BacktestResult, files: dict[str, Path], settings: MlflowSettings) -> str:
    """One run of the experiment: each model's metrics per cutoff (step = cutoff order) and averaged, the
    settings the protocol ran with, the table, CSV, JSON and plot. Returns the run id."""
    from mlflow.entities import Metric, Param

    client = mlflow_client(settings)
    with registry_errors(settings, "logging the backtest"):
        run = client.create_run(_experiment_id(client, settings), run_name=f"backtest-{datetime.now():%Y%m%d-%H%M%S}")
        run_id = run.info.run_id
        metrics: list[Metric] = []
        for step, cutoff in enumerate(result.cutoffs):
            at = int(datetime.fromisoformat(cutoff.cutoff).timestamp() * 1000)
            for model, values in cutoff.metrics.items():
                metrics += [
                    Metric(f"backtest_{model}_{k}", float(v), at, step) for k, v in values.items() if np.isfinite(v)
                ]
        now = int(datetime.now().timestamp() * 1000)
        for model, values in result.mean().items():
            metrics += [Metric(f"mean_{model}_{k}", float(v), now, 0) for k, v in values.items() if np.isfinite(v)]
        params = {
            "kind": "backtest",
            "cutoffs": ",".join(c.cutoff for c in result.cutoffs),
            "refused_cutoffs": ",".join(result.refused) or "none",
            "horizon_days": result.horizon_days,
            **{f"training_{k}": v for k, v in result.settings.items()},
        }
        client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        for path in files.values():
            client.log_artifact(run_id, str(path), "backtest")
        client.set_terminated(run_id)
    return run_id


def log_health(health: ModelHealth, settings: MlflowSettings) -> str:
    """One run of the experiment for a ``churn monitor`` check: every PSI, the means and the outcome check as
    metrics (stamped at as_of), the thresholds and the model as params, the status and worst column as tags, and
    the whole result as ``monitor/health.json``. Returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_client(settings)
    worst = health.worst
    with registry_errors(settings, "logging the monitoring run"):
        run = client.create_run(_experiment_id(client, settings), run_name=f"monitor-{health.as_of:%Y%m%d-%H%M%S}")
        run_id = run.info.run_id
        at = int(health.as_of.timestamp() * 1000)
        params = {
            "kind": "monitor",
            "model_version": health.model_version,
            "as_of": f"{health.as_of:%Y-%m-%d %H:%M:%S}",
            "reference_as_of": health.reference_as_of or "none",
            "psi_warn": health.psi_warn,
            "psi_alert": health.psi_alert,
            "horizon_days": health.horizon_days,
        }
        tags = {"status": health.status, "worst": worst.name if worst else "none"}
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, at, 0) for k, v in health.metrics().items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.log_dict(run_id, json.loads(json.dumps(health.to_dict(), default=str)), "monitor/health.json")
        client.set_terminated(run_id)
    return run_id


def log_lift(
    metrics: dict[str, float], params: dict[str, object], files: dict[str, Path], settings: MlflowSettings
) -> str:
    """One run for a measured campaign lift (``churn lift``, ``serving/lift.py``): per-rule metrics, the window it
    looked at, the table, JSON and plot. Returns the run id."""
    from mlflow.entities import Metric, Param

    client = mlflow_client(settings)
    with registry_errors(settings, "logging the lift measurement"):
        run = client.create_run(_experiment_id(client, settings), run_name=f"lift-{datetime.now():%Y%m%d-%H%M%S}")
        run_id = run.info.run_id
        now = int(datetime.now().timestamp() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)],
            params=[Param(k, str(v)[:6000]) for k, v in {"kind": "lift", **params}.items()],
        )
        for path in files.values():
            client.log_artifact(run_id, str(path), "lift")
        client.set_terminated(run_id)
    return run_id


def _experiment_id(client: MlflowClient, settings: MlflowSettings) -> str:
    existing = client.get_experiment_by_name(settings.experiment)
    if existing is not None:
        return existing.experiment_id
    local = settings.tracking.startswith("sqlite:") and settings.artifact_root is not None
    location = Path(settings.artifact_root).resolve().as_uri() if local else None
    return client.create_experiment(settings.experiment, artifact_location=location)


def _save_pyfunc(result: TrainResult, path: Path) -> None:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    example = result.holdout_features[["customer_id", "as_of", *result.model.feature_names]].head(3)
    example = example.reset_index(drop=True)
    signature = infer_signature(example, result.model.score(example), params={"reasons": False})
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=result.model,
        signature=signature,
        input_example=example,
        pip_requirements=[f"{p}=={pkg_version(p)}" for p in RUNTIME_PACKAGES],
        code_paths=[str(PROJECT_ROOT / package) for package in MODEL_CODE],
        metadata={
            "feature_set": result.model.feature_set,
            "horizon_days": result.model.horizon_days,
            "churnguard_version": pkg_version("churnguard"),
        },
    )


def _register(client: MlflowClient, name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return str(client.create_model_version(name, source, run_id=run_id, tags=tags).version)


def _version_tags(result: TrainResult) -> dict[str, str]:
    evaluation = result.evaluation
    winner = evaluation.candidates[evaluation.winner]
    return {
        "holdout_as_of": evaluation.holdout_as_of,
        "winner": evaluation.winner,
        "horizon_days": str(result.model.horizon_days),
        "data_fingerprint": _fingerprint(result.params),
        "log_loss": f"{winner['log_loss']:.6f}",
        "roc_auc": f"{winner['roc_auc']:.6f}",
    }


def _fingerprint(params: dict) -> str:
    keys = ("data_transactions", "data_events", "data_customers", "data_start", "data_end")
    return json.dumps({k: params[k] for k in keys}, sort_keys=True)


# ------------------------------------------------------------------------------------------------ promotion


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    challenger: str | None
    champion_before: str | None


def promote(settings: MlflowSettings, *, data: Dataset | None = None) -> Promotion:
    """Move ``champion`` to the challenger if it is at least as good on the challenger's held-out snapshot.

    Both models are judged on the same rows, each out of sample. With ``data``, a model is re-scored on the
    challenger's held-out snapshot built fresh from ``data`` when it has never been fitted on that snapshot's labels;
    a model that has (the production fit learns from every labelled window, the held-out one included) is judged by
    its stored out-of-time selection metrics, which is only allowed when they were measured on the same snapshot of
    the same data. Without ``data`` both stored metrics are compared under that same condition. A registry that
    cannot be read is an error (``RegistryError``), never "no champion yet".
    """
    client = mlflow_client(settings)
    name = settings.model_name
    challenger = alias_version(client, settings, name, CHALLENGER)
    champion = alias_version(client, settings, name, CHAMPION)
    if challenger is None:
        raise ValueError(f"model {name!r} has no '{CHALLENGER}' version: run `churn train` first")
    if champion is None:
        with registry_errors(settings, "setting the champion alias"):
            client.set_registered_model_alias(name, CHAMPION, challenger)
        return Promotion(True, f"no champion yet: version {challenger} becomes champion", challenger, None)
    if champion == challenger:
        return Promotion(False, f"version {challenger} is already the champion", challenger, champion)
    tags = {
        "challenger": model_version(client, settings, name, challenger).tags,
        "champion": model_version(client, settings, name, champion).tags,
    }
    versions = {"challenger": challenger, "champion": champion}
    if data is not None:
        scores = _score_on_holdout(settings, versions, data, tags)
    else:
        scores = {role: _stored(role, versions[role], tags, tags["challenger"]) for role in versions}
        scores["basis"] = f"stored metrics on the same held-out snapshot {tags['challenger']['holdout_as_of']}"
    ch, cp, basis = scores["challenger"], scores["champion"], scores["basis"]
    if cp is None:
        with registry_errors(settings, "moving the champion alias"):
            client.set_registered_model_alias(name, CHAMPION, challenger)
        reason = (
            f"promoted: champion v{champion} can no longer be scored by this code ({scores['incompatible']}); "
            f"challenger v{challenger} log loss {ch['log_loss']:.4f} (AUC {ch['roc_auc']:.3f}); {basis}"
        )
        return Promotion(True, reason, challenger, champion)
    better = ch["log_loss"] <= cp["log_loss"] + PROMOTION_TOLERANCE
    verdict = "promoted" if better else "kept the champion"
    reason = (
        f"{verdict}: challenger v{challenger} log loss {ch['log_loss']:.4f} (AUC {ch['roc_auc']:.3f}) vs "
        f"champion v{champion} {cp['log_loss']:.4f} (AUC {cp['roc_auc']:.3f}); {basis}"
    )
    if better:
        with registry_errors(settings, "moving the champion alias"):
            client.set_registered_model_alias(name, CHAMPION, challenger)
    return Promotion(better, reason, challenger, champion)


def _stored(role: str, version: str, tags: dict[str, dict], reference: dict, data: Dataset | None = None) -> dict:
    """A model's stored out-of-time metrics, if they were measured on the reference snapshot of the same data."""
    own = tags[role]
    fingerprint = _fingerprint(data_fingerprint(data)) if data is not None else reference.get("data_fingerprint")
    same = (
        own.get("holdout_as_of") == reference.get("holdout_as_of")
        and own.get("data_fingerprint") == fingerprint
        and own.get("horizon_days") == reference.get("horizon_days")
    )
    if not same:
        raise ValueError(
            f"the {role} (v{version}) cannot be judged out of sample on the challenger's held-out snapshot "
            f"{reference.get('holdout_as_of')}: "
            + (
                "it was fitted on that window's labels and its stored metrics come from other data"
                if data is not None
                else "champion and challenger were evaluated on different held-out data (snapshot, horizon or data "
                "differ); pass --data to score both on the challenger's held-out snapshot"
            )
            + "; compare them with `churn backtest` instead"
        )
    return {"log_loss": float(own["log_loss"]), "roc_auc": float(own["roc_auc"])}


def _score_on_holdout(settings: MlflowSettings, versions: dict[str, str], data: Dataset, tags: dict) -> dict:
    import pyarrow as pa

    from features.build import build_features, entities_at
    from features.labels import build_labels
    from training.metrics import classification_metrics

    reference = tags["challenger"]
    as_of = datetime.fromisoformat(reference["holdout_as_of"])
    horizon = int(reference["horizon_days"])
    labels = build_labels(data, entities_at(data, as_of), horizon_days=horizon).to_pandas()
    entities = pa.Table.from_pandas(labels[["customer_id", "as_of"]], preserve_index=False)
    labelled: dict[tuple[str, ...], pd.DataFrame] = {}  # features per event-type set: usually both models share one
    out: dict = {}
    how: dict[str, str] = {}
    for role, version in versions.items():
        try:
            model = load_model(settings, f"models:/{settings.model_name}/{version}")
        except IncompatibleModelError as e:
            if role != "champion":
                raise
            out[role], out["incompatible"] = None, str(e).split(": retrain")[0]
            continue
        if model.horizon_days != horizon:
            raise ValueError(
                f"the {role} (v{version}) predicts a {model.horizon_days}-day horizon, the challenger "
                f"{horizon} days: they cannot be compared"
            )
        seen = labels_seen_until(model)
        if seen is not None and seen > as_of:  # fitted on (part of) this window: its stored metrics, or nothing
            out[role] = _stored(role, version, tags, reference, data)
            how[role] = "stored out-of-time metrics"
            continue
        if model.event_types not in labelled:
            feats = build_features(data, entities, event_types=model.event_types).to_pandas()
            labelled[model.event_types] = feats.merge(labels, on=["customer_id", "as_of"])
        merged = labelled[model.event_types]
        p = model.classifier.predict_proba(merged)
        out[role] = classification_metrics(merged["churned"].to_numpy(), p)
        how[role] = f"re-scored ({len(merged):,} customers)"
    out["basis"] = f"held-out snapshot {as_of:%Y-%m-%d}: " + ", ".join(f"{r} {h}" for r, h in how.items())
    return out
