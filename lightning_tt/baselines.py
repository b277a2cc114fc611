"""Non-learned next-track baselines on a prepared split, scored like the model (Recall@k over the
split's next-track cases; padding and unknown items are never recommended).

- MostPop: the k items with the most training positives.
- Transitions: the items that most often followed the seed track in training (positives only),
  by count, then filled with MostPop.
"""

from __future__ import annotations

import numpy as np

from lightning_tt.data.batches import NextTrackDataset
from lightning_tt.data.prepared import PreparedData

FIRST_ITEM = 2


def _cases(data: PreparedData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(seed items, target items) of every example of ``split``."""
    dataset = NextTrackDataset(data, split, history=1)
    batch = dataset.arrays(np.arange(len(dataset)))
    return batch["seed_item"], batch["target_item"]


def most_popular(data: PreparedData, k: int) -> np.ndarray:
    """[k] item indices with the most training positives (ties broken by index)."""
    _, targets = _cases(data, "train")
    counts = np.bincount(targets, minlength=data.vocab["num_items"]).astype(np.int64)
    counts[:FIRST_ITEM] = -1
    return np.argsort(-counts, kind="stable")[:k]


def transition_lists(data: PreparedData, seeds: np.ndarray, k: int) -> np.ndarray:
    """[len(seeds), k] recommendations: the seed's most frequent training successors, then MostPop."""
    train_seeds, train_targets = _cases(data, "train")
    popular = most_popular(data, k)
    keep = train_seeds >= FIRST_ITEM
    pairs, counts = np.unique(np.stack([train_seeds[keep], train_targets[keep]]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))  # by seed, then count descending, then item
    succ_seed, succ_item = pairs[0][order], pairs[1][order]
    out = np.empty((len(seeds), k), dtype=np.int64)
    lists: dict[int, np.ndarray] = {}
    for row, seed in enumerate(seeds):
        seed = int(seed)
        if seed not in lists:
            lo, hi = np.searchsorted(succ_seed, [seed, seed + 1])
            successors = succ_item[lo : min(hi, lo + k)]
            fill = popular[~np.isin(popular, successors)][: k - len(successors)]
            lists[seed] = np.concatenate([successors, fill])
        out[row] = lists[seed]
    return out


def recall(lists: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Share of cases whose target is in the first k of its list, for each k."""
    hits = lists == targets[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def evaluate(data_dir: str, split: str = "test", ks: list[int] = [10, 100]) -> dict[str, dict[int, float]]:  # noqa: B006
    """Recall@k of MostPop and Transitions on ``split``'s next-track cases."""
    data = PreparedData(data_dir)
    seeds, targets = _cases(data, split)
    k = max(ks)
    popular = np.broadcast_to(most_popular(data, k), (len(targets), k))
    return {"MostPop": recall(popular, targets, ks), "Transitions": recall(transition_lists(data, seeds, k), targets, ks)}
