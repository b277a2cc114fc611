"""Prepare: raw Yambda parquet -> compact memory-mappable arrays + ``meta.json``.

One streaming pass over ``multi_event.parquet`` (row group by row group, so memory holds the compact
outputs and one row group, never the raw columns), then small joins of the item side files. This module
orchestrates; the parts are:

    lightning_tt.data.schema        the raw layout and the checks of every column's values
    lightning_tt.data.events        the events pass: the stream, the examples, the window states, signals
    lightning_tt.data.item_tables   the item vocabulary and side tables (artist, album, length, audio)
    here                            the split, the user vocabulary, the paper lists, meta.json

Global temporal split (Yambda paper; all boundaries in seconds, ``end`` = last timestamp)::

    test_start  = end - test_days * 86400              test  = [test_start, end]
    val_end     = test_start - gap                     val   = [val_start, val_end)
    val_start   = val_end - val_days * 86400
    train_end   = val_start - gap  (test_start - gap when val_days == 0)
                                                       train = [0, train_end)

Rolling-origin backtesting (``window`` K >= 1): the dataset is treated as if it ended at
``end_K = end - K * round(test_days * 86400)``. Events after ``end_K`` are dropped before anything else
(``meta.json`` counts them), then the boundaries above are computed from ``end_K``; so window K's test
window is ``[end - (K + 1) T, end - K T]`` (T = the test window) and windows 0, 1, 2, ... never overlap.
Each window has its own validation window and training cut; window 0 is the plain split.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lightning_tt.data import schema
from lightning_tt.data.arrays import open_array, write_array
from lightning_tt.data.events import EVAL_SPLITS, SPLITS, read_events
from lightning_tt.data.item_tables import write_item_tables
from lightning_tt.data.prepared import PAD, SCHEMA_VERSION, UNKNOWN
from lightning_tt.data.schema import DAY, MAX_RAW_ID, RawDataError
from lightning_tt.errors import InputError
from lightning_tt.outputs import Output


@dataclass(frozen=True)
class SplitConfig:
    """Options of the temporal split and of the positives (``lightning-tt data prepare --split.*``).

    Args:
        test_days: length of the test window in days (fractions allowed)
        val_days: length of the validation window in days; 0 for none
        gap_seconds: gap before the test and the validation windows
        history: default history window length N
        min_played_pct: a listen is a positive when played_ratio_pct >= this
        window: rolling-origin backtest window K: 0 = the latest test window; K >= 1 shifts every
            boundary K test windows earlier and drops the events after the shifted end
    """

    test_days: float = 1.0
    val_days: float = 1.0
    gap_seconds: int = 1800
    history: int = 50
    min_played_pct: int = 50
    window: int = 0

    def validate(self) -> None:
        for name in ("test_days", "val_days", "gap_seconds", "history", "min_played_pct", "window"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"--split.{name} must be a finite number >= 0, got {value}")
        if self.test_days <= 0:
            raise InputError(f"--split.test_days must be > 0, got {self.test_days}")
        if self.history < 1:
            raise InputError(f"--split.history must be >= 1, got {self.history}")
        if self.window != int(self.window):
            raise InputError(f"--split.window must be a whole number >= 0, got {self.window}")

    def window_end(self, end: int) -> int:
        """The last timestamp that window ``self.window`` keeps, of a dataset that ends at ``end``."""
        return end - int(self.window) * round(self.test_days * DAY)

    def boundaries(self, end: int) -> dict[str, int]:
        """Split boundaries of window ``self.window`` for a dataset whose last timestamp is ``end`` (see the
        module docstring)."""
        end = self.window_end(end)
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


def _empty_split_error(split: str, bounds: dict, path: Path, cfg: SplitConfig) -> RawDataError:
    window = {
        "train": f"[0, {bounds['train_end']})",
        "val": f"[{bounds['val_start']}, {bounds['val_end']})",
        "test": f"[{bounds['test_start']}, {bounds['test_end']}]",
    }[split]
    return RawDataError(
        f"{path}: split '{split}' is empty: no listen with played_ratio_pct >= {cfg.min_played_pct} of a "
        f"user with training history has column 'timestamp' in {window}; adjust --split.test_days, --split.val_days, "
        f"--split.gap_seconds or --split.window"
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
        raise InputError(f"--audio_dim must be >= 1, got {audio_dim}")
    raw = Path(raw)
    size = schema.check_raw_dir(raw, size)  # footers only
    events = schema.events_path(raw, size)
    sides = schema.side_paths(raw)
    # The files too: any of them may be a link to a file outside the raw directory.
    inputs = {"--raw": raw, **{f"--raw's {path.name}": path for path in (events, *sides.values())}}
    # Replaces only an earlier prepared directory (meta.json), never a run's logs or raw data.
    output = Output(out, "dir", option="--out", inputs=inputs, overwrite=overwrite, replaces="meta.json")
    started = time.time()

    pf = pq.ParquetFile(events)
    if pf.metadata.num_rows == 0:
        raise RawDataError(f"{events}: the file has no rows")
    min_ts, end = schema.column_range(pf, "timestamp", events)
    _, max_item = schema.column_range(pf, "item_id", events)
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
    options = asdict(config)
    if not options["window"]:  # window 0 is the plain split: the fingerprint it always had
        del options["window"]
    digest.update(json.dumps({"files": described, "config": options, "audio_dim": audio_dim},
                             sort_keys=True).encode())
    for name in ("user_ids", "item_ids", "artist_ids", "album_ids"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(open_array(tmp, arrays[name])).tobytes())
    return digest.hexdigest()


def _prepare_into(tmp, raw, size, events, sides, pf, bounds, min_ts, max_item, config, audio_dim, progress):
    started = time.perf_counter()
    run = read_events(events, pf, tmp, bounds, config, max_item, progress)

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

    num_items, with_audio = write_item_tables(tmp, arrays, run.in_train, run.length, sides, audio_dim, progress)
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
            "events_after_window_dropped": run.num_after_end,
            "stream_listens": stream_len,
            "signals": arrays["signal_type"]["shape"][0],
            "users_dropped_no_train_history": run.num_dropped,
            "items_with_audio": with_audio,
            "train_examples": counts["train_pos"],
            "val_examples": counts["val_pos"],
            "test_examples": counts["test_pos"],
            "paper_val_users": arrays["paper_val_user"]["shape"][0],
            "paper_test_users": arrays["paper_test_user"]["shape"][0],
        },
        "arrays": arrays,
        "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
