"""Faiss indexes: factory strings, fallbacks for small catalogues, inner-product search, recall."""

from dataclasses import replace

import numpy as np
import pytest

from lightning_tt.errors import InputError
from lightning_tt.eval.index import IndexConfig, build_index, factory_string, resolved


def unit(n, d, seed=0, clusters=0):
    """n unit vectors; with ``clusters``, around that many centres (like trained item embeddings)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if clusters:
        centres = np.random.default_rng(99).standard_normal((clusters, d)).astype(np.float32)
        x = centres[rng.integers(0, clusters, n)] + 0.3 * x
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_factory_strings():
    assert factory_string(IndexConfig(kind="ivfpq"), 100_000, 64) == ("IVF1024,PQ32x8,RFlat", [])
    assert factory_string(IndexConfig(kind="ivfflat", nlist=256), 100_000, 64)[0] == "IVF256,Flat"
    assert factory_string(IndexConfig(kind="hnsw", hnsw_m=16), 10, 64)[0] == "HNSW16"
    assert factory_string(IndexConfig(kind="ivfhnsw", nlist=512), 100_000, 64)[0] == "IVF512_HNSW32,Flat"
    assert factory_string(IndexConfig(kind="ivfpq", rerank=False, m=16), 100_000, 64)[0] == "IVF1024,PQ16x8"
    # Never more sub-quantizers than dimensions (32 on 8-d vectors padded them to 32 columns).
    assert factory_string(IndexConfig(kind="ivfpq"), 100_000, 8)[0] == "IVF1024,PQ8x8,RFlat"
    with pytest.raises(InputError, match="index kind"):
        IndexConfig(kind="annoy")


def test_fast_scan_parameters_follow_the_catalogue_unless_set():
    # nlist = the power of two nearest 4 sqrt(n), m = ceil(d / 2), nprobe = max(8, nlist / 1024),
    # k_factor 4 up to 1.5M vectors and 8 above, a flat coarse quantizer.
    fs = IndexConfig(kind="ivfpqfs")
    assert factory_string(fs, 3_000_000, 128) == ("IVF8192,PQ64x4fs,RFlat", [])  # 4 x 1732 = 6928
    assert factory_string(fs, 1_000_000, 64) == ("IVF4096,PQ32x4fs,RFlat", [])  # 4 x 1000 = 4000
    assert factory_string(fs, 100_000, 64) == ("IVF1024,PQ32x4fs,RFlat", [])  # 4 x 316 = 1265
    chosen = resolved(fs, 3_000_000, 128)
    assert (chosen.nlist, chosen.m, chosen.nprobe, chosen.k_factor, chosen.coarse) == (8192, 64, 8, 8, "flat")
    assert (chosen.quantizer_ef_search, chosen.train_sample) == (64, 64 * 8192)
    assert (resolved(fs, 1_000_000, 64).k_factor, resolved(fs, 20_000_000, 64).nprobe) == (4, 16)  # 16,384 lists
    assert resolved(fs, 100_000, 129).m == 65  # ceil(129 / 2): a popularity column pads to 130
    # What the user sets wins, the rest is still chosen.
    mine = resolved(IndexConfig(kind="ivfpqfs", nlist=2048, k_factor=16, coarse="hnsw"), 3_000_000, 128)
    assert (mine.nlist, mine.m, mine.nprobe, mine.k_factor, mine.coarse) == (2048, 64, 8, 16, "hnsw")
    assert factory_string(mine, 3_000_000, 128)[0] == "IVF2048_HNSW32,PQ64x4fs,RFlat"
    assert factory_string(IndexConfig(kind="ivfpqfs", m=8, rerank=False), 100_000, 64)[0] == "IVF1024,PQ8x4fs"
    # The other kinds keep the values measured at 3M, and an HNSW coarse quantizer is an option.
    old = resolved(IndexConfig(kind="ivfpq"), 3_000_000, 128)
    assert (old.nlist, old.m, old.nprobe, old.k_factor, old.coarse) == (1024, 32, 128, 16, "flat")
    assert (old.quantizer_ef_search, old.train_sample) == (128, 256 * 1024)  # Faiss's own k-means cap
    assert factory_string(IndexConfig(kind="ivfpq", coarse="hnsw"), 100_000, 64)[0] == "IVF1024_HNSW32,PQ32x8,RFlat"
    with pytest.raises(InputError, match="coarse"):
        IndexConfig(coarse="ivf")


def test_small_catalogues_fall_back():
    # Fast-scan at 5,000 vectors: 4 sqrt(n) = 283 -> 256 lists -> 128 (39 points each); 16 centroids of
    # 4 bits train on 624 points, so PQ stays. 400 vectors are too few for PQ, 50 for IVF.
    assert factory_string(IndexConfig(kind="ivfpqfs"), 5_000, 64)[0] == "IVF128,PQ32x4fs,RFlat"
    assert factory_string(IndexConfig(kind="ivfpqfs"), 5_000, 60)[0] == "IVF128,PQ30x4fs,RFlat"  # 60 / 2
    assert factory_string(IndexConfig(kind="ivfpqfs"), 400, 64)[0] == "IVF10,Flat"  # 64 lists -> 400 // 39
    assert factory_string(IndexConfig(kind="ivfpqfs"), 50, 64)[0] == "Flat"
    # 5,000 vectors: nlist 1024 -> 128 lists; 2^8 centroids need 9,984 points -> nbits 7.
    factory, notes = factory_string(IndexConfig(kind="ivfpq"), 5_000, 64)
    assert factory == "IVF128,PQ32x7,RFlat" and len(notes) == 2
    assert factory_string(IndexConfig(kind="ivfpq"), 400, 64)[0] == "IVF10,Flat"  # too few to train PQ
    assert factory_string(IndexConfig(kind="ivfpq"), 50, 64)[0] == "Flat"  # too few for IVF
    with pytest.warns(UserWarning, match="does not fit this catalogue"):
        built = build_index(unit(50, 8))
    assert built.factory == "Flat"


def test_dimensions_not_divisible_by_m_get_zero_columns():
    # 65 = 64 + a popularity column: PQ8 needs a multiple of 8, so the index holds 72 columns, the
    # queries get the same zeros, and the re-ranked inner products are the exact ones.
    items, queries = unit(5_000, 65, clusters=100), unit(100, 65, seed=1, clusters=100)
    exact_scores, exact = build_index(items, IndexConfig(kind="flat")).search(queries, 10)[:2]
    built = build_index(items, IndexConfig(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=16))
    assert built.factory == "IVF16,PQ8x6,RFlat" and built.index.d == 72
    scores, ids, _ = built.search(queries, 10)
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact)]) > 0.9
    assert np.allclose(scores[:, 0], exact_scores[:, 0], atol=1e-5)
    assert resolved(IndexConfig(kind="ivfpqfs"), 100_000, 65).m == 33  # ceil(65 / 2)


def test_inner_product_not_l2():
    # Item 0 is long and aligned with the query; L2 would prefer the short item 1 right next to it.
    items = np.array([[10.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], dtype=np.float32)
    built = build_index(items, IndexConfig(kind="flat"))
    scores, ids, qps = built.search(np.array([[1.0, 0.0]]), 2)
    assert ids[0].tolist() == [0, 1] and scores[0][0] == pytest.approx(10.0) and qps > 0


def test_training_on_a_capped_sample_keeps_recall():
    items, queries = unit(10_000, 32, clusters=100), unit(200, 32, seed=1, clusters=100)
    exact = build_index(items, IndexConfig(kind="flat")).search(queries, 100)[1]
    built = build_index(items, IndexConfig(kind="ivfpqfs", nlist=32, m=8, nprobe=8, train_sample=1_500))
    assert built.config.train_sample == 1_500 and built.factory == "IVF32,PQ8x4fs,RFlat"
    ann = built.search(queries, 100)[1]
    assert np.mean([len(set(a) & set(e)) / 100 for a, e in zip(ann, exact)]) > 0.9
    with pytest.raises(InputError, match="train_sample"):
        IndexConfig(train_sample=0)


@pytest.mark.parametrize("kind", ["ivfpq", "ivfflat", "hnsw", "ivfhnsw", "ivfpqfs"])
def test_ann_recall_close_to_exact(kind):
    items, queries = unit(10_000, 32, clusters=100), unit(200, 32, seed=1, clusters=100)
    exact = build_index(items, IndexConfig(kind="flat")).search(queries, 100)[1]
    built = build_index(items, IndexConfig(kind=kind, nlist=64, m=8, nbits=6, nprobe=16))
    assert ("x4fs" in built.factory) == (kind == "ivfpqfs")
    ann = built.search(queries, 100)[1]
    overlap = np.mean([len(set(a) & set(e)) / 100 for a, e in zip(ann, exact)])
    assert overlap > 0.9, (kind, built.factory, overlap)
    assert built.config.nprobe == 16 and built.config.k_factor is not None
    assert built.bytes > 0 and built.build_seconds > 0


@pytest.mark.parametrize("kind, parameter, values", [("ivfflat", "nprobe", [1, 2, 4, 8]),
                                                     ("hnsw", "efSearch", [16, 32, 64, 128])])
def test_the_tradeoff_sweeps_the_search_parameter_and_restores_it(kind, parameter, values):
    import faiss
    import torch

    from lightning_tt.eval.callback import FaissRetrieval

    items, queries = unit(4_000, 16, clusters=50), unit(100, 16, seed=1, clusters=50)
    built = build_index(items, IndexConfig(kind=kind, nlist=16, nprobe=8, ef_search=128))
    targets = torch.from_numpy(build_index(items, IndexConfig(kind="flat")).search(queries, 1)[1][:, 0] + 2)
    name, points = FaissRetrieval()._tradeoff(built, torch.from_numpy(queries), targets,
                                              torch.zeros(100, 1, dtype=torch.int64), 10)
    assert name == parameter and [p[0] for p in points] == values
    assert points[-1][2] == 1.0 and all(0 < p[2] <= 1 for p in points)  # the exact best item is found at the end
    index = built.index if kind == "hnsw" else faiss.extract_index_ivf(built.index)
    assert (index.hnsw.efSearch if kind == "hnsw" else index.nprobe) == values[-1]  # set back


def test_a_warm_start_reuses_the_trained_quantizer_and_skips_training():
    items, queries = unit(5_000, 16, clusters=50), unit(100, 16, seed=1, clusters=50)
    config = IndexConfig(kind="ivfpqfs", nlist=32, m=8, nprobe=8, k_factor=16)
    first = build_index(items, config)
    assert first.trained is not None and first.trained.ntotal == 0 and not first.warm
    moved = items + 0.01 * unit(5_000, 16, seed=3)
    warm = build_index(moved, config, warm_from=first)
    assert warm.warm and warm.trained is first.trained and warm.index.ntotal == 5_000
    import faiss

    centroids = [faiss.extract_index_ivf(b.index).quantizer.reconstruct_n(0, 32) for b in (first, warm)]
    assert np.array_equal(*centroids)  # the same coarse quantizer, not retrained
    exact = build_index(moved, IndexConfig(kind="flat")).search(queries, 10)[1]
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(warm.search(queries, 10)[1], exact)]) > 0.95
    # Another factory string (here another nlist) cannot reuse it: trained afresh.
    assert not build_index(moved, IndexConfig(kind="ivfpqfs", nlist=16, m=8, k_factor=16), warm_from=first).warm
    assert build_index(items, IndexConfig(kind="hnsw")).trained is None  # nothing to train


def test_the_callback_warm_starts_while_the_vectors_stay_close():
    from lightning_tt.errors import InputError
    from lightning_tt.eval.callback import FaissRetrieval

    items = unit(3_000, 16, clusters=30)
    callback = FaissRetrieval(IndexConfig(kind="ivfpqfs", nlist=16, m=8, nprobe=4), warm_start=0.9)
    built, drift = callback._build(items)
    assert not built.warm and drift is None  # nothing trained before
    built, drift = callback._build(items + 0.01 * unit(3_000, 16, seed=4))
    assert built.warm and drift > 0.99
    built, drift = callback._build(unit(3_000, 16, seed=5))  # unrelated vectors: cosine about 0
    assert not built.warm and drift < 0.5
    built, drift = callback._build(unit(3_000, 16, seed=5))  # measured from the last training
    assert built.warm and drift == pytest.approx(1.0)
    assert FaissRetrieval(IndexConfig(kind="ivfpqfs"))._build(items)[1] is None  # warm_start unset: always trained
    with pytest.raises(InputError, match="warm_start"):
        FaissRetrieval(warm_start=2.0)


def overlap_at(built, queries, exact, nprobe, k_factor):
    """Mean top-100 overlap with ``exact`` at these search parameters (set directly through Faiss)."""
    import faiss

    params = faiss.ParameterSpace()
    params.set_index_parameter(built.index, "nprobe", nprobe)
    params.set_index_parameter(built.index, "k_factor_rf", k_factor)
    return np.mean([len(set(a) & set(e)) / 100 for a, e in zip(built.search(queries, 100)[1], exact)])


def test_target_overlap_calibrates_nprobe_and_k_factor_on_the_queries():
    import faiss

    from lightning_tt.eval.index import CALIBRATION_QUERIES, MAX_K_FACTOR, calibrate

    items, queries = unit(6_000, 16), unit(CALIBRATION_QUERIES, 16, seed=1)  # unclustered: IVF must probe widely
    exact = build_index(items, IndexConfig(kind="flat")).search(queries, 100)[1]
    config = IndexConfig(kind="ivfpqfs", nlist=64, m=8, nprobe=1, k_factor=2, target_overlap=0.95)
    assert build_index(items, config).calibration is None  # no queries: the given values stay
    built = build_index(items, config, queries=queries)
    tried = built.calibration
    nprobe, k_factor, reached = tried[-1]  # the one used is last
    assert (built.config.nprobe, built.config.k_factor) == (nprobe, k_factor) and tried[0][:2] == (1, 2)
    assert reached >= 0.95 > max(t[2] for t in tried[:-1])  # the first that reaches the target
    assert all(t[0] in (1, 2, 4, 8, 16, 32, 64) and t[1] in (2, 4, 8, 16, 32, 64) for t in tried)
    # Every overlap recorded is what the index gives at those values (all queries are the sample).
    for probe, factor, value in (tried[0], tried[-1]):
        assert overlap_at(built, queries, exact, probe, factor) == pytest.approx(value)
    assert faiss.extract_index_ivf(built.index).nprobe == nprobe  # left set to the values used
    assert calibrate(built, items, queries, 0.01) == (nprobe, k_factor)  # reached already: unchanged
    assert len(built.calibration) == 1
    # The hardest target ends either reached or at nlist and the largest k_factor.
    full = build_index(items, replace(config, target_overlap=1.0), queries=queries)
    probe, factor, value = full.calibration[-1]
    assert value == 1.0 or (probe, factor) == (64, MAX_K_FACTOR)
    with pytest.raises(InputError, match="target_overlap"):
        IndexConfig(target_overlap=1.5)


def test_the_tradeoff_sweep_searches_a_seeded_sample_of_the_queries(monkeypatch):
    import torch

    from lightning_tt.eval.callback import FaissRetrieval

    items, queries = unit(4_000, 16, clusters=50), unit(300, 16, seed=1, clusters=50)
    built = build_index(items, IndexConfig(kind="ivfflat", nlist=16, nprobe=4))
    targets = torch.from_numpy(build_index(items, IndexConfig(kind="flat")).search(queries, 1)[1][:, 0] + 2)
    seen = torch.zeros(300, 1, dtype=torch.int64)
    searched = []
    search = type(built).search
    monkeypatch.setattr(type(built), "search", lambda self, q, k, s=None: (searched.append(len(q)),
                                                                          search(self, q, k, s))[1])
    monkeypatch.setattr(FaissRetrieval, "TRADEOFF_QUERIES", 50)
    _, points = FaissRetrieval()._tradeoff(built, torch.from_numpy(queries), targets, seen, 10)
    assert searched == [50, 50, 50]  # nprobe 1, 2, 4 on the sample
    # The recall is the one of the sampled queries: the same rows searched directly.
    rows = np.sort(np.random.default_rng(0).choice(300, 50, replace=False))
    top = build_index(items, IndexConfig(kind="ivfflat", nlist=16, nprobe=4)).search(queries[rows], 10)[1] + 2
    assert points[-1][2] == float((top == targets.numpy()[rows, None]).any(axis=1).mean())
    monkeypatch.setattr(FaissRetrieval, "TRADEOFF_QUERIES", 10_000)
    searched.clear()
    FaissRetrieval()._tradeoff(built, torch.from_numpy(queries), targets, seen, 10)
    assert searched == [300, 300, 300]  # fewer queries than the sample: all of them
