"""The user's explicit feedback as of a query time: their most recent likes and dislikes, with unlike and
undislike applied, from the prepared signal arrays (``signal_user``, ``signal_item``, ``signal_ts``,
``signal_type``).

A like of item ``i`` at time ``s`` counts for a query at time ``t`` when ``s < t`` (strictly before:
the like that comes with the target listen itself is never seen) and the next like or unlike event of
the same (user, item) is not before ``t``: an unlike at ``s' < t`` cancels it, and a later like at
``s' < t`` replaces it (so an item appears once). Dislikes work the same with dislike/undislike.

A query keeps the last ``k`` of these among the user's last ``LOOKBACK * k`` like events before ``t``
(so a user who cancelled or repeated more than ``(LOOKBACK - 1) * k`` of their recent likes gets fewer
than ``k``).

Built once per prepared directory: the like (dislike) events sorted by (user, time), each with the
time its status next changes (``2**32`` when never). A query then needs two binary searches and one
gather of ``LOOKBACK * k`` slots, vectorised over the batch.
"""

from __future__ import annotations

import functools

import numpy as np

from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.schema import EVENT_CODES

#: Later than any uint32 timestamp: a query time that sees every signal (serving), or "never changes".
NEVER = 1 << 32
#: feedback kind -> (the event that sets it, the event that cancels it)
KINDS = {"liked": ("like", "unlike"), "disliked": ("dislike", "undislike")}
#: How many like events per kept like a query looks back over.
LOOKBACK = 4


class RecentFeedback:
    """Recent likes or dislikes of users as of query times, for one prepared dataset."""

    def __init__(self, data: PreparedData, kind: str):
        on, off = (EVENT_CODES[name] for name in KINDS[kind])
        code = np.asarray(data["signal_type"])
        keep = (code == on) | (code == off)
        user = np.asarray(data["signal_user"])[keep].astype(np.int64)
        item = np.asarray(data["signal_item"])[keep].astype(np.int64)
        ts = np.asarray(data["signal_ts"])[keep].astype(np.int64)
        code = code[keep]
        # Each (user, item)'s events in time order (set before cancel at equal times); the next one's
        # time is when this one stops holding.
        order = np.lexsort((code != on, ts, item, user))
        user, item, ts, code = user[order], item[order], ts[order], code[order]
        same_next = np.r_[(user[1:] == user[:-1]) & (item[1:] == item[:-1]), False]
        until = np.where(same_next, np.r_[ts[1:], 0], NEVER)
        sets = code == on
        user, item, ts, until = user[sets], item[sets], ts[sets], until[sets]
        by_time = np.lexsort((ts, user))
        self.key = (user[by_time] << 32) | ts[by_time]  # (user, time), sorted
        self.item, self.until = item[by_time], until[by_time]

    def recent(self, user: np.ndarray, time: np.ndarray, k: int) -> np.ndarray:
        """[B, k] int64 item indices: user ``user[b]``'s last ``k`` likes (dislikes) set strictly before
        ``time[b]`` that still hold at ``time[b]`` (among the last ``LOOKBACK * k``), right-aligned (the
        most recent last), 0 elsewhere.
        user, time: [B] integers (time in seconds; :data:`NEVER` for "now")."""
        user = np.asarray(user, dtype=np.int64)
        time = np.asarray(time, dtype=np.int64)
        first = np.searchsorted(self.key, user << 32, side="left")
        end = np.searchsorted(self.key, (user << 32) | np.minimum(time, NEVER - 1), side="left")
        if time.size and (time >= NEVER).any():  # "now": every event of the user
            end = np.where(time >= NEVER, np.searchsorted(self.key, (user + 1) << 32, side="left"), end)
        if len(self.item) == 0 or k == 0:
            return np.zeros((len(user), k), dtype=np.int64)
        width = LOOKBACK * k
        slot = end[:, None] + np.arange(-width, 0, dtype=np.int64)[None, :]  # [B, LOOKBACK k]
        valid = slot >= first[:, None]
        slot = np.where(valid, slot, 0)
        valid &= self.until[slot] >= time[:, None]
        # Right-align the last k valid entries: an entry's place counts the valid ones after it.
        place = k - np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]  # k - 1 for the last valid one
        keep = valid & (place >= 0)
        out = np.zeros((len(user), k), dtype=np.int64)
        rows = np.broadcast_to(np.arange(len(user))[:, None], slot.shape)
        out[rows[keep], place[keep]] = self.item[slot[keep]]
        return out


@functools.lru_cache(maxsize=4)
def _built(path: str, fingerprint: str, kind: str) -> RecentFeedback:
    return RecentFeedback(PreparedData(path), kind)


def recent_feedback(data: PreparedData, kind: str) -> RecentFeedback:
    """The RecentFeedback of ``data``, built once per process and prepared directory (the DataModule's
    five datasets and serving share it; the fingerprint keys out a directory prepared again)."""
    return _built(str(data.path), data.fingerprint, kind)
