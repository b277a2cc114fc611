"""The baselines themselves (the package docstring states each one's score): a common interface,
``Baseline.fit(data)`` on the training positives, then ``recommend(users, seeds, history, k)``, with the
small grids ``tune`` searches. SASRec is in its own module (sasrec.py); ``registry.ALL`` lists them all."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from lightning_tt.data.batches import NextTrackDataset
from lightning_tt.data.popularity import item_popularity
from lightning_tt.data.prepared import FIRST_ITEM, PreparedData
from lightning_tt.data.schema import DAY
from lightning_tt.data.seen import positives
from lightning_tt.errors import InputError

#: Ranked lists are built for at most this many (query, candidate) pairs at a time.
CHUNK_ENTRIES = 1 << 24


def _by_prior(prior: np.ndarray) -> np.ndarray:
    """The catalogue (padding and unknown left out) by ``prior`` descending, then by lower index."""
    order = np.lexsort((np.arange(len(prior)), -np.asarray(prior, dtype=np.float64)))
    return order[order >= FIRST_ITEM]


def _top_scored(scores: sp.csr_matrix, prior: np.ndarray, prior_weight: np.ndarray | None, k: int,
                tie_order: np.ndarray) -> np.ndarray:
    """[Q, k] items by ``scores[q, x] + prior_weight[q] * prior[x]``, best first, ties by ``prior`` then by
    lower index; padding and unknown never. ``scores`` [Q, I] is sparse and >= 0, ``prior`` [I] > 0 on
    the catalogue (a popularity share), ``prior_weight`` [Q] >= 0 (None: 0, the prior only breaks ties),
    ``tie_order`` = ``_by_prior(prior)``, computed once by the caller (it sorts the whole catalogue).

    Only the scored items and the ``k`` best of the prior can make a row's top k, so sparse rows are
    ranked by one sort of those entries. Dense rows are ranked with torch.topk, columns put in tie-break
    order first and a tie term added that decreases along it; that term can only reorder keys closer
    than ``64 eps I`` relative to the largest (3e-10 at 20k items, 4e-8 at 3M)."""
    q, num_items = scores.shape
    weight = np.zeros(q) if prior_weight is None else np.asarray(prior_weight, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    k = min(k, len(tie_order))
    scores = scores.tocsr()
    if scores.nnz > q * num_items // 16:
        position_of = np.full(num_items, len(tie_order))  # padding and unknown: a column past the end
        position_of[tie_order] = np.arange(len(tie_order))
        coo = scores.tocoo()
        key = torch.from_numpy(sp.csr_matrix((coo.data, (coo.row, position_of[coo.col])),
                                             shape=(q, len(tie_order) + 1)).toarray()[:, :-1])
        if weight.any():
            key += torch.from_numpy(weight)[:, None] * torch.from_numpy(prior[tie_order])
        # The tie term: 64 units in the last place of the largest key per step along the tie order, so
        # equal keys are ordered exactly and only keys closer than 64 eps I (relative) can be reordered.
        largest = scores.data.max(initial=0.0) + weight.max(initial=0.0) * prior.max(initial=0.0)
        step = 64 * np.finfo(np.float64).eps * max(largest, 1e-300)
        key += torch.arange(len(tie_order), 0, -1, dtype=torch.float64) * step
        return tie_order[torch.topk(key, k, dim=1).indices.numpy()]
    best = tie_order[:k]
    rows = np.repeat(np.arange(q), np.diff(scores.indptr))
    items, values = scores.indices.astype(np.int64), scores.data.astype(np.float64)
    keep = items >= FIRST_ITEM
    rows = np.concatenate([rows[keep], np.repeat(np.arange(q), k)])
    items = np.concatenate([items[keep], np.tile(best, q)])
    values = np.concatenate([values[keep], np.zeros(q * k)])
    values = values + weight[rows] * prior[items]
    first = np.lexsort((-values, items, rows))  # one entry per (row, item): the scored one
    rows, items, values = rows[first], items[first], values[first]
    unique = np.ones(len(rows), dtype=bool)
    unique[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    rows, items, values = rows[unique], items[unique], values[unique]
    order = np.lexsort((items, -prior[items], -values, rows))
    rows, items = rows[order], items[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(q))[rows]
    return items[rank < k].reshape(q, k)


class Baseline:
    """A baseline's hyperparameters are its constructor's arguments, kept as attributes of the same
    names (``params``). ``grid(data)`` lists the values ``tune`` tries; those in ``RANK_PARAMS`` change
    only the ranking, so ``tune`` fits once per combination of the others."""

    name = "Baseline"
    RANK_PARAMS: tuple[str, ...] = ("exclude_seen",)
    #: rank() may score the whole catalogue per query, so its chunks are also bounded by the catalogue size.
    DENSE = False

    def __init__(self, exclude_seen: bool = False):
        self.exclude_seen = exclude_seen

    def params(self) -> dict:
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    @classmethod
    def grid(cls, data: PreparedData) -> dict[str, list]:
        return {"exclude_seen": [False, True]}

    def fit(self, data: PreparedData) -> Baseline:
        self.num_items = data.vocab["num_items"]
        self.users, self.items, self.ts = positives(data)
        self.train_max = data.boundaries["train_max_timestamp"]
        self.user_items = sp.csr_matrix((np.ones(len(self.items), dtype=np.float32), (self.users, self.items)),
                                        shape=(data.vocab["num_users"], self.num_items))
        self.user_items.data[:] = 1.0  # binary: repeats count once
        self.popularity = np.bincount(self.items, minlength=self.num_items).astype(np.float64)
        self.by_popularity = _by_prior(self.popularity)  # how equal scores are ordered
        return self

    def rank(self, users: np.ndarray, seeds: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
        """[Q, k] item indices, best first (k at most the catalogue)."""
        raise NotImplementedError

    def recommend(self, users: np.ndarray, seeds: np.ndarray, history: np.ndarray, k: int,
                  seen: np.ndarray | None = None) -> np.ndarray:
        """[Q, k] item indices, best first. With ``exclude_seen`` the items of ``seen`` [Q, S] (each
        query's past, 0-padded: lightning_tt.data.seen, the model's own) are dropped: rows are ranked
        ``k + S`` deep, then filtered. Queries go in chunks of at most CHUNK_ENTRIES ranked entries (and
        scored items, for ``DENSE``)."""
        if self.exclude_seen and seen is None:
            raise ValueError(f"{self.name} has exclude_seen: recommend needs each query's seen items")
        catalogue = self.num_items - FIRST_ITEM
        depth = min(k + (seen.shape[1] if self.exclude_seen else 0), catalogue)
        rows = max(1, CHUNK_ENTRIES // (max(depth, self.num_items) if self.DENSE else depth))
        out = [np.zeros((0, k), dtype=np.int64)]
        for start in range(0, len(users), rows):
            chunk = slice(start, start + rows)
            lists = self.rank(users[chunk], seeds[chunk], history[chunk], depth)
            if self.exclude_seen:  # stable: unseen items first, in their order
                row = np.arange(len(lists), dtype=np.int64)[:, None]
                seen_keys = np.sort((row * self.num_items + seen[chunk]).ravel())
                keys = row * self.num_items + lists
                where = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
                lists = np.take_along_axis(lists, np.argsort(seen_keys[where] == keys, axis=1, kind="stable"), axis=1)
            out.append(lists[:, :k])
        return np.concatenate(out)


class Popularity(Baseline):
    """A fixed ranking by (decayed) counts of training positives (lightning_tt.data.popularity), ties
    by lower index."""

    #: DecayPop's half-life in days; None: plain counts.
    half_life_days: float | None = None

    def fit(self, data):
        super().fit(data)
        counts = item_popularity(data, self.half_life_days)
        counts[:FIRST_ITEM] = -1
        self.ranking = np.argsort(-counts, kind="stable")
        return self

    def rank(self, users, seeds, history, k):
        return np.broadcast_to(self.ranking[:k], (len(users), k)).copy()


class MostPop(Popularity):
    name = "MostPop"


class DecayPop(Popularity):
    name = "DecayPop"

    def __init__(self, half_life_days: float = 1.0, exclude_seen: bool = False):
        super().__init__(exclude_seen)
        self.half_life_days = half_life_days

    @classmethod
    def grid(cls, data):
        """Half-lives of 1/16 to 16 times the validation window (Yambda: 1.5 hours to 16 days)."""
        window = (data.boundaries["val_end"] - data.boundaries["val_start"]) / DAY
        return {"half_life_days": [round(window * f, 4) for f in (1 / 16, 1 / 4, 1, 4, 16)],
                **super().grid(data)}


class Random(Baseline):
    name = "Random"
    RANK_PARAMS = ()

    def __init__(self):
        self.exclude_seen = False

    @classmethod
    def grid(cls, data):
        return {}

    def rank(self, users, seeds, history, k):
        rng = np.random.default_rng(0)
        catalogue = self.num_items - FIRST_ITEM
        if catalogue > 4 * k:  # duplicates within a list are then rare (k^2 / 2n); no O(n) work per query
            return rng.integers(FIRST_ITEM, self.num_items, (len(users), k))
        return np.stack([rng.choice(catalogue, k, replace=False) + FIRST_ITEM for _ in users])


class Transitions(Baseline):
    name = "Transitions"
    RANK_PARAMS = ("previous", "backoff", "exclude_seen")
    DENSE = True

    def __init__(self, previous: int = 1, backoff: float = 0.0, exclude_seen: bool = False):
        super().__init__(exclude_seen)
        self.previous, self.backoff = previous, backoff

    @classmethod
    def grid(cls, data):
        return {"previous": [1, 3, 10], "backoff": [0.0, 10.0, 100.0, 1000.0], **super().grid(data)}

    def fit(self, data):
        super().fit(data)
        dataset = NextTrackDataset(data, "train", history=1)
        batch = dataset.arrays(np.arange(len(dataset)))
        seeds, targets = batch["seed_item"], batch["target_item"]
        keep = seeds >= FIRST_ITEM
        self.counts = sp.csr_matrix((np.ones(int(keep.sum())), (seeds[keep], targets[keep])),
                                    shape=(self.num_items, self.num_items))
        self.counts.sum_duplicates()
        self.out_counts = np.asarray(self.counts.sum(axis=1)).ravel()
        return self

    def rank(self, users, seeds, history, k):
        # h_1 = the seed, h_2, ... the listens before it (the window's last entry is the seed itself)
        last = np.column_stack([seeds, np.asarray(history)[:, -2::-1]])[:, : self.previous]
        weight = np.broadcast_to(1.0 / np.arange(1, last.shape[1] + 1), last.shape) * (last >= FIRST_ITEM)
        norm = self.out_counts[last] + self.backoff
        weight = np.divide(weight, norm, out=np.zeros(last.shape), where=norm > 0)
        query = sp.csr_matrix((weight.ravel(), (np.repeat(np.arange(len(last)), last.shape[1]), last.ravel())),
                              shape=(len(last), self.num_items))
        share = self.popularity / self.popularity.sum()
        return _top_scored(query @ self.counts, share, (weight * self.backoff).sum(axis=1), k, self.by_popularity)


class ItemKNN(Baseline):
    """Similarity rows are computed only for the items that queries hold (``similarity_rows``), in
    blocks of at most CHUNK_ENTRIES co-occurrence entries, and kept with their ``neighbours`` best:
    the whole [I, I] co-occurrence matrix has sum over users of (distinct items)^2 entries, about 2e10
    already at a quarter of Yambda 50m, so it is never built. ``neighbours=None`` (the default) keeps
    whole rows on catalogues of up to WHOLE_ROWS_MAX_ITEMS items; on larger ones each row keeps its
    LARGE_CATALOGUE_NEIGHBOURS best, with a warning (whole rows of the queried items would not fit:
    a popular item co-occurs with most of the catalogue).

    ``recent_items`` M bounds the work: c and n count, per user, only their M most recently listened
    distinct training items (``recent_user_items``), so the co-occurrence has at most sum over users of
    min(distinct items, M)^2 entries. ``None`` (the default) counts every item on catalogues of up to
    WHOLE_ROWS_MAX_ITEMS items and LARGE_CATALOGUE_RECENT_ITEMS above, with a warning: at a quarter of
    Yambda 50m's shape the test queries' rows alone held 7e9 co-occurrence entries (12 minutes on 2
    cores), and at 1,000 the whole co-occurrence holds 2e9 (docs/baselines.md)."""

    name = "ItemKNN"
    RANK_PARAMS = ("neighbours", "history", "similarity", "shrink", "exclude_seen")
    DENSE = True
    SIMILARITIES = ("cosine", "conditional")
    #: neighbours=None keeps whole rows up to this many items, and LARGE_CATALOGUE_NEIGHBOURS above.
    WHOLE_ROWS_MAX_ITEMS = 100_000
    LARGE_CATALOGUE_NEIGHBOURS = 200
    #: recent_items=None counts every item up to WHOLE_ROWS_MAX_ITEMS items, and this many per user above.
    LARGE_CATALOGUE_RECENT_ITEMS = 1000

    def __init__(self, neighbours: int | None = None, history: int | None = None, similarity: str = "cosine",
                 shrink: float = 0.0, recent_items: int | None = None, exclude_seen: bool = False):
        super().__init__(exclude_seen)
        if similarity not in self.SIMILARITIES:
            raise InputError(f"ItemKNN similarity must be one of {self.SIMILARITIES}, got {similarity!r}")
        if recent_items is not None and recent_items < 1:
            raise InputError(f"ItemKNN recent_items must be at least 1 (or null: the default), got {recent_items}")
        self.neighbours, self.history, self.similarity, self.shrink = neighbours, history, similarity, shrink
        self.recent_items = recent_items

    @classmethod
    def grid(cls, data):
        """Whole rows (None, the default) too, where they are not capped to LARGE_CATALOGUE_NEIGHBOURS."""
        # history innermost: tune() visits each similarity setting once
        neighbours = [20, cls.LARGE_CATALOGUE_NEIGHBOURS]
        if data.vocab["num_items"] <= cls.WHOLE_ROWS_MAX_ITEMS:
            neighbours.append(None)
        return {"similarity": list(cls.SIMILARITIES), "shrink": [0.0, 10.0], "neighbours": neighbours,
                "history": [10, None], **super().grid(data)}

    def fit(self, data):
        super().fit(data)
        large = self.num_items > self.WHOLE_ROWS_MAX_ITEMS
        recent = self.LARGE_CATALOGUE_RECENT_ITEMS if self.recent_items is None and large else self.recent_items
        # [U, I] binary: what c and n count (every training positive's item, or each user's `recent` latest)
        self.cooccurring = (self.user_items if recent is None else
                            recent_user_items(self.users, self.items, self.user_items.shape, recent))
        self.item_users = np.asarray(self.cooccurring.sum(axis=0)).ravel()  # n_x: users with item x
        self.user_rows = self.cooccurring.T.tocsr()  # [I, U]: the users of each item
        # An upper bound of the co-occurrence entries of item x's row: the items of all its users.
        self.row_work = self.user_rows @ np.diff(self.cooccurring.indptr).astype(np.float64)
        if self.neighbours is None and large:
            warnings.warn(f"ItemKNN neighbours=None keeps whole similarity rows only up to "
                          f"{self.WHOLE_ROWS_MAX_ITEMS:,} items; this catalogue has {self.num_items:,}, so each row "
                          f"keeps its {self.LARGE_CATALOGUE_NEIGHBOURS} best (set ItemKNN neighbours to choose)",
                          stacklevel=2)
        if self.recent_items is None and large:
            warnings.warn(f"ItemKNN recent_items=None counts every item of a user only up to "
                          f"{self.WHOLE_ROWS_MAX_ITEMS:,} items; this catalogue has {self.num_items:,}, so the "
                          f"co-occurrence counts each user's {recent} most recent distinct items (set ItemKNN "
                          f"recent_items to choose)", stacklevel=2)
        self._similarity_key, self._rows = None, {}
        return self

    @property
    def row_limit(self) -> int | None:
        """The neighbours each computed row keeps (None: all): ``neighbours``, or for None on a catalogue
        of more than WHOLE_ROWS_MAX_ITEMS items LARGE_CATALOGUE_NEIGHBOURS (read at ranking time: tune()
        sets ``neighbours`` on a fitted instance)."""
        if self.neighbours is None and self.num_items > self.WHOLE_ROWS_MAX_ITEMS:
            return self.LARGE_CATALOGUE_NEIGHBOURS
        return self.neighbours

    def similarity_rows(self, items: np.ndarray) -> sp.csr_matrix:
        """[I, I] with rows ``items`` of s(i, j) (this instance's similarity, shrink and neighbours;
        rows of other items empty); s(i, i) = 0 and s(i, j) = c_ij / (sqrt(n_i n_j) + shrink) (cosine)
        or c_ij / (n_i + shrink) (conditional), c_ij the users with both, n_i those with i, each row
        keeping its ``row_limit`` largest (``neighbours``, see the class docstring; ties by lower j). Rows
        are computed once per setting."""
        key = (self.similarity, self.shrink, self.row_limit)
        if key != self._similarity_key:  # one setting held at a time: tune() visits each setting once
            self._similarity_key, self._rows = key, {}
        items = np.unique(items)
        missing = np.array([x for x in items.tolist() if x not in self._rows], dtype=np.int64)
        # blocks of rows whose co-occurrence entries stay within CHUNK_ENTRIES (one row at least)
        work, start = np.cumsum(self.row_work[missing]), 0
        while start < len(missing):
            before = work[start - 1] if start else 0.0
            stop = max(start + 1, int(np.searchsorted(work, before + CHUNK_ENTRIES, side="right")))
            self._compute_rows(missing[start:stop])
            start = stop
        indptr = np.zeros(self.num_items + 1, dtype=np.int64)
        lengths = np.zeros(self.num_items, dtype=np.int64)
        held = [self._rows[x] for x in items.tolist()]
        lengths[items] = [len(columns) for columns, _ in held]
        indptr[1:] = np.cumsum(lengths)
        cols = np.concatenate([columns for columns, _ in held] or [np.zeros(0, dtype=np.int64)])
        vals = np.concatenate([values for _, values in held] or [np.zeros(0)])
        return sp.csr_matrix((vals, cols, indptr), shape=(self.num_items, self.num_items))

    def _compute_rows(self, block: np.ndarray) -> None:
        """self._rows[x] = (columns, values) of s(x, .) for the items x of ``block``."""
        c = (self.user_rows[block] @ self.cooccurring).tocsr()  # [B, I] float32 co-occurrence counts
        # csr_matmat gives each row's columns once (not in order): no sum_duplicates, whose sort is the cost
        rows = np.repeat(np.arange(len(block)), np.diff(c.indptr))
        off_diagonal = c.indices != block[rows]
        rows, cols, counts = rows[off_diagonal], c.indices[off_diagonal], c.data[off_diagonal]
        n = self.item_users
        denominator = np.sqrt(n[block[rows]] * n[cols]) if self.similarity == "cosine" else n[block[rows]]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(block)))])
        s = sp.csr_matrix((counts / (denominator + self.shrink), cols, indptr), shape=(len(block), self.num_items))
        if self.row_limit is not None:
            s = _keep_largest_per_row(s, self.row_limit)
        s.sort_indices()
        for r, x in enumerate(block):
            lo, hi = s.indptr[r], s.indptr[r + 1]
            self._rows[int(x)] = (s.indices[lo:hi].astype(np.int64), s.data[lo:hi])

    def rank(self, users, seeds, history, k):
        window = np.asarray(history)[:, -self.history:] if self.history else np.asarray(history)
        rows = np.repeat(np.arange(len(window)), window.shape[1])
        query = sp.csr_matrix(((window >= FIRST_ITEM).ravel().astype(np.float64), (rows, window.ravel())),
                              shape=(len(window), self.num_items))
        similarity = self.similarity_rows(window[window >= FIRST_ITEM])
        return _top_scored(query @ similarity, self.popularity, None, k, self.by_popularity)


def recent_user_items(users: np.ndarray, items: np.ndarray, shape: tuple[int, int], limit: int) -> sp.csr_matrix:
    """Binary [U, I]: each user's ``limit`` most recently listened distinct items, from positives
    ``users``, ``items`` [P] ordered by user, then time (lightning_tt.data.seen.positives). An item's
    recency is its last positive; of equal recency, the later positive in that order counts as newer."""
    key = users * np.int64(shape[1]) + items
    _, first_from_end = np.unique(key[::-1], return_index=True)
    last = np.sort(len(key) - 1 - first_from_end)  # each (user, item)'s last positive, by user, then time
    owner = users[last]
    newer = np.searchsorted(owner, owner, side="right") - 1 - np.arange(len(last))  # the user's later items
    keep = last[newer < limit]
    return sp.csr_matrix((np.ones(len(keep), dtype=np.float32), (users[keep], items[keep])), shape=shape)


def _keep_largest_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``matrix`` with only the ``n`` largest entries of each row (ties by lower column). A longer row
    is cut in linear time: its n-th largest value v (np.partition), every entry above v, and of those
    equal to v the lowest columns. Each column at most once per row; in any order."""
    matrix = matrix.tocsr()
    keep = np.ones(matrix.nnz, dtype=bool)
    for row in np.flatnonzero(np.diff(matrix.indptr) > n):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[lo:hi]
        nth = np.partition(values, len(values) - n)[len(values) - n]
        kept = values > nth
        ties = np.flatnonzero(values == nth)
        kept[ties[np.argsort(matrix.indices[lo:hi][ties], kind="stable")[:n - int(kept.sum())]]] = True
        keep[lo:hi] = kept
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return sp.csr_matrix((matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape)


class Factorization(Baseline):
    """implicit's matrix factorisation of the binary user x item training positives."""

    RANK_PARAMS = ("exclude_seen",)

    def make(self):
        raise NotImplementedError

    def fit(self, data):
        super().fit(data)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool on top slows it
            self.model = self.make()
            self.model.fit(self.user_items, show_progress=False)
        return self

    def rank(self, users, seeds, history, k):
        ids, _ = self.model.recommend(users, self.user_items[users], N=k, filter_already_liked_items=False,
                                      filter_items=np.arange(FIRST_ITEM))
        return np.asarray(ids, dtype=np.int64)


class IALS(Factorization):
    name = "iALS"

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0, iterations: int = 15,
                 exclude_seen: bool = False):
        super().__init__(exclude_seen)
        self.factors, self.regularization, self.alpha, self.iterations = factors, regularization, alpha, iterations

    @classmethod
    def grid(cls, data):
        return {"factors": [32, 128], "regularization": [1.0, 10.0, 100.0], "alpha": [1.0, 10.0],
                "iterations": [10, 30], **super().grid(data)}

    def make(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                       iterations=self.iterations, random_state=0)


class BPR(Factorization):
    name = "BPR"

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, exclude_seen: bool = False):
        super().__init__(exclude_seen)
        self.factors, self.learning_rate, self.regularization = factors, learning_rate, regularization
        self.iterations = iterations

    @classmethod
    def grid(cls, data):
        return {"factors": [32, 128], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01],
                "iterations": [50, 200], **super().grid(data)}

    def make(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           random_state=0)

