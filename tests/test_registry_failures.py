"""No silent fallbacks around the model registry.

Only "this alias is not set" means "no champion yet". A registry that cannot be reached, read or written is an
error (``RegistryError``): promotion refuses and leaves the aliases as they were, and the CLI ends in one line with
exit code 3. A model whose features no longer match the code refuses to load (``IncompatibleModelError``) and the
CLI says to retrain.

The registries here are real SQLite MLflow stores, built once per module (creating one takes seconds) and copied
for each test; versions carry the tags training writes, so promotion compares their stored held-out metrics.
"""

from __future__ import annotations

import copy
import shutil
import socket
import sqlite3
from pathlib import Path

import mlflow.pyfunc
import pytest
from typer.testing import CliRunner

from churnguard.cli import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, app
from churnguard.settings import Settings
from model.churn_model import IncompatibleModelError
from model.registry import ModelNotFoundError, RegistryError, load_model, mlflow_client
from tests.hand_model import hand_model
from training.tracking import promote

runner = CliRunner()
NAME = "churnguard"
HOLDOUT_TAGS = {"holdout_as_of": "2024-10-02", "data_fingerprint": '{"data_transactions": 1}', "horizon_days": "90"}


@pytest.fixture(scope="module")
def registry_db(tmp_path_factory) -> Path:
    """v1 champion (held-out log loss 0.30), v2 challenger (0.25, better): a working registry would promote v2."""
    folder = tmp_path_factory.mktemp("registry")
    client = mlflow_client(Settings(data_dir=folder).mlflow)
    client.create_registered_model(NAME)
    for log_loss in ("0.30", "0.25"):
        client.create_model_version(
            NAME, (folder / "no-artifact").as_uri(), tags={**HOLDOUT_TAGS, "log_loss": log_loss, "roc_auc": "0.9"}
        )
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    return folder / "mlflow.db"


@pytest.fixture
def registry(registry_db, tmp_path) -> Settings:
    """A private copy of the module's registry; the settings point at it (MLflow store in the data dir)."""
    shutil.copy(registry_db, tmp_path / "mlflow.db")
    return Settings(data_dir=tmp_path)


def aliases(settings: Settings) -> dict[str, int]:
    """Read straight from the store's file, not through MLflow: what is really there."""
    db = settings.mlflow.tracking.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (NAME,)))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def quick_http_failure(monkeypatch):
    """MLflow's HTTP client gives up at once instead of retrying for minutes."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


# ------------------------------------------------------------------------------------------------ promotion


def test_a_working_registry_promotes_the_better_challenger(registry):
    """The control for the failures below: the same registry, intact, moves the champion."""
    decision = promote(registry.mlflow)
    assert decision.promoted, decision.reason
    assert aliases(registry) == {"champion": 2, "challenger": 2}


def test_an_unset_champion_alias_means_no_champion_yet(registry):
    mlflow_client(registry.mlflow).delete_registered_model_alias(NAME, "champion")
    decision = promote(registry.mlflow)
    assert decision.promoted and decision.reason.startswith("no champion yet"), decision.reason
    assert decision.champion_before is None
    assert aliases(registry) == {"champion": 2, "challenger": 2}


def test_no_model_at_all_asks_for_training(registry):
    mlflow_client(registry.mlflow).delete_registered_model(NAME)
    with pytest.raises(ValueError, match="no 'challenger' version: run `churn train` first"):
        promote(registry.mlflow)
    with pytest.raises(ModelNotFoundError, match="train one first"):
        load_model(registry.mlflow)


def test_a_registry_that_refuses_to_write_leaves_the_aliases_untouched(registry):
    """Readable but read-only (a replica, lost permissions): the decision is made, the move fails, and says so."""
    db = registry.mlflow.tracking.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        for op in ("INSERT", "UPDATE", "DELETE"):
            con.execute(
                f"CREATE TRIGGER read_only_{op.lower()} BEFORE {op} ON registered_model_aliases "
                "BEGIN SELECT RAISE(ABORT, 'read-only replica'); END"
            )
    with pytest.raises(RegistryError, match="failed while moving the champion alias: .*read-only replica"):
        promote(registry.mlflow)
    assert aliases(registry) == {"champion": 1, "challenger": 2}


def test_a_registry_that_cannot_be_read_is_an_error_not_no_champion(registry):
    """A broken store (a table gone) is never taken for "no champion yet", so nothing is promoted past the gate."""
    db = registry.mlflow.tracking.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE model_version_tags")
    with pytest.raises(RegistryError, match="failed while reading alias churnguard@challenger"):
        promote(registry.mlflow)
    assert aliases(registry) == {"champion": 1, "challenger": 2}


def _unreachable(kind: str, tmp_path: Path) -> str:
    if kind == "http":
        return f"http://127.0.0.1:{closed_port()}"
    if kind == "sqlite-under-a-file":  # the store's folder cannot be created: its parent is a file
        (tmp_path / "a-file").write_text("not a folder")
        return f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    (tmp_path / "garbage.db").write_bytes(b"this is not an SQLite database\n" * 100)
    return f"sqlite:///{tmp_path / 'garbage.db'}"


UNREACHABLE = ["http", "sqlite-under-a-file", "not-a-database"]


@pytest.mark.parametrize("kind", UNREACHABLE)
def test_an_unreachable_registry_is_an_error(kind, tmp_path, quick_http_failure):
    uri = _unreachable(kind, tmp_path)
    settings = Settings(data_dir=tmp_path, mlflow={"tracking_uri": uri})
    with pytest.raises(RegistryError, match=f"model registry {uri} failed while"):
        promote(settings.mlflow)
    with pytest.raises(RegistryError, match=f"model registry {uri} failed while"):
        load_model(settings.mlflow)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def shop(tmp_path) -> Path:
    """A tiny valid input folder, so `churn score` gets as far as loading the model."""
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "transactions.csv").write_text(
        "customer_id,timestamp,amount\nc1,2024-01-05,30\nc1,2024-03-01,20\nc2,2024-02-10,15\n"
    )
    return folder


def _one_error_line(result, *fragments: str) -> None:
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["http", "sqlite-under-a-file"])
@pytest.mark.parametrize("command", ["promote", "score", "serve"])
def test_cli_with_an_unreachable_registry_exits_with_one_line(command, kind, tmp_path, shop, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = _unreachable(kind, tmp_path)
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHURN_MLFLOW__TRACKING_URI", uri)
    args = {
        "promote": ["promote"],
        "score": ["score", "--data", str(shop), "--out", str(tmp_path / "scores.parquet"), "--as-of", "2024-04-01"],
        "serve": ["serve", "--port", str(closed_port())],
    }[command]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    _one_error_line(result, f"model registry {uri} failed while")
    assert not (tmp_path / "scores.parquet").exists()


# ------------------------------------------------------------------------------------------------ incompatible models


def test_a_model_whose_features_differ_from_the_code_refuses_to_load():
    model = hand_model()
    model.check_compatible()  # as built: the features this code computes for its (empty) event-type list

    reordered = copy.copy(model)
    reordered.feature_names = model.feature_names[::-1]
    with pytest.raises(IncompatibleModelError, match="same names in another order.*retrain"):
        reordered.check_compatible()

    renamed = copy.copy(model)
    renamed.feature_set = "rfm_engagement_v0"
    with pytest.raises(IncompatibleModelError, match="feature set rfm_engagement_v0.*retrain"):
        renamed.check_compatible()

    # trained with one event type more than the features it stored: this code would compute session_* too
    other_events = copy.copy(model)
    other_events.event_types = ("session",)
    with pytest.raises(IncompatibleModelError, match="new: session_.*retrain"):
        other_events.check_compatible()

    dropped = copy.copy(model)
    dropped.feature_names = [*model.feature_names, "loyalty_points"]
    with pytest.raises(IncompatibleModelError, match="gone: loyalty_points.*retrain"):
        dropped.check_compatible()


def test_an_incompatible_champion_refuses_to_load_and_churn_score_says_retrain(registry, tmp_path, shop, monkeypatch):
    model = hand_model()
    model.feature_names = model.feature_names[::-1]  # what an older feature order would have stored
    artifact = tmp_path / "incompatible-model"
    mlflow.pyfunc.save_model(str(artifact), python_model=model, pip_requirements=[])
    client = mlflow_client(registry.mlflow)
    version = client.create_model_version(NAME, artifact.as_uri()).version
    client.set_registered_model_alias(NAME, "champion", version)

    with pytest.raises(IncompatibleModelError, match=f"model churnguard/{version} .*retrain"):
        load_model(registry.mlflow)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    out = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["score", "--data", str(shop), "--out", str(out), "--as-of", "2024-04-01"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    _one_error_line(result, f"model churnguard/{version}", "retrain it with `churn train`")
    assert not out.exists()
