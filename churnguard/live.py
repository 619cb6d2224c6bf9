"""``churn triggers --follow / --queued``: the live trigger worker as a process of its own.

The API queues the customers each ``POST /v1/events`` touches (``serving/live_triggers.py``). With
``serving.live_triggers_worker = "process"`` no API process evaluates them; this command does, with the same worker
code (claims with a lease, so several such processes can share one store), following the registry alias like the
service does, until SIGTERM or Ctrl-C. ``--queued`` evaluates what is queued now and stops (cron, tests).
"""

from __future__ import annotations

import signal
from typing import Any

from churnguard.console import console
from churnguard.settings import Settings
from features.engines import SQLiteEngine
from model.registry import load_model, registered_version
from serving.customers import StoreHandle
from serving.live_triggers import LiveTriggers
from serving.policy import Policy
from serving.reload import ModelFollower
from serving.triggers import TriggerRules


def evaluate_queue(settings: Settings, rules: TriggerRules, policy: Policy, *, follow: bool) -> None:
    uri = settings.model_uri
    thresholds = settings.scoring.tier_thresholds

    def resolve() -> str:
        return registered_version(settings.mlflow, uri)

    with console.status(f"loading {uri} ..."):
        follower = ModelFollower(
            lambda version: load_model(settings.mlflow, f"models:/{version}").with_overrides(
                tier_thresholds=thresholds
            ),
            initial=resolve(),
            source=uri,
            resolve=resolve,
            interval_s=settings.serving.reload_interval_s if follow else 0.0,
        )
    store = StoreHandle(settings.store, settings.data_dir)
    live = LiveTriggers(
        store,
        lambda: follower.current.model,
        rules,
        policy,
        engine=SQLiteEngine(),  # passes of at most live_triggers_batch customers: request-sized inputs
        batch=settings.serving.live_triggers_batch,
        poll_s=settings.serving.live_triggers_poll_s,
    )
    try:
        if not follow:
            done = live.drain()
            console.print(f"evaluated {done.customers:,} queued customers; {done.fired:,} triggers fired")
            return
        follower.start()

        def stop(signum: int, frame: Any) -> None:
            live.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        console.print(
            f"evaluating the customers queued by POST /v1/events in {store.location} with {uri} "
            f"(version {follower.current.version}); SIGTERM or Ctrl-C to stop"
        )
        live.run_until_stopped()
    finally:
        follower.stop()
        store.close()
