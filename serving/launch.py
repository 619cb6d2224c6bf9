"""How ``churn serve`` starts the API: checks first, then the BentoML server *replaces* the ``churn`` process.

Checks, each ending in one line before anything listens:

- **Where to listen.** No API key configured -> 127.0.0.1 only (said so). Another interface needs keys, or
  ``serving.allow_unauthenticated`` (``--allow-unauthenticated``), which prints a warning.
- **The keys file** parses (a typo would otherwise lock every client out at the first request).
- **The registry** answers and holds the model (``RegistryError`` -> exit 3, no model -> exit 2), unless the model
  comes packed in a bento.

Then ``os.execve`` of ``sys.executable -m bentoml serve ...``: the running interpreter, so it works without an
activated environment, and the same process id, so a process manager's SIGTERM reaches BentoML's own shutdown
(which stops its workers and frees the port) instead of orphaning it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from model.registry import registered_version
from model.settings import MlflowSettings
from serving.auth import KeyRing
from serving.settings import ScoringSettings, ServingSettings

SERVICE = "serving.service:ChurnService"
SERVICE_NAME = "churnguard"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    model_version: str | None
    notes: list[str] = field(default_factory=list)  # what to tell the user
    warnings: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_launch(
    serving: ServingSettings,
    scoring: ScoringSettings,
    mlflow: MlflowSettings,
    *,
    data_dir: Path,
    model_uri: str,
    environ: dict[str, str] | None = None,
) -> Launch:
    """Everything ``churn serve`` checks and decides, without starting anything."""
    keys = KeyRing(serving)  # parses the keys file now: a broken one is a one-line error here
    notes, warnings = [], []
    host = serving.host or ("0.0.0.0" if keys.enabled else "127.0.0.1")
    if not keys.enabled:
        if is_loopback(host):
            notes.append(
                f"no API key configured: listening on {host} only (set serving.keys_file or serving.api_keys "
                "to serve other machines)"
            )
        elif serving.allow_unauthenticated:
            warnings.append(
                f"listening on {host} with NO authentication: anyone who can reach port {serving.port} can read "
                "customer scores"
            )
        else:
            raise ValueError(
                f"listening on {host} needs API keys (serving.keys_file or serving.api_keys), or "
                "--allow-unauthenticated to serve without them"
            )
    version = registered_version(mlflow, model_uri) if serving.model_source == "registry" else None
    workers = serving.workers or os.cpu_count() or 1
    env = dict(os.environ if environ is None else environ)
    env["CHURN_DATA_DIR"] = str(Path(data_dir).resolve())
    env["CHURN_MLFLOW__TRACKING_URI"] = mlflow.tracking
    env.pop("MLFLOW_TRACKING_URI", None)  # the resolved URI above wins, in every worker
    if mlflow.registry_uri:
        env["CHURN_MLFLOW__REGISTRY_URI"] = mlflow.registry_uri
    if scoring.model_uri:
        env["CHURN_SCORING__MODEL_URI"] = scoring.model_uri
    options = [
        f"services.{SERVICE_NAME}.workers={workers}",
        f"services.{SERVICE_NAME}.traffic.timeout={serving.timeout_s}",
    ]
    env["BENTOML_CONFIG_OPTIONS"] = " ".join([env.get("BENTOML_CONFIG_OPTIONS", ""), *options]).strip()
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(serving.port)]
    return Launch(argv, env, host, serving.port, version, notes, warnings)


def exec_server(launch: Launch) -> None:
    """Become the BentoML server (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(launch.argv[0], launch.argv, launch.env)
