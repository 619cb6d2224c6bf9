"""A throwaway PostgreSQL cluster for the tests (a pytest plugin, loaded from ``tests/conftest.py``).

The server binaries (``initdb``, ``pg_ctl``) refuse to run as root, and the test suite runs as root on the
developers' machines and in CI: the cluster then runs as the ``postgres`` user, in a temp folder owned by it,
listening on loopback only, on a free port, with trust authentication (nothing else can reach it). It lives for the
test session and is stopped (and its folder removed) at the end. Without the binaries the tests that need it are
skipped with the reason; everything else runs.

``benchmarks/bench_store.py`` starts one the same way through :func:`postgres_cluster`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BINARIES = ("initdb", "pg_ctl", "postgres")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_owner(command: str, owner: str | None) -> None:
    """Run a shell command, as ``owner`` when we are root (the server will not run as root)."""
    argv = ["su", owner, "-s", "/bin/bash", "-c", command] if owner else ["bash", "-c", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


class Cluster:
    """A throwaway cluster that can be stopped and started again on the same port (to test an outage)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.base = Path(tempfile.mkdtemp(prefix="churnguard-pg-"))
        if self.owner:
            shutil.chown(self.base, user=self.owner)
        self.data, self.log, self.port = self.base / "db", self.base / "log", _free_port()
        self.pg_ctl = shlex.quote(str(shutil.which("pg_ctl")))
        self.options = f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1"
        if not durable:
            self.options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self.running = False
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        _run_as_owner(
            f"{shlex.quote(str(shutil.which('initdb')))} -D {self.data} -U postgres --auth=trust -E UTF8 --no-sync "
            "> /dev/null",
            self.owner,
        )

    def start(self) -> None:
        _run_as_owner(
            f"{self.pg_ctl} -D {self.data} -o '{self.options}' -l {self.log} -w start > /dev/null", self.owner
        )
        self.running = True

    def stop(self) -> None:
        _run_as_owner(f"{self.pg_ctl} -D {self.data} -m immediate -w stop > /dev/null", self.owner)
        self.running = False

    def remove(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """A started :class:`Cluster`, removed afterwards."""
    c = Cluster(durable=durable)
    try:
        c.init()
        c.start()
        yield c
    finally:
        c.remove()


@contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[str]:
    """Start a fresh cluster on 127.0.0.1 and a free port; yield its URL; stop it and delete it afterwards.

    Tests run it without fsync (nothing to keep); ``durable=True`` keeps the server's defaults (benchmarks)."""
    with cluster(durable=durable) as c:
        yield c.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL server for this test session (skips when the binaries are not installed)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"PostgreSQL server binaries not on PATH ({', '.join(missing)}): PostgreSQL store tests skipped")
    with postgres_cluster() as url:
        yield url


def new_database(url: str, prefix: str) -> str:
    """The URL of a new, empty database on the server at ``url``: each test's store gets tables of its own."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return f"{url.rsplit('/', 1)[0]}/{name}"
