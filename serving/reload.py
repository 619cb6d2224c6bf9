"""The model a service serves, and following the registry alias without a restart.

``ModelFollower.current`` is an immutable ``Served`` snapshot (model, version, when it was loaded). A request reads
it once at its start and uses only that snapshot, so a promotion picked up mid-request never mixes two models in
one answer: requests in flight finish on the model they started with, the next ones get the new model.

A background thread checks the alias every ``serving.reload_interval_s`` seconds through ``model.registry`` (a
client bound to the configured URIs, no global MLflow state). A new version is loaded and warmed up *before* the
swap; a load that fails keeps the old model, logs why, and is reported by ``/readyz`` and ``GET /v1/model``
(``reload_error``) until a later check succeeds. An unreachable registry at start-up is an error (the service does
not start), later it is only reported: the loaded model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from model.churn_model import ChurnModel

log = logging.getLogger("churnguard.api")


@dataclass(frozen=True)
class Served:
    model: ChurnModel
    version: str  # "churnguard/3", what scorecards carry as model_version
    source: str  # where it came from: "models:/churnguard@champion" or "bento churnguard:abc123"
    loaded_at: datetime


class ModelFollower:
    """Holds the served model and, when given a ``resolve``, follows what it returns."""

    def __init__(
        self,
        load: Callable[[str], ChurnModel],
        *,
        initial: str,
        source: str,
        resolve: Callable[[], str] | None = None,
        interval_s: float = 0.0,
    ) -> None:
        self._load = load
        self._resolve = resolve
        self.source = source
        self.interval_s = interval_s
        self.current = Served(load(initial), initial, source, _now())  # a failure here stops the start-up
        self.reload_error: str | None = None
        self.last_check: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def follows(self) -> bool:
        return self._resolve is not None and self.interval_s > 0

    def start(self) -> None:
        if self.follows and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> bool:
        """Look at the alias once; swap in a new version if there is one. True when the model changed."""
        if self._resolve is None:
            return False
        self.last_check = _now()
        try:
            version = self._resolve()
        except Exception as e:  # RegistryError, ModelNotFoundError (alias removed), anything the store raises
            self._failed(f"registry check failed: {_first_line(e)}")
            return False
        old = self.current
        if version == old.version:
            self.reload_error = None
            return False
        try:
            model = self._load(version)
        except Exception as e:  # a broken artifact, an incompatible model, an unreachable artifact store
            self._failed(f"loading {version} failed, still serving {old.version}: {_first_line(e)}")
            return False
        self.current = Served(model, version, self.source, _now())  # one reference swap: atomic for readers
        self.reload_error = None
        log.info("model reloaded: now serving %s (was %s)", version, old.version)
        return True

    def _failed(self, message: str) -> None:
        self.reload_error = message
        log.error("model reload: %s", message)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
