"""The items a user has already consumed, for lists that leave them out (``exclude_seen``).

A *positive* is a Listen+ event: a next-track example (``{split}_pos`` holds their stream positions).
On catalogues that are consumed once (films, books, purchases) a user's past positives are never the
next one, and a list that repeats them wastes its places; on music, where people replay tracks, they
are often the next one. ``repeat_share`` measures which kind of data a prepared directory holds:

    repeat share = 1 - (distinct (user, item) pairs) / (positives)

over the training positives (of the first users holding ``REPEAT_SAMPLE`` of them, on large data).
``exclude_seen=None`` (auto) leaves the past out when the share is below ``AUTO_EXCLUDE_BELOW``.

``SeenItems`` holds each user's distinct positive items of the given splits. Evaluation leaves out the
*training* positives, as the baselines do (lightning_tt.baselines): they are before every evaluation
case, so nothing later is read. Serving leaves out the positives of every split (all of them are past).
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


class SeenItems:
    """Each user's distinct positive items of ``splits``, as a CSR table (offsets [U + 1], items sorted)."""

    def __init__(self, data: PreparedData, splits: tuple[str, ...] = ("train",)):
        user, item, _ = positives(data, splits)
        num_items = int(data.vocab["num_items"])
        keys = np.unique(user * num_items + item)
        self.items = keys % num_items
        self.offsets = np.searchsorted(keys // num_items, np.arange(int(data.vocab["num_users"]) + 1), side="left")

    def padded(self, user: np.ndarray) -> np.ndarray:
        """[B, S] int64: the seen items of each of ``user`` [B], 0-padded to the most of any (S >= 1;
        item 0 is padding, never retrieved)."""
        user = np.asarray(user, dtype=np.int64)
        if len(self.items) == 0:
            return np.zeros((len(user), 1), dtype=np.int64)
        first, count = self.offsets[user], self.offsets[user + 1] - self.offsets[user]
        width = max(int(count.max(initial=0)), 1)
        slot = np.arange(width, dtype=np.int64)
        valid = slot[None, :] < count[:, None]
        return np.where(valid, self.items[np.where(valid, first[:, None] + slot[None, :], 0)], 0)


@functools.lru_cache(maxsize=4)
def _built(path: str, fingerprint: str, splits: tuple[str, ...]) -> SeenItems:
    return SeenItems(PreparedData(path), splits)


def seen_items(data: PreparedData, splits: tuple[str, ...] = ("train",)) -> SeenItems:
    """The SeenItems of ``data``, built once per process and prepared directory (the fingerprint keys
    out a directory prepared again)."""
    return _built(str(data.path), data.fingerprint, tuple(splits))
