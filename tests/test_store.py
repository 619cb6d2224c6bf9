"""The customer store, on both backends (embedded, and a throwaway PostgreSQL server from ``tests/postgres.py``):
idempotent ingests, only new rows from a later file, rejects kept with their batch, a killed ingest changes nothing,
readers never see half an ingest, idempotent API appends visible at once, and the store's data (and so its
features) equal to validating the files."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from features.build import build_features, entities_at
from features.dataset import Dataset
from features.store import StoreError, StoreSettings, ingest, open_store
from features.validate import DataContractError, load_dataset
from tests.postgres import new_database

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 1, 1)
TABLES = ("transactions", "events", "customers")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small demo business as CSV, with messy rows of every kind (so there are rejects)."""
    from churnguard.demo import generate

    out = tmp_path_factory.mktemp("store-demo")
    generate(out, customers=400, seed=11, months=12, fmt="csv")
    return out


@pytest.fixture(scope="module")
def early(demo, tmp_path_factory) -> Path:
    """An earlier export of the same business: the first 60% of each log, and no cancellations recorded yet."""
    out = tmp_path_factory.mktemp("store-early")
    for name in ("transactions", "events"):
        lines = (demo / f"{name}.csv").read_text().splitlines(keepends=True)
        (out / f"{name}.csv").write_text("".join(lines[: int(len(lines) * 0.6)]))
    with (demo / "customers.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["churn_date"] = ""
    with (out / "customers.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(params=["embedded", "postgres"])
def settings(request, tmp_path) -> StoreSettings:
    """A fresh, empty store of each kind."""
    if request.param == "embedded":
        return StoreSettings(path=tmp_path / "store")
    return StoreSettings(url=new_database(request.getfixturevalue("postgres_url"), "store"))


@pytest.fixture
def store(settings, tmp_path):
    s = open_store(settings, tmp_path)
    yield s
    s.close()


def ordered(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names])


def assert_same(data: Dataset, expected: Dataset) -> None:
    for name in TABLES:
        got, want = getattr(data, name), getattr(expected, name)
        assert got.schema.equals(want.schema), name
        assert ordered(got).equals(ordered(want)), name


def counts(data: Dataset) -> tuple[int, int, int]:
    return tuple(getattr(data, name).num_rows for name in TABLES)


# --------------------------------------------------------------------------------------------- ingest


def test_ingesting_the_same_files_twice_adds_nothing(store, demo):
    expected, rejects = load_dataset(demo, now=NOW)
    first = ingest(store, demo, now=NOW)
    assert first.added == {name: getattr(expected, name).num_rows for name in TABLES}
    assert first.present == dict.fromkeys(TABLES, 0)
    assert first.rejected == rejects.num_rows > 0
    second = ingest(store, demo, now=NOW)
    assert second.added == dict.fromkeys(TABLES, 0)
    assert second.present == first.added
    assert second.batch_id != first.batch_id
    assert [b.batch_id for b in store.batches()] == [first.batch_id, second.batch_id]
    assert_same(store.dataset(), expected)
    assert store.customer_ids().to_pylist() == sorted(expected.customer_ids().to_pylist())
    keys = store.customer_keys()
    assert sorted(keys["customer_key"].to_pylist()) == list(range(1, keys.num_rows + 1))


def test_a_later_file_adds_only_its_new_rows_and_updates_changed_customers(store, demo, early):
    first = ingest(store, early, now=NOW)
    second = ingest(store, demo, now=NOW)
    expected, _ = load_dataset(demo, now=NOW)
    assert_same(store.dataset(), expected)
    for name in ("transactions", "events"):
        assert second.present[name] == first.added[name] > 0
        assert first.added[name] + second.added[name] == getattr(expected, name).num_rows
    cancelled = expected.customers.filter(expected.customers["churn_date"].is_valid()).num_rows
    assert cancelled > 0
    assert second.updated_customers == cancelled  # the later export brings the cancel dates: latest wins
    assert second.added["customers"] == 0 and second.present["customers"] == 400 - cancelled


def test_rejects_are_kept_with_their_batch_id(store, demo):
    result = ingest(store, demo, now=NOW)
    _, rejects = load_dataset(demo, now=NOW)
    stored = store.rejects(result.batch_id)
    assert set(stored["batch_id"].to_pylist()) == {result.batch_id}
    assert ordered(stored.drop_columns(["batch_id"])).equals(ordered(rejects))
    again = ingest(store, demo, now=NOW)
    assert store.rejects().num_rows == 2 * rejects.num_rows
    assert store.rejects(again.batch_id).num_rows == rejects.num_rows
    with pytest.raises(StoreError, match="no batch"):
        store.rejects("no-such-batch")


def test_raw_tables_and_validated_datasets_ingest_like_a_folder(store, demo):
    from features.mapping import Mapping
    from features.validate import read_folder

    expected, rejects = load_dataset(demo, now=NOW)
    first = ingest(store, read_folder(demo, Mapping()), now=NOW)
    assert first.added["events"] == expected.events.num_rows and first.rejected == rejects.num_rows
    again = ingest(store, expected, now=NOW, rejects=rejects)
    assert again.added == dict.fromkeys(TABLES, 0) and store.rejects(again.batch_id).num_rows == rejects.num_rows
    assert_same(store.dataset(), expected)


def test_a_broken_file_writes_nothing(store, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "transactions.csv").write_text("customer_id,timestamp\nA,2024-01-01\n")
    with pytest.raises(DataContractError, match="missing required column 'amount'"):
        ingest(store, broken, now=NOW)
    assert store.batches() == []
    assert counts(store.dataset()) == (0, 0, 0)


_KILLED_INGEST = """
import pathlib, sys, time
from datetime import datetime
import features.store.embedded as embedded, features.store.postgres as postgres
from features.store import StoreSettings, ingest, open_store

settings, flag, data_dir, folder = StoreSettings.model_validate_json(sys.argv[1]), *map(pathlib.Path, sys.argv[2:])

def hang(*args, **kwargs):  # halfway through the write: rows staged, batch not committed
    flag.write_text("writing")
    time.sleep(600)

embedded._drop_hot_duplicates = hang  # inside the catalog transaction that would commit the batch
postgres._upsert_customers = hang  # after the transactions and events inserts of the ingest's transaction
ingest(open_store(settings, data_dir), folder, now=datetime(2026, 1, 1))
"""


def test_a_killed_ingest_leaves_the_store_as_it_was(settings, store, demo, early, tmp_path):
    ingest(store, early, now=NOW)
    before = (ordered(store.dataset().transactions), counts(store.dataset()), store.batches(), store.rejects())
    flag = tmp_path / "flag"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_INGEST, settings.model_dump_json(), str(flag), str(tmp_path), str(demo)],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 180
        while not flag.exists():
            assert child.poll() is None, "the ingest ended before it was killed"
            assert time.monotonic() < deadline, "the ingest never reached its write"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    after = (ordered(store.dataset().transactions), counts(store.dataset()), store.batches(), store.rejects())
    assert after[0].equals(before[0]) and after[1:] == before[1:]
    result = ingest(store, demo, now=NOW)  # the next ingest works, and clears what the dead one left
    assert_same(store.dataset(), load_dataset(demo, now=NOW)[0])
    assert len(store.batches()) == 2 and result.added["transactions"] > 0
    if settings.url is None:
        folders = {p.name for p in (settings.path / "segments").iterdir()}
        assert folders == {b.batch_id for b in store.batches()}


def test_readers_see_the_store_before_or_after_an_ingest_never_half(settings, store, demo, early, tmp_path):
    ingest(store, early, now=NOW)
    old = counts(store.dataset())
    seen: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        reader = open_store(settings, tmp_path)  # its own connections, as another process would have
        try:
            while not stop.is_set():
                seen.append(counts(reader.dataset()))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        ingest(store, demo, now=NOW)
        new = counts(store.dataset())
        deadline = time.monotonic() + 30
        while (not seen or seen[-1] != new) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert new != old and seen
    assert set(seen) <= {old, new}, set(seen) - {old, new}
    assert seen[-1] == new


# --------------------------------------------------------------------------------------------- API writes and reads


def test_appends_are_idempotent_and_visible_to_the_next_read(store, demo):
    ingest(store, demo, now=NOW)
    expected, _ = load_dataset(demo, now=NOW)
    customer = expected.transactions["customer_id"][0].as_py()
    before = store.rows_for([customer])
    existing = before.transactions.slice(0, 1).to_pylist()[0]
    purchase = {"customer_id": customer, "timestamp": datetime(2025, 12, 1, 10, 0, 0, 700_000), "amount": 9.5}
    rows = {
        "transactions": [purchase, dict(purchase), existing],  # two identical purchases, one row already stored
        "events": [{"customer_id": customer, "timestamp": datetime(2025, 12, 1, 9), "event_type": "session"}],
        "customers": [{"customer_id": customer, "signup_date": datetime(2020, 1, 1), "churn_date": None}],
    }
    result = store.append(**rows)
    assert result.added == {"transactions": 2, "events": 1, "customers": 0}
    assert result.present == {"transactions": 1, "events": 0, "customers": 0}
    assert result.updated_customers == 1
    after = store.rows_for([customer])
    assert counts(after) == (before.transactions.num_rows + 2, before.events.num_rows + 1, 1)
    assert after.customers["signup_date"].to_pylist() == [datetime(2020, 1, 1)]
    assert datetime(2025, 12, 1, 10) in after.transactions["timestamp"].to_pylist()  # cut to the second

    retry = store.append(**rows)
    assert retry.added == dict.fromkeys(TABLES, 0)
    assert retry.present == {"transactions": 3, "events": 1, "customers": 1}
    new = store.append(transactions=[{"customer_id": "brand-new", "timestamp": datetime(2025, 6, 1), "amount": 1.0}])
    assert new.added["transactions"] == 1
    assert store.rows_for(["brand-new"]).transactions.num_rows == 1
    assert "brand-new" in store.customer_ids().to_pylist()

    again = ingest(store, demo, now=NOW)  # the file again: nothing new, and the API's rows stay, once each
    assert again.added["transactions"] == 0 and again.updated_customers == 1  # the file's version wins again
    total = counts(store.dataset())
    assert total == (expected.transactions.num_rows + 3, expected.events.num_rows + 1, expected.customers.num_rows)


def test_chunks_cover_every_customer_once(store, demo, early):
    ingest(store, early, now=NOW)
    ingest(store, demo, now=NOW)
    store.append(transactions=[{"customer_id": "zz-api", "timestamp": datetime(2025, 6, 1), "amount": 1.0}])
    whole = store.dataset()
    chunks = list(store.chunks(150))
    assert len(chunks) == -(-len(store.customer_ids()) // 150)
    ids = [set(c.customer_ids().to_pylist()) for c in chunks]
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == len(store.customer_ids())
    stacked = Dataset(**{n: pa.concat_tables([getattr(c, n) for c in chunks]) for n in TABLES})
    assert_same(stacked, whole)


def test_compaction_keeps_the_data(store, demo, early):
    ingest(store, early, now=NOW)
    ingest(store, demo, now=NOW)
    store.append(events=[{"customer_id": "api-only", "timestamp": datetime(2025, 6, 1), "event_type": "session"}])
    before = store.dataset()
    store.compact()
    assert_same(store.dataset(), before)
    assert ingest(store, demo, now=NOW).added == dict.fromkeys(TABLES, 0)
    assert "api-only" in store.customer_keys()["customer_id"].to_pylist()


def test_features_from_the_store_equal_features_from_the_files(store, demo):
    ingest(store, demo, now=NOW)
    expected, _ = load_dataset(demo, now=NOW)
    stored = store.dataset()
    as_of = datetime(2023, 10, 1)
    got = build_features(stored, entities_at(stored, as_of)).sort_by("customer_id")
    want = build_features(expected, entities_at(expected, as_of)).sort_by("customer_id")
    assert got.num_rows > 300 and got.equals(want)
    one = want["customer_id"][7].as_py()
    single = build_features(store.rows_for([one]), entities_at(store.rows_for([one]), as_of))
    assert single.equals(want.slice(7, 1))


# --------------------------------------------------------------------------------------------- errors


def test_an_unreachable_postgres_is_a_one_line_error(tmp_path):
    with pytest.raises(StoreError, match="cannot reach the store at postgresql://u:\\*\\*\\*@127.0.0.1:9/db") as e:
        open_store(StoreSettings(url="postgresql://u:secret@127.0.0.1:9/db"), tmp_path)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    with pytest.raises(StoreError, match="unsupported URL"):
        open_store(StoreSettings(url="mysql://x"), tmp_path)


def test_cli_ingest(settings, demo, tmp_path, monkeypatch):
    from churnguard.cli import app

    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    if settings.url:
        monkeypatch.setenv("CHURN_STORE__URL", settings.url)
    else:
        monkeypatch.setenv("CHURN_STORE__PATH", str(settings.path))
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", "--data", str(demo)])
    assert first.exit_code == 0, first.output
    assert "exact duplicate" in first.output and "already in the store" in first.output
    expected, _ = load_dataset(demo, now=NOW)
    assert f"transactions: {expected.transactions.num_rows:,} added, 0 already in the store" in first.output
    second = runner.invoke(app, ["ingest", "--data", str(demo)])
    assert f"transactions: 0 added, {expected.transactions.num_rows:,} already in the store" in second.output
    assert "batch " in second.output

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "transactions.csv").write_text("customer_id,timestamp\nA,2024-01-01\n")
    bad = runner.invoke(app, ["ingest", "--data", str(broken)])
    assert bad.exit_code == 2
    assert bad.output.strip().count("\n") == 0 and "missing required column 'amount'" in bad.output
    store = open_store(settings, tmp_path)
    assert len(store.batches()) == 2
    store.close()


def test_embedded_store_compacts_once_too_many_batches_hold_segments(demo, early, tmp_path):
    store = open_store(StoreSettings(path=tmp_path / "store", compact_after=2), tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "transactions.csv").write_text("customer_id,timestamp,amount\nnew-1,2024-05-01 10:00:00,5\n")
    ingest(store, early, now=NOW)
    ingest(store, demo, now=NOW)
    ingest(store, demo, now=NOW)  # adds nothing: holds no segment, does not count
    assert [b.kind for b in store.batches()] == ["ingest"] * 3
    ingest(store, extra, now=NOW)
    assert [b.kind for b in store.batches()] == ["ingest"] * 4 + ["compact"]
    expected, _ = load_dataset(demo, now=NOW)
    assert counts(store.dataset()) == (expected.transactions.num_rows + 1, *counts(expected)[1:])
    assert len(list((tmp_path / "store" / "segments").glob("*/transactions.arrow"))) == 1
    store.close()


def test_row_ids_of_a_few_rows_equal_the_bulk_ones():
    """The API path (query parameters) and the ingest path (Arrow) must give every row the same identity."""
    import random

    from features.contract import EVENTS, TRANSACTIONS
    from features.duck import connect
    from features.store.identity import SMALL, row_ids

    rng = random.Random(3)

    def maybe(value):
        return value if rng.random() < 0.6 else None

    rows = [
        {
            "customer_id": rng.choice(["a", "b", "ü-ß", "x" * 50]),
            "timestamp": datetime(2024, 1, 1) + timedelta(seconds=37 * i),  # distinct rows: copies come below
            "amount": rng.choice([0.0, -0.0, 1e300, -3.25, 7.1]),
            "order_id": maybe(rng.choice(["o1", "o'2", ""])),
            "quantity": maybe(rng.choice([1.0, 2.5])),
            "product_id": maybe("p"),
            "category": maybe("c"),
            "channel": maybe("web"),
        }
        for i in range(300)
    ]
    rows += [dict(rows[0]), dict(rows[0])]  # copies get their own ids
    table = pa.Table.from_pylist(rows, schema=TRANSACTIONS.arrow_schema)
    con = connect()
    bulk = row_ids(con, TRANSACTIONS, table).to_pylist()
    assert len(set(bulk)) == len(rows)
    for start in range(0, 300, 7):  # the distinct rows; a copy's id depends on the copies before it in its batch
        part = table.slice(start, min(7, 300 - start))
        assert part.num_rows <= SMALL
        assert row_ids(con, TRANSACTIONS, part).to_pylist() == bulk[start : start + part.num_rows]
    copies = table.slice(len(rows) - 3, 3)  # rows[0] is not in it, so its two copies are the 1st and 2nd here
    assert row_ids(con, TRANSACTIONS, copies).to_pylist() == [bulk[-3], bulk[0], bulk[-2]]
    event = pa.Table.from_pylist(
        [{"customer_id": "a", "timestamp": datetime(2024, 5, 1), "event_type": "session"}], schema=EVENTS.arrow_schema
    )
    assert (
        row_ids(con, EVENTS, event).to_pylist() == row_ids(con, EVENTS, pa.concat_tables([event] * 200)).to_pylist()[:1]
    )
