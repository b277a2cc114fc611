"""ParquetPredictionWriter: ``lightning-tt predict`` writes the top-k of every test case to parquet.

Columns: ``case`` (int64, the case's index among the test window's next-track cases), ``uid`` and ``target_item_id`` (uint32, raw Yambda ids; 0
for an unknown target), ``item_ids`` (list<uint32>, best first) and ``scores`` (list<float32>). The file
goes to ``output`` (relative paths: in the run's directory, lightning_tt.runs), written to a temporary name and
renamed; with several processes each writes ``<stem>-rank<r>.parquet``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import Callback

from lightning_tt.data.prepared import PreparedData
from lightning_tt.runs import run_directory


class ParquetPredictionWriter(Callback):
    def __init__(self, output: str = "predictions.parquet"):
        self.output = output
        self._outputs: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer, pl_module):
        self._outputs = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._outputs.append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer, pl_module):
        predictions, self._outputs = self._outputs, []
        if not predictions:
            return
        data = PreparedData(pl_module.hparams.data_dir)
        item_ids, user_ids = np.asarray(data["item_ids"]), np.asarray(data["user_ids"])
        items = torch.cat([p["items"] for p in predictions]).cpu().numpy()
        scores = torch.cat([p["scores"] for p in predictions]).float().cpu().numpy()
        targets = torch.cat([p["target_item"] for p in predictions]).cpu().numpy()
        users = torch.cat([p["user"] for p in predictions]).cpu().numpy()
        # The predict loader is the test cases in order; process r holds cases r, r + world, r + 2 world ...
        cases = np.arange(len(items), dtype=np.int64) * trainer.world_size + trainer.global_rank
        k = items.shape[1]
        table = pa.table({
            "case": pa.array(cases, pa.int64()),
            "uid": pa.array(user_ids[users], pa.uint32()),
            "target_item_id": pa.array(item_ids[targets], pa.uint32()),
            "item_ids": pa.ListArray.from_arrays(np.arange(0, len(items) * k + 1, k, dtype=np.int32),
                                                 pa.array(item_ids[items].ravel(), pa.uint32())),
            "scores": pa.ListArray.from_arrays(np.arange(0, len(items) * k + 1, k, dtype=np.int32),
                                               pa.array(scores.ravel(), pa.float32())),
        })
        path = Path(self.output)
        if not path.is_absolute():
            path = run_directory(trainer) / path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        print(f"predictions for {len(items):,} cases written to {path}")
