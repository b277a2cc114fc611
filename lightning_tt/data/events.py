"""The events pass of prepare: one streaming pass over ``multi_event.parquet``, row group by row group.

Each row group is decoded and checked (``decode_row_group``: the column checks of
lightning_tt.data.schema, the sort order, exact duplicates dropped) in a reader thread while
``EventPass.add`` turns the previous one into the outputs: the listen stream of the kept users, the
training and evaluation examples, the states at the windows' starts, and the other event types
(lightning_tt.data.prepare's docstring lists the arrays). Memory holds the compact outputs and one or
two row groups, never the raw columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lightning_tt.data import schema
from lightning_tt.data.arrays import ArrayWriter

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")


@dataclass
class RowGroup:
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

    def without(self, rows: np.ndarray, duplicates: bool = True) -> RowGroup:
        """This group without ``rows`` (sorted indices), its runs recomputed; ``duplicates``: they are
        counted as exact duplicates."""
        keep = np.ones(len(self.uid), dtype=bool)
        keep[rows] = False
        uid = self.uid[keep]
        return RowGroup(self.first_row, uid, self.item[keep], self.ts[keep], self.code[keep], self.is_listen[keep],
                         self.ratio[keep], self.length[keep], self.organic[keep],
                         *_runs(uid[1:] == uid[:-1], len(uid)),
                         self.duplicates + (len(rows) if duplicates else 0))


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


def decode_row_group(table: pa.Table, path: Path, first_row: int, item_limit: int) -> RowGroup:
    """Columns of one row group as numpy, validated, exact duplicates dropped (in the reader thread)."""
    uid = schema.checked_ints(table, "uid", path, schema.MAX_RAW_ID)
    item = schema.checked_ints(table, "item_id", path, item_limit)
    ts = schema.checked_ints(table, "timestamp", path)
    same = uid[1:] == uid[:-1]
    bad = (uid[1:] < uid[:-1]) | (same & (ts[1:] < ts[:-1]))
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise schema.unsorted_error(path, first_row + i, "uid" if uid[i] < uid[i - 1] else "timestamp")
    code = schema.event_codes(table.column("event_type"), path)
    is_listen = code == schema.LISTEN
    ratio, length, organic = schema.listen_columns(table, is_listen, path, first_row)
    group = RowGroup(first_row, uid, item, ts, code, is_listen, ratio, length, organic,
                      *_runs(same, len(uid)))
    duplicates = _duplicate_rows(same, ts, item, code)
    return group.without(duplicates) if len(duplicates) else group


class EventPass:
    """The single streaming pass over the events file; holds the running state between row groups.

    Per row group it works on runs (blocks of rows of one uid) so that per-row work is a few
    vectorised passes: masks, ``np.repeat`` of per-run flags, and compressions into the outputs.
    """

    def __init__(self, path: Path, tmp: Path, bounds: dict[str, int], cfg, max_item: int,
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
        self.num_after_end = 0  # events after bounds["test_end"] (a backtest window's end), dropped
        self.tail_keys = np.zeros(0, dtype=np.int64)

    def _drop_carried_duplicates(self, g: RowGroup) -> RowGroup:
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

    def add(self, g: RowGroup) -> None:
        """Process one decoded row group."""
        if len(g.uid) == 0:
            return
        if g.uid[0] < self.prev_uid or (g.uid[0] == self.prev_uid and g.ts[0] < self.prev_ts):
            raise schema.unsorted_error(self.path, g.first_row, "uid" if g.uid[0] < self.prev_uid else "timestamp")
        self.rows_seen += len(g.uid) + g.duplicates
        g = self._drop_carried_duplicates(g)
        self.num_duplicates += g.duplicates
        b = self.bounds
        late = np.flatnonzero(g.ts > b["test_end"])
        if len(late):  # a backtest window: the dataset is treated as ending at test_end
            self.num_after_end += len(late)
            g = g.without(late, duplicates=False)
        n = len(g.uid)
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


def read_events(path: Path, parquet: pq.ParquetFile, tmp: Path, bounds: dict[str, int], config, max_item: int,
                progress: bool = True) -> EventPass:
    """Run the events pass over ``path`` (open as ``parquet``) into ``tmp``: every row group decoded in a
    reader thread (schema.row_groups) and added in order. ``config`` is prepare's SplitConfig."""
    run = EventPass(path, tmp, bounds, config, max_item, parquet.metadata.num_rows)

    def decode(g: int, first_row: int) -> RowGroup:
        table = schema.read_columns(path, schema.EVENT_COLUMNS, parquet, g)
        return decode_row_group(table, path, first_row, max_item + 1)

    with tqdm(total=parquet.metadata.num_rows, unit="row", unit_scale=True, desc="prepare: events",
              disable=not progress) as bar:
        for group in schema.row_groups(path, parquet, decode):
            run.add(group)
            bar.update(len(group.uid))
    return run
