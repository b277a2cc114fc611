"""Host time per training step that the Lightning loop adds to the model's own step.

    python bench/bench_fit_overhead.py            # CPU, a tiny model and batch, so the overhead shows

A model of width 8 on batches of 64 makes the step itself short, so what ``Trainer.fit`` adds (hooks,
the closure, the dataloader) is visible in milliseconds. Three loops run side by side, interleaved:
the bare loop of bench_train.py, ``fit`` on the same pre-built batches as the module is now (the training loss summed on the device
and logged once per epoch), and ``fit`` with the ``self.log("train/loss", on_epoch=True)`` call per step
that the module made before. On a GPU this host time is lost whenever the step is bound by kernel
launches. The data is ``--data`` or the embedded default's synthetic twin (made once in ``--workdir``).
Results go to docs/benchmarks.md (section bench_fit_overhead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import bare_loop, fit_loop  # noqa: E402
from common import (  # noqa: E402
    BENCHMARKS,
    add_twin_arguments,
    build_model,
    machine,
    take_batches,
    twin_from,
    write_section,
)

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402
from lightning_tt.model.module import TwoTowerModule  # noqa: E402

TINY = dict(embedding_dim=8, hidden_dims=[16], output_dim=8, estimator_buckets=1024)


class PerStepLog(TwoTowerModule):
    """The module with the per-step ``self.log`` it had before (epoch mean, on the progress bar)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss_per_step", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["target_item"]))
        return loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_twin_arguments(p, "runs/bench/train")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    torch.set_num_threads(1)
    data = twin_from(args)
    dm = YambdaDataModule(str(data), batch_size=args.batch_size)
    batches = take_batches(YambdaDataModule(str(data), batch_size=args.batch_size),
                           args.warmup + args.steps)
    cpu = torch.device("cpu")
    ms = {"bare": [], "fit": [], "per_step_log": []}
    for _ in range(args.rounds):  # interleaved, best of the rounds
        rate, _ = bare_loop(build_model(dm, TINY), batches, cpu, False, args.warmup)
        ms["bare"].append(args.batch_size / rate * 1e3)
        for name, cls in (("fit", TwoTowerModule), ("per_step_log", PerStepLog)):
            ready = DataLoader(batches, batch_size=None)  # yields the pre-built batches as they are
            rate = fit_loop(build_model(dm, TINY, cls=cls), ready, "cpu", "32-true", args.warmup, args.steps)
            ms[name].append(args.batch_size / rate * 1e3)
    best = {name: min(values) for name, values in ms.items()}
    paired = sorted(b - a for a, b in zip(ms["fit"], ms["per_step_log"]))  # same round, run back to back
    text = f"""## Per-step host overhead of the fit loop (cpu)

Measured {dt.date.today().isoformat()} on {machine()}, torch {torch.__version__}, one thread;
`python bench/bench_fit_overhead.py --batch-size {args.batch_size} --steps {args.steps} --rounds {args.rounds}`: a tiny
model (width 8) on batches of {args.batch_size}, so the loop's own cost shows; all three run the same pre-built
batches (no loader cost). {args.steps} timed steps after {args.warmup} warm-up steps; best of {args.rounds}
interleaved rounds.

| loop | ms per step | added to the bare step, ms |
|---|---|---|
| bare PyTorch loop (bench_train.py) | {best['bare']:.3f} | 0 |
| `Trainer.fit`, the loss summed on the device, logged per epoch (now) | {best['fit']:.3f} | {best['fit'] - best['bare']:.3f} |
| `Trainer.fit` with a `self.log(..., on_epoch=True)` per step (before) | {best['per_step_log']:.3f} | {best['per_step_log'] - best['bare']:.3f} |

The per-step `self.log` cost, paired within each round: median {paired[len(paired) // 2]:.3f} ms per step
(range {paired[0]:.3f} to {paired[-1]:.3f}). This machine is shared and noisy: the bare step itself moved
by more than a millisecond between runs.
"""
    print(text)
    write_section(Path(args.out), text, "bench_fit_overhead")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
