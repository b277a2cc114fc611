"""Warm-starting the index between validation epochs (``retrieval.warm_start``): does recall hold, and
how many build seconds does it save?

    python bench/bench_warm_start.py [--workdir runs/bench/warm-start] [--size 1000000] [--dim 64]

1. **How far item vectors move between epochs**, on the embedded default (its synthetic twin,
   common.prepared_twin, made once in ``--workdir``): ``configs/demo.yaml`` fitted
   for 3 epochs twice with the same seed and a fast-scan index, once training the index at every
   validation (cold) and once warm-starting it from the first epoch's (``warm_start: -1``, always).
   The callback logs the drift (the mean cosine of the items' vectors to those the index was trained
   on) and each epoch's ANN/exact Recall@100.
2. **The seconds it saves at scale**: ``size`` clustered vectors (bench_index.py's), then the same
   vectors moved to the mean cosine measured in 1 (x + s * noise, normalised); the moved vectors'
   index built cold and warm from the first vectors' index, with the ANN/exact top-100 overlap of
   each for user-like queries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import warnings
from pathlib import Path

import faiss
import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import clustered, user_queries  # noqa: E402
from common import BENCHMARKS, machine, prepared_twin, write_section  # noqa: E402

from lightning_tt.eval.index import IndexConfig, build_index  # noqa: E402
from lightning_tt.lightning_cli import CONFIGS, lightning_cli  # noqa: E402


def fit_epochs(data: Path, run_dir: Path, warm_start: float | None) -> list[dict]:
    """Per validation epoch: drift (when measured), warm (0/1), build seconds, ANN/exact Recall@100."""
    epochs = []

    class Record(L.Callback):
        """What FaissRetrieval and the model logged at each validation end."""

        def on_validation_end(self, trainer, module):
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            epochs.append({k: float(m[f"val/{k}"]) for k in ("index/drift", "index/warm_start", "index/build_seconds",
                                                             "next/ann_exact_ratio@100") if f"val/{k}" in m})

    flags = ["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.data_dir", str(data), "--trainer.logger", "false",
             "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--retrieval.index.kind", "ivfpqfs", "--retrieval.index.nlist", "null",
             "--retrieval.index.nprobe", "null"]
    if warm_start is not None:
        flags += ["--retrieval.warm_start", str(warm_start)]
    lightning_cli(flags, callbacks=[Record()])
    return epochs


def moved(x: np.ndarray, cosine: float, seed: int = 5) -> np.ndarray:
    """``x`` (unit rows) moved by Gaussian noise so that the mean cosine to ``x`` is about ``cosine``."""
    d = x.shape[1]
    scale = np.sqrt(max(1 / cosine**2 - 1, 0) / d)  # |noise|^2 ~ d s^2 = tan^2 of the angle
    y = x + scale * np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/bench/warm-start"))
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    data = prepared_twin(args.workdir / "twin-prepared", args.workdir / "twin-raw")
    cold = fit_epochs(data, args.workdir / "warm-cold", None)
    warm = fit_epochs(data, args.workdir / "warm-warm", -1.0)
    print("cold", cold, "\nwarm", warm, flush=True)
    epoch_rows = "\n".join(
        f"| {i} | {w.get('index/drift', float('nan')):.4f} | {int(w['index/warm_start'])} | "
        f"{c['next/ann_exact_ratio@100']:.4f} | {w['next/ann_exact_ratio@100']:.4f} | "
        f"{c['index/build_seconds']:.2f} | {w['index/build_seconds']:.2f} |" for i, (c, w) in enumerate(zip(cold, warm)))
    drifts = [w["index/drift"] for w in warm if "index/drift" in w]
    cosine = min(drifts) if drifts else 0.9

    x = clustered(args.size, args.dim, 1)
    queries = user_queries(args.queries, args.dim, 2, 1.1)
    config = IndexConfig(kind="ivfpqfs")
    first = build_index(x, config)
    scale_rows = []
    for target in sorted({round(cosine, 3), 0.9, 0.8}, reverse=True):
        y = moved(x, target)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(y)
        exact = flat.search(queries, 100)[1]
        for name, built in (("cold", build_index(y, config)), ("warm", build_index(y, config, warm_from=first))):
            ann = built.search(queries, 100)[1]
            overlap = float(np.mean([len(np.intersect1d(a, e)) / 100 for a, e in zip(ann, exact)]))
            mean_cos = float(np.mean((x * y).sum(axis=1)))
            scale_rows.append((mean_cos, name, built.factory, built.build_seconds, overlap))
            print(scale_rows[-1], flush=True)
    scale_table = "\n".join(f"| {c:.3f} | {n} | `{f}` | {b:.1f} | {o:.4f} |" for c, n, f, b, o in scale_rows)
    text = f"""## Warm-starting the index between epochs (`retrieval.warm_start`)

Measured {dt.date.today().isoformat()} on {machine()}, faiss {faiss.__version__};
`python bench/bench_warm_start.py --size {args.size} --dim {args.dim}`.

**1. The embedded default**: `configs/demo.yaml`, 3 epochs, seed 0, `--retrieval.index.kind ivfpqfs` with
automatic options; cold trains the index at every validation, warm reuses the first epoch's quantizer
and codebooks (`warm_start: -1`). Drift = mean cosine of the items' vectors to those the index was
trained on.

| validation epoch | drift | warm | ANN/exact Recall@100, cold | warm | build s, cold | warm |
|---|---|---|---|---|---|---|
{epoch_rows}

**2. At scale**: {args.size:,} clustered {args.dim}-d vectors, moved to the given mean cosine; their index
built cold, and warm from the unmoved vectors' index. Overlap = ANN/exact top-100 overlap for
{args.queries:,} user-like queries (bench_index.py `--query-from users`), automatic options.

| mean cosine to the trained vectors | build | index | build s | ANN/exact top-100 overlap |
|---|---|---|---|---|
{scale_table}
"""
    write_section(Path(args.out), text, marker="bench_warm_start")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
