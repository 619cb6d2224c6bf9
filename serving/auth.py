"""Named API keys and a per-key rate limit.

**Keys.** Two sources, both optional: ``serving.api_keys`` (``CHURN_SERVING__API_KEYS='{"crm": "<token>"}'``) and
a keys file (``serving.keys_file``) that holds only SHA-256 digests of the tokens, never the tokens::

    [keys.crm]
    sha256 = "3f7c...e1"                 # printf %s "$TOKEN" | sha256sum
    rate_limit_per_minute = 1200         # optional, default serving.rate_limit_per_minute
    scopes = ["score", "events"]         # optional, default both

    [keys.old-etl]
    sha256 = "91ab...07"
    revoked = true                       # 403 from now on; the other keys are untouched

``churn keys add NAME`` creates a key (a new random token, printed once; only its digest is written), ``churn keys
revoke NAME`` marks one revoked, ``churn keys list`` shows them; edits keep the file's comments and layout
(tomlkit) and are checked and written atomically. The file is re-read when it changes (checked at most once a
second per worker), so adding or revoking a key needs no restart. A broken file keeps the last good keys and logs
why; a missing file at start-up is an error.
A request needs ``Authorization: Bearer <token>``: no or unknown token -> 401, a revoked key or one without the
route's scope -> 403.

**Rate limit.** GCRA (a token bucket kept as one "theoretical arrival time" per key) in an SQLite file under
``serving.state_dir``, so every worker process of the server shares each key's budget; each request is one atomic
UPSERT (~0.1 ms). Over the limit -> 429 with ``Retry-After`` (whole seconds until the next request is allowed).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.io import atomic_path
from serving.settings import ServingSettings

log = logging.getLogger("churnguard.api")
Scope = Literal["score", "events"]
ALL_SCOPES: tuple[Scope, ...] = ("score", "events")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    rate_limit_per_minute: int | None = Field(None, ge=1)
    scopes: tuple[Scope, ...] = ALL_SCOPES
    revoked: bool = False


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: dict[str, KeyEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    name: str
    rate_limit_per_minute: int
    scopes: tuple[Scope, ...]
    revoked: bool


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_keys_file(path: Path) -> KeysFile:
    """Parse and check a keys file; raises ValueError naming the file and the entry at fault."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"API keys file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    try:
        return KeysFile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def add_key(
    path: Path, name: str, *, scopes: tuple[Scope, ...] = ALL_SCOPES, rate_limit_per_minute: int | None = None
) -> str:
    """Add a key named ``name`` to the keys file (created when missing) and return its new token: the only time the
    token exists in clear; the file keeps its SHA-256 digest. A name in use (revoked or not) is refused, so a
    revoked key can never come back by accident."""
    if not KEY_NAME.match(name):
        raise ValueError(f"key name {name!r}: use 1 to 64 letters, digits, '-' or '_'")
    if not scopes or len(set(scopes)) != len(scopes) or not set(scopes) <= set(ALL_SCOPES):
        raise ValueError(f"scopes {list(scopes)}: give one or more of {', '.join(ALL_SCOPES)}, each once")
    doc = _document(path, missing_ok=True)
    keys = doc.setdefault("keys", tomlkit.table(is_super_table=True))
    if name in keys:
        raise ValueError(f"{path}: a key named {name!r} exists already; pick another name")
    token = secrets.token_urlsafe(32)
    entry = tomlkit.table()
    entry["sha256"] = digest(token)
    if tuple(scopes) != ALL_SCOPES:
        entry["scopes"] = list(scopes)
    if rate_limit_per_minute is not None:
        entry["rate_limit_per_minute"] = rate_limit_per_minute
    keys[name] = entry
    _write(path, doc)
    return token


def revoke_key(path: Path, name: str) -> None:
    """Mark the key revoked (403 from the next reload of the file, within a second); the other keys are untouched."""
    doc = _document(path, missing_ok=False)
    keys = doc.get("keys", {})
    if name not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise ValueError(f"{path}: no key named {name!r} (keys: {known})")
    keys[name]["revoked"] = True
    _write(path, doc)


def _document(path: Path, *, missing_ok: bool) -> tomlkit.TOMLDocument:
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return tomlkit.document()
        raise FileNotFoundError(f"API keys file not found: {path}")
    load_keys_file(path)  # never edit a file the service would refuse
    return tomlkit.parse(path.read_text())


def _write(path: Path, doc: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(doc)
    KeysFile.model_validate(tomllib.loads(text))  # what is written parses as the service reads it
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, 0o600)  # digests only, but nobody else needs to read them


class KeyRing:
    """The keys in force: looked up by the digest of the presented token."""

    def __init__(self, settings: ServingSettings, check_every_s: float = 1.0) -> None:
        self.settings = settings
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self._file_keys: dict[str, ApiKey] = {}
        self._env_keys = {
            digest(token.get_secret_value()): self._key(name, None, ALL_SCOPES, False)
            for name, token in settings.api_keys.items()
        }
        if settings.keys_file is not None:
            self._file_keys = self._read(settings.keys_file)  # at start-up a broken or missing file is an error
            self._mtime = settings.keys_file.stat().st_mtime

    @property
    def enabled(self) -> bool:
        return self.settings.keys_configured()

    def _key(self, name: str, limit: int | None, scopes: tuple[Scope, ...], revoked: bool) -> ApiKey:
        return ApiKey(name, limit or self.settings.rate_limit_per_minute, scopes, revoked)

    def _read(self, path: Path) -> dict[str, ApiKey]:
        parsed = load_keys_file(path)
        return {
            e.sha256.lower(): self._key(name, e.rate_limit_per_minute, e.scopes, e.revoked)
            for name, e in parsed.keys.items()
        }

    def _refresh(self) -> None:
        path = self.settings.keys_file
        now = time.monotonic()
        if path is None or now - self._checked < self.check_every_s:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                if self._file_keys:
                    log.warning("API keys file %s is gone: its keys no longer authenticate", path)
                self._file_keys, self._mtime = {}, None
                return
            if mtime == self._mtime:
                return
            try:
                self._file_keys = self._read(path)
                self._mtime = mtime
                log.info("API keys reloaded from %s: %d keys", path, len(self._file_keys))
            except (ValueError, OSError) as e:
                self._mtime = mtime  # do not retry a broken file every second; the next edit is picked up
                log.error("API keys file %s not reloaded, keeping the previous keys: %s", path, e)

    def lookup(self, token: str) -> ApiKey | None:
        self._refresh()
        # looked up by the token's digest: timing reveals nothing about stored tokens, and none are kept in clear
        key = digest(token)
        return self._file_keys.get(key) or self._env_keys.get(key)


def bearer_token(header: bytes) -> str | None:
    scheme, _, value = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class RateLimiter:
    """Per-key GCRA shared by the server's worker processes through one SQLite file."""

    def __init__(self, path: Path, burst: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.burst = burst
        self._local = threading.local()
        self._connection()  # create the table now: a broken state dir fails at start-up

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=OFF")  # losing the last buckets in a power cut is harmless
            con.execute("CREATE TABLE IF NOT EXISTS gcra (key TEXT PRIMARY KEY, tat REAL NOT NULL)")
            self._local.con = con
        return con

    def acquire(self, key: str, per_minute: int, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until it would be allowed.

        The clock is read after the write lock is taken: a worker that waited for the lock (another worker
        descheduled while holding it) must not judge the bucket with a stale "now".
        """
        interval = 60.0 / per_minute
        tolerance = interval * (self.burst - 1)
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            at = time.time() if now is None else now
            row = con.execute(
                "INSERT INTO gcra (key, tat) VALUES (:key, :now + :t) "
                "ON CONFLICT (key) DO UPDATE SET tat = max(tat, :now) + :t WHERE max(tat, :now) - :now <= :tol "
                "RETURNING tat",
                {"key": key, "now": at, "t": interval, "tol": tolerance},
            ).fetchone()
            wait = 0.0
            if row is None:
                (tat,) = con.execute("SELECT tat FROM gcra WHERE key = ?", (key,)).fetchone()
                wait = max(tat - tolerance - at, 0.001)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return wait


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
