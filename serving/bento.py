"""Packing the scoring API: the champion goes into BentoML's model store, then ``bentoml build`` packs it.

``serving/service.py`` serves ``churnguard:latest`` from the model store (``churn serve`` puts the champion there
first); a bento built afterwards contains that model, so ``bentoml containerize`` gives an image that needs no
MLflow server. The model artifact carries its own code (``code_paths``), so the store copy loads anywhere.
Builds never lock packages over the network (``lock_packages: false`` in bentofile.yaml;
``serving/requirements.txt`` holds the pins).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from model.registry import CHAMPION, download_model, registered_version
from model.settings import MlflowSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENTO_MODEL = "churnguard:latest"  # what serving/service.py loads


def import_champion(settings: MlflowSettings, model_uri: str | None = None) -> str:
    """Make ``churnguard:latest`` in BentoML's store the given registry model (default: the champion).

    Imports only when the latest stored model is a different registry version; returns the BentoML tag.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    version = registered_version(settings, model_uri or settings.model_uri(CHAMPION))
    try:
        latest = bentoml.models.get(BENTO_MODEL)
        if latest.info.labels.get("registry_version") == version:
            return str(latest.tag)
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="churnguard-bento-") as tmp:
        local, _ = download_model(settings, f"models:/{version}", Path(tmp))
        model = bentoml.mlflow.import_model(
            "churnguard", str(local), labels={"registry_version": version}, metadata={"registry": settings.registry}
        )
    return str(model.tag)


def build_bento(settings: MlflowSettings, model_uri: str | None = None) -> tuple[str, str]:
    import bentoml

    tag = import_champion(settings, model_uri)
    bento = bentoml.bentos.build_bentofile(str(PROJECT_ROOT / "bentofile.yaml"), build_ctx=str(PROJECT_ROOT))
    return tag, str(bento.tag)
