"""Hot reload: the service follows the registry alias; in-flight requests keep their model; a failed load keeps
the old one and says why."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.reload import ModelFollower


class FakeModel:
    def __init__(self, version: str) -> None:
        self.version = version


def _follower(versions: list[str], broken: set[str] = frozenset(), interval_s: float = 0.0) -> ModelFollower:
    def resolve() -> str:
        v = versions[-1]
        if v == "unreachable":
            raise RuntimeError("model registry sqlite:///x failed while reading alias: connection refused")
        return v

    def load(v: str) -> FakeModel:
        if v in broken:
            raise ValueError(f"{v}: artifact not found")
        return FakeModel(v)

    return ModelFollower(load, initial=resolve(), source="models:/m@champion", resolve=resolve, interval_s=interval_s)


def test_a_new_alias_version_is_swapped_in_and_snapshots_keep_their_model():
    versions = ["m/1"]
    f = _follower(versions)
    in_flight = f.current  # what a request took at its start
    assert f.check() is False  # nothing new
    versions.append("m/2")
    assert f.check() is True
    assert f.current.version == "m/2" and f.current.model.version == "m/2"
    assert in_flight.version == "m/1" and in_flight.model.version == "m/1"  # the request finishes on model 1
    assert f.reload_error is None and f.last_check is not None


def test_a_failed_load_keeps_the_old_model_and_says_why(caplog):
    versions = ["m/1"]
    f = _follower(versions, broken={"m/2"})
    versions.append("m/2")
    with caplog.at_level("ERROR", logger="churnguard.api"):
        assert f.check() is False
    assert f.current.version == "m/1"
    assert "loading m/2 failed, still serving m/1: m/2: artifact not found" in f.reload_error
    assert "artifact not found" in caplog.text
    versions.append("m/3")
    assert f.check() is True and f.reload_error is None


def test_an_unreachable_registry_later_keeps_serving_and_is_reported():
    versions = ["m/1"]
    f = _follower(versions)
    versions.append("unreachable")
    assert f.check() is False
    assert f.current.version == "m/1" and "connection refused" in f.reload_error


def test_an_unreachable_registry_at_start_up_is_an_error():
    with pytest.raises(RuntimeError, match="connection refused"):
        _follower(["unreachable"])


def test_the_background_thread_follows_the_alias():
    versions = ["m/1"]
    f = _follower(versions, interval_s=0.05)
    f.start()
    try:
        versions.append("m/2")
        deadline = time.monotonic() + 5
        while f.current.version != "m/2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f.current.version == "m/2"
    finally:
        f.stop()


# ------------------------------------------------------------------------------------------------ the real service


@pytest.mark.slow
def test_the_service_picks_up_a_promotion_without_restart(trained, tmp_path_factory, second_service_app):
    from starlette.testclient import TestClient

    from churnguard.settings import Settings
    from model.registry import mlflow_client
    from training.tracking import log_training

    settings = Settings(data_dir=tmp_path_factory.mktemp("reload"), mlflow={"tracking_uri": None})
    log_training(trained, settings.mlflow)  # version 1, champion
    log_training(trained, settings.mlflow)  # version 2, challenger
    client = mlflow_client(settings.mlflow)
    env = {
        "CHURN_DATA_DIR": str(settings.data_dir),
        "CHURN_SERVING__RELOAD_INTERVAL_S": "0.3",
        "CHURN_SERVING__API_KEYS": json.dumps({"t": "tok"}),
    }
    old = {k: os.environ.get(k) for k in [*env, "CHURN_SCORING__MODEL_URI"]}
    os.environ.pop("CHURN_SCORING__MODEL_URI", None)
    os.environ.update(env)
    body = {
        "customers": [
            {
                "customer_id": f"c{i}",
                "transactions": [
                    {"timestamp": "2024-03-01T10:00:00", "amount": 20.0 + i},
                    {"timestamp": "2024-05-01T10:00:00", "amount": 30.0},
                ],
            }
            for i in range(50)
        ],
        "as_of": "2024-06-01",
    }
    try:
        with TestClient(second_service_app(), headers={"Authorization": "Bearer tok"}) as c:
            assert c.get("/v1/model").json()["model_version"] == "churnguard/1"
            stop = threading.Event()

            def hammer() -> list[dict]:
                answers = []
                while not stop.is_set():
                    r = c.post("/v1/score", json=body)
                    assert r.status_code == 200, r.text
                    answers.append(r.json())
                return answers

            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(hammer) for _ in range(2)]
                time.sleep(0.5)
                client.set_registered_model_alias("churnguard", "champion", "2")
                deadline = time.monotonic() + 60
                while c.get("/v1/model").json()["model_version"] != "churnguard/2":
                    assert time.monotonic() < deadline, "the promotion was not picked up"
                    time.sleep(0.1)
                time.sleep(0.5)
                stop.set()
                answers = [a for f in futures for a in f.result()]
            seen = {a["model_version"] for a in answers}
            assert seen == {"churnguard/1", "churnguard/2"}, seen
            for a in answers:  # never two models in one answer
                assert {s["model_version"] for s in a["scores"]} == {a["model_version"]}
            assert c.get("/readyz").json()["model_version"] == "churnguard/2"

            # a version whose artifact cannot be loaded: the service keeps version 2 and says why
            broken = client.create_model_version("churnguard", source=str(tmp_path_factory.mktemp("empty")))
            client.set_registered_model_alias("churnguard", "champion", broken.version)
            deadline = time.monotonic() + 60
            while not c.get("/v1/model").json()["reload_error"]:
                assert time.monotonic() < deadline, "the failed load was not reported"
                time.sleep(0.1)
            info = c.get("/v1/model").json()
            assert info["model_version"] == "churnguard/2"
            assert f"loading churnguard/{broken.version} failed, still serving churnguard/2" in info["reload_error"]
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["reload_error"] == info["reload_error"]
            assert c.post("/v1/score", json=body).json()["model_version"] == "churnguard/2"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_bento_mode_serves_the_packed_model_without_a_registry(
    registered, test_settings, tmp_path, monkeypatch, second_service_app
):
    """What a built bento runs: the model from BentoML's store (`churn bento` put the champion there), no polling."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from starlette.testclient import TestClient

    from serving.bento import import_champion

    previous = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(tmp_path / "bentoml"))
    try:
        tag = import_champion(test_settings.mlflow)
        monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "no-registry-here"))
        monkeypatch.setenv("CHURN_SERVING__MODEL_SOURCE", "bento")
        monkeypatch.delenv("CHURN_SCORING__MODEL_URI", raising=False)
        with TestClient(second_service_app()) as c:
            info = c.get("/v1/model").json()
            assert info["model_version"] == "churnguard/1" and info["source"] == f"bento {tag}"
            assert c.get("/readyz").json()["last_check"] is None  # nothing to follow
        assert not (tmp_path / "no-registry-here" / "mlflow.db").exists()  # the registry was never opened
    finally:
        BentoMLContainer.bentoml_home.set(previous)
