"""The row order of validated tables: by customer, then time, then position in the input file.

Clean tables are kept sorted by ``(customer_id, timestamp)``: a feature query over a chunk of customers then
touches contiguous rows (batch scoring at 1M demo customers spends about a quarter less CPU per 100k-customer chunk
than on the same rows in file order, ``benchmarks/README.md``), and a Parquet copy of the tables gets row groups
that a customer filter can skip.

Sorting 20M rows by a text key is the expensive part of validation if done directly (a string sort, then a random
gather of every column). Here customers are grouped by a 64-bit hash of their id instead, which numpy sorts fast
when packed with the row position into one integer, and only the distinct ids (one per customer, not one per row)
are sorted as text. Every step is exact: rows whose hashes share the packed prefix are regrouped by the full hash,
and whether two different ids share a full hash is checked against the input, falling back to an exact (slower)
grouping if they do. The caller rebuilds the ``customer_id`` column from the sorted distinct ids instead of
gathering it row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class CustomerOrder:
    """``rows``: positions of the input rows in (customer, time, input position) order.

    ``ids`` are the distinct customer ids in order and ``counts`` their number of rows, so the sorted
    ``customer_id`` column is ``ids`` repeated ``counts`` times (:meth:`id_codes`).
    """

    rows: np.ndarray
    ids: pa.Array
    counts: np.ndarray

    def id_codes(self) -> np.ndarray:
        """For each output row, the index of its id in ``ids``."""
        dtype = np.int32 if len(self.ids) < 2**31 else np.int64
        return np.repeat(np.arange(len(self.ids), dtype=dtype), self.counts)


def customer_order(
    customer_ids: pa.ChunkedArray | pa.Array, id_hash: np.ndarray, timestamp: np.ndarray | None
) -> CustomerOrder:
    """Order rows by customer id, then ``timestamp`` (int64, any unit; ``None`` for none), then input position.

    ``id_hash`` is any 64-bit hash of the ids (equal ids, equal hashes); no id may be null. Positions are int32
    below 2**31 rows, to keep the temporary arrays small.
    """
    n = len(id_hash)
    if len(customer_ids) != n or (timestamp is not None and len(timestamp) != n):
        raise ValueError("customer_ids, id_hash and timestamp must have the same length")
    if n == 0:
        return CustomerOrder(np.zeros(0, np.int64), pa.array([], pa.string()), np.zeros(0, np.int64))
    base = _time_order(timestamp)  # positions in (time, input position) order, or None when already so
    hashes = np.asarray(id_hash, dtype=np.uint64)
    order, full = _group_by_hash(hashes if base is None else hashes[base])  # stable within a hash
    if base is not None:
        order = base[order]
        del base
    starts = np.flatnonzero(np.concatenate(([True], full[1:] != full[:-1])))
    del full
    counts = np.diff(np.append(starts, n))
    if isinstance(customer_ids, pa.ChunkedArray):
        customer_ids = customer_ids.combine_chunks()
    fixed = _fixed_width(customer_ids)
    if fixed is not None:
        # ids of one byte length (the usual case: codes, numbers, UUIDs): their bytes, read as big-endian 64-bit
        # words, compare like the text. Check each group holds one id and order the groups with them.
        width = fixed.shape[1]
        grouped = _padded(fixed.view(f"V{width}").ravel()[order].view(np.uint8).reshape(n, width))  # 1-D gather
        words = grouped.view(np.uint64)
        boundary = np.zeros(n - 1, dtype=bool)
        boundary[starts[1:] - 1] = True
        if not ((words[1:] == words[:-1]).all(axis=1) | boundary).all():
            return _exact_order(customer_ids, timestamp)  # two different ids share a 64-bit hash (~1 in 10^8 runs)
        first = grouped[starts].view(">u8").astype(np.uint64)  # big-endian words order like the bytes
        del grouped, words
        by_id = np.lexsort(first.T[::-1])  # first word most significant
        ids = _take(customer_ids, order[starts[by_id]])
    else:
        ids = _take(customer_ids, order[starts])
        if not _ids_match(customer_ids, order, counts, ids):
            return _exact_order(customer_ids, timestamp)
        by_id = pc.sort_indices(ids).to_numpy()
        ids = ids.take(pa.array(by_id))
    # the groups are in hash order; put them in id order by moving whole groups
    return CustomerOrder(_move_groups(order, starts, counts, by_id), ids, counts[by_id])


def _positions(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)


def _time_order(timestamp: np.ndarray | None) -> np.ndarray | None:
    """Positions in (time, input position) order; ``None`` when the input is in time order already."""
    if timestamp is None or len(timestamp) < 2:
        return None
    ts = np.asarray(timestamp, dtype=np.int64)
    if bool((ts[1:] >= ts[:-1]).all()):  # files are usually written in time order
        return None
    n = len(ts)
    bits = max(1, (n - 1).bit_length())
    offset = ts.view(np.uint64) - ts.min().astype(np.int64).view(np.uint64)  # wraps: exact across the int64 range
    if int(offset.max()).bit_length() + bits > 64:
        return np.lexsort((_positions(n), ts))
    # one np.sort of (time, position) packed in 64 bits: several times faster than a stable argsort
    offset <<= np.uint64(bits)
    offset |= np.arange(n, dtype=np.uint64)
    offset.sort()
    offset &= np.uint64((1 << bits) - 1)
    return offset.astype(_positions(0).dtype)


def _group_by_hash(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions grouped by hash with the original order kept inside each group, the hash at each position).

    The hash's top ``64 - bits`` bits are packed with the position and sorted; runs whose top bits agree but whose
    full hashes differ (two customers sharing the prefix) are then regrouped by the full hash.
    """
    n = len(hashes)
    bits = max(1, (n - 1).bit_length())
    shift = np.uint64(bits)
    packed = hashes >> shift
    packed <<= shift
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64((1 << bits) - 1)).astype(_positions(0).dtype)
    packed >>= shift
    same_prefix = packed[1:] == packed[:-1]
    del packed
    full = hashes[order]
    mixed = same_prefix & (full[1:] != full[:-1])
    if mixed.any():
        run_starts = np.flatnonzero(np.concatenate(([True], ~same_prefix)))
        run_ends = np.append(run_starts[1:], n)
        run_of = np.searchsorted(run_starts, np.flatnonzero(mixed), side="right") - 1
        for r in np.unique(run_of):
            seg = slice(run_starts[r], run_ends[r])
            sub = np.lexsort((order[seg], full[seg]))  # by hash, then original order
            order[seg], full[seg] = order[seg][sub], full[seg][sub]
    return order, full


def _move_groups(order: np.ndarray, starts: np.ndarray, counts: np.ndarray, group_order: np.ndarray) -> np.ndarray:
    """``order`` with its groups (``starts``/``counts``) rearranged into ``group_order``."""
    new_starts = np.empty_like(starts)
    new_starts[group_order] = np.concatenate(([0], np.cumsum(counts[group_order])[:-1]))
    dest = np.repeat((new_starts - starts).astype(order.dtype), counts)  # each row moves with its group
    dest += _positions(len(order))
    out = np.empty_like(order)
    out[dest] = order
    return out


def _ids_match(customer_ids: pa.Array, order: np.ndarray, counts: np.ndarray, ids: pa.Array) -> bool:
    """Every row's id equals the id its hash group was given (compared in input order, a sequential read, one
    slice at a time so the expected ids are never all in memory)."""
    group_of = np.empty(len(order), np.int32 if len(counts) < 2**31 else np.int64)
    group_of[order] = np.repeat(np.arange(len(counts), dtype=group_of.dtype), counts)
    step = 1 << 20
    for start in range(0, len(order), step):
        expected = pa.DictionaryArray.from_arrays(pa.array(group_of[start : start + step]), ids).cast(ids.type)
        actual = customer_ids.slice(start, step).cast(ids.type)
        if not pc.all(pc.equal(actual, expected)).as_py():
            return False
    return True


def _fixed_width(values: pa.Array) -> np.ndarray | None:
    """The bytes of the values as an (n, width) array, if every value has the same non-zero length (else None)."""
    if values.null_count or not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], offset_type)[values.offset : values.offset + len(values) + 1]
    width = int(offsets[1] - offsets[0]) if len(values) else 0
    if width == 0 or not (np.diff(offsets) == width).all():
        return None
    return np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(len(values), width)


def _padded(rows: np.ndarray) -> np.ndarray:
    """(n, width) bytes zero-padded to a multiple of 8 bytes, contiguous (viewable as 64-bit words)."""
    width = rows.shape[1]
    if width % 8 == 0:
        return np.ascontiguousarray(rows)
    padded = np.zeros((len(rows), width + 8 - width % 8), np.uint8)
    padded[:, :width] = rows
    return padded


def _exact_order(customer_ids: pa.ChunkedArray | pa.Array, timestamp: np.ndarray | None) -> CustomerOrder:
    """The same order from dictionary codes of the ids themselves (exact, no hashing shortcut; slower)."""
    encoded = pc.dictionary_encode(customer_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
    by_id = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(by_id), np.int64)
    rank[by_id] = np.arange(len(by_id))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    keys = [np.arange(len(codes))] + ([np.asarray(timestamp)] if timestamp is not None else []) + [codes]
    rows = np.lexsort(keys)
    counts = np.bincount(codes, minlength=len(by_id))
    return CustomerOrder(rows, encoded.dictionary.take(pa.array(by_id)), counts)


def _take(values: pa.ChunkedArray | pa.Array, positions: np.ndarray) -> pa.Array:
    taken = values.take(pa.array(positions))
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken
