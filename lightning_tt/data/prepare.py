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

What is written (``N`` = stream length, ``Vi`` items, ``Vu`` users, ``D`` audio dim; index 0 is
padding and index 1 unknown in every vocabulary):

- the event stream, stored once: every *listen* of the kept users, grouped by user in time (file)
  order: ``stream_item`` int32 [N] (item index), ``stream_ts`` uint32 [N], ``stream_ratio`` uint16 [N]
  (played_ratio_pct), and ``user_offsets`` int64 [Vu + 1]: user ``u`` owns ``[off[u], off[u+1])``.
  History windows are slices of this stream computed at batch time (no N-long window per example).
- examples per split: ``{split}_pos`` int64 (stream position of the target listen) and ``{split}_user``
  int32, for every listen with ``played_ratio_pct >= min_played_pct`` in the split's window, sorted by
  user then time.
- paper-protocol lists per evaluation split: ``paper_{split}_user`` int32 [L], ``paper_{split}_pos``
  int64 [L] (first stream position at or after the window start: the state at that time), and
  ``paper_{split}_offsets`` int64 [L + 1] into ``{split}_pos`` (the user's targets, with repeats).
- item side tables, indexed by item index: ``item_ids`` (raw id), ``item_artist``, ``item_album``
  int32, ``item_length`` float32 (seconds, 0 = unknown), ``item_audio`` float16 [Vi, D],
  ``item_has_audio`` bool; ``user_ids``, ``artist_ids``, ``album_ids`` raw ids per index.
- the other event types of the kept users: ``signal_user``, ``signal_item`` int32, ``signal_ts``
  uint32, ``signal_type`` uint8 (codes of :data:`schema.EVENT_TYPES`).

The item vocabulary is the items with any training event; items first seen later map to 1. An item
on several albums gets its smallest album id.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lightning_tt.data import schema
from lightning_tt.data.arrays import ArrayWriter, open_array, write_array
from lightning_tt.data.schema import RawDataError

SCHEMA_VERSION = 1
DAY = 86_400
PAD, UNKNOWN = 0, 1
#: Raw ids index dense lookup tables, so they must stay below this bound.
MAX_RAW_ID = 1 << 30
#: played_ratio_pct above this is treated as corrupt (real values reach ~160 with rewinds).
MAX_PLAYED_RATIO_PCT = 1000
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
EVENT_COLUMNS = ["uid", "item_id", "timestamp", "event_type", "played_ratio_pct", "track_length_seconds"]


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
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.test_days <= 0:
            raise ValueError(f"--test-days must be > 0, got {self.test_days}")
        if self.history < 1:
            raise ValueError(f"--history must be >= 1, got {self.history}")

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


def _column_max(pf: pq.ParquetFile, column: str, path: Path) -> tuple[int, int]:
    """(min, max) of an integer column from row-group statistics, scanning the column if absent."""
    index = pf.schema_arrow.get_field_index(column)
    lo, hi = None, None
    for i in range(pf.num_row_groups):
        stats = pf.metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            table = pq.read_table(path, columns=[column])
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
    """A non-null integer column as int64, checked to lie in [0, hi)."""
    col = table.column(column)
    if col.null_count:
        raise RawDataError(f"{path}: column '{column}' has {col.null_count} null values")
    values = col.to_numpy().astype(np.int64, copy=False)
    if len(values):
        lo, top = values.min(), values.max()
        if lo < 0 or (hi is not None and top >= hi):
            bad = lo if lo < 0 else top
            allowed = f"0..{hi - 1}" if hi is not None else ">= 0"
            raise RawDataError(f"{path}: column '{column}' has out-of-range value {bad} (allowed {allowed})")
    return values


class _EventPass:
    """The single streaming pass over the events file; holds the running state between row groups."""

    def __init__(self, path: Path, tmp: Path, bounds: dict[str, int], cfg: SplitConfig, max_item: int):
        self.path, self.bounds, self.cfg = path, bounds, cfg
        self.stream = {
            "item": ArrayWriter(tmp, "stream_item", np.int32),  # raw ids until remapped
            "ts": ArrayWriter(tmp, "stream_ts", np.uint32),
            "ratio": ArrayWriter(tmp, "stream_ratio", np.uint16),
        }
        self.examples = {
            s: (ArrayWriter(tmp, f"{s}_pos", np.int64), ArrayWriter(tmp, f"{s}_user", np.int32))
            for s in SPLITS
        }
        self.state_pos = {s: ([], []) for s in EVAL_SPLITS}  # (user, pos) at each window start
        self.signals = {
            "user": ArrayWriter(tmp, "signal_user", np.int32),
            "item": ArrayWriter(tmp, "signal_item", np.int32),
            "ts": ArrayWriter(tmp, "signal_ts", np.uint32),
            "type": ArrayWriter(tmp, "signal_type", np.uint8),
        }
        self.user_ids: list[np.ndarray] = []
        self.user_starts: list[np.ndarray] = []
        self.item_in_train = np.zeros(max_item + 1, dtype=bool)
        self.item_length = np.zeros(max_item + 1, dtype=np.float32)
        self.rows_seen = 0
        self.train_max_ts = -1
        # Carried across row groups: the last row's (uid, ts), whether its user is kept, and the last
        # stream row's user index and ts (to detect window crossings at row-group boundaries).
        self.prev_uid, self.prev_ts, self.prev_kept = -1, -1, False
        self.prev_stream_user, self.prev_stream_ts = -1, -1
        self.num_kept = 0
        self.num_dropped = 0

    def _check_sorted(self, uid: np.ndarray, ts: np.ndarray) -> None:
        u = np.concatenate([[self.prev_uid], uid])
        t = np.concatenate([[self.prev_ts], ts])
        du, dt = np.diff(u), np.diff(t)
        bad = np.flatnonzero((du < 0) | ((du == 0) & (dt < 0)))
        if len(bad):
            row = self.rows_seen + int(bad[0])
            column = "uid" if du[bad[0]] < 0 else "timestamp"
            raise RawDataError(
                f"{self.path}: rows are not sorted by (uid, timestamp): column '{column}' decreases at "
                f"row {row}; the file must be sorted by (uid, timestamp)"
            )

    def add(self, table: pa.Table) -> None:
        """Process one row group."""
        path, b = self.path, self.bounds
        uid = _ints(table, "uid", path, MAX_RAW_ID)
        item = _ints(table, "item_id", path, len(self.item_in_train))
        ts = _ints(table, "timestamp", path)
        self._check_sorted(uid, ts)
        code = _event_codes(table.column("event_type"), path)
        is_listen = code == schema.LISTEN
        ratio_col = table.column("played_ratio_pct")
        missing = ratio_col.is_null().to_numpy(zero_copy_only=False) & is_listen
        if missing.any():
            row = self.rows_seen + int(np.flatnonzero(missing)[0])
            raise RawDataError(f"{path}: column 'played_ratio_pct' is null on listen row {row}")
        ratio = pc.fill_null(ratio_col, 0).to_numpy().astype(np.int64, copy=False)
        if len(ratio) and ratio.max() > MAX_PLAYED_RATIO_PCT:
            row = self.rows_seen + int(np.argmax(ratio))
            raise RawDataError(
                f"{path}: column 'played_ratio_pct' has out-of-range value {ratio.max()} at row {row} "
                f"(allowed 0..{MAX_PLAYED_RATIO_PCT})"
            )
        length_col = table.column("track_length_seconds")
        has_length = is_listen & ~length_col.is_null().to_numpy(zero_copy_only=False)
        self.item_length[item[has_length]] = pc.fill_null(length_col, 0).to_numpy()[has_length]

        # Users: a run of rows with one uid. A user is kept iff their first event is before train_end.
        n = len(uid)
        new_user = np.empty(n, dtype=bool)
        new_user[:1] = uid[:1] != self.prev_uid
        np.not_equal(uid[1:], uid[:-1], out=new_user[1:])
        run = np.cumsum(new_user) - 1  # run index per row; -1 = continues the previous group's user
        run_kept = ts[new_user] < b["train_end"]
        self.num_dropped += int((~run_kept).sum())
        # One extra entry so that rows with run == -1 index something; np.where picks the carry-over.
        kept = np.where(run >= 0, np.append(run_kept, False)[run], self.prev_kept)
        run_user = self.num_kept + 1 + np.cumsum(run_kept)  # user index of each run (if kept)
        last_user = self.num_kept + 1  # index of the user carried over from the previous group
        user = np.where(run >= 0, np.append(run_user, 0)[run], last_user).astype(np.int32)

        # Stream rows: listens of kept users.
        in_stream = is_listen & kept
        base = self.stream["item"].rows
        s_user, s_ts = user[in_stream], ts[in_stream]
        s_ratio = ratio[in_stream]
        first_rows = np.flatnonzero(new_user)[run_kept]
        starts = base + np.cumsum(in_stream)[first_rows] - in_stream[first_rows]
        self.user_ids.append(uid[first_rows])
        self.user_starts.append(starts)
        self.num_kept += len(first_rows)
        self.stream["item"].append(item[in_stream])
        self.stream["ts"].append(s_ts)
        self.stream["ratio"].append(s_ratio)

        # Examples: Listen+ stream rows inside a split window.
        pos = base + np.arange(len(s_ts), dtype=np.int64)
        plus = s_ratio >= self.cfg.min_played_pct
        windows = {
            "train": s_ts < b["train_end"],
            "val": (s_ts >= b["val_start"]) & (s_ts < b["val_end"]),
            "test": s_ts >= b["test_start"],
        }
        for split, inside in windows.items():
            take = plus & inside
            self.examples[split][0].append(pos[take])
            self.examples[split][1].append(s_user[take])
        if len(s_ts):
            in_train = s_ts < b["train_end"]
            if in_train.any():
                self.train_max_ts = max(self.train_max_ts, int(s_ts[in_train].max()))

        # Paper-protocol state: the first stream row of a user at or after each window start.
        prev_user = np.concatenate([[self.prev_stream_user], s_user[:-1]])
        prev_ts = np.concatenate([[self.prev_stream_ts], s_ts[:-1]])
        for split, start in (("val", b["val_start"]), ("test", b["test_start"])):
            cross = (s_ts >= start) & ((prev_user != s_user) | (prev_ts < start))
            self.state_pos[split][0].append(s_user[cross])
            self.state_pos[split][1].append(pos[cross])

        # Other event types of kept users.
        sig = ~is_listen & kept
        self.signals["user"].append(user[sig])
        self.signals["item"].append(item[sig])
        self.signals["ts"].append(ts[sig])
        self.signals["type"].append(code[sig])

        # Training vocabulary: items with any training event of a kept user.
        self.item_in_train[item[kept & (ts < b["train_end"])]] = True

        if n:
            self.prev_uid, self.prev_ts, self.prev_kept = int(uid[-1]), int(ts[-1]), bool(kept[-1])
        if len(s_ts):
            self.prev_stream_user, self.prev_stream_ts = int(s_user[-1]), int(s_ts[-1])
        self.rows_seen += n


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


def _first_per_item(item_index: np.ndarray, other_raw: np.ndarray, smallest: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each item index that appears, pick one related raw id (the smallest if ``smallest``)."""
    keep = item_index >= 2
    item_index, other_raw = item_index[keep], other_raw[keep]
    order = np.lexsort((other_raw, item_index)) if smallest else np.argsort(item_index, kind="stable")
    item_index, other_raw = item_index[order], other_raw[order]
    first = np.ones(len(item_index), dtype=bool)
    first[1:] = item_index[1:] != item_index[:-1]
    return item_index[first], other_raw[first]


def _side_vocab(path: Path, id_column: str, item_lookup: np.ndarray, num_items: int, smallest: bool):
    """Map every item index to an index of ``id_column`` (artists or albums) from a mapping file."""
    schema.check_schema(path, "artists" if id_column == "artist_id" else "albums")
    table = pq.read_table(path, columns=[id_column, "item_id"])
    raw_item = _ints(table, "item_id", path)
    other = _ints(table, id_column, path)
    known = raw_item < len(item_lookup)
    item_index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
    item_index[known] = item_lookup[raw_item[known]]
    items, others = _first_per_item(item_index, other, smallest)
    vocab = np.unique(others)
    per_item = np.full(num_items, UNKNOWN, dtype=np.int32)
    per_item[PAD] = PAD
    per_item[items] = 2 + np.searchsorted(vocab, others)
    raw_ids = np.concatenate([[0, 0], vocab]).astype(np.uint32)
    return per_item, raw_ids


def _audio_table(path: Path, tmp: Path, item_lookup: np.ndarray, num_items: int, audio_dim: int):
    """Write item_audio float16 [num_items, D] and item_has_audio; rows of items without one stay 0."""
    file_schema = schema.check_schema(path, "embeddings")
    column = schema.embedding_column(file_schema, path)
    audio_path = tmp / "item_audio.bin"
    audio = np.memmap(audio_path, dtype=np.float16, mode="w+", shape=(num_items, audio_dim))
    has_audio = np.zeros(num_items, dtype=bool)
    pf = pq.ParquetFile(path)
    row = 0
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=["item_id", column])
        raw_item = _ints(table, "item_id", path)
        lists = table.column(column).combine_chunks()
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.chunk(0)
        valid = ~lists.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        wrong = np.flatnonzero(valid & (lengths != audio_dim))
        if len(wrong):
            raise RawDataError(
                f"{path}: column '{column}' row {row + int(wrong[0])} has dimension {lengths[wrong[0]]}, "
                f"expected {audio_dim}"
            )
        vectors = pc.list_flatten(lists.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
        vectors = vectors.reshape(-1, audio_dim)
        if not np.isfinite(vectors).all():
            raise RawDataError(f"{path}: column '{column}' holds NaN or infinite values")
        raw_item = raw_item[valid]
        known = raw_item < len(item_lookup)
        index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
        index[known] = item_lookup[raw_item[known]]
        keep = index >= 2
        audio[index[keep]] = vectors[keep]
        has_audio[index[keep]] = True
        row += table.num_rows
    audio.flush()
    del audio
    entry = {"file": audio_path.name, "dtype": np.dtype(np.float16).str, "shape": [num_items, audio_dim]}
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

    Writes into a temporary sibling directory and renames it to ``out`` only on success.
    """
    config.validate()
    raw, out = Path(raw), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: output directory exists; pass --overwrite to replace it")
    size = schema.check_raw_dir(raw, size)
    events = schema.events_path(raw, size)
    sides = schema.side_paths(raw)
    started = time.time()

    pf = pq.ParquetFile(events)
    if pf.metadata.num_rows == 0:
        raise RawDataError(f"{events}: the file has no rows")
    min_ts, end = _column_max(pf, "timestamp", events)
    _, max_item = _column_max(pf, "item_id", events)
    if max_item >= MAX_RAW_ID:
        raise RawDataError(f"{events}: column 'item_id' has out-of-range value {max_item} (allowed 0..{MAX_RAW_ID})")
    bounds = config.boundaries(end)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = _prepare_into(tmp, raw, size, events, sides, pf, bounds, min_ts, max_item, config, audio_dim, progress)
        meta["seconds"] = round(time.time() - started, 3)
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=2)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _prepare_into(tmp, raw, size, events, sides, pf, bounds, min_ts, max_item, config, audio_dim, progress):
    run = _EventPass(events, tmp, bounds, config, max_item)
    with tqdm(total=pf.metadata.num_rows, unit="row", unit_scale=True, desc="prepare: events", disable=not progress) as bar:
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=EVENT_COLUMNS)
            run.add(table)
            bar.update(table.num_rows)

    arrays: dict[str, dict] = {}
    for name, writer in run.stream.items():
        arrays[f"stream_{name}"] = writer.close()
    for split, (pos_w, user_w) in run.examples.items():
        arrays[f"{split}_pos"], arrays[f"{split}_user"] = pos_w.close(), user_w.close()
    for name, writer in run.signals.items():
        arrays[f"signal_{name}"] = writer.close()
    stream_len = arrays["stream_ts"]["shape"][0]

    # Users: index 0 pad, 1 unknown, then kept users in uid order.
    user_raw = np.concatenate([[0, 0], *run.user_ids]).astype(np.uint32)
    num_users = len(user_raw)
    offsets = np.concatenate([[0, 0], *run.user_starts, [stream_len]]).astype(np.int64)
    arrays["user_ids"] = write_array(tmp, "user_ids", user_raw)
    arrays["user_offsets"] = write_array(tmp, "user_offsets", offsets)

    # Items: index 0 pad, 1 unknown, then training items in raw-id order.
    train_raw = np.flatnonzero(run.item_in_train)
    num_items = 2 + len(train_raw)
    item_lookup = np.full(max_item + 1, UNKNOWN, dtype=np.int32)
    item_lookup[train_raw] = np.arange(2, num_items, dtype=np.int32)
    _remap_in_place(tmp, arrays["stream_item"], item_lookup)
    _remap_in_place(tmp, arrays["signal_item"], item_lookup)
    arrays["item_ids"] = write_array(tmp, "item_ids", np.concatenate([[0, 0], train_raw]).astype(np.uint32))
    length = np.zeros(num_items, dtype=np.float32)
    length[2:] = run.item_length[train_raw]
    arrays["item_length"] = write_array(tmp, "item_length", length)

    # Artists, albums and audio embeddings joined per item.
    item_artist, artist_raw = _side_vocab(sides["artists"], "artist_id", item_lookup, num_items, smallest=False)
    item_album, album_raw = _side_vocab(sides["albums"], "album_id", item_lookup, num_items, smallest=True)
    item_artist[UNKNOWN] = item_album[UNKNOWN] = UNKNOWN
    arrays["item_artist"] = write_array(tmp, "item_artist", item_artist)
    arrays["item_album"] = write_array(tmp, "item_album", item_album)
    arrays["artist_ids"] = write_array(tmp, "artist_ids", artist_raw)
    arrays["album_ids"] = write_array(tmp, "album_ids", album_raw)
    arrays["item_audio"], has_audio = _audio_table(sides["embeddings"], tmp, item_lookup, num_items, audio_dim)
    arrays["item_has_audio"] = write_array(tmp, "item_has_audio", has_audio)

    # Paper-protocol lists: users with targets in the window, their state position and targets.
    for split in EVAL_SPLITS:
        users_at_start = np.concatenate(run.state_pos[split][0]).astype(np.int32)
        pos_at_start = np.concatenate(run.state_pos[split][1]).astype(np.int64)
        example_user = open_array(tmp, arrays[f"{split}_user"])
        target_users, first = np.unique(example_user, return_index=True)
        ends = np.append(first[1:], len(example_user)).astype(np.int64)
        # Every user with targets crossed the window start, so the lookup below always hits.
        where = np.searchsorted(users_at_start, target_users)
        arrays[f"paper_{split}_user"] = write_array(tmp, f"paper_{split}_user", target_users.astype(np.int32))
        arrays[f"paper_{split}_pos"] = write_array(tmp, f"paper_{split}_pos", pos_at_start[where])
        arrays[f"paper_{split}_offsets"] = write_array(
            tmp, f"paper_{split}_offsets", np.concatenate([[0], ends]).astype(np.int64)
        )

    counts = {name: entry["shape"][0] for name, entry in arrays.items() if name.endswith("_pos")}
    for split in SPLITS:
        if counts[f"{split}_pos"] == 0 and not (split == "val" and config.val_days == 0):
            raise _empty_split_error(split, bounds, events, config)
    files = {"events": fingerprint(events), **{k: fingerprint(p) for k, p in sides.items()}}
    return {
        "schema_version": SCHEMA_VERSION,
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
            "num_artists": len(artist_raw),
            "num_albums": len(album_raw),
            "audio_dim": audio_dim,
            "padding_index": PAD,
            "unknown_index": UNKNOWN,
        },
        "counts": {
            "raw_rows": run.rows_seen,
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
    }
