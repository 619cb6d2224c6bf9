"""Live trigger evaluation: the customers ``POST /v1/events`` touched are evaluated in the background, off the request.

Evaluating a customer (their rows, the features, the model, the rules) costs about a hundred milliseconds, far more
than the request itself, so the request does not wait for it. Instead:

1. the request stores its rows with ``store.append(..., evaluate=True)``: the customers whose rows changed are
   queued in the store's ``pending_evaluations`` table **in the same transaction** as the rows
   (``features/store/outbox.py``), answers, and wakes this worker;
2. the worker (:class:`LiveTriggers`, one thread per service process) claims a batch of pending customers with a
   lease (``store.claim_evaluations``), evaluates them at its own now with the batch's code
   (``serving/triggers.py::evaluate_customers``: same rules, same outbox ids, cool-downs, cap and control draw), and
   commits the firings together with the deletion of the claimed rows (``add_outbox(..., evaluated=...)``).

The worker waits ``serving.live_triggers_delay_s`` (1 s) after a request wakes it, so that a stream of requests
shares one pass: a pass's fixed cost (~25 ms of CPU) dwarfs a customer's (~0.7 ms), and one pass a second rather
than one per request keeps the worker from competing with the requests for the CPU all the time. Firings reach the
outbox about that much after the request.

So nothing is lost: rows committed have their evaluation queued; a worker killed mid-evaluation leaves its claimed
rows, which the next worker (or this one after a restart, which drains leftovers before anything else) claims once
the lease (:data:`LEASE_S`) has run out. Several workers or processes never evaluate one customer at once (the
claim), and should a lease run out mid-evaluation, the outbox id ``uuid5(rule|customer|as_of date)`` and the
cool-downs keep a firing single. A customer touched again while being evaluated keeps a pending row (a newer
``seq``) and is evaluated again with the new rows.

With ``serving.live_triggers_worker = "process"`` the API processes only queue, and ``churn triggers --follow``
processes (as many as wanted, on any machine that reaches the store) run this worker in the foreground: the
evaluation then never competes with the requests for their process's CPU and interpreter lock.

A store that cannot be reached pauses the worker (it tries again after ``serving.live_triggers_poll_s``); the routes
answer as they would anyway. ``serving.live_triggers = false`` turns it off: rows are then not queued, and only
``churn triggers`` evaluates. ``/readyz`` reports the backlog (``pending_evaluations``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from features.contract import now_utc
from features.engines import Engine
from model.churn_model import ChurnModel
from serving.customers import StoreHandle, StoreUnavailable
from serving.policy import Policy
from serving.triggers import TriggerRules, evaluate_customers

log = logging.getLogger("churnguard.api")
LEASE_S = 120.0  # a claim lasts this long: far beyond one batch's evaluation (about a second for 100 customers)


@dataclass(frozen=True)
class Drained:
    """One pass: customers claimed and evaluated, outbox items added."""

    customers: int = 0
    fired: int = 0


class LiveTriggers:
    """The background worker of one service process (see the module docstring).

    ``model`` gives the model to evaluate with at each pass (the service's current one: a reload applies at the
    next pass); ``clock`` the evaluation time (now, UTC)."""

    def __init__(
        self,
        store: StoreHandle,
        model: Callable[[], ChurnModel],
        rules: TriggerRules,
        policy: Policy,
        *,
        engine: Engine | None = None,
        batch: int = 100,
        poll_s: float = 2.0,
        delay_s: float = 0.0,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.store = store
        self.model = model
        self.rules = rules
        self.policy = policy
        self.engine = engine
        self.batch = batch
        self.poll_s = poll_s
        self.delay_s = delay_s
        self.clock = clock
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Drain what earlier runs left, then whatever requests queue, until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="churnguard-live-triggers", daemon=True)
        self._wake.set()  # leftovers first
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_until_stopped(self) -> None:
        """The worker in the foreground (``churn triggers --follow``): what :meth:`start` runs, in this thread."""
        self._wake.set()
        self._loop()

    def notify(self) -> None:
        """A request queued customers: start a pass now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def backlog(self) -> int:
        """Customers waiting for an evaluation, all processes together (raises ``StoreUnavailable``)."""
        return self.store.run(lambda store: store.pending_evaluations())

    def drain(self) -> Drained:
        """Passes until nothing is due (claims held by another live worker are left to it)."""
        total = Drained()
        while not self._stop.is_set():
            done = self.drain_once()
            if done.customers == 0:
                break
            total = Drained(total.customers + done.customers, total.fired + done.fired)
        return total

    def drain_once(self) -> Drained:
        """Claim up to ``batch`` pending customers, evaluate them, commit the firings and retire the claims."""
        now = self.clock()
        claimed = self.store.run(lambda store: store.claim_evaluations(now, self.batch, LEASE_S))
        if claimed.num_rows == 0:
            return Drained()
        ids = claimed["customer_id"].to_pylist()
        model = self.model()
        run = self.store.run(
            lambda store: evaluate_customers(
                store, model, self.rules, ids, now, policy=self.policy, engine=self.engine, claimed=claimed
            )
        )
        if run.added:
            log.info("live triggers: %d customers evaluated, %d fired", len(ids), run.added)
        return Drained(len(ids), run.added)

    def _loop(self) -> None:
        """Woken by a request (or every ``poll_s``), wait ``delay_s`` so that the requests arriving meanwhile share
        the pass (an evaluation's fixed cost, ~25 ms of CPU, dwarfs each customer's, ~0.7 ms: one pass per second
        under a steady stream instead of one per request keeps the worker from competing with the requests for the
        CPU all along), then pass after pass while full batches are due."""
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self.delay_s:
                self._stop.wait(self.delay_s)
            try:
                while not self._stop.is_set() and self.drain_once().customers == self.batch:
                    pass
                self.last_error = None
            except StoreUnavailable as e:
                self._failed(f"the customer store at {e.location} cannot be reached: {e.reason}")
            except Exception as e:  # a bug must not end the worker silently: logged, retried after the lease
                log.exception("live triggers: evaluation failed")
                self._failed(f"{type(e).__name__}: {e}")

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.error("live triggers paused: %s (next try in %.0f s)", reason, self.poll_s)
        self.last_error = reason
