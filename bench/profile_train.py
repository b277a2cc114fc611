"""Profiles of training on a prepared directory: where the time goes (printed, nothing written).

    python bench/profile_train.py fit DATA [--workers 12]   # cProfile of the main process during Trainer.fit
    python bench/profile_train.py step DATA                 # torch.profiler of the training step

``fit``: bench_train.py's ``fit_loop`` (``Trainer.fit`` on the DataModule, pinned memory on
a GPU; ``--warmup`` 10 and ``--steps`` 60) under cProfile: what the training loop waits on. Prints the
loop's examples/s and the 14 functions with the most time of their own.

``step``: ``--warmup`` 3 bare steps (``training_step``, backward, Adam; bf16 autocast where the preset
trains in bf16), then ``--steps`` 5 under torch.profiler, on batches built beforehand and moved to the
device. Prints the 18 operators with the most CUDA time (on a GPU) and the 12 with the most CPU time.

Both run the model of ``--preset`` (a config in configs/, common.preset: its model sizes, batch size and
precision; default ``500m``) on ``--accelerator`` (default ``gpu``; ``cpu`` for a smoke run). This is
the merge of the former bench/profile_fit.py (``fit DATA WORKERS``) and bench/profile_step.py
(``step DATA``); the step profile behind docs/benchmarks.md's GPU training section came from the latter.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import fit_loop  # noqa: E402
from common import PRESETS, build_model, preset, take_batches  # noqa: E402

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402


def profile_fit(data: str, config: dict, accelerator: str, workers: int, warmup: int, steps: int) -> None:
    gpu = accelerator == "gpu"
    dm = YambdaDataModule(data, batch_size=config["batch_size"], num_workers=workers, pin_memory=gpu)
    model = build_model(dm, config["model"])
    profile = cProfile.Profile()
    profile.enable()
    speed = fit_loop(model, dm, accelerator, config["precision"], warmup, steps)
    profile.disable()
    print(f"fit loop {speed:,.0f} examples/s")
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


def profile_step(data: str, config: dict, accelerator: str, warmup: int, steps: int) -> None:
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    bf16 = config["precision"].startswith("bf16")
    dm = YambdaDataModule(data, batch_size=config["batch_size"])
    model = build_model(dm, config["model"]).to(device).train()
    opt = model.configure_optimizers()
    batches = [{k: v.to(device) for k, v in b.items()} for b in take_batches(dm, warmup + steps)]

    def step(i: int, batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_step(batch, i)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i, batch in enumerate(batches[:warmup]):
        step(i, batch)
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i, batch in enumerate(batches[warmup:]):
            step(i, batch)
        sync()
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("data", help="a prepared directory")
    shared.add_argument("--preset", choices=sorted(PRESETS), default="500m")
    shared.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    fit = commands.add_parser("fit", parents=[shared], help="cProfile of the main process during Trainer.fit")
    fit.add_argument("--workers", type=int, default=12, help="DataLoader workers")
    fit.add_argument("--warmup", type=int, default=10)
    fit.add_argument("--steps", type=int, default=60)
    step = commands.add_parser("step", parents=[shared], help="torch.profiler of the training step")
    step.add_argument("--warmup", type=int, default=3)
    step.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    config = preset(args.preset)
    if args.command == "fit":
        profile_fit(args.data, config, args.accelerator, args.workers, args.warmup, args.steps)
    else:
        profile_step(args.data, config, args.accelerator, args.warmup, args.steps)


if __name__ == "__main__":
    main()
