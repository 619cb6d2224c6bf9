"""Reading the MLflow model registry: resolve an alias, load a registered ``ChurnModel``.

Every call goes through an ``MlflowClient`` bound to the configured tracking and registry URIs: nothing here
touches MLflow's process-wide URIs or ``os.environ``, so two settings in one process (tests, a notebook) never
see each other's registry.

Only "this alias is not set" means "no such model yet". Any other failure (an unreachable server, a broken
store) is a ``RegistryError``: promotion must not move ``champion`` past a check it could not make, and a
service must not start without knowing what it serves.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from model.churn_model import ChurnModel
from model.settings import MlflowSettings

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION, CHALLENGER = "champion", "challenger"


class RegistryError(RuntimeError):
    """The model registry could not be read or written: unreachable, broken, or refusing."""


class ModelNotFoundError(LookupError):
    """The registry is fine but holds no model behind that name, version or alias."""


@contextmanager
def registry_errors(settings: MlflowSettings, doing: str) -> Iterator[None]:
    """Turn whatever MLflow or its store raises into one ``RegistryError`` naming the store and the operation."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*noload.*")  # SQLAlchemy chatter of MLflow's SQL store
            yield
    except (ModelNotFoundError, RegistryError):
        raise
    except Exception as e:  # MlflowException, requests/SQLAlchemy errors: all mean "the registry failed us"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RegistryError(f"model registry {settings.registry} failed while {doing}: {first}") from e


def mlflow_client(settings: MlflowSettings) -> MlflowClient:
    """A client bound to the configured URIs; an embedded SQLite store gets its folder created first."""
    from mlflow.tracking import MlflowClient

    for uri in (settings.tracking, settings.registry):
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with registry_errors(settings, "connecting"):
        return MlflowClient(tracking_uri=settings.tracking, registry_uri=settings.registry)


def alias_version(client: MlflowClient, settings: MlflowSettings, name: str, alias: str) -> str | None:
    """The version behind ``name@alias``; ``None`` only when the model does not exist or has no such alias.

    The registered model is read and its aliases looked up, rather than asking for the alias and reading the
    error: stores differ in the error they give for a missing alias, and an unreachable one must never pass for
    "not set".
    """
    from mlflow.exceptions import MlflowException

    with registry_errors(settings, f"reading alias {name}@{alias}"):
        try:
            registered = client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    version = (registered.aliases or {}).get(alias)
    return str(version) if version is not None else None


def resolve_version(client: MlflowClient, settings: MlflowSettings, model_uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, version)."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri}: not a registry URI (models:/<name>@<alias> or models:/<name>/<version>)")
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = alias_version(client, settings, name, alias)
        if version is None:
            raise ModelNotFoundError(f"no model behind {model_uri}: train one first (`churn train`)")
        return name, version
    name, _, version = ref.partition("/")
    if not version.isdigit():
        raise ValueError(f"{model_uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return name, version


def model_version(client: MlflowClient, settings: MlflowSettings, name: str, version: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    with registry_errors(settings, f"reading {name} v{version}"):
        try:
            return client.get_model_version(name, version)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFoundError(f"model {name} has no version {version}") from None
            raise


def registered_version(settings: MlflowSettings, model_uri: str) -> str:
    """``models:/churnguard@champion`` -> ``churnguard/3``: what scorecards call ``model_version``."""
    client = mlflow_client(settings)
    name, version = resolve_version(client, settings, model_uri)
    model_version(client, settings, name, version)  # a clear "not found" for a version that does not exist
    return f"{name}/{version}"


def download_model(settings: MlflowSettings, model_uri: str, dst: Path | None = None) -> tuple[Path, str]:
    """Fetch a registered model's artifact folder; returns (local path, "name/version").

    An alias is resolved to its version first: the alias could move while we download.
    """
    import mlflow.artifacts

    client = mlflow_client(settings)
    name, version = resolve_version(client, settings, model_uri)
    source = model_version(client, settings, name, version).source
    with registry_errors(settings, f"downloading {name} v{version} from {source}"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dst) if dst else None, tracking_uri=settings.tracking
        )
    return Path(local), f"{name}/{version}"


def load_model(settings: MlflowSettings, model_uri: str | None = None) -> ChurnModel:
    """Load a registered ChurnModel (default: the champion), labelled with its version, checked against the code."""
    local, version = download_model(settings, model_uri or settings.model_uri(CHAMPION))
    return load_local_model(local, version)


def load_local_model(path: Path, version: str) -> ChurnModel:
    """A model from its artifact folder (downloaded, or in BentoML's store); refuses one this code cannot feed."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(path)).unwrap_python_model()
    if not isinstance(model, ChurnModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a churnguard ChurnModel")
    model.model_version = version
    model.check_compatible()
    return model
