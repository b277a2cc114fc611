"""Faiss index benchmark: build time, memory, queries/s and ANN/exact overlap of the top 100, side by side
with exact search in one run.

    python bench/bench_index.py [--sizes 1000000 3000000] [--dims 64 128] [--queries 2000]
                                [--kind ivfpqfs] [--nprobes 4 8 16] [--items-zipf 1.1] [--query-from users]
    python bench/bench_index.py --embeddings run.npz [--kind ivfpqfs] [--nprobes ...]

Synthetic items are unit vectors around 4096 random centres (trained item embeddings are clustered;
uniform noise is the worst case for IVF); ``--items-zipf`` gives the centres Zipf-distributed shares
(skewed popularity: a few dense clusters). Queries (``--query-from``):

- ``items``: drawn like the items (the flattering case: every query sits in an item cluster);
- ``users``: each query mixes 3 item centres (a user's taste spans several clusters) drawn with
  skewed popularity (``--popularity-zipf``, 1.1: the most popular cluster is in about 1 in 4 users'
  taste), with random weights, plus noise: queries fall between clusters, where IVF has to probe more
  lists, and crowd the popular ones. Not the items' own distribution;
- ``other``: around 4096 other random centres, unrelated to the items: an adversarial case where most
  inner products are near ties.

``--embeddings FILE`` (an .npz with ``items`` [n, d] and ``queries`` [q, d], e.g. written by
``bench/trained_embeddings.py`` from a checkpoint) measures a trained model's own vectors instead; with
``targets`` (each query's true item row) it also gives ANN/exact Recall@100, the ratio the training
callback logs.

The index is built once (``lightning_tt.eval.index.build_index``, options not given chosen from n and
d, training on its capped sample); each ``--nprobes`` value is then searched on the same index, so
one run gives the speed/overlap trade-off. "Exact" is a Flat inner-product search (adding the vectors
included). ANN/exact overlap = mean share of the exact top 100 that the ANN top 100 holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS, machine, write_section  # noqa: E402

from lightning_tt.eval.index import IndexConfig, build_index  # noqa: E402

CENTRES = 4096


def clustered(n: int, dim: int, seed: int, centres_seed: int = 0, zipf: float = 0.0) -> np.ndarray:
    """n unit vectors around 4096 random centres (of ``centres_seed``); with ``zipf`` > 0 the centres'
    shares follow a Zipf law of that exponent (skewed popularity: a few dense clusters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(centres_seed).standard_normal((CENTRES, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, CENTRES + 1) ** zipf
    x = centres[rng.choice(CENTRES, n, p=weights / weights.sum())]
    x += 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def user_queries(q: int, dim: int, seed: int, zipf: float, tastes: int = 3) -> np.ndarray:
    """q queries, each a user's taste: a random convex mix (Dirichlet(1) weights) of ``tastes`` item
    centres drawn with skewed popularity (cluster r with probability ~ r^-zipf), plus the items' noise,
    normalised. A query then lies between clusters, not in one, and most queries go to a few popular
    clusters."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((CENTRES, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, CENTRES + 1) ** zipf
    picks = rng.choice(CENTRES, (q, tastes), p=weights / weights.sum())
    mix = rng.dirichlet(np.ones(tastes), q).astype(np.float32)
    x = np.einsum("qt,qtd->qd", mix, centres[picks]) + 0.5 * rng.standard_normal((q, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries_from(source: str, args, dim: int, seed: int = 2) -> np.ndarray:
    if source == "items":
        return clustered(args.queries, dim, seed, zipf=args.items_zipf)
    if source == "other":
        return clustered(args.queries, dim, seed, centres_seed=7, zipf=args.items_zipf)
    return user_queries(args.queries, dim, seed, args.popularity_zipf)


def measure(items: np.ndarray, query_sets: dict[str, np.ndarray], args, targets: np.ndarray | None = None,
            calibration: np.ndarray | None = None) -> list[tuple]:
    """One build of the index over ``items``, then one row per query set, k_factor and nprobe: (n, dim,
    queries, factory, nprobe, k_factor, build s, ANN q/s, exact q/s, bytes, overlap, recall ratio).
    With ``targets`` (the true row of each query), recall ratio = ANN Recall@100 / exact Recall@100.
    With ``--target-overlap``, the build calibrates nprobe and k_factor on ``calibration`` (other
    queries than those measured) and only the calibrated values are searched."""
    n, dim = items.shape
    exact = {}
    for name, queries in query_sets.items():
        start = time.perf_counter()
        flat = faiss.IndexFlatIP(dim)
        flat.add(items)
        exact[name] = flat.search(queries, 100)[1], len(queries) / (time.perf_counter() - start)
        del flat
    config = IndexConfig(kind=args.kind, nlist=args.nlist, m=args.m, coarse=args.coarse, train_sample=args.train_sample,
                         target_overlap=args.target_overlap)
    built = build_index(items, config, queries=calibration)
    nprobes, k_factors = args.nprobes or [built.config.nprobe], args.k_factors or [built.config.k_factor]
    if built.calibration:
        print("calibration (nprobe, k_factor, overlap):", built.calibration, flush=True)
        nprobes, k_factors = [built.config.nprobe], [built.config.k_factor]
    rows = []
    params = faiss.ParameterSpace()
    for name, queries in query_sets.items():
        for k_factor in k_factors:
            if built.factory.endswith("RFlat"):
                params.set_index_parameter(built.index, "k_factor_rf", k_factor)
            for nprobe in nprobes:
                if "IVF" in built.factory:
                    params.set_index_parameter(built.index, "nprobe", nprobe)
                _, ann, qps = built.search(queries, 100)
                top, exact_qps = exact[name]
                overlap = float(np.mean([len(np.intersect1d(a, e)) / 100 for a, e in zip(ann, top)]))
                ratio = None
                if targets is not None:
                    ratio = (ann == targets[:, None]).any(1).mean() / max((top == targets[:, None]).any(1).mean(), 1e-9)
                rows.append((n, dim, name, built.factory, nprobe, k_factor, built.build_seconds, qps,
                             exact_qps, built.bytes, overlap, ratio))
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--items-zipf", type=float, default=0.0, help="Zipf exponent of the item clusters' shares")
    p.add_argument("--popularity-zipf", type=float, default=1.1,
                   help="Zipf exponent of how often each cluster is in a user's taste (users queries)")
    p.add_argument("--query-from", nargs="+", default=["items"], choices=["items", "users", "other"])
    p.add_argument("--embeddings", default=None, help="an .npz of a trained model's items and queries")
    p.add_argument("--kind", default=IndexConfig.kind)
    p.add_argument("--coarse", default=None, choices=["flat", "hnsw"])
    p.add_argument("--nlist", type=int, default=None, help="default: chosen from n and d (lightning_tt.eval.index)")
    p.add_argument("--m", type=int, default=None)
    p.add_argument("--nprobes", "--nprobe", type=int, nargs="+", default=None, help="default: the automatic nprobe")
    p.add_argument("--k-factors", "--k-factor", type=int, nargs="+", default=None,
                   help="re-ranking depth k_factor x k (searched on the same index); default: the automatic one")
    p.add_argument("--train-sample", type=int, default=None)
    p.add_argument("--target-overlap", type=float, default=None,
                   help="calibrate nprobe and k_factor to this top-100 overlap on other queries than those measured "
                        "(embeddings: the second half of the file's queries, which then measures the first half)")
    p.add_argument("--section", default="bench_index")
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    rows = []
    if args.embeddings:
        found = np.load(args.embeddings)
        queries = np.ascontiguousarray(found["queries"], dtype=np.float32)
        targets = found["targets"] if "targets" in found else None
        calibration = None
        if args.target_overlap:
            half = len(queries) // 2
            queries, calibration = queries[:half], queries[half:]
            targets = targets[:half] if targets is not None else None
        rows += measure(np.ascontiguousarray(found["items"], dtype=np.float32), {"trained": queries}, args, targets,
                        calibration)
        source = f"a trained model's item vectors and test-window queries (`{Path(args.embeddings).name}`)"
    else:
        for n in args.sizes:
            for dim in args.dims:
                items = clustered(n, dim, 1, zipf=args.items_zipf)
                calibration = queries_from(args.query_from[0], args, dim, seed=3) if args.target_overlap else None
                rows += measure(items, {name: queries_from(name, args, dim) for name in args.query_from}, args,
                                calibration=calibration)
        source = (f"{args.queries:,} queries of each kind; items: clustered unit vectors"
                  + (f", cluster shares Zipf({args.items_zipf})" if args.items_zipf else ""))
    table = "\n".join(f"| {n:,} | {d} | {qs} | `{f}` | {npr} | {kf} | {b:.1f} | {q:,.0f} | {e:,.0f} | {q / e:.1f} | "
                      f"{by / 2**20:,.0f} MiB | {o:.4f} | {'' if r is None else f'{r:.4f}'} |"
                      for n, d, qs, f, npr, kf, b, q, e, by, o, r in rows)
    flags = {"embeddings": args.embeddings, "kind": args.kind, "coarse": args.coarse, "nlist": args.nlist,
             "m": args.m, "train_sample": args.train_sample, "target_overlap": args.target_overlap}
    if not args.embeddings:
        flags = {"sizes": " ".join(map(str, args.sizes)), "dims": " ".join(map(str, args.dims)),
                 "items_zipf": args.items_zipf or None, "query_from": " ".join(args.query_from),
                 "popularity_zipf": args.popularity_zipf if "users" in args.query_from else None, **flags}
    flags["nprobes"] = " ".join(map(str, args.nprobes)) if args.nprobes else None
    flags["k_factors"] = " ".join(map(str, args.k_factors)) if args.k_factors else None
    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if v is not None)
    text = f"""## Faiss index (`{args.section}`)

Measured {dt.date.today().isoformat()} on {machine()}, faiss {faiss.__version__};
`python bench/bench_index.py {given}`.
k = 100, inner product; {source} (see the script). One build per size and dim, then every nprobe and
k_factor searched on it. Exact queries/s is a brute-force Flat search (adding the vectors included). Options not given
are chosen from n and d (lightning_tt.eval.index), and training sees its capped sample.

| items | dim | queries | index | nprobe | k_factor | build s | ANN queries/s | exact queries/s | ANN/exact speed | index size | ANN/exact top-100 overlap | ANN/exact Recall@100 |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{table}
"""
    write_section(Path(args.out), text, marker=args.section)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
