"""Faiss indexes over item embeddings, built with ``faiss.index_factory`` and the inner-product metric
(the towers are trained on dot products of unit vectors, so L2 would rank differently).

Kinds (``IndexConfig.kind``) and their factory strings (n vectors of dim d):

    flat      Flat                                 exact
    ivfflat   IVF{nlist},Flat
    ivfpq     IVF{nlist},PQ{m}x{nbits}[,RFlat]     the default, with exact re-ranking (``rerank``)
    hnsw      HNSW{hnsw_m}
    ivfhnsw   IVF{nlist}_HNSW{hnsw_m},Flat          IVF with an HNSW coarse quantizer

Search parameters: ``nprobe`` (IVF lists visited), ``ef_search`` (HNSW), ``k_factor`` (candidates
re-ranked exactly = k_factor x k). The defaults (IVF1024,PQ32x8,RFlat, nprobe 128, k_factor 16) kept
0.99999 of the exact top-100 on 3M clustered 128-d vectors; PQ16 with nprobe 64 and k_factor 4 kept
only 0.77 there (docs/benchmarks.md). Training wants >= 39 points per IVF list and per PQ centroid
(2^nbits) and d divisible by m: a catalogue too small for the requested kind gets a smaller nlist,
nbits or m, or an exact Flat index, with a warning that says what changed.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import faiss
import numpy as np

from lightning_tt.errors import InputError

POINTS_PER_CENTROID = 39
KINDS = ("flat", "ivfflat", "ivfpq", "hnsw", "ivfhnsw")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "ivfpq"
    nlist: int = 1024
    m: int = 32
    nbits: int = 8
    rerank: bool = True
    hnsw_m: int = 32
    nprobe: int = 128
    ef_search: int = 128
    k_factor: int = 16

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"index kind (--kind, retrieval.kind) must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("nlist", "m", "nbits", "hnsw_m", "nprobe", "ef_search", "k_factor"):
            if getattr(self, name) < 1:
                raise InputError(f"index option {name} (--{name.replace('_', '-')}, retrieval.{name}) must be >= 1, "
                                 f"got {getattr(self, name)}")


def factory_string(config: IndexConfig, n: int, dim: int) -> tuple[str, list[str]]:
    """The factory string for ``n`` vectors of dim ``dim``, and what was changed to fit them."""
    c, notes = config, []
    kind, nlist, m, nbits = c.kind, c.nlist, c.m, c.nbits
    if kind in ("ivfflat", "ivfpq", "ivfhnsw"):
        fit = max(1, n // POINTS_PER_CENTROID)
        if nlist > fit:
            notes.append(f"nlist {nlist} -> {fit} ({n} vectors)")
            nlist = fit
        if nlist < 2:
            notes.append(f"{kind} -> flat ({n} vectors are too few for IVF)")
            kind = "flat"
    if kind == "ivfpq":
        if dim % m:
            divisor = max(d for d in range(1, m + 1) if dim % d == 0)
            notes.append(f"m {m} -> {divisor} (dim {dim} is not divisible by {m})")
            m = divisor
        fit_bits = int(np.floor(np.log2(max(n // POINTS_PER_CENTROID, 1))))
        if nbits > fit_bits:
            if fit_bits >= 4:
                notes.append(f"nbits {nbits} -> {fit_bits} ({n} vectors)")
                nbits = fit_bits
            else:
                notes.append(f"ivfpq -> ivfflat ({n} vectors are too few to train PQ)")
                kind = "ivfflat"
    strings = {
        "flat": "Flat",
        "ivfflat": f"IVF{nlist},Flat",
        "ivfpq": f"IVF{nlist},PQ{m}x{nbits}" + (",RFlat" if c.rerank else ""),
        "hnsw": f"HNSW{c.hnsw_m}",
        "ivfhnsw": f"IVF{nlist}_HNSW{c.hnsw_m},Flat",
    }
    return strings[kind], notes


@dataclass
class BuiltIndex:
    index: faiss.Index
    factory: str
    build_seconds: float
    bytes: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(scores [Q, k], item rows [Q, k], queries per second); rows are -1 past the catalogue."""
        start = time.perf_counter()
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids, len(queries) / max(time.perf_counter() - start, 1e-9)


def build_index(vectors: np.ndarray, config: IndexConfig = IndexConfig()) -> BuiltIndex:
    """Train (when the kind needs it) and fill an index over ``vectors`` [n, d] (row = id)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    factory, notes = factory_string(config, n, dim)
    if notes:
        warnings.warn(f"faiss index {config.kind!r} does not fit this catalogue: {'; '.join(notes)}; using {factory}",
                      stacklevel=2)
    start = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    params = faiss.ParameterSpace()
    if "IVF" in factory:
        params.set_index_parameter(index, "nprobe", config.nprobe)
    if factory.startswith("HNSW"):
        params.set_index_parameter(index, "efSearch", config.ef_search)
    if "_HNSW" in factory:
        params.set_index_parameter(index, "quantizer_efSearch", config.ef_search)
    if factory.endswith("RFlat"):
        params.set_index_parameter(index, "k_factor_rf", config.k_factor)
    seconds = time.perf_counter() - start
    return BuiltIndex(index, factory, seconds, len(faiss.serialize_index(index)))
