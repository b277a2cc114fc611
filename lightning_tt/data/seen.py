"""The items a user has already consumed, for lists that leave them out (``exclude_seen``).

A *positive* is a Listen+ event: a next-track example (``{split}_pos`` holds their stream positions).
On catalogues that are consumed once (films, books, purchases) a user's past positives are never the
next one, and a list that repeats them wastes its places; on music, where people replay tracks, they
are often the next one. ``repeat_share`` measures which kind of data a prepared directory holds:

    repeat share = 1 - (distinct (user, item) pairs) / (positives)

over the training positives (of the first users holding ``REPEAT_SAMPLE`` of them, on large data).
``exclude_seen=None`` (auto) leaves the past out when the share is below ``AUTO_EXCLUDE_BELOW``.

``SeenItems`` holds what each case has consumed before it: every listen of its user before the
case, the evaluation window's earlier listens included (the model is frozen, the features are
current, and a user who rated a film on Monday will not rate it again on Friday). The model's lists
and the baselines' (lightning_tt.baselines) leave out the same items. Serving leaves out the whole
stream (all of it is past).
"""

from __future__ import annotations

import functools

import numpy as np

from lightning_tt.data.prepared import PreparedData

#: auto exclude_seen: leave the past out when fewer than this share of training positives repeat one.
AUTO_EXCLUDE_BELOW = 0.01
#: repeat_share reads at most this many training positives (whole users, in user order).
REPEAT_SAMPLE = 5_000_000


def positives(data: PreparedData, splits: tuple[str, ...] = ("train",)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) [P] int64 of every positive of ``splits``, by user then time."""
    parts = [np.asarray(data[f"{split}_pos"], dtype=np.int64) for split in splits]
    pos = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))  # each split's is sorted already
    user = np.searchsorted(np.asarray(data["user_offsets"]), pos, side="right") - 1
    items, times = np.asarray(data["stream_item"])[pos], np.asarray(data["stream_ts"])[pos]
    return user, items.astype(np.int64), times.astype(np.int64)


def repeat_share(data: PreparedData, limit: int = REPEAT_SAMPLE) -> float:
    """Share of training positives whose item the same user already had as a positive (0 when none);
    on more than ``limit`` positives, measured on the first users that hold ``limit`` of them."""
    pos = np.asarray(data["train_pos"][:limit], dtype=np.int64)
    if len(pos) == 0:
        return 0.0
    offsets = np.asarray(data["user_offsets"])
    user = np.searchsorted(offsets, pos, side="right") - 1
    if len(data["train_pos"]) > limit:  # keep whole users only: the last one may be cut
        whole = user < user[-1]
        pos, user = (pos[whole], user[whole]) if whole.any() else (pos, user)
    pairs = np.unique(user * int(data.vocab["num_items"]) + np.asarray(data["stream_item"])[pos].astype(np.int64))
    return 1.0 - len(pairs) / len(pos)


def resolve_exclude_seen(data: PreparedData, exclude_seen: bool | None) -> bool:
    """``exclude_seen`` itself, or for None (auto) whether ``repeat_share(data) < AUTO_EXCLUDE_BELOW``."""
    return bool(exclude_seen) if exclude_seen is not None else repeat_share(data) < AUTO_EXCLUDE_BELOW


#: the past a case's list leaves out: each evaluation split's own, or the whole stream (serving)
SEEN_SCOPES = ("val", "test", "all")


def _window_start(data: PreparedData, times: np.ndarray, start: int | None) -> np.ndarray:
    """[U] int64: each user's first stream position at or after ``start`` (seconds; the user's end for
    None), by a binary search over every user's time-sorted range at once (O(U log n), no [n] array)."""
    offsets = np.asarray(data["user_offsets"], dtype=np.int64)
    lo, hi = offsets[:-1].copy(), offsets[1:].copy()
    if start is None:
        return hi
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        before = np.zeros(len(lo), dtype=bool)
        before[open_] = times[mid[open_]] < start
        lo = np.where(open_ & before, mid + 1, lo)
        hi = np.where(open_ & ~before, mid, hi)
    return lo


class SeenItems:
    """What each evaluation case or request has already consumed: every item of its user's listens
    before it (Listen+ or not: a film rated low is not rated again either).

    ``scope`` "val" or "test": the cases of that split. The listens before the window start are held
    once per user as a CSR table of distinct items (offsets [U + 1], items sorted); ``padded(user, pos)``
    adds the window's own listens ``stream[window_start[u] : pos)`` of each case at stream position
    ``pos``, so a case late in the window leaves out what the user played earlier in it (and a test case
    the validation window), and nothing at or after ``pos`` is read. "all": the whole stream (serving,
    where every listen is past)."""

    def __init__(self, data: PreparedData, scope: str = "test"):
        if scope not in SEEN_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SEEN_SCOPES)}, got {scope!r}")
        self.stream_item = data["stream_item"]
        times = data["stream_ts"]
        offsets = np.asarray(data["user_offsets"], dtype=np.int64)
        self.window_start = _window_start(data, times, None if scope == "all" else data.boundaries[f"{scope}_start"])
        lengths = self.window_start - offsets[:-1]
        num_users, num_items = len(lengths), int(data.vocab["num_items"])
        ends = np.cumsum(lengths)
        pos = np.arange(int(ends[-1]) if num_users else 0, dtype=np.int64)
        pos += np.repeat(offsets[:-1] - (ends - lengths), lengths)  # every listen before the window, by user
        keys = np.unique(np.repeat(np.arange(num_users, dtype=np.int64), lengths) * num_items
                         + np.asarray(self.stream_item[pos], dtype=np.int64))
        self.items = keys % num_items
        self.offsets = np.searchsorted(keys // num_items, np.arange(num_users + 1), side="left")

    def padded(self, user: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
        """[B, S] int64: the items consumed before each of ``user`` [B]'s cases at stream positions
        ``pos`` [B] (None: at the window start), 0-padded (S >= 1; item 0 is padding, never retrieved).
        An item may appear twice; leaving it out twice changes nothing."""
        user = np.asarray(user, dtype=np.int64)
        first, count = self.offsets[user], self.offsets[user + 1] - self.offsets[user]
        tail_start = self.window_start[user]
        tail = np.zeros(len(user), dtype=np.int64) if pos is None else np.maximum(np.asarray(pos) - tail_start, 0)
        width = max(int((count + tail).max(initial=0)), 1)
        slot = np.arange(width, dtype=np.int64)[None, :]
        held, listened = slot < count[:, None], (slot >= count[:, None]) & (slot < (count + tail)[:, None])
        out = np.zeros((len(user), width), dtype=np.int64)
        if len(self.items):
            out = np.where(held, self.items[np.where(held, first[:, None] + slot, 0)], 0)
        at = np.where(listened, tail_start[:, None] + slot - count[:, None], 0)
        return np.where(listened, np.asarray(self.stream_item[at.ravel()], dtype=np.int64).reshape(at.shape), out)


@functools.lru_cache(maxsize=4)
def _built(path: str, fingerprint: str, scope: str) -> SeenItems:
    return SeenItems(PreparedData(path), scope)


def seen_items(data: PreparedData, scope: str = "test") -> SeenItems:
    """The SeenItems of ``data`` and ``scope``, built once per process and prepared directory (the
    fingerprint keys out a directory prepared again)."""
    return _built(str(data.path), data.fingerprint, scope)
