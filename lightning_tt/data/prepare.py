"""Prepare: raw Yambda parquet -> compact memory-mappable arrays + ``meta.json``.

One streaming pass over ``multi_event.parquet`` (row group by row group, so memory holds the compact
outputs and one row group, never the raw columns), then small joins of the item side files.

Global temporal split (Yambda paper; all boundaries in seconds, ``end`` = last timestamp)::

    test_start  = end - test_days * 86400              test  = [test_start, end]
    val_end     = test_start - gap                     val   = [val_start, val_end)
    val_start   = val_end - val_days * 86400
    train_end   = val_start - gap  (test_start - gap when val_days == 0)
                                                       train = [0, train_end)

Events in the gaps are kept in the stream (they are history for later cases) but are never targets.
A user "has training history" when their first event is before ``train_end``; other users are dropped.
Exact duplicate events (the same ``uid``, ``item_id``, ``timestamp`` and ``event_type``) are dropped
before anything else, the first copy kept (a copy would be an evaluation case whose seed is its own
target); ``meta.json`` counts them. ``meta.json`` also holds ``fingerprint`` (``data_fingerprint``), the
identity of the inputs, options and vocabularies that checkpoints and exports are checked against.

What is written (``N`` = stream length, ``Vi`` items, ``Vu`` users, ``D`` audio dim; index 0 is
padding and index 1 unknown in every vocabulary):

- the event stream, stored once: every *listen* of the kept users, grouped by user in time (file)
  order: ``stream_item`` int32 [N] (item index), ``stream_ts`` uint32 [N], ``stream_ratio`` uint16 [N]
  (played_ratio_pct), ``stream_organic`` uint8 [N] (is_organic: 1 when the user chose the track, 0 when
  a recommender played it), and ``user_offsets`` int64 [Vu + 1]: user ``u`` owns ``[off[u], off[u+1])``.
  History windows are slices of this stream computed at batch time (no N-long window per example).
- examples per split: ``{split}_pos`` int32 (int64 past 2^31 rows): the stream position of every
  listen with ``played_ratio_pct >= min_played_pct`` in the split's window, sorted by user then time.
  The user of a position is found by ``searchsorted(user_offsets, pos, side="right") - 1``.
- paper-protocol lists per evaluation split: ``paper_{split}_user`` int32 [L], ``paper_{split}_pos``
  int64 [L] (first stream position at or after the window start: the state at that time), and
  ``paper_{split}_offsets`` int64 [L + 1] into ``{split}_pos`` (the user's targets, with repeats).
- item side tables, indexed by item index: ``item_ids`` (raw id), ``item_artist``, ``item_album``
  int32, ``item_length`` float32 (seconds, 0 = unknown), ``item_audio`` bfloat16 bits (uint16) [Vi, D],
  ``item_has_audio`` bool; ``user_ids``, ``artist_ids``, ``album_ids`` raw ids per index.
- the other event types of the kept users: ``signal_user``, ``signal_item`` int32, ``signal_ts``
  uint32, ``signal_type`` uint8 (codes of :data:`schema.EVENT_TYPES`).

The item vocabulary is the items with any training event; items first seen later map to 1. An item
on several albums (or artists) gets the smallest id.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lightning_tt.data import schema
from lightning_tt.data.arrays import ArrayWriter, float32_to_bfloat16, open_array, write_array
from lightning_tt.data.schema import RawDataError
from lightning_tt.errors import InputError
from lightning_tt.outputs import Output

#: 2: exact duplicate events dropped; ``fingerprint`` and ``counts.duplicate_events_dropped`` in meta.json.
SCHEMA_VERSION = 3
DAY = 86_400
PAD, UNKNOWN = 0, 1
#: Raw ids index dense lookup tables, so they must stay below this bound.
MAX_RAW_ID = 1 << 30
#: played_ratio_pct above this is treated as corrupt (real values reach ~160 with rewinds).
MAX_PLAYED_RATIO_PCT = 1000
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
EVENT_COLUMNS = ["uid", "item_id", "timestamp", "event_type", "played_ratio_pct", "track_length_seconds", "is_organic"]


@dataclass(frozen=True)
class SplitConfig:
    """Options of the temporal split and of the positives (CLI flags of ``data prepare``)."""

    test_days: float = 1.0
    val_days: float = 1.0
    gap_seconds: int = 1800
    history: int = 50
    min_played_pct: int = 50

    def validate(self) -> None:
        for name in ("test_days", "val_days", "gap_seconds", "history", "min_played_pct"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.test_days <= 0:
            raise InputError(f"--test-days must be > 0, got {self.test_days}")
        if self.history < 1:
            raise InputError(f"--history must be >= 1, got {self.history}")

    def boundaries(self, end: int) -> dict[str, int]:
        """Split boundaries for a dataset whose last timestamp is ``end`` (see module docstring)."""
        test_start = end - round(self.test_days * DAY)
        val_end = test_start - self.gap_seconds
        val_start = val_end - round(self.val_days * DAY)
        train_end = val_start - self.gap_seconds if self.val_days > 0 else val_end
        return {
            "train_end": train_end,
            "val_start": val_start,
            "val_end": val_end,
            "test_start": test_start,
            "test_end": end,
        }


def fingerprint(path: Path) -> dict:
    """Cheap identity of a source file: size and sha256 of its last MiB (the parquet footer)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
    return {"path": str(path), "bytes": size, "footer_sha256": digest.hexdigest()}


def _column_range(pf: pq.ParquetFile, column: str, path: Path) -> tuple[int, int]:
    """(min, max) of an integer column from row-group statistics, scanning the column if absent."""
    index = pf.schema_arrow.get_field_index(column)
    lo, hi = None, None
    for i in range(pf.num_row_groups):
        stats = pf.metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            table = schema.read_columns(path, [column])
            mm = pc.min_max(table.column(column))
            return int(mm["min"].as_py()), int(mm["max"].as_py())
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return int(lo), int(hi)


def _event_codes(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """event_type strings -> int8 codes of schema.EVENT_TYPES; unknown or null values are errors."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    out = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise RawDataError(f"{path}: column 'event_type' has null values")
        names = chunk.dictionary.to_pylist()
        unknown = sorted(set(names) - set(schema.EVENT_CODES))
        lookup = np.array([schema.EVENT_CODES.get(n, -1) for n in names], dtype=np.int8)
        codes = lookup[chunk.indices.to_numpy(zero_copy_only=False)]
        if unknown and (codes < 0).any():
            raise RawDataError(
                f"{path}: column 'event_type' has unknown value(s) {unknown}; expected {list(schema.EVENT_TYPES)}"
            )
        out.append(codes)
    return np.concatenate(out) if out else np.zeros(0, np.int8)


def _ints(table: pa.Table, column: str, path: Path, hi: int | None = None) -> np.ndarray:
    """A non-null integer column as numpy (its own dtype, no copy), checked to lie in [0, hi)."""
    col = table.column(column)
    if col.null_count:
        raise RawDataError(f"{path}: column '{column}' has {col.null_count} null values")
    values = col.to_numpy()
    if len(values):
        lo = values.min() if np.issubdtype(values.dtype, np.signedinteger) else 0
        top = values.max() if hi is not None or lo < 0 else 0
        if lo < 0 or (hi is not None and top >= hi):
            bad = lo if lo < 0 else top
            allowed = f"0..{hi - 1}" if hi is not None else ">= 0"
            raise RawDataError(f"{path}: column '{column}' has out-of-range value {bad} (allowed {allowed})")
    return values


@dataclass
class _RowGroup:
    """One decoded row group: numpy columns and the masks that need nothing from earlier groups.

    ``run_start`` [R] are the first rows of the runs (maximal blocks of one uid) and ``run_len`` [R]
    their lengths. The sort order is checked inside the group here and across groups in ``add``.
    ``duplicates`` counts the exact duplicate rows already dropped from it.
    """

    first_row: int
    uid: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    code: np.ndarray
    is_listen: np.ndarray
    ratio: np.ndarray
    length: np.ndarray
    organic: np.ndarray
    run_start: np.ndarray
    run_len: np.ndarray
    duplicates: int = 0

    def without(self, rows: np.ndarray) -> "_RowGroup":
        """This group without ``rows`` (indices of duplicates), its runs recomputed."""
        keep = np.ones(len(self.uid), dtype=bool)
        keep[rows] = False
        uid = self.uid[keep]
        return _RowGroup(self.first_row, uid, self.item[keep], self.ts[keep], self.code[keep], self.is_listen[keep],
                         self.ratio[keep], self.length[keep], self.organic[keep],
                         *_runs(uid[1:] == uid[:-1], len(uid)),
                         self.duplicates + len(rows))


def _runs(same_user: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(first rows, lengths) of the runs of ``n`` rows, where ``same_user[i]`` says row i + 1 has row i's uid."""
    run_start = np.flatnonzero(np.concatenate([[n > 0], ~same_user]))
    return run_start, np.diff(np.append(run_start, n))


def _event_keys(item: np.ndarray, code: np.ndarray) -> np.ndarray:
    """(item_id, event_type code) packed into one int64 per row (codes are < 8)."""
    return item.astype(np.int64) * 8 + code


def _duplicate_rows(same_user: np.ndarray, ts: np.ndarray, item: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Sorted indices of the rows that repeat an earlier row's (uid, timestamp, item_id, event_type);
    ``same_user[i]`` says row i + 1 has row i's uid (computed once, for the sort check and the runs).

    In a file sorted by (uid, timestamp) equal rows lie in one block of equal (uid, timestamp), though
    not always next to each other (a like between two copies of a listen), so only the rows of blocks
    of two or more are compared: each gets the key (block number << 33 | item_id << 3 | type code)
    (item ids < 2^30, codes < 8), and after a stable sort a key equal to its predecessor is a later copy.
    """
    same = same_user & (ts[1:] == ts[:-1])  # row i + 1 continues the block of row i
    continued = np.flatnonzero(same)
    if not len(continued):
        return np.zeros(0, dtype=np.intp)
    shared = np.zeros(len(ts), dtype=bool)
    shared[continued] = True
    shared[continued + 1] = True
    rows = np.flatnonzero(shared)
    new_block = np.ones(len(rows), dtype=bool)
    new_block[1:] = ~same[rows[1:] - 1]
    key = (np.cumsum(new_block).astype(np.int64) << 33) | _event_keys(item[rows], code[rows])
    order = np.argsort(key, kind="stable")
    key = key[order]
    return np.sort(rows[order[1:][key[1:] == key[:-1]]])


def _decode(table: pa.Table, path: Path, first_row: int, item_limit: int) -> _RowGroup:
    """Columns of one row group as numpy, validated, exact duplicates dropped (in the reader thread)."""
    uid = _ints(table, "uid", path, MAX_RAW_ID)
    item = _ints(table, "item_id", path, item_limit)
    ts = _ints(table, "timestamp", path)
    same = uid[1:] == uid[:-1]
    bad = (uid[1:] < uid[:-1]) | (same & (ts[1:] < ts[:-1]))
    if bad.any():
        i = int(np.argmax(bad)) + 1
        _unsorted(path, first_row + i, "uid" if uid[i] < uid[i - 1] else "timestamp")
    code = _event_codes(table.column("event_type"), path)
    is_listen = code == schema.LISTEN
    column = table.column("played_ratio_pct")
    if column.null_count:  # nulls are allowed on other event types only
        null = is_listen & column.is_null().to_numpy(zero_copy_only=False)
        if null.any():
            raise RawDataError(f"{path}: column 'played_ratio_pct' is null on listen row {first_row + int(np.argmax(null))}")
    ratio = pc.fill_null(column, 0).to_numpy()  # in the column's own integer type
    bad = is_listen & ((ratio < 0) | (ratio > MAX_PLAYED_RATIO_PCT))
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(
            f"{path}: column 'played_ratio_pct' has out-of-range value {ratio[i]} at row {first_row + i} "
            f"(allowed 0..{MAX_PLAYED_RATIO_PCT})"
        )
    length = pc.fill_null(table.column("track_length_seconds"), 0).to_numpy()
    bad = is_listen & (length < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(f"{path}: column 'track_length_seconds' has out-of-range value {length[i]} at row "
                           f"{first_row + i} (allowed >= 0)")
    organic = pc.fill_null(table.column("is_organic"), 0).to_numpy()
    bad = is_listen & (organic != 0) & (organic != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(f"{path}: column 'is_organic' has value {organic[i]} at row {first_row + i} (allowed 0 or 1)")
    group = _RowGroup(first_row, uid, item, ts, code, is_listen, ratio, length, organic.astype(np.uint8),
                      *_runs(same, len(uid)))
    duplicates = _duplicate_rows(same, ts, item, code)
    return group.without(duplicates) if len(duplicates) else group


def _unsorted(path: Path, row: int, column: str):
    raise RawDataError(
        f"{path}: rows are not sorted by (uid, timestamp): column '{column}' decreases at row {row}; "
        f"the file must be sorted by (uid, timestamp)"
    )


class _EventPass:
    """The single streaming pass over the events file; holds the running state between row groups.

    Per row group it works on runs (blocks of rows of one uid) so that per-row work is a few
    vectorised passes: masks, ``np.repeat`` of per-run flags, and compressions into the outputs.
    """

    def __init__(self, path: Path, tmp: Path, bounds: dict[str, int], cfg: SplitConfig, max_item: int,
                 max_rows: int):
        self.path, self.bounds, self.cfg = path, bounds, cfg
        pos_dtype = np.int32 if max_rows < 2**31 else np.int64  # stream positions
        self.stream = {
            "item": ArrayWriter(tmp, "stream_item", np.int32),  # raw ids until remapped
            "ts": ArrayWriter(tmp, "stream_ts", np.uint32),
            "ratio": ArrayWriter(tmp, "stream_ratio", np.uint16),
            "organic": ArrayWriter(tmp, "stream_organic", np.uint8),
        }
        self.examples = {s: ArrayWriter(tmp, f"{s}_pos", pos_dtype) for s in SPLITS}
        self.state_pos = {s: [] for s in EVAL_SPLITS}  # stream positions of the state at window start
        self.signals = {
            "user": ArrayWriter(tmp, "signal_user", np.int32),
            "item": ArrayWriter(tmp, "signal_item", np.int32),
            "ts": ArrayWriter(tmp, "signal_ts", np.uint32),
            "type": ArrayWriter(tmp, "signal_type", np.uint8),
        }
        self.user_ids: list[np.ndarray] = []
        self.user_starts: list[np.ndarray] = []
        # Per raw item id: whether it has a training event, and its track length (0 = unknown).
        self.in_train = np.zeros(max_item + 1, dtype=bool)
        self.length = np.zeros(max_item + 1, dtype=np.float32)
        self.rows_seen = 0
        self.train_max_ts = -1
        # Carried across row groups: the last row's (uid, ts), its user index (when kept) and whether
        # it is kept; the last stream row's ts; where the last kept user's stream range starts.
        self.prev_uid, self.prev_ts, self.prev_user, self.prev_kept = -1, -1, -1, False
        self.prev_stream_ts = -1
        self.last_user_start = -1
        self.num_kept = 0
        self.num_dropped = 0
        # Exact duplicate events dropped, and the (item, type) keys of the last (uid, timestamp) block.
        self.num_duplicates = 0
        self.tail_keys = np.zeros(0, dtype=np.int64)

    def _drop_carried_duplicates(self, g: _RowGroup) -> _RowGroup:
        """Drop the rows of ``g``'s first (uid, timestamp) block that repeat a row of the previous
        groups' last block (a block may span row groups); remember ``g``'s last block for the next."""
        continues = g.uid[0] == self.prev_uid and g.ts[0] == self.prev_ts
        if continues:
            # The group is sorted by (uid, timestamp): its first block ends where both first change.
            user_end = int(np.searchsorted(g.uid, g.uid[0], side="right"))
            head = int(np.searchsorted(g.ts[:user_end], g.ts[0], side="right"))
            repeats = np.flatnonzero(np.isin(_event_keys(g.item[:head], g.code[:head]), self.tail_keys))
            if len(repeats):
                g = g.without(repeats)
                if len(g.uid) == 0:
                    return g
        user_start = int(np.searchsorted(g.uid, g.uid[-1], side="left"))
        tail = user_start + int(np.searchsorted(g.ts[user_start:], g.ts[-1], side="left"))
        keys = _event_keys(g.item[tail:], g.code[tail:])
        self.tail_keys = np.concatenate([self.tail_keys, keys]) if tail == 0 and continues else keys
        return g

    def add(self, g: _RowGroup) -> None:
        """Process one decoded row group."""
        if len(g.uid) == 0:
            return
        if g.uid[0] < self.prev_uid or (g.uid[0] == self.prev_uid and g.ts[0] < self.prev_ts):
            _unsorted(self.path, g.first_row, "uid" if g.uid[0] < self.prev_uid else "timestamp")
        self.rows_seen += len(g.uid) + g.duplicates
        g = self._drop_carried_duplicates(g)
        self.num_duplicates += g.duplicates
        b, n = self.bounds, len(g.uid)
        if n == 0:
            return

        # Run 0 may continue the previous group's last user. A user is kept iff their first event is
        # before train_end; kept users are numbered 2, 3, ... in file order.
        run_new = np.ones(len(g.run_start), dtype=bool)
        run_new[0] = g.uid[0] != self.prev_uid
        run_kept = g.ts[g.run_start] < b["train_end"]
        run_user = self.num_kept + 1 + np.cumsum(run_new & run_kept)
        if not run_new[0]:
            run_kept[0], run_user[0] = self.prev_kept, self.prev_user
        new_kept = run_new & run_kept
        self.num_dropped += int((run_new & ~run_kept).sum())
        kept = np.repeat(run_kept, g.run_len)

        # The stream: listens of kept users; a new user's range starts at the stream length so far.
        in_stream = g.is_listen & kept
        base = self.stream["item"].rows
        run_count = np.add.reduceat(in_stream, g.run_start, dtype=np.int64)
        self.user_ids.append(g.uid[g.run_start[new_kept]].astype(np.int64))
        self.user_starts.append(base + (np.cumsum(run_count) - run_count)[new_kept])
        self.num_kept += int(new_kept.sum())
        s_item, s_ts, s_ratio = g.item[in_stream], g.ts[in_stream], g.ratio[in_stream]
        self.stream["item"].append(s_item)
        self.stream["ts"].append(s_ts)
        self.stream["ratio"].append(s_ratio)
        self.stream["organic"].append(g.organic[in_stream])

        # Training examples; the training vocabulary; track lengths of items not seen before.
        in_train = s_ts < b["train_end"]
        plus = s_ratio >= self.cfg.min_played_pct
        self.examples["train"].append(base + np.flatnonzero(plus & in_train))
        train_items = s_item[in_train].astype(np.intp)
        unseen = ~self.in_train[train_items]
        self.in_train[train_items] = True
        if unseen.any():
            rows = np.flatnonzero(in_stream)[np.flatnonzero(in_train)[unseen]]
            self.length[train_items[unseen]] = g.length[rows]
        if in_train.any():
            self.train_max_ts = max(self.train_max_ts, int(np.max(s_ts, where=in_train, initial=0)))

        # Evaluation windows: only the (few) stream rows at or after val_start are looked at. A row
        # is the state of its user at a window start when the previous stream row is earlier than the
        # start or belongs to another user (a user's range starts at one of ``starts``).
        late = np.flatnonzero(s_ts >= b["val_start"])
        l_ts, l_plus = s_ts[late], plus[late]
        prev_ts = np.where(late > 0, s_ts[np.maximum(late - 1, 0)].astype(np.int64), self.prev_stream_ts)
        starts = np.append(self.user_starts[-1], self.last_user_start) - base
        user_first = np.isin(late, starts)
        for split, lo, hi in (("val", b["val_start"], b["val_end"]), ("test", b["test_start"], b["test_end"] + 1)):
            inside = (l_ts >= lo) & (l_ts < hi)
            self.examples[split].append(base + late[inside & l_plus])
            cross = (l_ts >= lo) & (user_first | (prev_ts < lo))
            self.state_pos[split].append(base + late[cross])

        # Other event types of kept users (a few percent of rows).
        sig = np.flatnonzero(kept > g.is_listen)
        sig_item, sig_ts = g.item[sig], g.ts[sig]
        self.signals["user"].append(run_user[np.searchsorted(g.run_start, sig, side="right") - 1])
        self.signals["item"].append(sig_item)
        self.signals["ts"].append(sig_ts)
        self.signals["type"].append(g.code[sig])
        self.in_train[sig_item[sig_ts < b["train_end"]]] = True

        self.prev_uid, self.prev_ts = int(g.uid[-1]), int(g.ts[-1])
        self.prev_kept, self.prev_user = bool(run_kept[-1]), int(run_user[-1])
        if len(self.user_starts[-1]):
            self.last_user_start = int(self.user_starts[-1][-1])
        if len(s_ts):
            self.prev_stream_ts = int(s_ts[-1])


def _remap_in_place(tmp: Path, entry: dict, lookup: np.ndarray, chunk: int = 1 << 24) -> None:
    """Replace raw item ids by indices (``lookup[raw]``) in an on-disk int32 array, chunk by chunk.

    Plain reads and writes rather than a memory map, so resident memory stays at one chunk.
    """
    dtype = np.dtype(entry["dtype"])
    with open(tmp / entry["file"], "r+b") as f:
        for start in range(0, entry["shape"][0], chunk):
            f.seek(start * dtype.itemsize)
            values = np.fromfile(f, dtype=dtype, count=chunk)
            f.seek(start * dtype.itemsize)
            lookup[values].astype(dtype, copy=False).tofile(f)


def _smallest_per_item(item_index: np.ndarray, other_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each item index >= 2 that appears, its smallest related raw id (one sort of packed keys)."""
    keep = item_index >= 2
    key = (item_index[keep].astype(np.uint64) << np.uint64(32)) | other_raw[keep].astype(np.uint64)
    key.sort()
    items = (key >> np.uint64(32)).astype(np.int64)
    first = np.ones(len(key), dtype=bool)
    first[1:] = items[1:] != items[:-1]
    return items[first], (key[first] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _side_vocab(path: Path, kind: str, id_column: str, item_lookup: np.ndarray, num_items: int):
    """Map every item index to an index of ``id_column`` (artists or albums) from a mapping file;
    an item with several gets the smallest id, one with none the unknown index."""
    schema.check_schema(path, kind)
    table = schema.read_columns(path, [id_column, "item_id"])
    raw_item = _ints(table, "item_id", path)
    other = _ints(table, id_column, path, 1 << 32)
    known = raw_item < len(item_lookup)
    item_index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
    item_index[known] = item_lookup[raw_item[known]]
    items, others = _smallest_per_item(item_index, other)
    vocab = np.unique(others)
    per_item = np.full(num_items, UNKNOWN, dtype=np.int32)
    per_item[PAD] = PAD
    per_item[items] = 2 + np.searchsorted(vocab, others)
    raw_ids = np.concatenate([[0, 0], vocab]).astype(np.uint32)
    return per_item, raw_ids


def _embedding_groups(path: Path, column: str, audio_dim: int):
    """Yield (rows read, raw item ids [n], float32 vectors [n, D]) per row group of the embeddings file,
    skipping null embeddings; the next group is read and checked in a second thread meanwhile."""
    pf = pq.ParquetFile(path)
    starts = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])])

    def read(g: int):
        table = schema.read_columns(path, ["item_id", column], pf, g)
        raw_item = _ints(table, "item_id", path)
        lists = table.column(column).combine_chunks()
        valid = ~lists.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        wrong = np.flatnonzero(valid & (lengths != audio_dim))
        if len(wrong):
            raise RawDataError(
                f"{path}: column '{column}' row {starts[g] + wrong[0]} has dimension {lengths[wrong[0]]}, "
                f"expected {audio_dim}"
            )
        # list_flatten skips null lists, so the rows of ``vectors`` are the valid rows in order.
        vectors = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if not np.isfinite(vectors).all():
            raise RawDataError(f"{path}: column '{column}' holds NaN or infinite values")
        return table.num_rows, raw_item[valid], vectors.reshape(-1, audio_dim)

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0) if pf.num_row_groups else None
        for g in range(pf.num_row_groups):
            group = pending.result()
            if g + 1 < pf.num_row_groups:
                pending = reader.submit(read, g + 1)
            yield group


def _audio_table(path: Path, tmp: Path, item_lookup: np.ndarray, num_items: int, audio_dim: int,
                 progress: bool = False):
    """Write item_audio [num_items, D] as bfloat16 bits and item_has_audio; items without an embedding
    keep a zero row. bfloat16 is float32 truncated to its upper 16 bits (8 significant bits, relative
    error < 0.4%), so the conversion is a strided copy. The table is an output held in memory
    (num_items x D x 2 bytes) and written once.
    """
    column = schema.embedding_column(schema.check_schema(path, "embeddings"), path)
    audio = np.zeros((num_items, audio_dim), dtype=np.uint16)
    has_audio = np.zeros(num_items, dtype=bool)
    rows = pq.ParquetFile(path).metadata.num_rows
    bar = tqdm(total=rows, unit="row", unit_scale=True, desc="prepare: audio", disable=not progress)
    for rows_read, raw_item, vectors in _embedding_groups(path, column, audio_dim):
        bar.update(rows_read)
        known = raw_item < len(item_lookup)
        index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
        index[known] = item_lookup[raw_item[known]]
        keep = np.flatnonzero(index >= 2)
        audio[index[keep]] = float32_to_bfloat16(vectors[keep])
        has_audio[index[keep]] = True
    bar.close()
    entry = write_array(tmp, "item_audio", audio)
    entry["encoding"] = "bfloat16"
    return entry, has_audio


def _empty_split_error(split: str, bounds: dict, path: Path, cfg: SplitConfig) -> RawDataError:
    window = {
        "train": f"[0, {bounds['train_end']})",
        "val": f"[{bounds['val_start']}, {bounds['val_end']})",
        "test": f"[{bounds['test_start']}, {bounds['test_end']}]",
    }[split]
    return RawDataError(
        f"{path}: split '{split}' is empty: no listen with played_ratio_pct >= {cfg.min_played_pct} of a "
        f"user with training history has column 'timestamp' in {window}; adjust --test-days, --val-days "
        f"or --gap-seconds"
    )


def prepare(
    raw: str | Path,
    out: str | Path,
    size: str | None = None,
    config: SplitConfig = SplitConfig(),
    audio_dim: int = schema.AUDIO_DIM,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare ``raw`` (a Yambda-layout directory) into ``out``; return the written ``meta.json``.

    ``out`` is checked before any work (lightning_tt.outputs: never overlapping ``raw``, replaced only
    with ``overwrite``), written into a temporary sibling directory and renamed into place only on
    success.
    """
    config.validate()
    if audio_dim < 1:
        raise InputError(f"--audio-dim must be >= 1, got {audio_dim}")
    raw = Path(raw)
    size = schema.check_raw_dir(raw, size)  # footers only
    events = schema.events_path(raw, size)
    sides = schema.side_paths(raw)
    # The files too: any of them may be a link to a file outside the raw directory.
    inputs = {"--raw": raw, **{f"--raw's {path.name}": path for path in (events, *sides.values())}}
    output = Output(out, "dir", option="--out", inputs=inputs, overwrite=overwrite)
    started = time.time()

    pf = pq.ParquetFile(events)
    if pf.metadata.num_rows == 0:
        raise RawDataError(f"{events}: the file has no rows")
    min_ts, end = _column_range(pf, "timestamp", events)
    _, max_item = _column_range(pf, "item_id", events)
    if max_item >= MAX_RAW_ID:
        raise RawDataError(f"{events}: column 'item_id' has out-of-range value {max_item} (allowed 0..{MAX_RAW_ID})")
    bounds = config.boundaries(end)

    with output.writing() as tmp:
        meta = _prepare_into(tmp, raw, size, events, sides, pf, bounds, min_ts, max_item, config, audio_dim, progress)
        meta["seconds"] = round(time.time() - started, 3)
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=2)
    return meta


def data_fingerprint(tmp: Path, sources: dict, config: SplitConfig, audio_dim: int, arrays: dict) -> str:
    """sha256 (hex) of what makes two prepared directories interchangeable: the source files' sizes and
    footer hashes, the split options, the audio dimension and the bytes of the four vocabularies
    (``user_ids``, ``item_ids``, ``artist_ids``, ``album_ids``). Preparing the same files with the same
    options gives the same fingerprint, wherever they lie; anything else gives another."""
    digest = hashlib.sha256()
    described = {name: {"bytes": f["bytes"], "footer_sha256": f["footer_sha256"]} for name, f in sources.items()}
    digest.update(json.dumps({"files": described, "config": asdict(config), "audio_dim": audio_dim},
                             sort_keys=True).encode())
    for name in ("user_ids", "item_ids", "artist_ids", "album_ids"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(open_array(tmp, arrays[name])).tobytes())
    return digest.hexdigest()


def _prepare_into(tmp, raw, size, events, sides, pf, bounds, min_ts, max_item, config, audio_dim, progress):
    started = time.perf_counter()
    run = _EventPass(events, tmp, bounds, config, max_item, pf.metadata.num_rows)
    # A reader thread reads and decodes the next row group while this one is processed (pyarrow and
    # numpy release the GIL, so the two use both cores).
    starts = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])])

    def read(g: int) -> _RowGroup:
        table = schema.read_columns(events, EVENT_COLUMNS, pf, g)
        return _decode(table, events, int(starts[g]), max_item + 1)

    with tqdm(total=pf.metadata.num_rows, unit="row", unit_scale=True, desc="prepare: events",
              disable=not progress) as bar, ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0)
        for g in range(pf.num_row_groups):
            group = pending.result()
            if g + 1 < pf.num_row_groups:
                pending = reader.submit(read, g + 1)
            run.add(group)
            bar.update(len(group.uid))

    arrays: dict[str, dict] = {}
    for name, writer in run.stream.items():
        arrays[f"stream_{name}"] = writer.close()
    for split, writer in run.examples.items():
        arrays[f"{split}_pos"] = writer.close()
    for name, writer in run.signals.items():
        arrays[f"signal_{name}"] = writer.close()
    stream_len = arrays["stream_ts"]["shape"][0]
    for split in SPLITS:
        if arrays[f"{split}_pos"]["shape"][0] == 0 and not (split == "val" and config.val_days == 0):
            raise _empty_split_error(split, bounds, events, config)
    timings = {"events": time.perf_counter() - started}

    # Users: index 0 pad, 1 unknown, then kept users in uid order.
    user_raw = np.concatenate([[0, 0], *run.user_ids]).astype(np.uint32)
    num_users = len(user_raw)
    offsets = np.concatenate([[0, 0], *run.user_starts, [stream_len]]).astype(np.int64)
    arrays["user_ids"] = write_array(tmp, "user_ids", user_raw)
    arrays["user_offsets"] = write_array(tmp, "user_offsets", offsets)

    # Items: index 0 pad, 1 unknown, then training items in raw-id order.
    train_raw = np.flatnonzero(run.in_train)
    num_items = 2 + len(train_raw)
    item_lookup = np.full(max_item + 1, UNKNOWN, dtype=np.int32)
    item_lookup[train_raw] = np.arange(2, num_items, dtype=np.int32)
    arrays["item_ids"] = write_array(tmp, "item_ids", np.concatenate([[0, 0], train_raw]).astype(np.uint32))
    length = np.zeros(num_items, dtype=np.float32)
    length[2:] = run.length[train_raw]
    arrays["item_length"] = write_array(tmp, "item_length", length)

    # A second thread remaps the stream's raw ids and joins artists and albums while this one joins
    # the audio embeddings (the largest input after the events).
    with ThreadPoolExecutor(max_workers=1) as helper:
        remapped = [helper.submit(_remap_in_place, tmp, arrays[name], item_lookup)
                    for name in ("stream_item", "signal_item")]
        artists = helper.submit(_side_vocab, sides["artists"], "artists", "artist_id", item_lookup, num_items)
        albums = helper.submit(_side_vocab, sides["albums"], "albums", "album_id", item_lookup, num_items)
        arrays["item_audio"], has_audio = _audio_table(sides["embeddings"], tmp, item_lookup, num_items, audio_dim,
                                                          progress)
        arrays["item_has_audio"] = write_array(tmp, "item_has_audio", has_audio)
        for name, job in (("artist", artists), ("album", albums)):
            per_item, raw_ids = job.result()
            arrays[f"item_{name}"] = write_array(tmp, f"item_{name}", per_item)
            arrays[f"{name}_ids"] = write_array(tmp, f"{name}_ids", raw_ids)
        for job in remapped:
            job.result()
    timings["items"] = time.perf_counter() - started - sum(timings.values())

    # Paper-protocol lists: users with targets in the window, their state position and targets.
    for split in EVAL_SPLITS:
        state_pos = np.concatenate(run.state_pos[split]).astype(np.int64)
        target_pos = np.asarray(open_array(tmp, arrays[f"{split}_pos"]), dtype=np.int64)
        target_user = np.searchsorted(offsets, target_pos, side="right") - 1
        users, first = np.unique(target_user, return_index=True)
        # Every user with targets crossed the window start, so this lookup always hits.
        where = np.searchsorted(np.searchsorted(offsets, state_pos, side="right") - 1, users)
        arrays[f"paper_{split}_user"] = write_array(tmp, f"paper_{split}_user", users.astype(np.int32))
        arrays[f"paper_{split}_pos"] = write_array(tmp, f"paper_{split}_pos", state_pos[where])
        offsets_ = np.append(first, len(target_pos)).astype(np.int64)
        arrays[f"paper_{split}_offsets"] = write_array(tmp, f"paper_{split}_offsets", offsets_)

    counts = {name: entry["shape"][0] for name, entry in arrays.items() if name.endswith("_pos")}
    files = {"events": fingerprint(events), **{k: fingerprint(p) for k, p in sides.items()}}
    return {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": data_fingerprint(tmp, files, config, audio_dim, arrays),
        "source": {"raw_dir": str(raw), "size": size, "files": files},
        "config": asdict(config),
        "boundaries": {
            "min_timestamp": min_ts,
            **bounds,
            "train_max_timestamp": run.train_max_ts,
        },
        "vocab": {
            "num_users": num_users,
            "num_items": num_items,
            "num_artists": arrays["artist_ids"]["shape"][0],
            "num_albums": arrays["album_ids"]["shape"][0],
            "audio_dim": audio_dim,
            "padding_index": PAD,
            "unknown_index": UNKNOWN,
        },
        "counts": {
            "raw_rows": run.rows_seen,
            "duplicate_events_dropped": run.num_duplicates,
            "stream_listens": stream_len,
            "signals": arrays["signal_type"]["shape"][0],
            "users_dropped_no_train_history": run.num_dropped,
            "items_with_audio": int(has_audio.sum()),
            "train_examples": counts["train_pos"],
            "val_examples": counts["val_pos"],
            "test_examples": counts["test_pos"],
            "paper_val_users": arrays["paper_val_user"]["shape"][0],
            "paper_test_users": arrays["paper_test_user"]["shape"][0],
        },
        "arrays": arrays,
        "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
