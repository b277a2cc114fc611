"""Dense Adam against sparse table gradients + SparseAdam (``model.sparse_embeddings``) as the
catalogue grows: the full ``fit`` loop of both, side by side in one run, per catalogue size.

    python bench/bench_sparse_tables.py                        # CPU, demo model, 20k and 1M items
    python bench/bench_sparse_tables.py --preset 500m --accelerator gpu --workers 12 --items 1000000 3000000

Dense Adam reads and writes every row of every id table each step, so its step grows with the
catalogue; SparseAdam touches only the rows the batch looked up. ``--preset`` names a config in
configs/ (its model sizes, batch size and precision; common.preset); each catalogue size gets its own
synthetic twin (common.prepared_twin), made once in ``--workdir``. Results go to docs/benchmarks.md
(section bench_sparse_<accelerator>).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import fit_loop  # noqa: E402
from common import BENCHMARKS, PRESETS, build_model, machine, prepared_twin, preset, write_section  # noqa: E402

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[20_000, 1_000_000])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--workdir", default="runs/bench/sparse")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile (the MLPs only with sparse tables)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    config = preset(args.preset)
    gpu = args.accelerator == "gpu"
    rows = []
    for items in args.items:
        twin = Path(args.workdir) / f"items-{items}"
        data = prepared_twin(twin / "prepared", twin / "raw", args.rows, args.users, items)
        dm = YambdaDataModule(str(data), batch_size=config["batch_size"], num_workers=args.workers, pin_memory=gpu)
        speed = {}
        for sparse in (False, True):
            model = build_model(dm, config["model"], compile=args.compile, sparse_embeddings=sparse)
            speed[sparse] = fit_loop(model, dm, args.accelerator, config["precision"], args.warmup, args.steps)
        tables = dm.num_items + dm.num_artists + dm.num_albums + dm.num_users
        rows.append((dm.num_items, tables, speed[False], speed[True]))
        print(f"{dm.num_items:,} items: dense {speed[False]:,.0f} examples/s, sparse {speed[True]:,.0f}, "
              f"ratio {speed[True] / speed[False]:.2f}")
    name = machine(gpu=gpu)
    table = "\n".join(f"| {n:,} | {t:,} | {d:,.0f} | {s:,.0f} | {s / d:.2f} |" for n, t, d, s in rows)
    text = f"""## Sparse id-table gradients (`model.sparse_embeddings`) against dense Adam ({args.accelerator})

Measured {dt.date.today().isoformat()} on {name}, torch {torch.__version__};
`python bench/bench_sparse_tables.py --preset {args.preset} --accelerator {args.accelerator} --workers {args.workers} --items {' '.join(map(str, args.items))}{' --compile' if args.compile else ''}`.
The full `Trainer.fit` loop, model preset `{args.preset}` (precision {config['precision']}, batch
{config['batch_size']:,}), synthetic data with {args.rows:,} rows and {args.users:,} users; {args.steps} timed steps
after {args.warmup} warm-up steps, dense and sparse one after the other in the same run.

| items | table rows (users, items, artists, albums) | dense Adam, examples/s | sparse tables + SparseAdam, examples/s | ratio |
|---|---|---|---|---|
{table}
"""
    write_section(Path(args.out), text, marker=f"bench_sparse_{args.accelerator}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
