"""Non-neural baselines on a prepared split, scored with the model's metric code (lightning_tt.eval)
and names (``{split}/next/recall@k``, ``{split}/paper/{recall,ndcg,coverage}@k``).

Training data = the training positives (Listen+ events before train_end). Each baseline ranks the
catalogue (padding and unknown never recommended) for a query = (user, seed track, history window):

- Random: uniform items (seeded).
- MostPop: items by number of training positives.
- DecayPop: by recency-weighted positives, weight 0.5 ** (age / half-life), age = train_max_timestamp - t.
- Transitions: the items that most often followed the seed track in training, then MostPop.
- ItemKNN: sum over the history window of cosine item-item similarities from user histories.
- iALS, BPR: matrix factorisation of the user x item positives with the ``implicit`` library; they
  rank for the user (seed and history are not used).

Next-track queries are the split's cases; paper queries are one per user, from the state at the
window start (seed = the last listen before it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
from lightning_tt.data.prepared import PreparedData
from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import NextTrackRecall, PaperMetrics

FIRST_ITEM = 2
DAY = 86_400


def _training_positives(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) of every training positive."""
    pos = np.asarray(data["train_pos"], dtype=np.int64)
    user = np.searchsorted(np.asarray(data["user_offsets"]), pos, side="right") - 1
    return user, np.asarray(data["stream_item"])[pos].astype(np.int64), np.asarray(data["stream_ts"])[pos]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] indices of the k highest scores per row, best first (ties by lower index)."""
    scores = scores.copy()
    scores[:, :FIRST_ITEM] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


class Baseline:
    name = "Baseline"

    def fit(self, data: PreparedData) -> "Baseline":
        self.num_items = data.vocab["num_items"]
        self.users, self.items, self.ts = _training_positives(data)
        self.train_max = data.boundaries["train_max_timestamp"]
        return self

    def recommend(self, users: np.ndarray, seeds: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError


class Popularity(Baseline):
    """A fixed ranking by (weighted) counts of training positives."""

    def weights(self) -> np.ndarray:
        return np.ones(len(self.items))

    def fit(self, data):
        super().fit(data)
        counts = np.bincount(self.items, weights=self.weights(), minlength=self.num_items)
        counts[:FIRST_ITEM] = -1
        self.ranking = np.argsort(-counts, kind="stable")
        return self

    def recommend(self, users, seeds, history, k):
        return np.broadcast_to(self.ranking[:k], (len(users), k)).copy()


class MostPop(Popularity):
    name = "MostPop"


class DecayPop(Popularity):
    name = "DecayPop"

    def __init__(self, half_life_days: float = 1.0):
        self.half_life = half_life_days * DAY

    def weights(self):
        return 0.5 ** ((self.train_max - self.ts.astype(np.float64)) / self.half_life)


class Random(Baseline):
    name = "Random"

    def recommend(self, users, seeds, history, k):
        rng = np.random.default_rng(0)
        catalogue = self.num_items - FIRST_ITEM
        if catalogue > 4 * k:  # duplicates within a list are then rare (k^2 / 2n); no O(n) work per query
            return rng.integers(FIRST_ITEM, self.num_items, (len(users), k))
        return np.stack([rng.choice(catalogue, k, replace=False) + FIRST_ITEM for _ in users])


class Transitions(Baseline):
    name = "Transitions"

    def fit(self, data):
        super().fit(data)
        self.popular = MostPop().fit(data).ranking
        dataset = NextTrackDataset(data, "train", history=1, lean=True)
        batch = dataset.arrays(np.arange(len(dataset)))
        seeds, targets = batch["seed_item"], batch["target_item"]
        keep = seeds >= FIRST_ITEM
        pairs, counts = np.unique(np.stack([seeds[keep], targets[keep]]), axis=1, return_counts=True)
        order = np.lexsort((pairs[1], -counts, pairs[0]))  # by seed, then count descending, then item
        self.succ_seed, self.succ_item = pairs[0][order], pairs[1][order]
        return self

    def recommend(self, users, seeds, history, k):
        popular = self.popular[:k]
        out = np.empty((len(seeds), k), dtype=np.int64)
        cache: dict[int, np.ndarray] = {}
        for row, seed in enumerate(seeds.tolist()):
            if seed not in cache:
                lo, hi = np.searchsorted(self.succ_seed, [seed, seed + 1])
                successors = self.succ_item[lo : min(hi, lo + k)]
                cache[seed] = np.concatenate([successors, popular[~np.isin(popular, successors)][: k - len(successors)]])
            out[row] = cache[seed]
        return out


class ItemKNN(Baseline):
    name = "ItemKNN"

    def fit(self, data):
        super().fit(data)
        x = sp.csr_matrix((np.ones(len(self.items)), (self.users, self.items)),
                          shape=(data.vocab["num_users"], self.num_items))
        x.data[:] = 1.0  # binary user x item
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        norms[norms == 0] = 1
        xn = x @ sp.diags(1 / norms)
        self.similarity = (xn.T @ xn).tocsr()
        self.similarity.setdiag(0)
        return self

    def recommend(self, users, seeds, history, k):
        chunk = max(1, (1 << 25) // self.num_items)  # dense [chunk, num_items] scores stay near 128 MiB
        out = []
        for start in range(0, len(users), chunk):
            h = history[start : start + chunk]
            rows = np.repeat(np.arange(len(h)), h.shape[1])
            q = sp.csr_matrix((np.ones(h.size), (rows, h.ravel())), shape=(len(h), self.num_items))
            q.data[:] = 1.0
            out.append(_top(np.asarray((q @ self.similarity).todense()), k))
        return np.concatenate(out)


class Factorization(Baseline):
    """implicit's matrix factorisation of the binary user x item training positives."""

    def make(self):
        raise NotImplementedError

    def fit(self, data):
        super().fit(data)
        self.user_items = sp.csr_matrix((np.ones(len(self.items), dtype=np.float32), (self.users, self.items)),
                                        shape=(data.vocab["num_users"], self.num_items))
        self.user_items.data[:] = 1.0
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool on top slows it
            self.model = self.make()
            self.model.fit(self.user_items, show_progress=False)
        return self

    def recommend(self, users, seeds, history, k):
        ids, _ = self.model.recommend(users, self.user_items[users], N=k, filter_already_liked_items=False,
                                      filter_items=np.arange(FIRST_ITEM))
        return np.asarray(ids, dtype=np.int64)


class IALS(Factorization):
    name = "iALS"

    def make(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=64, regularization=0.01, iterations=15, random_state=0)


class BPR(Factorization):
    name = "BPR"

    def make(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=64, iterations=100, random_state=0)


ALL = (Random, MostPop, DecayPop, Transitions, ItemKNN, IALS, BPR)


def evaluate(data_dir: str, split: str = "test", ks: list[int] = [10, 100], names: list[str] | None = None,  # noqa: B006
             history: int | None = None) -> dict[str, dict[str, float]]:
    """{baseline name: {metric name: value}} on ``split``'s next-track cases and paper lists.

    Refused before any work (InputError): an unknown baseline name, a cut-off k below 1 or above the
    catalogue, a split with no case."""
    known = [cls.name for cls in ALL]
    unknown = [name for name in names or [] if name not in known]
    if unknown or names == []:
        raise InputError(f"--only: unknown baseline(s) {unknown}; choose from {', '.join(known)}")
    data = PreparedData(data_dir)
    catalogue = data.vocab["num_items"] - FIRST_ITEM
    if not ks or min(ks) < 1 or max(ks) > catalogue:
        raise InputError(f"--k: cut-offs must lie in 1..{catalogue:,} (the catalogue), got {list(ks)}")
    if split not in ("val", "test"):
        raise InputError(f"--split must be val or test, got {split!r}")
    if data.num_examples(split) == 0:
        raise InputError(f"{data.path}: the {split} window has no cases (prepared with --val-days 0?); nothing to "
                         f"evaluate")
    history = history or data.default_history
    k = max(ks)
    nxt = NextTrackDataset(data, split, history, lean=True)
    nxt = nxt.arrays(np.arange(len(nxt)))
    paper = PaperListDataset(data, split, history, lean=True)
    paper = paper.arrays(np.arange(len(paper)))
    results = {}
    for cls in ALL:
        if names and cls.name not in names:
            continue
        baseline = cls().fit(data)
        values = {}
        # All cases are in this process (also when called from rank zero of a DDP test): no syncing.
        recall = NextTrackRecall(ks, sync_on_compute=False)
        recall.update(torch.from_numpy(baseline.recommend(nxt["user"], nxt["seed_item"], nxt["history_item"], k)),
                      torch.from_numpy(nxt["target_item"]))
        values.update({f"{split}/next/recall@{kk}": float(v) for kk, v in recall.compute().items()})
        lists = baseline.recommend(paper["user"], paper["seed_item"], paper["history_item"], k)
        metrics = PaperMetrics(ks, data.vocab["num_items"], FIRST_ITEM, sync_on_compute=False)
        metrics.update(torch.from_numpy(lists), torch.from_numpy(paper["target_items"]),
                       torch.from_numpy(paper["target_count"]))
        for name, per_k in metrics.compute().items():
            values.update({f"{split}/paper/{name}@{kk}": float(v) for kk, v in per_k.items()})
        results[cls.name] = values
    return results


CHEAP = ("MostPop", "DecayPop", "Transitions")  # counted again in seconds at every test, up to LIVE_LIMIT
LIVE_LIMIT = 20_000_000  # training examples


def read_recall_curves(baselines_file: str, ks: list[int]) -> dict[str, dict[int, float]]:
    """``{baseline: {k: test/next/recall@k}}`` from a metrics.json of ``lightning-tt baselines --split
    test``. Raises InputError naming the file when it is missing, unreadable or lacks one of ``ks``."""
    path = Path(baselines_file)
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
            raise ValueError("expected {baseline: {metric: value}}")
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path}: cannot read the baselines' metrics (report.baselines_file): {err}") from err
    curves = {}
    for name, values in found.items():
        missing = [f"test/next/recall@{k}" for k in ks if f"test/next/recall@{k}" not in values]
        if missing:
            raise InputError(f"{path}: baseline {name} has no {missing[0]} (report.baselines_file must come from "
                             f"`lightning-tt baselines --split test --k {' '.join(map(str, sorted(ks)))}`)")
        curves[name] = {k: float(values[f"test/next/recall@{k}"]) for k in ks}
    return curves


def baseline_recall_curves(data_dir: str | None, ks: list[int], baselines_file: str | None = None
                       ) -> dict[str, dict[int, float]]:
    """Next-track Recall@k on the test split, ``{baseline: {k: value}}``, for test's recall_at_k.png:
    every baseline of ``baselines_file`` (read_recall_curves), then the CHEAP ones it lacks, evaluated
    now when the training set has at most LIVE_LIMIT examples."""
    curves = read_recall_curves(baselines_file, ks) if baselines_file else {}
    live = [name for name in CHEAP if name not in curves]
    if live and data_dir and PreparedData(data_dir).num_examples("train") <= LIVE_LIMIT:
        found = evaluate(data_dir, "test", ks, names=live)
        curves.update({name: {k: v[f"test/next/recall@{k}"] for k in ks} for name, v in found.items()})
    return curves
