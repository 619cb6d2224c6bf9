"""Packing the scoring API: the champion goes into BentoML's model store, then ``bentoml build`` packs it.

``serving/service.py`` refers to ``churnguard:latest`` in the model store; a bento built afterwards contains that
model, so ``bentoml containerize`` gives an image that needs no MLflow server. Builds never lock packages over the
network (``lock_packages: false`` in bentofile.yaml; ``serving/requirements.txt`` holds the pins).
"""

from __future__ import annotations

from pathlib import Path

from churnguard.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def import_champion(settings: Settings, model_uri: str | None = None) -> str:
    """Copy the MLflow model into BentoML's store as churnguard:<new version>; returns the BentoML tag."""
    import bentoml

    from training.tracking import configure, resolve_version

    configure(settings)
    uri = model_uri or settings.model_uri
    version = resolve_version(settings, uri)
    source = f"models:/{version}" if uri.startswith("models:/") else uri
    model = bentoml.mlflow.import_model("churnguard", source, labels={"registry_version": version},
                                        metadata={"mlflow_uri": source})
    return str(model.tag)


def build_bento(settings: Settings, model_uri: str | None = None) -> tuple[str, str]:
    import bentoml

    tag = import_champion(settings, model_uri)
    bento = bentoml.bentos.build_bentofile(str(PROJECT_ROOT / "bentofile.yaml"), build_ctx=str(PROJECT_ROOT))
    return tag, str(bento.tag)
