"""Commands without ``--data`` read the customer store: the same numbers as reading the files, and one-line errors
for an empty store (exit 2) and a store that cannot be used (exit 3)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churnguard.cli import app
from features.store import StoreSettings, ingest, open_store

runner = CliRunner()
AS_OF = "2024-10-01"


@pytest.fixture(scope="module")
def store_path(demo_dir, tmp_path_factory) -> Path:
    """The session's demo files ingested into an embedded store of their own."""
    path = tmp_path_factory.mktemp("cli-store") / "store"
    store = open_store(StoreSettings(path=path), path.parent)
    try:
        ingest(store, demo_dir, now=datetime(2026, 1, 1))
    finally:
        store.close()
    return path


@pytest.fixture
def use_store(monkeypatch, test_settings):
    """Point the CLI at the session's data dir (its registered model) and at a store of our choosing."""

    def point(*, path: Path | None = None, url: str | None = None) -> None:
        monkeypatch.setenv("CHURN_DATA_DIR", str(test_settings.data_dir))
        if path is not None:
            monkeypatch.setenv("CHURN_STORE__PATH", str(path))
        if url is not None:
            monkeypatch.setenv("CHURN_STORE__URL", url)

    return point


def _sorted(path: Path, *keys: str) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas() if path.suffix == ".parquet" else pd.read_csv(path)
    return frame.sort_values(list(keys)).reset_index(drop=True)


@pytest.mark.slow
def test_score_from_the_store_equals_score_from_the_files(registered, demo_dir, store_path, use_store, tmp_path):
    use_store(path=store_path)
    out = {}
    for name, data in (("files", ["--data", str(demo_dir)]), ("store", [])):
        out[name] = tmp_path / name
        r = runner.invoke(
            app,
            [
                "score",
                *data,
                "--as-of",
                AS_OF,
                "--out",
                str(out[name] / "scores.parquet"),
                "--outreach-out",
                str(out[name] / "outreach.csv"),
                "--rejects",
                str(out[name] / "not_scored.csv"),
            ],
        )
        assert r.exit_code == 0, r.output
    files, store = out["files"], out["store"]
    scores = _sorted(files / "scores.parquet", "customer_id")
    assert len(scores) > 1000
    pd.testing.assert_frame_equal(scores, _sorted(store / "scores.parquet", "customer_id"))
    # the customers not scored, the invalid-only ones included (the store keeps every batch's rejects)
    not_scored = _sorted(files / "not_scored.csv", "customer_id")
    assert len(not_scored) > 0
    pd.testing.assert_frame_equal(not_scored, _sorted(store / "not_scored.csv", "customer_id"))
    pd.testing.assert_frame_equal(_sorted(files / "outreach.csv", "rank"), _sorted(store / "outreach.csv", "rank"))


def test_features_from_the_store_equal_features_from_the_files(demo_dir, store_path, use_store, tmp_path):
    use_store(path=store_path)
    frames = []
    for name, data in (("files", ["--data", str(demo_dir)]), ("store", [])):
        out = tmp_path / f"{name}.parquet"
        r = runner.invoke(app, ["features", *data, "--as-of", "2024-06-01", "--as-of", AS_OF, "--out", str(out)])
        assert r.exit_code == 0, r.output
        frames.append(_sorted(out, "customer_id", "as_of"))
    assert "customer store" in r.output and "validated:" not in r.output  # the store is not validated again
    assert set(frames[0]["as_of"]) == {datetime(2024, 6, 1), datetime(2024, 10, 1)}
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_features_from_a_postgres_store_equal_features_from_the_files(demo_dir, postgres_url, use_store, tmp_path):
    from tests.postgres import new_database

    url = new_database(postgres_url, "cli")
    use_store(url=url)
    r = runner.invoke(app, ["ingest", "--data", str(demo_dir)])
    assert r.exit_code == 0, r.output
    frames = []
    for name, data in (("files", ["--data", str(demo_dir)]), ("store", [])):
        out = tmp_path / f"{name}.parquet"
        r = runner.invoke(app, ["features", *data, "--as-of", AS_OF, "--out", str(out)])
        assert r.exit_code == 0, r.output
        frames.append(_sorted(out, "customer_id", "as_of"))
    assert "customer store postgresql://" in r.output
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_labels_from_the_store_equal_labels_from_the_files(demo_dir, store_path, use_store, tmp_path):
    use_store(path=store_path)
    frames = []
    for name, data in (("files", ["--data", str(demo_dir)]), ("store", [])):
        out = tmp_path / f"{name}.parquet"
        r = runner.invoke(app, ["labels", *data, "--as-of", "2024-06-01", "--out", str(out)])
        assert r.exit_code == 0, r.output
        frames.append(_sorted(out, "customer_id", "as_of"))
    pd.testing.assert_frame_equal(frames[0], frames[1])


@pytest.mark.parametrize(
    "command",
    [
        ["score", "--out", "scores.parquet"],
        ["features", "--as-of", AS_OF, "--out", "f.parquet"],
        ["labels", "--as-of", "2024-06-01", "--out", "l.parquet"],
        ["train"],
        ["backtest", "--cutoff", "2024-06-01"],
        ["report", "--out", "report.html"],
    ],
)
def test_an_empty_store_says_to_ingest_first(command, use_store, tmp_path):
    never_written = tmp_path / "no-store"
    use_store(path=never_written)
    r = runner.invoke(app, command)
    assert r.exit_code == 2, r.output
    assert r.output.strip().count("\n") == 0, r.output
    assert "holds no transactions yet" in r.output and "churn ingest --data DIR" in r.output
    assert "Traceback" not in r.output
    assert not never_written.exists()  # a read does not create a store


def test_a_store_without_transactions_is_empty_too(use_store, tmp_path):
    open_store(StoreSettings(path=tmp_path / "store"), tmp_path).close()  # created, nothing ingested
    use_store(path=tmp_path / "store")
    r = runner.invoke(app, ["features", "--as-of", AS_OF, "--out", str(tmp_path / "f.parquet")])
    assert r.exit_code == 2 and "churn ingest --data DIR" in r.output


def test_an_unreachable_postgres_store_is_one_line_and_exit_3(use_store, tmp_path):
    use_store(url="postgresql://churn:secret@127.0.0.1:9/churn")  # nothing listens on port 9
    r = runner.invoke(app, ["score", "--out", str(tmp_path / "s.parquet")])
    assert r.exit_code == 3, r.output
    assert r.output.strip().count("\n") == 0, r.output
    assert "cannot reach the store at postgresql://churn:***@127.0.0.1:9/churn" in r.output
    assert "secret" not in r.output and "Traceback" not in r.output


def test_a_broken_embedded_store_is_one_line_and_exit_3(use_store, tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    (path / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    use_store(path=path)
    r = runner.invoke(app, ["features", "--as-of", AS_OF, "--out", str(tmp_path / "f.parquet")])
    assert r.exit_code == 3, r.output
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
    assert str(path) in r.output


def test_mapping_flags_need_files(use_store, store_path, tmp_path):
    use_store(path=store_path)
    r = runner.invoke(app, ["features", "--as-of", AS_OF, "--out", str(tmp_path / "f.parquet"), "--map", "a=b"])
    assert r.exit_code == 2 and "apply to the files of --data" in r.output
