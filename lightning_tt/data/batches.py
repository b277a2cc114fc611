"""Batch assembly: example indices -> dicts of tensors, by index arithmetic on the event stream.

A query at stream position ``p`` of user ``u`` sees only the stream before ``p``: its history window
is ``stream[max(off[u], p - N) : p]`` and its seed track is ``stream[p - 1]`` (the user's previous
listen), so no feature can contain the target (at ``p``) or anything later. Everything is vectorised
over the batch: one fancy-index gather per array, no Python loop per example.

Keys of a next-track batch (``B`` examples, ``N`` history length; item indices use 0 for padding and
1 for unknown). A batch holds indices only: the model holds the item table (artist, album, track
length, audio) on its device and looks every other item feature up there::

    user                                   [B]     int64
    history_item                           [B, N]  int64   right-aligned: the most recent is last
    history_mask                           [B, N]  bool    True on real entries
    history_length                         [B]     int64   number of real entries (<= N)
    history_ratio                          [B, N]  float32 play_weight of each listen (0 on padding)
    liked_item, disliked_item              [B, K]  int64   the user's last K likes (dislikes) set
                                                           strictly before the query time and not
                                                           cancelled by then (data/feedback.py),
                                                           right-aligned; only with ``feedback`` K > 0
    seen_items                             [B, S]  int64   the items of every listen of the user
                                                           before the query (data/seen.py), 0-padded;
                                                           only with exclude_seen (evaluation) and when
                                                           serving; the lists leave them out
    seed_item                              [B]     int64   the previous listen; 0 when there is none
    seed_organic                           [B]     int64   is_organic of the seed listen (0 without one)
    example_age                            [B]     float32 seconds: train_max_timestamp - timestamp
                                                           in training, 0 for evaluation cases
    target_item                            [B]     int64
    weight                                 [B]     float32 play-ratio weight, see play_weight

The query time is the target listen's timestamp for a next-track example, the window start for a
paper-protocol list, and "now" when serving: feedback is read as of that time.

With ``target_horizon`` H > 0 (training only) a training example's target is not its own listen but
one drawn uniformly from the same user's Listen+ training examples in ``[t, t + H]`` (its own listen
included), where ``t`` is its time; the query stays the state before the example's own listen. This
teaches the query the day-ahead (paper) protocol's question rather than only the next track.

A paper-protocol batch has the query keys (``user``, ``history_*``, ``seed_*``, ``example_age``) and
``target_items`` [B, T] int64 (the user's Listen+ items in the window, with repeats, 0-padded to the
longest list T) and ``target_count`` [B] int64.
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_tt.data.feedback import recent_feedback
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.seen import seen_items


def play_weight(played_ratio_pct: np.ndarray) -> np.ndarray:
    """Example weight ``w = min(played_ratio_pct, 100) / 100``: a 90% listen weighs 0.9, a 50% one
    0.5; rewinds (> 100%) count as complete listens."""
    return np.minimum(np.asarray(played_ratio_pct, dtype=np.float32), 100.0) / 100.0


class FeatureGatherer:
    """Gathers the query's and the target's indices from one prepared dataset's event stream.
    ``feedback`` K > 0 adds the user's last K likes and dislikes to every query; ``seen`` (a
    lightning_tt.data.seen scope: "val" or "test" for that split's cases, "all" for serving) adds the
    items of the user's listens before each query as ``seen_items``."""

    def __init__(self, data: PreparedData, history: int, feedback: int = 0, seen: str | None = None):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if feedback < 0:
            raise ValueError(f"feedback must be >= 0, got {feedback}")
        self.data = data
        self.history = history
        self.feedback = feedback
        self.seen = seen
        self.stream_item = data["stream_item"]
        self.stream_ts = data["stream_ts"]
        self.stream_ratio = data["stream_ratio"]
        self.stream_organic = data["stream_organic"]
        self.user_offsets = np.asarray(data["user_offsets"])
        self.signals = {kind: recent_feedback(data, kind) for kind in ("liked", "disliked")} if feedback else {}
        self.seen_items = seen_items(data, self.seen) if self.seen else None
        self._window = np.arange(-history, 0, dtype=np.int64)

    def __getstate__(self):
        """Pickle (for spawned DataLoader workers) the directory, not the memory-mapped arrays."""
        return {"data": self.data, "history": self.history, "feedback": self.feedback, "seen": self.seen}

    def __setstate__(self, state):
        self.__init__(state["data"], state["history"], state["feedback"], state["seen"])

    def user_of(self, pos: np.ndarray) -> np.ndarray:
        """User index owning each stream position (the last user whose range starts at or before it)."""
        return np.searchsorted(self.user_offsets, pos, side="right") - 1

    def query(self, pos: np.ndarray, user: np.ndarray, time: np.ndarray) -> dict[str, np.ndarray]:
        """Query features for targets at stream positions ``pos`` [B] of users ``user`` [B] asked at
        ``time`` [B] (seconds; feedback must be older). ``pos`` may be one past the user's last listen
        (serving: the whole stream is the past)."""
        start = self.user_offsets[user]
        window = pos[:, None] + self._window  # [B, N]
        mask = window >= start[:, None]
        safe = np.where(mask, window, 0)
        history = np.where(mask, self.stream_item[safe], 0).astype(np.int64)
        count = mask.sum(axis=1)
        out = {"user": user.astype(np.int64), "history_item": history, "history_mask": mask, "history_length": count,
               "history_ratio": np.where(mask, play_weight(self.stream_ratio[safe]), 0).astype(np.float32)}
        for kind, signals in self.signals.items():
            out[f"{kind}_item"] = signals.recent(user, time, self.feedback)
        if self.seen_items is not None:
            out["seen_items"] = self.seen_items.padded(user, pos)
        out["seed_item"] = history[:, -1]
        out["seed_organic"] = np.where(mask[:, -1], self.stream_organic[safe[:, -1]], 0)
        return out


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy -> torch: integer arrays become int64, floats float32, booleans stay bool."""
    out = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == bool:
            out[key] = torch.from_numpy(value)
        elif np.issubdtype(value.dtype, np.integer):
            out[key] = torch.from_numpy(value.astype(np.int64, copy=False))
        else:
            out[key] = torch.from_numpy(value.astype(np.float32, copy=False))
    return out


class NextTrackDataset(torch.utils.data.Dataset):
    """Next-track examples of one split, indexed by *arrays* of example indices (one batch per item).

    ``split="train"`` gives training examples (``example_age`` = train_max_timestamp - timestamp);
    ``"val"``/``"test"`` give evaluation cases (age 0). ``target_horizon`` (seconds, training only)
    draws each target from the user's Listen+ examples within that horizon (see the module docstring).
    ``exclude_seen`` (evaluation only) adds each case's ``seen_items``: the items of its user's listens
    before it, the window's earlier ones included.
    Use with :class:`BatchIndexSampler` and ``DataLoader(batch_size=None)``.
    """

    def __init__(self, data: PreparedData, split: str, history: int, feedback: int = 0, target_horizon: int = 0,
                 exclude_seen: bool = False):
        if target_horizon < 0 or (target_horizon and split != "train"):
            raise ValueError(f"target_horizon must be >= 0 and only for training, got {target_horizon} for {split}")
        if exclude_seen and split == "train":
            raise ValueError("exclude_seen is for evaluation cases, not training examples")
        self.gather = FeatureGatherer(data, history, feedback, split if exclude_seen else None)
        self.split = split
        self.target_horizon = target_horizon
        self.age_reference = data.boundaries["train_max_timestamp"] if split == "train" else None
        self._horizon_end: np.ndarray | None = None

    def __getstate__(self):
        return {**self.__dict__, "_horizon_end": None}  # rebuilt lazily in a worker

    @property
    def pos(self) -> np.ndarray:
        return self.gather.data[f"{self.split}_pos"]

    def __len__(self) -> int:
        return len(self.pos)

    def horizon_end(self) -> np.ndarray:
        """[E] int64: one past the last example of the same user within ``target_horizon`` seconds of
        each example (examples are sorted by user, then time)."""
        if self._horizon_end is None:
            g, pos = self.gather, np.asarray(self.pos, dtype=np.int64)
            key = (g.user_of(pos).astype(np.int64) << 32) | g.stream_ts[pos].astype(np.int64)
            limit = np.minimum((key & 0xFFFFFFFF) + self.target_horizon, (1 << 32) - 1)
            self._horizon_end = np.searchsorted(key, (key >> 32 << 32) | limit, side="right")
        return self._horizon_end

    def targets(self, index: np.ndarray) -> np.ndarray:
        """Example indices [B] whose listens are the targets of examples ``index`` [B]: the examples
        themselves, or with a horizon one drawn uniformly from each one's horizon (torch's generator,
        so ``seed_everything`` and DataLoader workers' seeds apply)."""
        if not self.target_horizon:
            return index
        span = self.horizon_end()[index] - index  # >= 1: the example itself is inside
        draw = torch.rand(len(index), dtype=torch.float64).numpy()
        return index + np.minimum((draw * span).astype(np.int64), span - 1)

    def arrays(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The batch for example indices ``index`` [B] as numpy arrays."""
        index = np.asarray(index, dtype=np.int64)
        g = self.gather
        pos = np.asarray(self.pos[index], dtype=np.int64)
        out = g.query(pos, g.user_of(pos), g.stream_ts[pos].astype(np.int64))
        if self.age_reference is None:
            out["example_age"] = np.zeros(len(pos), np.float32)
        else:
            out["example_age"] = (self.age_reference - g.stream_ts[pos].astype(np.int64)).astype(np.float32)
        target = np.asarray(self.pos[self.targets(index)], dtype=np.int64)
        out["target_item"] = g.stream_item[target].astype(np.int64)
        out["weight"] = play_weight(g.stream_ratio[target])
        return out

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        return to_tensors(self.arrays(index))


class PaperListDataset(torch.utils.data.Dataset):
    """Paper-protocol lists of an evaluation split: one query per user, from the state at the window
    start, with that user's Listen+ targets in the window (repeats kept); ``exclude_seen`` adds
    ``seen_items``: the items of the user's listens before the window start."""

    def __init__(self, data: PreparedData, split: str, history: int, feedback: int = 0, exclude_seen: bool = False):
        self.gather = FeatureGatherer(data, history, feedback, split if exclude_seen else None)
        self.split = split

    def __len__(self) -> int:
        return len(self.gather.data[f"paper_{self.split}_user"])

    def arrays(self, index: np.ndarray) -> dict[str, np.ndarray]:
        index = np.asarray(index, dtype=np.int64)
        g, d, split = self.gather, self.gather.data, self.split
        time = np.full(len(index), d.boundaries[f"{split}_start"], dtype=np.int64)  # the state at the window start
        out = g.query(np.asarray(d[f"paper_{split}_pos"][index], dtype=np.int64),
                      np.asarray(d[f"paper_{split}_user"][index]), time)
        out["example_age"] = np.zeros(len(index), np.float32)
        offsets = d[f"paper_{split}_offsets"]
        first, count = np.asarray(offsets[index]), np.asarray(offsets[index + 1] - offsets[index])
        width = int(count.max()) if len(index) else 0
        slot = np.arange(width, dtype=np.int64)
        valid = slot[None, :] < count[:, None]
        where = np.where(valid, first[:, None] + slot[None, :], 0)
        out["target_items"] = np.where(valid, g.stream_item[d[f"{split}_pos"][where]], 0)
        out["target_count"] = count
        return out

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        return to_tensors(self.arrays(index))


def case_sample(num_cases: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """[min(num_cases, limit)] int64: a seeded sample of case indices without repeats, ascending (every
    index when ``limit`` is None or at least ``num_cases``). The same arguments give the same sample, so
    runs and epochs that sample a window score the same cases."""
    if limit is None or limit >= num_cases:
        return np.arange(num_cases, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(num_cases, limit, replace=False)).astype(np.int64)


class CaseSample(torch.utils.data.Dataset):
    """``dataset`` (indexed by arrays of indices, as NextTrackDataset and PaperListDataset are) seen
    through ``indices``: entry j of this dataset is entry ``indices[j]`` of ``dataset``."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        return self.dataset[self.indices[np.asarray(index, dtype=np.int64)]]


class BatchIndexSampler(torch.utils.data.Sampler):
    """Yields arrays of example indices, one per batch; reshuffled each epoch from ``seed + epoch``.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th index of the same permutation.
    With ``drop_last`` (training) the tail is cut so all ranks see the same number of batches; without
    it (evaluation) every example is kept and ranks may differ by one batch.
    """

    def __init__(self, num_examples: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.num_examples)
        else:
            order = np.arange(self.num_examples)
        stop = (self.num_examples // self.num_replicas) * self.num_replicas if self.drop_last else None
        return order[self.rank : stop : self.num_replicas]

    def _per_rank(self) -> int:
        if self.drop_last:
            return self.num_examples // self.num_replicas
        return len(range(self.rank, self.num_examples, self.num_replicas))

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._indices()
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]
