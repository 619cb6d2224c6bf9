"""The API as `churn serve` runs it: the real command, started by its full path without an activated environment,
a real BentoML server with two workers, keys, and a clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "served-token"
STARTUP_S = 480  # registry check + server ready: ~15 s idle, 4 min measured with the 2 cores shared by 5 jobs
CHURN = Path(sys.executable).with_name("churn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _bare_env(**extra: str) -> dict[str, str]:
    """No activated environment: the venv's bin is not on PATH, no VIRTUAL_ENV."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CHURN_SCORING__MODEL_URI")}
    return {**env, "PATH": path or "/usr/bin:/bin", **extra}


@pytest.fixture(scope="module")
def server(registered, test_settings, tmp_path_factory):
    port = _free_port()
    env = _bare_env(
        CHURN_DATA_DIR=str(test_settings.data_dir),
        CHURN_SERVING__API_KEYS=json.dumps({"crm": TOKEN}),
        BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml")),
    )
    proc = subprocess.Popen(
        [str(CHURN), "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path_factory.mktemp("cwd"),  # not the project folder: nothing may depend on it
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so the clean-up below can reach stragglers
    )
    url = f"http://127.0.0.1:{port}"
    started = []
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"churn serve exited: {proc.stdout.read()[-3000:]}")
            started = _family(proc.pid)
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            _stop(proc, started)
            pytest.fail(f"the API did not become ready in {STARTUP_S} s: {_output(proc)}")
        yield url, port, proc
    finally:
        _stop(proc, started)


def _family(pid: int) -> list[psutil.Process]:
    """The server's workers live in their own sessions: a process-group kill would miss them."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop(proc: subprocess.Popen, started: list[psutil.Process]) -> None:
    family = {p.pid: p for p in [*started, *_family(proc.pid)]}
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for p in family.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _output(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=10)[0][-3000:]
    except (subprocess.TimeoutExpired, ValueError):
        return "(no output)"


BODY = {
    "customers": [
        {
            "customer_id": "c1",
            "transactions": [
                {"timestamp": "2024-05-01T10:00:00", "amount": 80.0},
                {"timestamp": "2024-08-01T10:00:00", "amount": 20.0},
            ],
        }
    ],
    "as_of": "2024-10-01",
}


def test_served_api_scores_with_a_key_and_keeps_health_open(server):
    url, _, _ = server
    r = httpx.post(f"{url}/v1/score", json=BODY, timeout=30)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    r = httpx.post(f"{url}/v1/score", json=BODY, headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "s-1"})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "churnguard/1" and r.headers["x-request-id"] == "s-1"
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert httpx.get(f"{url}/readyz").json()["model_version"] == "churnguard/1"
    assert "bentoml" in httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/docs.json").json()["openapi"].startswith("3.1")


def test_sigterm_stops_the_server_and_frees_the_port(server):
    """Runs last in this module: a process manager's SIGTERM to `churn serve` must leave nothing behind."""
    url, port, proc = server
    parent = psutil.Process(proc.pid)
    assert "bentoml" in " ".join(parent.cmdline())  # churn serve became the server (exec), same pid
    children = parent.children(recursive=True)
    workers = [c for c in children if "worker" in " ".join(c.cmdline()) or "_bentoml_impl" in " ".join(c.cmdline())]
    assert len(workers) >= 2, [c.cmdline() for c in children]
    proc.send_signal(signal.SIGTERM)  # to the one pid a process manager knows, not the group
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    assert _port_is_free(port)


def test_an_unreachable_registry_stops_churn_serve_with_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    env = _bare_env(
        CHURN_DATA_DIR=str(tmp_path),
        CHURN_MLFLOW__TRACKING_URI=f"http://127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    r = subprocess.run([str(CHURN), "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model registry" in lines[0] and f"127.0.0.1:{port}" in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
