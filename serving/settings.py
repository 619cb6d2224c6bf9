"""The settings sections serving reads: batch scoring and the API (composed by ``churnguard/settings.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from features.settings import Section
from model.scorecard import check_tier_thresholds


class ScoringSettings(Section):
    model_uri: str | None = Field(None, description="Model to score with; default models:/<model_name>@champion.")
    tier_thresholds: tuple[float, float, float] | None = Field(
        None,
        description="churn_probability cut-offs for medium, high and critical risk; default: the model's own "
        "(set at training from training.tier_thresholds).",
    )
    policy_file: Path | None = Field(None, description="Retention policy YAML; default: the one shipped in serving/.")
    triggers_file: Path | None = Field(
        None, description="Trigger rules YAML (`churn triggers`); default: the one shipped in serving/."
    )
    control_share: float = Field(0.1, ge=0, lt=1, description="Share of the outreach list held out as control.")
    chunk_size: int = Field(100_000, ge=100, description="Customers scored per chunk in batch scoring.")
    reasons: Literal["outreach", "all", "none"] = Field(
        "outreach", description="Who gets top_reasons in batch: outreach-list customers, everybody, or nobody."
    )
    reasons_limit: int | None = Field(
        10_000,
        ge=1,
        description="With reasons=outreach: the first this many customers of the outreach list (best first) get "
        "top_reasons; the rest of the list has none (`churn score` says how many). TreeSHAP costs 1-5 ms per customer, "
        "so an uncapped list of half a million customers would take longer than scoring them. None: the whole list.",
    )
    capacity: int | None = Field(None, ge=1, description="At most this many customers on the outreach list.")
    budget: float | None = Field(None, ge=0, description="At most this much action cost on the outreach list.")
    seed: int = Field(42, description="Seed of the control group draw.")

    @field_validator("tier_thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        return check_tier_thresholds(v) if v is not None else v


class ServingSettings(Section):
    """The scoring API (``churn serve``): where it listens, who may call it, how it follows the registry."""

    host: str | None = Field(
        None,
        description="Interface to listen on. Default: 0.0.0.0 when API keys are configured, else 127.0.0.1 only "
        "(a service without keys is reachable from this machine alone).",
    )
    port: int = Field(3000, ge=1, le=65535)
    allow_unauthenticated: bool = Field(
        False,
        description="Listen on a non-loopback interface with no API key configured (prints a warning): anyone who "
        "can reach the port can read scores.",
    )
    keys_file: Path | None = Field(
        None,
        description="TOML file of named API keys ([keys.<name>] sha256 = '<hex digest of the token>', optional "
        "rate_limit_per_minute, revoked = true). Re-read when it changes: revoking one key needs no restart.",
    )
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Named API keys as JSON, e.g. CHURN_SERVING__API_KEYS=\'{"crm": "<token>"}\'.',
    )
    rate_limit_per_minute: int = Field(
        600, ge=1, description="Requests per minute per API key (a key's own limit in the keys file wins)."
    )
    rate_limit_burst: int = Field(60, ge=1, description="Requests a key may send at once above its steady rate.")
    state_dir: Path | None = Field(
        None, description="Where the workers share rate-limit state; default <data_dir>/serve (filled by Settings)."
    )
    workers: int | None = Field(None, ge=1, le=64, description="Server processes; default: the machine's cores.")
    threads: int = Field(4, ge=1, le=64, description="Request threads per worker.")
    reload_interval_s: float = Field(
        30.0,
        ge=0,
        description="How often the service checks the registry alias for a new model (0: load once at start).",
    )
    model_source: Literal["registry", "bento"] = Field(
        "registry",
        description="registry: load and follow scoring.model_uri (default the champion alias); bento: serve the "
        "model packed into the bento (`churn bento`), without a registry.",
    )
    live_triggers: bool = Field(
        True,
        description="Evaluate the trigger rules for the customers of each POST /v1/events, in the background (queued "
        "in the store with the rows; serving/live_triggers.py). false: only `churn triggers` evaluates.",
    )
    live_triggers_worker: Literal["service", "process"] = Field(
        "service",
        description="Where queued customers are evaluated: service, a thread in each API process (nothing else to "
        "run); process, only in `churn triggers --follow` processes of their own, so the evaluation never takes CPU "
        "or the interpreter lock from the requests (the API then only queues).",
    )
    live_triggers_batch: int = Field(100, ge=1, le=10_000, description="Customers evaluated per live pass.")
    live_triggers_delay_s: float = Field(
        1.0,
        ge=0,
        description="The live worker waits this long after a request wakes it, so that the requests arriving "
        "meanwhile share one evaluation pass (firings reach the outbox about this much later).",
    )
    live_triggers_poll_s: float = Field(
        2.0,
        gt=0,
        description="How often the live worker looks for customers queued by other processes, left by a stopped "
        "one, or held back by a failure (its own requests wake it at once).",
    )
    max_body_bytes: int = Field(20_000_000, ge=1000, description="Larger request bodies get 413.")
    timeout_s: int = Field(30, ge=1, description="Requests running longer are cut off by the server.")

    def keys_configured(self) -> bool:
        return bool(self.api_keys) or self.keys_file is not None


class DeliverySettings(Section):
    """Webhook delivery of the trigger outbox (``churn deliver``): where, signed how, retried how often.

    Signatures follow the Standard Webhooks specification (``serving/webhooks.py``); the secret is the receiver's
    ``whsec_<base64>`` key, shared with the CRM. A secret being rotated out can stay in ``previous_secrets`` for a
    while: every request is then signed with each key and the receiver accepts any of them.
    """

    webhook_url: str | None = Field(
        None, description="Where `churn deliver` POSTs fired triggers (http:// or https://); unset: no push delivery."
    )
    secret: SecretStr | None = Field(
        None, description="Signing secret, whsec_ + base64 of 24 to 64 random bytes (Standard Webhooks)."
    )
    previous_secrets: list[SecretStr] = Field(
        default_factory=list, description="Older secrets still signed with during a rotation (zero downtime)."
    )
    max_attempts: int = Field(14, ge=1, le=100, description="Failed attempts after which an item is dead-lettered.")
    backoff_base_s: float = Field(
        60.0, ge=0, description="Wait after the first failure; doubles after each further one (exponential back-off)."
    )
    backoff_max_s: float = Field(6 * 3600.0, ge=0, description="Longest wait between two attempts of one item.")
    backoff_jitter: float = Field(
        0.1, ge=0, le=1, description="Random share added to or taken from each wait, so retries do not arrive in waves."
    )
    timeout_s: float = Field(
        15.0, gt=0, le=300, description="Per request: connect, send and wait for the answer; longer is a failure."
    )
    batch: int = Field(100, ge=1, le=10_000, description="Items taken from the outbox per pass.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once within a pass.")
    poll_interval_s: float = Field(5.0, gt=0, description="`churn deliver` (without --once): pause between passes.")
    lease_s: float | None = Field(
        None,
        gt=0,
        description="How long a pass holds the items it took: other deliverers on the same store skip them meanwhile, "
        "and items of a deliverer that died are due again after it. Unset: the longest pass (timeout_s x "
        "ceil(batch / concurrency)) plus a minute; when set, it must exceed that.",
    )

    @property
    def longest_pass_s(self) -> float:
        """Every request of a pass timing out, ``concurrency`` at a time."""
        return self.timeout_s * -(-self.batch // self.concurrency)

    @property
    def lease(self) -> float:
        return self.lease_s if self.lease_s is not None else self.longest_pass_s + 60.0

    @model_validator(mode="after")
    def _lease_outlasts_a_pass(self) -> DeliverySettings:
        if self.lease_s is not None and self.lease_s <= self.longest_pass_s:
            raise ValueError(
                f"lease_s ({self.lease_s:g}) must exceed the longest pass, timeout_s x ceil(batch / concurrency) = "
                f"{self.longest_pass_s:g} s: otherwise a second deliverer could take items still being sent"
            )
        return self

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            webhook_key(v.get_secret_value())
        return v

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, v: list[SecretStr]) -> list[SecretStr]:
        for s in v:
            webhook_key(s.get_secret_value())
        return v


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; refuses anything else (the spec: 24 to 64 random bytes)."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_ (then base64 of 24 to 64 random bytes)")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64 (not valid base64 here)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a webhook secret holds 24 to 64 random bytes, this one {len(key)}")
    return key


class ReportSettings(Section):
    """The lifecycle report (``churn report``)."""

    scored_month_ends: int = Field(
        1,
        ge=1,
        le=36,
        description="With a model: the stages at this many of the latest month ends use its churn probability "
        "(at_risk); the earlier ones are rule-only (no at_risk) and marked so on the page. The last month end "
        "reuses the health section's scoring pass at as_of; each earlier one adds a feature query for the customers "
        "whose stage depends on the score (at 1M demo customers about 19 CPU seconds each, against about 14 for "
        "the last; benchmarks/bench_report.py, stage scoring). 2 also scores the start of the last month: its "
        "transition matrix then shows where at_risk customers went.",
    )
