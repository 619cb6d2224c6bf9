"""Push delivery of the trigger outbox: signed webhooks, retries with exponential back-off, a dead letter.

``churn deliver`` runs this in its own process, apart from scoring and the API: a slow or dead receiver can only
slow delivery down, never a scoring run or a request. Each pass takes the pending items that are due
(``Store.claim_deliveries``: treated items only, control items are never pending) and POSTs each to
``delivery.webhook_url``, at most ``delivery.concurrency`` at once, each bounded by ``delivery.timeout_s``. The
outcome of every attempt is written to the item (``Store.mark_delivery``) as soon as it is known:

- a ``2xx`` answer: ``delivered``; it is never sent again;
- anything else (another status, a timeout, a refused or reset connection): ``attempts`` + 1 and, while attempts
  remain, ``pending`` again at ``next_attempt_at`` = now + ``backoff_base_s`` x 2^(attempts - 1) (at most
  ``backoff_max_s``, +- ``backoff_jitter``; a ``Retry-After`` on 429/503 is honoured when longer); after
  ``max_attempts`` failures: ``dead`` (the dead letter), with the last error kept in ``last_error``;
- ``410 Gone``: the receiver no longer wants these webhooks (the specification says to stop): the attempt counts
  as a failure, nothing more is sent in this pass, and ``churn deliver`` stops with an error.

Several ``churn deliver`` processes may share one store (e.g. one PostgreSQL database): a pass claims its items
for ``delivery.lease_s`` (longer than a pass can take: by default that plus a minute; checked when set), so the
others skip them; if a deliverer dies mid-pass, its items become due again when the lease ends.

Delivery is at least once: an item whose answer arrived but whose outcome could not be written (the process was
killed in between) is sent again, with the same ``webhook-id``, which receivers use as their idempotency key.

**Signatures** follow the Standard Webhooks specification (v1, symmetric): headers ``webhook-id`` (the outbox item's
id, the same on every retry), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``, keyed with the base64-decoded part of the
``whsec_`` secret; space-separated, one per key, while an old secret is being rotated out). The body is the minified
JSON that was signed, byte for byte. Signing is a few lines of the standard library (``hmac``); the tests verify
every request with the specification's reference implementation (the ``standardwebhooks`` package), so the two are
checked against each other rather than against themselves.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.store.outbox import DEAD, DELIVERED, PENDING
from serving.settings import DeliverySettings, webhook_key

if TYPE_CHECKING:
    import httpx

    from features.store import Store

EVENT_TYPE = "churnguard.trigger.fired"
USER_AGENT = "churnguard-webhooks/1"
ERROR_CHARS = 300  # of a receiver's answer kept in last_error


class DeliveryError(RuntimeError):
    """Delivery cannot go on: the receiver answered 410 Gone, or another deliverer holds the lock. (Missing
    settings are a ``ValueError``.)"""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass
class PassResult:
    """What one pass did."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    gone: bool = False
    errors: list[str] = field(default_factory=list)  # "<item id>: <error>" of this pass's failures


# ---------------------------------------------------------------------------------------------- the message


def payload(item: dict[str, Any]) -> bytes:
    """The request body of an outbox item: minified JSON in the specification's envelope (type, timestamp, data)."""
    fields = item["fields"]
    data = {
        "id": item["id"],
        "seq": item["seq"],
        "customer_id": item["customer_id"],
        "rule": item["rule"],
        "action": item["action"],
        "fired_at": _iso(item["fired_at"]),
        "as_of": _iso(item["as_of"]),
        "fields": json.loads(fields) if isinstance(fields, str) else fields,
    }
    body = {"type": EVENT_TYPE, "timestamp": _iso(item["fired_at"]), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signature(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys)


def signed_headers(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> dict[str, str]:
    if "." in msg_id:
        raise ValueError(f"webhook id {msg_id!r} must not contain '.' (it delimits the signed content)")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(msg_id, timestamp, body, keys),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def _iso(t: datetime) -> str:
    """Naive UTC (the contract) as ISO 8601 with a Z."""
    return t.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


# ---------------------------------------------------------------------------------------------- sending


class WebhookSender:
    """POSTs signed bodies to one URL with an ``httpx.Client`` (connection reuse, thread-safe); no redirects."""

    def __init__(self, settings: DeliverySettings, *, transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        if not settings.webhook_url:
            raise ValueError("setting delivery.webhook_url is not set (CHURN_DELIVERY__WEBHOOK_URL)")
        if settings.secret is None:
            raise ValueError("setting delivery.secret is not set (CHURN_DELIVERY__SECRET=whsec_...)")
        self.url = settings.webhook_url
        self.keys = [webhook_key(s.get_secret_value()) for s in (settings.secret, *settings.previous_secrets)]
        self._timeout = settings.timeout_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout_s),
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(max_connections=settings.concurrency),
        )

    def send(self, item: dict[str, Any]) -> Attempt:
        import httpx

        try:
            body = payload(item)
            headers = signed_headers(str(item["id"]), int(time.time()), body, self.keys)
        except (TypeError, ValueError) as e:  # an item that cannot be sent fails (and is dead-lettered), not the pass
            return Attempt(False, error=f"cannot build the request: {e}"[:ERROR_CHARS])
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Attempt(False, error=f"no answer within {self._timeout:g} s (timeout)")
        except httpx.HTTPError as e:
            return Attempt(False, error=f"{type(e).__name__}: {e}"[:ERROR_CHARS])
        if 200 <= response.status_code < 300:
            return Attempt(True, response.status_code)
        text = " ".join(response.text.split())[:ERROR_CHARS]
        return Attempt(
            False,
            response.status_code,
            f"HTTP {response.status_code}" + (f": {text}" if text else ""),
            _retry_after(response.headers.get("retry-after")) if response.status_code in (429, 503) else None,
        )

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        when = parsedate_to_datetime(value)
        return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return None


# ---------------------------------------------------------------------------------------------- scheduling


def utc_now() -> datetime:
    """The scheduling clock: naive UTC, as the store keeps time stamps."""
    return datetime.now(UTC).replace(tzinfo=None)


def backoff_s(failures: int, settings: DeliverySettings, rng: random.Random | None = None) -> float:
    """Wait after the ``failures``-th failed attempt: base x 2^(failures - 1), capped, with jitter."""
    delay = min(settings.backoff_base_s * 2 ** max(failures - 1, 0), settings.backoff_max_s)
    if settings.backoff_jitter:
        delay *= 1 + settings.backoff_jitter * (rng or random).uniform(-1, 1)
    return delay


def outcome(
    item: dict[str, Any],
    attempt: Attempt,
    settings: DeliverySettings,
    now: datetime,
    rng: random.Random | None = None,
) -> tuple[str, int, datetime | None, str | None]:
    """(state, attempts, next_attempt_at, last_error) of an item after ``attempt``."""
    attempts = int(item["attempts"]) + 1
    if attempt.ok:
        return DELIVERED, attempts, None, item.get("last_error")
    if attempts >= settings.max_attempts:
        return DEAD, attempts, None, attempt.error
    wait = max(backoff_s(attempts, settings, rng), attempt.retry_after_s or 0.0)
    return PENDING, attempts, now + timedelta(seconds=wait), attempt.error


def deliver_once(
    store: Store,
    settings: DeliverySettings,
    *,
    sender: WebhookSender | None = None,
    clock: Callable[[], datetime] = utc_now,
    rng: random.Random | None = None,
) -> PassResult:
    """One pass: send the due items (at most ``settings.batch``), record each outcome as it arrives."""
    own = sender is None
    sender = sender or WebhookSender(settings)
    result = PassResult()
    try:
        now = clock()
        items = store.claim_deliveries(now, settings.batch, now + timedelta(seconds=settings.lease)).to_pylist()
        if not items:
            return result
        pool = ThreadPoolExecutor(max_workers=min(settings.concurrency, len(items)), thread_name_prefix="webhook")
        try:
            futures = {pool.submit(sender.send, item): item for item in items}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                item, attempt = futures[future], future.result()
                state, attempts, next_at, error = outcome(item, attempt, settings, clock(), rng)
                store.mark_delivery(item["id"], state, attempts, next_at, error)
                result.attempted += 1
                result.delivered += state == DELIVERED
                result.retrying += state == PENDING
                result.dead += state == DEAD
                if not attempt.ok:
                    result.errors.append(f"{item['id']}: {attempt.error}")
                if attempt.gone and not result.gone:
                    result.gone = True
                    for other in futures:  # what has not started yet is not sent; the rest finishes
                        other.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if own:
            sender.close()
    return result


def run_delivery(
    store: Store,
    settings: DeliverySettings,
    *,
    stop: threading.Event,
    on_pass: Callable[[PassResult], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Passes until ``stop`` is set: straight on while a pass filled its batch, else after ``poll_interval_s``.
    Runs in ``churn deliver``'s process, or in a thread of any other (it only waits on the network and the store).
    Raises ``DeliveryError`` when the receiver answers 410 Gone."""
    sender = WebhookSender(settings)
    try:
        while not stop.is_set():
            result = deliver_once(store, settings, sender=sender, clock=clock)
            if on_pass is not None:
                on_pass(result)
            if result.gone:
                raise DeliveryError(f"{settings.webhook_url} answered 410 Gone: it no longer accepts these webhooks")
            if result.attempted < settings.batch:
                stop.wait(settings.poll_interval_s)
    finally:
        sender.close()


@contextlib.contextmanager
def single_deliverer(lock_file: Path) -> Iterator[None]:
    """One deliverer per lock file (data dir) at a time on this machine, held until the block ends: more processes
    here add nothing that ``delivery.concurrency`` does not; deliverers on other machines sharing the store are kept
    apart by the store's claims (``Store.claim_deliveries``)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeliveryError(f"another `churn deliver` is running (it holds {lock_file})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
