"""Faiss indexes over item embeddings, built with ``faiss.index_factory`` and the inner-product metric
(the towers are trained on dot products of unit vectors, so L2 would rank differently).

Kinds (``IndexConfig.kind``) and their factory strings (n vectors of dim d):

    flat      Flat                                       exact
    ivfflat   IVF{nlist}[_HNSW{hnsw_m}],Flat
    ivfpq     IVF{nlist}[_HNSW{hnsw_m}],PQ{m}x{nbits}[,RFlat]   exact re-ranking (``rerank``)
    ivfpqfs   IVF{nlist}[_HNSW{hnsw_m}],PQ{m}x4fs[,RFlat]       the default: 4-bit fast-scan PQ (SIMD), re-ranked
    hnsw      HNSW{hnsw_m}
    ivfhnsw   IVF{nlist}_HNSW{hnsw_m},Flat                ivfflat with ``coarse: hnsw``

``coarse`` is the IVF coarse quantizer: ``flat`` (exact assignment) or ``hnsw`` (an HNSW graph over the
centroids, for many lists). Search parameters: ``nprobe`` (IVF lists visited), ``ef_search`` (HNSW),
``k_factor`` (candidates re-ranked exactly = k_factor x k).

``nlist``, ``m``, ``nprobe``, ``k_factor``, ``coarse``, ``quantizer_ef_search`` (the HNSW coarse
quantizer's efSearch) and ``train_sample`` (how many vectors, a seeded sample, the training sees) left
unset (None) are chosen from the catalogue's size n and dim d (``resolved``); values the user sets
always win:

- ivfflat, ivfpq, ivfhnsw: nlist 1024, m 32 (d when d < 32: never more sub-quantizers than
  dimensions), nprobe 128, k_factor 16, coarse flat, quantizer_ef_search
  = ef_search, train_sample 256 x nlist (Faiss's own k-means cap: training sees as many points as
  before). They replaced the first defaults (m 16, nprobe 64, k_factor 4), which lost much of the
  exact top 100 at 3M items (docs/benchmarks.md, bench_index and bench_index_3m_tuned).
- ivfpqfs: nlist = the power of two nearest 4 sqrt(n) (4,096 at 1M, 8,192 at 3M), m = ceil(d / 2),
  nprobe = max(8, nlist / 1024), k_factor 4 up to 1.5M vectors and 8 above, coarse flat,
  quantizer_ef_search 64, train_sample 64 x nlist. Chosen on 1M x 64 and 3M x 128 clustered vectors
  with queries that are not the items' own, to keep nearly all of the exact top 100 there at a
  fraction of exact search's cost; k_factor 4 is not enough at 3M, hence 8 above 1.5M (docs/benchmarks.md,
  bench_index_1m_users and bench_index_3m_users). The coarse quantizer is flat up to 8,192 lists
  (docs/design.md §9 says why); HNSW stays an option for more. A trained model's own vectors need
  more lists than clustered ones (docs/benchmarks.md, bench_index_trained), so the large configs
  calibrate (``target_overlap``, below).

``target_overlap`` (e.g. 0.98) calibrates nprobe and k_factor to the vectors instead: given queries,
build_index searches a seeded sample of ``CALIBRATION_QUERIES`` of them exactly and with the index, and
raises nprobe or k_factor, from the resolved ones, until the mean top-100 overlap with the exact lists
reaches the target (``calibrate``). A trained model's vectors need many more lists than clustered
synthetic ones, and how many depends on the model: a fixed fraction is either slow or inexact.

Training wants >= 39 points per IVF list and per PQ centroid (2^nbits; 16 for fast-scan): a catalogue
too small for the requested kind gets a smaller nlist or nbits, or an exact Flat index, with a warning
that says what changed. PQ needs d divisible by m: other vectors (and their queries) get zero columns up
to the next multiple of m, which change no inner product (a model with a popularity weight retrieves
in o + 1 dimensions).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Literal, get_args

import faiss
import numpy as np

from lightning_tt.errors import InputError

POINTS_PER_CENTROID = 39
#: Training (coarse k-means and PQ codebooks) sees at most this many vectors per IVF list unless
#: ``train_sample`` is set: a seeded sample, so that the rebuild each validation epoch stays bounded.
#: 256 is Faiss's own k-means cap (nothing changes for the old kinds); fast-scan takes 64.
TRAIN_POINTS_PER_LIST = {"ivfpqfs": 64}
FAISS_POINTS_PER_CENTROID = 256
#: Queries (a seeded sample) that ``target_overlap`` searches exactly and with each nprobe it tries.
CALIBRATION_QUERIES = 256
CALIBRATION_K = 100
MAX_K_FACTOR = 64
#: search_unseen searches blocks of queries holding at most this many candidates (query x depth x
#: k_factor) at once: about 200 MB of Faiss's scores and ids.
SEARCH_ENTRIES = 1 << 24
Kind = Literal["flat", "ivfflat", "ivfpq", "ivfpqfs", "hnsw", "ivfhnsw"]
Coarse = Literal["flat", "hnsw"]
KINDS, COARSE = get_args(Kind), get_args(Coarse)


@dataclass(frozen=True)
class IndexConfig:
    """A Faiss index (see the module docstring); None: chosen from the catalogue's size and dim.

    Args:
        kind: the index kind (see the table above)
        nlist: IVF lists (k-means cells) the vectors are divided into
        m: PQ sub-quantizers (bytes or half-bytes per code)
        nbits: bits per PQ code (ivfpq; fast-scan uses 4)
        rerank: re-rank the PQ candidates exactly (RFlat)
        hnsw_m: HNSW graph degree (hnsw, and an HNSW coarse quantizer)
        nprobe: IVF lists visited per query
        ef_search: HNSW search depth (efSearch)
        k_factor: candidates re-ranked exactly = k_factor x k
        coarse: the IVF coarse quantizer: flat (exact assignment) or hnsw
        quantizer_ef_search: the HNSW coarse quantizer's efSearch
        train_sample: vectors (a seeded sample) the index is trained on
        target_overlap: calibrate nprobe and k_factor to keep this share of the exact top 100
    """

    kind: Kind = "ivfpqfs"
    nlist: int | None = None
    m: int | None = None
    nbits: int = 8
    rerank: bool = True
    hnsw_m: int = 32
    nprobe: int | None = None
    ef_search: int = 128
    k_factor: int | None = None
    coarse: Coarse | None = None
    quantizer_ef_search: int | None = None
    train_sample: int | None = None
    target_overlap: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"index kind (--index.kind, retrieval.index.kind) must be one of {', '.join(KINDS)}, got "
                             f"{self.kind!r}")
        if self.coarse not in (None, *COARSE):
            raise InputError(f"index option coarse (--index.coarse, retrieval.index.coarse) must be flat or hnsw, got "
                             f"{self.coarse!r}")
        for name in ("nlist", "m", "nbits", "hnsw_m", "nprobe", "ef_search", "k_factor", "quantizer_ef_search",
                     "train_sample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"index option {name} (--index.{name}, retrieval.index.{name}) must be >= 1, "
                                 f"got {value}")
        if self.target_overlap is not None and not 0 < self.target_overlap <= 1:
            raise InputError(f"index option target_overlap (--index.target_overlap, retrieval.index.target_overlap) "
                             f"must be "
                             f"in (0, 1], got {self.target_overlap}")


def resolved(config: IndexConfig, n: int, dim: int) -> IndexConfig:
    """``config`` with every unset (None) option chosen for ``n`` vectors of dim ``dim`` (see the module
    docstring); the options the user set are kept as they are."""
    if config.kind == "ivfpqfs":
        nlist = config.nlist or 2 ** max(1, round(np.log2(4 * np.sqrt(max(n, 1)))))
        auto = {"nlist": nlist, "m": max(1, -(-dim // 2)), "nprobe": max(8, nlist // 1024),
                "k_factor": 4 if n <= 1_500_000 else 8, "coarse": "flat", "quantizer_ef_search": 64}
    else:
        nlist = config.nlist or 1024
        auto = {"nlist": 1024, "m": min(32, dim), "nprobe": 128, "k_factor": 16,
                "coarse": "hnsw" if config.kind == "ivfhnsw" else "flat", "quantizer_ef_search": config.ef_search}
    auto["train_sample"] = TRAIN_POINTS_PER_LIST.get(config.kind, FAISS_POINTS_PER_CENTROID) * nlist
    return replace(config, **{name: value for name, value in auto.items() if getattr(config, name) is None})


def factory_string(config: IndexConfig, n: int, dim: int) -> tuple[str, list[str]]:
    """The factory string for ``n`` vectors of dim ``dim`` (unset options resolved first), and what was
    changed to fit them."""
    c, notes = resolved(config, n, dim), []
    kind, nlist, m, nbits = c.kind, c.nlist, c.m, 4 if c.kind == "ivfpqfs" else c.nbits
    if kind in ("ivfflat", "ivfpq", "ivfpqfs", "ivfhnsw"):
        fit = max(1, n // POINTS_PER_CENTROID)
        if nlist > fit:
            notes.append(f"nlist {nlist} -> {fit} ({n} vectors)")
            nlist = fit
        if nlist < 2:
            notes.append(f"{kind} -> flat ({n} vectors are too few for IVF)")
            kind = "flat"
    if kind in ("ivfpq", "ivfpqfs"):
        fit_bits = int(np.floor(np.log2(max(n // POINTS_PER_CENTROID, 1))))
        if nbits > fit_bits:
            if fit_bits >= 4 and kind == "ivfpq":
                notes.append(f"nbits {nbits} -> {fit_bits} ({n} vectors)")
                nbits = fit_bits
            else:
                notes.append(f"{kind} -> ivfflat ({n} vectors are too few to train PQ)")
                kind = "ivfflat"
    coarse = f"IVF{nlist}" + (f"_HNSW{c.hnsw_m}" if c.coarse == "hnsw" else "")
    strings = {
        "flat": "Flat",
        "ivfflat": f"{coarse},Flat",
        "ivfpq": f"{coarse},PQ{m}x{nbits}" + (",RFlat" if c.rerank else ""),
        "ivfpqfs": f"{coarse},PQ{m}x4fs" + (",RFlat" if c.rerank else ""),
        "hnsw": f"HNSW{c.hnsw_m}",
        "ivfhnsw": f"{coarse},Flat",
    }
    return strings[kind], notes


@dataclass
class BuiltIndex:
    index: faiss.Index
    factory: str
    build_seconds: float
    bytes: int
    config: IndexConfig  # resolved: no option unset
    trained: faiss.Index | None = None  # the trained index before any vector was added (None: nothing to train)
    warm: bool = False  # built from an earlier build's ``trained``, without training
    calibration: list[tuple[int, int, float]] | None = None  # (nprobe, k_factor, overlap) tried by target_overlap

    def search(self, queries: np.ndarray, k: int, seen: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, float]:
        """(scores [Q, k], item rows [Q, k], queries per second) of search_unseen."""
        start = time.perf_counter()
        scores, ids = search_unseen(self.index, queries, k, seen)
        return scores, ids, len(queries) / max(time.perf_counter() - start, 1e-9)


def search_unseen(index: faiss.Index, queries: np.ndarray, k: int, seen: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], rows [Q, k]) of the k best rows of ``index`` for each of ``queries`` [Q, d];
    rows are -1 (score -inf) where fewer than k are found. ``seen`` [Q, S] (rows; negative = padding)
    are left out of each query's list: the search goes k + S deep, then drops them, keeping the order.
    Queries narrower than the index get its zero columns.

    Queries are searched in blocks of at most SEARCH_ENTRIES // (depth x f) rows (f: the exact
    re-ranking's k_factor, else 1): Faiss holds depth x f candidates per query of a call, so one call
    over 33k queries at depth 200 and k_factor 64 held 5 GB of them (a 12.6 GiB peak). Each query's
    list is its own, so the blocks give the lists of one call."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.shape[1] < index.d:  # the index's vectors were padded with zero columns (build_index)
        queries = np.pad(queries, ((0, 0), (0, index.d - queries.shape[1])))
    depth = max(min(k + (seen.shape[1] if seen is not None else 0), index.ntotal), k)
    refine = faiss.downcast_index(index)
    factor = max(1, int(refine.k_factor)) if isinstance(refine, faiss.IndexRefine) else 1
    rows = max(1, SEARCH_ENTRIES // (depth * factor))
    if len(queries) <= rows:
        return _search_block(index, queries, k, depth, seen)
    blocks = [_search_block(index, queries[i:i + rows], k, depth, None if seen is None else seen[i:i + rows])
              for i in range(0, len(queries), rows)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _search_block(index: faiss.Index, queries: np.ndarray, k: int, depth: int, seen: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """search_unseen of one block of queries, searched ``depth`` deep."""
    scores, rows = index.search(queries, depth)
    if seen is None:
        return scores, rows
    stride = index.ntotal + 1
    at = np.arange(len(queries), dtype=np.int64)[:, None] * stride
    dropped = np.isin(at + rows, (at + seen)[seen >= 0]) | (rows < 0)
    order = np.argsort(dropped, axis=1, kind="stable")[:, :k]  # kept rows first, in their order
    kept = ~np.take_along_axis(dropped, order, axis=1)
    return (np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32),
            np.where(kept, np.take_along_axis(rows, order, axis=1), -1))


def build_index(vectors: np.ndarray, config: IndexConfig = IndexConfig(), warm_from: BuiltIndex | None = None,
                queries: np.ndarray | None = None) -> BuiltIndex:
    """Train (when the kind needs it) and fill an index over ``vectors`` [n, d] (row = id).

    ``warm_from``, an earlier build of the same factory string and width, is a warm start: its trained
    coarse quantizer and codebooks are reused and only the vectors are added, which skips the k-means
    (most of an IVF-PQ build). Use it when the vectors moved little since that build.

    ``queries`` [Q, d] calibrate nprobe and k_factor when ``config.target_overlap`` is set (calibrate;
    the build seconds include it); without them, or for an index without lists, the resolved ones stay."""
    original = vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    config = resolved(config, n, dim)
    if config.kind in ("ivfpq", "ivfpqfs") and dim % config.m:  # zero columns up to a multiple of m
        vectors = np.pad(vectors, ((0, 0), (0, -dim % config.m)))
        dim = vectors.shape[1]
    factory, notes = factory_string(config, n, dim)
    if notes:
        warnings.warn(f"faiss index {config.kind!r} does not fit this catalogue: {'; '.join(notes)}; using {factory}",
                      stacklevel=2)
    start = time.perf_counter()
    warm = warm_from is not None and warm_from.trained is not None and warm_from.factory == factory \
        and warm_from.trained.d == dim
    if warm:
        index = _copy(warm_from.trained)
        trained = warm_from.trained
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        trained = None
        if not index.is_trained:
            sample = vectors
            if n > config.train_sample:
                sample = vectors[np.sort(np.random.default_rng(0).choice(n, config.train_sample, replace=False))]
            index.train(sample)
            trained = _copy(index)
    index.add(vectors)
    params = faiss.ParameterSpace()
    if "IVF" in factory:
        params.set_index_parameter(index, "nprobe", config.nprobe)
    if factory.startswith("HNSW"):
        params.set_index_parameter(index, "efSearch", config.ef_search)
    if "_HNSW" in factory:
        params.set_index_parameter(index, "quantizer_efSearch", config.quantizer_ef_search)
    if factory.endswith("RFlat"):
        params.set_index_parameter(index, "k_factor_rf", config.k_factor)
    built = BuiltIndex(index, factory, 0.0, 0, config, trained, warm)
    if config.target_overlap is not None and queries is not None and "IVF" in factory:
        calibrate(built, original, queries, config.target_overlap)
    built.build_seconds = time.perf_counter() - start
    built.bytes = len(faiss.serialize_index(index))
    return built


def calibrate(built: BuiltIndex, vectors: np.ndarray, queries: np.ndarray, target: float) -> tuple[int, int]:
    """Search parameters of ``built`` (an IVF index over ``vectors`` [n, d]) at which the ANN top-k
    (k = CALIBRATION_K, at most n) of a seeded sample of CALIBRATION_QUERIES of ``queries`` [Q, d] keeps
    on average at least ``target`` of the exact top-k:

        overlap(p, f) = mean_q |ANN_{p, f}(q) & exact(q)| / k     (p = nprobe, f = k_factor)

    Greedy from the configured (p, f): each step tries (2p, f) and, with exact re-ranking, (p, 2f), and
    keeps the one with the larger overlap (p up to nlist, f up to MAX_K_FACTOR). More lists find the
    right neighbourhoods; a larger f re-ranks more of the PQ's candidates, which matters once the lists
    hold them. The last kept is used when none reaches the target. Sets them on the index and in
    ``built.config``, records every (nprobe, k_factor, overlap) tried in ``built.calibration`` (the
    one used last); returns (nprobe, k_factor)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) > CALIBRATION_QUERIES:
        queries = queries[np.sort(np.random.default_rng(0).choice(len(queries), CALIBRATION_QUERIES, replace=False))]
    k = min(CALIBRATION_K, len(vectors))
    _, exact = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    at = np.arange(len(queries), dtype=np.int64)[:, None] * (len(vectors) + 1)  # row offsets: one isin for all
    nlist, params = faiss.extract_index_ivf(built.index).nlist, faiss.ParameterSpace()
    rerank = built.factory.endswith("RFlat")

    def overlap(nprobe: int, k_factor: int) -> float:
        params.set_index_parameter(built.index, "nprobe", nprobe)
        if rerank:
            params.set_index_parameter(built.index, "k_factor_rf", k_factor)
        _, rows = search_unseen(built.index, queries, k)
        return float((np.isin(at + rows, at + exact) & (rows >= 0)).sum(axis=1).mean() / k)

    nprobe, k_factor = min(built.config.nprobe, nlist), built.config.k_factor
    score = overlap(nprobe, k_factor)
    tried = [(nprobe, k_factor, score)]
    while score < target:
        steps = [(min(2 * nprobe, nlist), k_factor)] if nprobe < nlist else []
        if rerank and k_factor < MAX_K_FACTOR:
            steps.append((nprobe, min(2 * k_factor, MAX_K_FACTOR)))
        if not steps:
            break
        scored = sorted(((*step, overlap(*step)) for step in steps), key=lambda t: t[2])
        tried.extend(scored)  # the kept one last
        nprobe, k_factor, score = scored[-1]
    best = (nprobe, k_factor)
    params.set_index_parameter(built.index, "nprobe", best[0])
    if rerank:
        params.set_index_parameter(built.index, "k_factor_rf", best[1])
    built.calibration, built.config = tried, replace(built.config, nprobe=best[0], k_factor=best[1])
    return best


def _copy(index: faiss.Index) -> faiss.Index:
    """A deep copy of a Faiss index (through serialisation: every kind here supports it)."""
    return faiss.deserialize_index(faiss.serialize_index(index))
