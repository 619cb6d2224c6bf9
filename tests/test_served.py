"""The API as `churn serve` runs it: a real `bentoml serve` process with the champion synced into BentoML's store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "served-token"
STARTUP_S = 180  # the whole start-up (model sync + server ready) must fit in this, on a loaded CI machine too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(registered, test_settings, tmp_path_factory):
    bentoml_home = tmp_path_factory.mktemp("bentoml")
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "CHURN_DATA_DIR": str(test_settings.data_dir),
        "CHURN_API_TOKEN": TOKEN,
    }
    env.pop("CHURN_SCORING__MODEL_URI", None)
    sync = (
        "from churnguard.settings import load_settings; from serving.bento import import_champion; "
        "print(import_champion(load_settings().mlflow))"
    )
    tag = subprocess.run(
        [sys.executable, "-c", sync], env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=STARTUP_S
    )
    assert tag.stdout.startswith("churnguard:")
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:ChurnService", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the server and every worker it forks are stopped below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"the API did not become ready in {STARTUP_S} s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_served_api_scores_with_token_and_keeps_health_open(server):
    body = {
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
    assert httpx.post(f"{server}/score", json=body, timeout=30).status_code == 401
    r = httpx.post(f"{server}/score", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "churnguard/1"
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{server}{path}").status_code == 200, path
    assert "bentoml_service_request" in httpx.get(f"{server}/metrics").text
