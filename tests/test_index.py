"""Faiss indexes: factory strings, fallbacks for small catalogues, inner-product search, recall."""

import numpy as np
import pytest

from lightning_tt.errors import InputError
from lightning_tt.eval.index import IndexConfig, build_index, factory_string


def unit(n, d, seed=0, clusters=0):
    """n unit vectors; with ``clusters``, around that many centres (like trained item embeddings)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if clusters:
        centres = np.random.default_rng(99).standard_normal((clusters, d)).astype(np.float32)
        x = centres[rng.integers(0, clusters, n)] + 0.3 * x
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_factory_strings():
    assert factory_string(IndexConfig(), 100_000, 64) == ("IVF1024,PQ32x8,RFlat", [])
    assert factory_string(IndexConfig(kind="ivfflat", nlist=256), 100_000, 64)[0] == "IVF256,Flat"
    assert factory_string(IndexConfig(kind="hnsw", hnsw_m=16), 10, 64)[0] == "HNSW16"
    assert factory_string(IndexConfig(kind="ivfhnsw", nlist=512), 100_000, 64)[0] == "IVF512_HNSW32,Flat"
    assert factory_string(IndexConfig(rerank=False, m=16), 100_000, 64)[0] == "IVF1024,PQ16x8"
    with pytest.raises(InputError, match="index kind"):
        IndexConfig(kind="annoy")


def test_small_catalogues_fall_back():
    # 5,000 vectors: nlist 1024 -> 128 lists; 2^8 centroids need 9,984 points -> nbits 7.
    factory, notes = factory_string(IndexConfig(), 5_000, 64)
    assert factory == "IVF128,PQ32x7,RFlat" and len(notes) == 2
    assert factory_string(IndexConfig(), 5_000, 60)[0] == "IVF128,PQ30x7,RFlat"  # 60 % 32 != 0 -> m 30
    assert factory_string(IndexConfig(), 400, 64)[0] == "IVF10,Flat"  # too few to train PQ
    assert factory_string(IndexConfig(), 50, 64)[0] == "Flat"  # too few for IVF
    with pytest.warns(UserWarning, match="does not fit this catalogue"):
        built = build_index(unit(50, 8))
    assert built.factory == "Flat"


def test_inner_product_not_l2():
    # Item 0 is long and aligned with the query; L2 would prefer the short item 1 right next to it.
    items = np.array([[10.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], dtype=np.float32)
    built = build_index(items, IndexConfig(kind="flat"))
    scores, ids, qps = built.search(np.array([[1.0, 0.0]]), 2)
    assert ids[0].tolist() == [0, 1] and scores[0][0] == pytest.approx(10.0) and qps > 0


@pytest.mark.parametrize("kind", ["ivfpq", "ivfflat", "hnsw", "ivfhnsw"])
def test_ann_recall_close_to_exact(kind):
    items, queries = unit(10_000, 32, clusters=100), unit(200, 32, seed=1, clusters=100)
    exact = build_index(items, IndexConfig(kind="flat")).search(queries, 100)[1]
    built = build_index(items, IndexConfig(kind=kind, nlist=64, m=8, nbits=6, nprobe=16))
    ann = built.search(queries, 100)[1]
    overlap = np.mean([len(set(a) & set(e)) / 100 for a, e in zip(ann, exact)])
    assert overlap > 0.9, (kind, built.factory, overlap)
    assert built.bytes > 0 and built.build_seconds > 0
