"""The clean-table row order: (customer_id, timestamp, input position), whatever the hashes do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from features.ordering import customer_order


def _reference(ids: list[str], ts: np.ndarray | None) -> list[int]:
    keys = [(c, 0 if ts is None else int(ts[i]), i) for i, c in enumerate(ids)]
    return [k[2] for k in sorted(keys)]


def _random_case(seed: int, n: int = 3000, customers: int = 200, time_sorted: bool = False, width: str = "mixed"):
    rng = np.random.default_rng(seed)
    if width == "mixed":
        names = [f"c{rng.integers(0, 10**6)}" for _ in range(customers)] + ["", "ä", "c 1", "C1", "c1"]
    else:  # one byte length: compared as 64-bit words (lengths 8 and 11 to cover the padding)
        names = [f"C{rng.integers(0, 10 ** int(width) - 1):0{int(width) - 1}d}" for _ in range(customers)]
    ids = [names[i] for i in rng.integers(0, len(names), n)]
    ts = rng.integers(0, 50, n).astype(np.int64) * 1_000_000
    if time_sorted:
        ts.sort()
    return ids, ts


def _hashes(ids: list[str], kind: str) -> np.ndarray:
    distinct = sorted(set(ids))
    if kind == "good":
        rng = np.random.default_rng(1)
        table = dict(
            zip(distinct, rng.integers(0, 2**63, len(distinct), dtype=np.int64).astype(np.uint64) * 2 + 1, strict=True)
        )
    elif kind == "shared_prefix":  # full hashes differ only in the low bits the packed sort drops
        table = {c: np.uint64(0xABCD000000000000) | np.uint64(i) for i, c in enumerate(distinct)}
    elif kind == "collision":  # different ids with one full hash
        table = {c: np.uint64(7 if i % 3 == 0 else 1000 + i) for i, c in enumerate(distinct)}
    else:
        raise ValueError(kind)
    return np.array([table[c] for c in ids], dtype=np.uint64)


@pytest.mark.parametrize("kind", ["good", "shared_prefix", "collision"])
@pytest.mark.parametrize("time_sorted", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("width", ["mixed", "8", "11"])
def test_order_is_customer_time_position(kind, time_sorted, chunked, width):
    ids, ts = _random_case(3, time_sorted=time_sorted, width=width)
    arr = pa.array(ids)
    values = pa.chunked_array([arr.slice(0, 1000), arr.slice(1000)]) if chunked else arr
    order = customer_order(values, _hashes(ids, kind), ts)
    assert order.rows.tolist() == _reference(ids, ts)
    assert order.ids.to_pylist() == sorted(set(ids))
    assert order.counts.tolist() == [ids.count(c) for c in sorted(set(ids))]
    rebuilt = order.ids.take(pa.array(order.id_codes())).to_pylist()
    assert rebuilt == [ids[i] for i in order.rows]


def test_without_timestamps_and_empty():
    ids = ["b", "a", "b", "c", "a"]
    order = customer_order(pa.array(ids), _hashes(ids, "good"), None)
    assert order.rows.tolist() == [1, 4, 0, 2, 3]
    empty = customer_order(pa.array([], pa.string()), np.zeros(0, np.uint64), np.zeros(0, np.int64))
    assert empty.rows.tolist() == [] and empty.ids.to_pylist() == []


def test_time_ties_keep_input_order_with_large_timestamps():
    ids = ["a"] * 4 + ["b"] * 2
    ts = np.array([5, -(2**62), 5, 2**62, 1, 1], dtype=np.int64)  # range too wide to pack: lexsort path
    order = customer_order(pa.array(ids), _hashes(ids, "good"), ts)
    assert order.rows.tolist() == [1, 0, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "ids", [["C0000001", "C0000002", "C0000003"], ["c1", "c22", "c333"], ["C00000000001"] * 2 + ["C00000000002"]]
)
def test_the_id_check_sees_two_ids_in_one_group(ids):
    """The check behind the hash grouping, on both of its paths (ids of one byte length compared as words)."""
    from features.ordering import _ids_match

    values = pa.array(ids)
    order = np.arange(len(ids))
    one_group = np.array([len(ids)])
    assert _ids_match(values, order, one_group, values.slice(0, 1)) is (len(set(ids)) == 1)
    assert _ids_match(values, order, np.ones(len(ids), dtype=np.int64), values) is True
