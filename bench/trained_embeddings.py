"""A trained model's retrieval vectors, for bench/bench_index.py --embeddings: the catalogue's item vectors
and the queries of the test window's next-track cases with their target rows (the vectors the Faiss
callback indexes and searches).

    python bench/trained_embeddings.py --ckpt_path RUN/checkpoints/best-epoch=2.ckpt --out trained.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.model.module import FIRST_ITEM
from lightning_tt.outputs import Output
from lightning_tt.serve import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--queries", type=int, default=5000, help="at most this many test cases (the first ones)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    model, data = load_model(args.ckpt_path)
    output = Output(args.out, "file", option="--out", overwrite=args.overwrite,  # checked before any work
                    inputs={"--ckpt_path": args.ckpt_path, "the checkpoint's data_dir": data.path})
    hp = model.hparams
    module = YambdaDataModule(str(data.path), eval_batch_size=1024, history=hp.history,
                              feedback=hp.feedback, exclude_seen=False)
    queries, targets = [], []
    with torch.no_grad():
        items = model.retrieval_items()[FIRST_ITEM:].float().numpy()
        for batch in module.test_dataloader()[0]:
            queries.append(model.retrieval_query(batch).float().numpy())
            targets.append(batch["target_item"].numpy() - FIRST_ITEM)  # index rows (-1: unknown item)
            if sum(len(q) for q in queries) >= args.queries:
                break
    queries, targets = np.concatenate(queries)[: args.queries], np.concatenate(targets)[: args.queries]
    with output.writing() as tmp, open(tmp, "wb") as f:  # a file object: savez would add .npz to the name
        np.savez(f, items=items, queries=queries, targets=targets)
    print(f"wrote {args.out}: {items.shape[0]:,} items and {len(queries):,} queries of dim {items.shape[1]}")


if __name__ == "__main__":
    main()
