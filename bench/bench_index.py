"""Faiss index benchmark: build time, queries/s, bytes and ANN/exact recall of the top 100.

    python bench/bench_index.py [--sizes 1000000 3000000] [--dims 64 128] [--queries 2000]

Items are unit vectors around 4096 random centres (trained item embeddings are clustered; uniform
noise is the worst case for IVF), queries are drawn the same way. "Exact" is a Flat inner-product
index; the ANN index is FaissRetrieval's default unless options say otherwise (IVF1024,PQ32x8 with
exact re-ranking of 16 x k, nprobe 128; ``--kind ivfpqfs`` for fast-scan). ANN/exact = mean overlap of
the two top-100 lists.
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
from bench_data import machine, write_section  # noqa: E402

from lightning_tt.eval.index import IndexConfig, build_index  # noqa: E402


def clustered(n: int, dim: int, seed: int, centres_seed: int = 0, zipf: float = 0.0) -> np.ndarray:
    """n unit vectors around 4096 random centres (of ``centres_seed``); with ``zipf`` > 0 the centres'
    shares follow a Zipf law of that exponent (skewed popularity: a few dense clusters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(centres_seed).standard_normal((4096, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, 4097) ** zipf
    x = centres[rng.choice(4096, n, p=weights / weights.sum())] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--kind", default=IndexConfig.kind)
    p.add_argument("--coarse", default=None, choices=["flat", "hnsw"])
    p.add_argument("--nlist", type=int, default=None, help="default: chosen from n and d (lightning_tt.eval.index)")
    p.add_argument("--m", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--k-factor", type=int, default=None)
    p.add_argument("--hard", action="store_true",
                   help="skewed item clusters (Zipf 1.1) and queries around 4096 other random centres, unrelated to "
                        "the items: an adversarial case where most inner products are near ties (overlap then "
                        "measures noise as much as the index; trained query towers aim at item clusters)")
    p.add_argument("--section", default="bench_index")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        for dim in args.dims:
            if args.hard:
                items, queries = clustered(n, dim, 1, zipf=1.1), clustered(args.queries, dim, 2, centres_seed=7, zipf=1.1)
            else:
                items, queries = clustered(n, dim, 1), clustered(args.queries, dim, 2)
            start = time.perf_counter()
            flat = faiss.IndexFlatIP(dim)
            flat.add(items)
            _, exact = flat.search(queries, 100)
            exact_qps = args.queries / (time.perf_counter() - start)
            config = IndexConfig(kind=args.kind, nlist=args.nlist, m=args.m, nprobe=args.nprobe, k_factor=args.k_factor,
                                 coarse=args.coarse)
            built = build_index(items, config)
            _, ann, qps = built.search(queries, 100)
            overlap = float(np.mean([len(set(a) & set(e)) / 100 for a, e in zip(ann, exact)]))
            c = built.config
            rows.append((n, dim, f"`{built.factory}`, nprobe {c.nprobe}, k_factor {c.k_factor}", built.build_seconds,
                         qps, exact_qps, built.bytes, overlap))
            print(rows[-1], flush=True)
    table = "\n".join(f"| {n:,} | {d} | {f} | {b:.1f} | {q:,.0f} | {e:,.0f} | {q / e:.1f} | {by / 2**20:,.0f} MiB | "
                      f"{o:.4f} |" for n, d, f, b, q, e, by, o in rows)
    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                     if k in ("kind", "coarse", "nlist", "m", "nprobe", "k_factor") and v is not None)
    given += " --hard" if args.hard else ""
    text = f"""## Faiss index ({given})

Measured {dt.date.today().isoformat()} on {machine()}, faiss {faiss.__version__};
`python bench/bench_index.py --sizes {' '.join(map(str, args.sizes))} --dims {' '.join(map(str, args.dims))} {given}`.
{args.queries:,} queries, k = 100, inner product, clustered unit vectors; {"item clusters with Zipf(1.1) sizes, queries around 4096 other centres" if args.hard else "queries drawn the same way"} (see
the script). Exact QPS is a brute-force Flat search (it includes adding the vectors). Options not given
are chosen from n and d (lightning_tt.eval.index); build_index trains on all vectors.

| items | dim | index | build s | ANN queries/s | exact queries/s | ANN/exact speed | index size | ANN/exact top-100 overlap |
|---|---|---|---|---|---|---|---|---|
{table}
"""
    write_section(Path(args.out), text, marker=args.section)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
