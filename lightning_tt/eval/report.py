"""RunReport: what a run leaves besides checkpoints, made from values the loop has already logged.

- ``{stage}/next/ann_exact_ratio@k`` = ANN Recall@k / exact Recall@k, read from
  ``trainer.callback_metrics`` once the evaluation epoch has ended (FaissRetrieval logged the ANN
  value, the model the exact one), then logged to the loggers and kept in ``callback_metrics``.
- After ``test``, in the run's directory (lightning_tt.runs), on rank zero:
  - ``metrics.json``: every ``test/...`` value and the ratios;
  - ``test_cases.parquet``: the exact rankings' value of every test case (lightning_tt.eval.metrics.case_table,
    system ``TwoTower``), for intervals and paired comparisons (lightning_tt.eval.intervals);
  - ``recall_at_k.png``: next-track Recall@k against k for the model (exact and ANN) and the baselines
    of ``baselines_file`` (a metrics.json of ``lightning-tt baselines --split test``; none without it);
  - ``ann_tradeoff.png`` (IVF and HNSW indexes): queries/s against the ANN/exact Recall ratio over
    the ``test/tradeoff/...`` points FaissRetrieval logged;
  - with a WandbLogger: the Recall@k curve, both figures and a table of sample recommendations
    (lightning_tt.eval.wandb_report), the first next-track test cases, taken in on_test_batch_end
    from the model's step outputs.

A callback rather than model options: ``test --ckpt_path`` restores the model's options from the
checkpoint, which would override a ``--model.*`` given on the command line; ``--report.*`` stays.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import case_table, metric_name, write_case_table
from lightning_tt.outputs import Output
from lightning_tt.runs import run_directory, write_json

#: Next-track test cases kept for the sample table.
SAMPLES = 20


class RunReport(L.Callback):
    """Writes what a run leaves besides checkpoints: the ANN/exact ratios, metrics.json and the figures.

    See the module docstring."""

    def __init__(self, baselines_file: str | None = None):
        """
        Args:
            baselines_file: a metrics.json of ``lightning-tt baselines --split test`` whose next-track
                Recall@k curves the test figure shows beside the model's (none without it)
        """
        self.baselines_file = baselines_file
        self._samples: list[dict[str, torch.Tensor]] = []

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.baselines_file:  # a bad file fails now, not after the whole test loop
            read_recall_curves(self.baselines_file, list(module.hparams.recall_k))
        self._samples = []

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        kept = sum(len(s["user"]) for s in self._samples)
        if int(outputs["protocol"]) == 0 and kept < SAMPLES:
            n = SAMPLES - kept
            self._samples.append({"user": outputs["user"][:n].cpu(), "seed": outputs["seed_item"][:n].cpu(),
                                  "top": outputs["top"][:n, :10].cpu(), "true": outputs["target_item"][:n].cpu()})

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._ratios(trainer, module, "val")

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._ratios(trainer, module, "test")
        if not trainer.is_global_zero:
            return
        values = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("test/")}
        run_dir = run_directory(trainer)
        path = run_dir / "metrics.json"
        write_json(Output(path, "file", option="metrics.json", overwrite=True), values)
        module.print(f"metrics written to {path}")
        if "test" in module.cases and module.hparams.data_dir:
            from lightning_tt.data.prepared import PreparedData

            cases = run_dir / "test_cases.parquet"
            write_case_table(Output(cases, "file", option="test_cases.parquet", overwrite=True),
                             case_table(module.cases["test"], list(module.hparams.recall_k),
                                        PreparedData(module.hparams.data_dir)["user_ids"], "TwoTower", "test"))
            module.print(f"per-case values written to {cases}")
        figures = self._figures(module, values, run_dir)
        for figure in figures:
            module.print(f"figure written to {figure}")  # through the progress bar, on its own line
        self._wandb(trainer, module, values, figures)

    @staticmethod
    def _ratios(trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        """ANN/exact Recall@k of the epoch that just ended, into callback_metrics and the loggers."""
        found = trainer.callback_metrics
        ratios = {}
        for k in module.hparams.recall_k:
            ann = found.get(metric_name(stage, "next", "recall", k))
            exact = found.get(metric_name(stage, "next", "recall", k, exact=True))
            if ann is not None and exact is not None and float(exact) > 0:
                ratios[metric_name(stage, "next", "ann_exact_ratio", k)] = float(ann) / float(exact)
        if not ratios:
            return
        found.update({name: torch.tensor(value) for name, value in ratios.items()})
        for logger in trainer.loggers:
            logger.log_metrics(ratios, step=trainer.global_step)

    def _figures(self, module: L.LightningModule, values: dict[str, float], run_dir: Path) -> list[Path]:
        from lightning_tt.eval import plots

        ks = sorted(module.hparams.recall_k)
        curves = {"TwoTower (exact)": recall_curve(values, ks, exact=True)}
        if all(metric_name("test", "next", "recall", k) in values for k in ks):
            curves["TwoTower (ANN)"] = recall_curve(values, ks)
        if self.baselines_file:
            curves.update(read_recall_curves(self.baselines_file, ks))
        written = [plots.recall_curves(curves, run_dir / "recall_at_k.png")]
        tradeoff = _tradeoff_points(values, max(ks))
        if tradeoff is not None:
            parameter, points = tradeoff
            exact = values[metric_name("test", "next", "recall", max(ks), exact=True)] or 1.0
            nlist = int(values.get("test/index/nlist", 0))
            index = f"IVF{nlist} index" if nlist else "HNSW index"
            written.append(plots.ann_tradeoff([(n, q, r / exact) for n, q, r in points], run_dir / "ann_tradeoff.png",
                                              index, parameter))
        return written

    def _wandb(self, trainer: L.Trainer, module: L.LightningModule, values: dict[str, float], figures: list) -> None:
        loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        if not loggers:
            return
        from lightning_tt.data.prepared import PreparedData
        from lightning_tt.eval.wandb_report import log_test_report

        samples = None
        if self._samples and module.hparams.data_dir:
            data = PreparedData(module.hparams.data_dir)
            item_ids, user_ids = np.asarray(data["item_ids"]), np.asarray(data["user_ids"])
            s = {k: torch.cat([part[k] for part in self._samples]).numpy() for k in self._samples[0]}
            samples = {"uid": user_ids[s["user"]], "seed": item_ids[s["seed"]], "top": item_ids[s["top"]],
                       "true": item_ids[s["true"]]}
        for logger in loggers:
            log_test_report(logger, values, list(module.hparams.recall_k), samples, figures)


def _tradeoff_points(values: dict[str, float], k: int) -> tuple[str, list[tuple[int, float, float]]] | None:
    """(parameter, [(value, queries/s, Recall@k)] by value) from FaissRetrieval's ``test/tradeoff/...``
    values; None when there are none."""
    points: dict[int, dict[str, float]] = {}
    parameter = None
    for name, value in values.items():
        match = re.fullmatch(rf"test/tradeoff/(\w+?)_(\d+)/(queries_per_second|recall@{k})", name)
        if match:
            parameter = match.group(1)
            points.setdefault(int(match.group(2)), {})[match.group(3)] = value
    if parameter is None:
        return None
    return parameter, [(n, p["queries_per_second"], p[f"recall@{k}"]) for n, p in sorted(points.items())]


def read_recall_curves(baselines_file: str, ks: list[int]) -> dict[str, dict[int, float]]:
    """``{baseline: {k: test/next/recall@k}}`` from a metrics.json of ``lightning-tt baselines --split
    test``. Raises InputError naming the file when it is missing, unreadable or lacks one of ``ks``."""
    path = Path(baselines_file)
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
            raise ValueError("expected {baseline: {metric: value}}")
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path}: cannot read the baselines' metrics (report.baselines_file): {err}") from err
    curves = {}
    for name, values in found.items():
        missing = [metric_name("test", "next", "recall", k) for k in ks]
        missing = [m for m in missing if m not in values]
        if missing:
            raise InputError(f"{path}: baseline {name} has no {missing[0]} (report.baselines_file must come from "
                             f"`lightning-tt baselines --split test --k [{','.join(map(str, sorted(ks)))}]`)")
        curves[name] = recall_curve(values, ks)
    return curves


def recall_curve(values: dict[str, float], ks: list[int], exact: bool = False) -> dict[int, float]:
    """{k: test next-track Recall@k} of a model's or a baseline's values (``exact``: the model's exact ones)."""
    return {k: float(values[metric_name("test", "next", "recall", k, exact)]) for k in ks}
