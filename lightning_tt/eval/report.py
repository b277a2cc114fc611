"""RunReport: what ``test`` leaves besides metrics.json, made on rank zero once the test loop has ended.

- ``recall_at_k.png``: next-track Recall@k against k for the model (exact and, with FaissRetrieval,
  ANN) and the baselines (lightning_tt.baselines.baseline_recall_curves: those of ``baselines_file``,
  a metrics.json of ``lightning-tt baselines --split test``, plus the cheap ones it lacks).
- ``ann_tradeoff.png`` (IVF and HNSW indexes): queries/s against the ANN/exact Recall ratio over the
  nprobe (IVF) or efSearch (HNSW) values FaissRetrieval tried.
- With a WandbLogger: the Recall@k curve, both figures and a table of sample recommendations
  (lightning_tt.eval.wandb_report).

A callback rather than model options: ``test --ckpt_path`` restores the model's options from the
checkpoint, which would override a ``--model.*`` given on the command line; ``--report.*`` stays.
"""

from __future__ import annotations

import lightning as L
import numpy as np

from lightning_tt.runs import run_directory


class RunReport(L.Callback):
    def __init__(self, baselines_file: str | None = None):
        self.baselines_file = baselines_file

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.baselines_file:  # a bad file fails now, not after the whole test loop
            from lightning_tt.baselines import read_recall_curves

            read_recall_curves(self.baselines_file, list(module.hparams.recall_k))

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        values = getattr(module, "test_values", None)
        if not trainer.is_global_zero or not values:
            return
        figures = self._figures(module, values, run_directory(trainer))
        for figure in figures:
            module.print(f"figure written to {figure}")  # through the progress bar, on its own line
        self._wandb(trainer, module, values, figures)

    def _figures(self, module: L.LightningModule, values: dict[str, float], run_dir) -> list:
        from lightning_tt.baselines import baseline_recall_curves
        from lightning_tt.eval import plots

        ks = sorted(module.hparams.recall_k)
        curves = {"TwoTower (exact)": {k: values[f"test/next/exact_recall@{k}"] for k in ks}}
        if all(f"test/next/recall@{k}" in values for k in ks):
            curves["TwoTower (ANN)"] = {k: values[f"test/next/recall@{k}"] for k in ks}
        curves.update(baseline_recall_curves(module.hparams.data_dir, ks, self.baselines_file))
        written = [plots.recall_curves(curves, run_dir / "recall_at_k.png")]
        tradeoff, module.ann_tradeoff = getattr(module, "ann_tradeoff", None), None
        if tradeoff is not None:
            factory, parameter, points = tradeoff
            exact = values[f"test/next/exact_recall@{max(ks)}"] or 1.0
            written.append(plots.ann_tradeoff([(n, q, r / exact) for n, q, r in points], run_dir / "ann_tradeoff.png",
                                              factory, parameter))
        return written

    @staticmethod
    def _wandb(trainer: L.Trainer, module: L.LightningModule, values: dict[str, float], figures: list) -> None:
        loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        if not loggers:
            return
        from lightning_tt.data.prepared import PreparedData
        from lightning_tt.eval.wandb_report import log_test_report

        samples, picked = None, getattr(module, "test_samples", None)
        if picked is not None and module.hparams.data_dir:
            data = PreparedData(module.hparams.data_dir)
            item_ids, user_ids = np.asarray(data["item_ids"]), np.asarray(data["user_ids"])
            s = {k: v.numpy() for k, v in picked.items()}
            samples = {"uid": user_ids[s["user"]], "seed": item_ids[s["seed"]], "top": item_ids[s["top"]],
                       "true": item_ids[s["true"]]}
        for logger in loggers:
            log_test_report(logger, values, list(module.hparams.recall_k), samples, figures)
