"""ParquetPredictionWriter: ``lightning-tt predict`` writes the top-k of every test case to parquet.

Columns: ``case`` (int64, the case's index among the test window's next-track cases), ``uid`` and
``target_item_id`` (uint32, raw Yambda ids; 0 for an unknown target), ``item_ids`` (list<uint32>, best
first) and ``scores`` (list<float32>). The file goes to ``output`` (relative paths: in the run's
directory, lightning_tt.runs), written atomically through lightning_tt.outputs. With several processes
each writes its part to a temporary file, and rank zero streams the parts into the one output file
(rows in rank order; ``case`` says which case a row is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import Callback

from lightning_tt.data.prepared import PreparedData
from lightning_tt.outputs import Output
from lightning_tt.runs import run_directory


class ParquetPredictionWriter(Callback):
    """Writes ``predict``'s top-k lists to one parquet file (see the module docstring).

    The file is checked when the predict loop starts, before any case is scored (lightning_tt.outputs):
    not one of the command's inputs, an existing file replaced only with ``overwrite``, never a directory."""

    def __init__(self, output: str = "predictions.parquet", overwrite: bool = False):
        """
        Args:
            output: the parquet file of predict's top-k lists (a relative path is in the run's directory)
            overwrite: replace an existing output file
        """
        self.output = output
        self.overwrite = overwrite
        self._outputs: list[dict[str, torch.Tensor]] = []
        self._target: Output | None = None

    def on_predict_start(self, trainer, pl_module):  # after the checkpoint is restored, before any batch
        path = Path(self.output)
        if not path.is_absolute():
            path = run_directory(trainer) / path
        path = Path(trainer.strategy.broadcast(str(path), src=0))  # rank zero's run directory, everywhere
        inputs = {"--data.data_dir": pl_module.hparams.data_dir, "--ckpt_path": trainer.ckpt_path}
        self._target = Output(path, "file", option="--predictions.output", inputs=inputs, overwrite=self.overwrite,
                              overwrite_option="--predictions.overwrite true")

    def on_predict_epoch_start(self, trainer, pl_module):
        self._outputs = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._outputs.append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer, pl_module):
        predictions, self._outputs = self._outputs, []
        target = self._target
        table = _table(PreparedData(pl_module.hparams.data_dir), predictions, trainer.world_size, trainer.global_rank)
        if trainer.world_size == 1:
            with target.writing() as tmp:
                pq.write_table(table, tmp)
        else:
            parts = trainer.strategy.broadcast([target.temporary(f"rank{r}") for r in range(trainer.world_size)], src=0)
            pq.write_table(table, parts[trainer.global_rank])
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                try:
                    with target.writing() as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
                        for part in parts:
                            for batch in pq.ParquetFile(part).iter_batches():
                                writer.write_batch(batch)
                finally:
                    for part in parts:
                        part.unlink(missing_ok=True)
        if trainer.is_global_zero:
            rows = pq.ParquetFile(target.path).metadata.num_rows
            print(f"predictions for {rows:,} cases written to {target.path}")
        trainer.strategy.barrier()  # the file is complete before any process goes on


SCHEMA = pa.schema([("case", pa.int64()), ("uid", pa.uint32()), ("target_item_id", pa.uint32()),
                    ("item_ids", pa.list_(pa.uint32())), ("scores", pa.list_(pa.float32()))])


def _table(data: PreparedData, predictions: list[dict[str, torch.Tensor]], world_size: int, rank: int) -> pa.Table:
    """One process's predictions (``items`` [B, k], ``scores`` [B, k], ``target_item`` [B], ``user``
    [B] per batch) as a table of SCHEMA with raw ids; empty when the process had no case."""
    if not predictions:
        return SCHEMA.empty_table()
    item_ids, user_ids = np.asarray(data["item_ids"]), np.asarray(data["user_ids"])
    items = torch.cat([p["items"] for p in predictions]).cpu().numpy()
    scores = torch.cat([p["scores"] for p in predictions]).float().cpu().numpy()
    targets = torch.cat([p["target_item"] for p in predictions]).cpu().numpy()
    users = torch.cat([p["user"] for p in predictions]).cpu().numpy()
    # The predict loader is the test cases in order; process r holds cases r, r + world, r + 2 world ...
    cases = np.arange(len(items), dtype=np.int64) * world_size + rank
    offsets = np.arange(0, len(items) * items.shape[1] + 1, items.shape[1], dtype=np.int32)
    return pa.table({
        "case": pa.array(cases, pa.int64()),
        "uid": pa.array(user_ids[users], pa.uint32()),
        "target_item_id": pa.array(item_ids[targets], pa.uint32()),
        "item_ids": pa.ListArray.from_arrays(offsets, pa.array(item_ids[items].ravel(), pa.uint32())),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel(), pa.float32())),
    }, schema=SCHEMA)
