"""Training throughput: the full Lightning ``fit`` loop next to a bare PyTorch loop, same model.

    python bench/bench_train.py                                   # CPU, the demo's model and data
    python bench/bench_train.py --preset 500m --accelerator gpu   # GPU, the 500m config's model and batch

The bare loop runs ``training_step`` + backward + Adam on batches built beforehand (on the device);
the full loop is ``Trainer.fit`` with the real DataModule loader (no validation, checkpointing or
logging). Both skip ``--warmup`` steps, then time ``--steps`` steps; examples/s and their ratio are
printed and written to docs/benchmarks.md (the section named by --section). The two loops
(``bare_loop``, ``fit_loop``) are also run by bench_encoders.py, bench_fit_overhead.py,
bench_sparse_tables.py and profile_train.py.

``--preset`` names a config in configs/ (demo, 50m, 500m; common.preset): its model sizes, batch size
and precision. The data is ``--data``, or the embedded default's synthetic twin made once in
``--workdir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCHMARKS,
    DEMO_TWIN,
    PRESETS,
    add_twin_arguments,
    build_model,
    machine,
    preset,
    take_batches,
    twin_from,
    write_section,
)

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402
from lightning_tt.model.module import TwoTowerModule  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model: TwoTowerModule, batches: list[dict], device: torch.device, bf16: bool,
              warmup: int) -> tuple[float, int | None]:
    """(examples/s, host syncs in one step or None on a CPU). The syncs are counted on the last warm-up
    step under ``torch.cuda.set_sync_debug_mode("warn")``."""
    model.to(device).train()
    model.configure_model()
    optimizers = model.configure_optimizers()  # one Adam, or [SparseAdam, Adam] with sparse_embeddings
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    model.automatic_optimization = True  # training_step only returns the loss; the steps are below
    batches = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]

    def step(i: int, batch: dict) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_step(batch, i)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    start, syncs = None, None
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup - 1 and device.type == "cuda":
            syncs = count_host_syncs(lambda: step(i, batch))  # noqa: B023 (called at once)
        else:
            step(i, batch)
    sync(device)
    return (len(batches) - warmup) * len(batches[0]["target_item"]) / (time.perf_counter() - start), syncs


def count_host_syncs(run) -> int:
    """How many times ``run()`` makes the host wait for the GPU (PyTorch's sync debug mode)."""
    sync(torch.device("cuda"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


class Timer(L.Callback):
    """Times the training batches after the first ``warmup``, and whole validation and test loops.
    With ``out``, writes ``{"examples", "seconds"}`` (training) and ``{"validate_seconds"}`` or
    ``{"test_seconds"}`` there as JSON when a loop ends (bench_scale.py adds it to ``lightning-tt``
    commands with ``--trainer.callbacks+=bench_train.Timer``)."""

    def __init__(self, warmup: int = 3, out: str | None = None):
        self.warmup, self.out, self.start, self.examples = warmup, out, None, 0
        self.times: dict[str, float] = {}

    def _write(self, **values) -> None:
        self.times.update(values)
        if self.out:
            Path(self.out).write_text(json.dumps(self.times))

    def on_validation_start(self, trainer, module):
        self.loop_start = time.perf_counter()

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self._write(validate_seconds=time.perf_counter() - self.loop_start)

    def on_test_start(self, trainer, module):
        self.loop_start = time.perf_counter()

    def on_test_end(self, trainer, module):
        self._write(test_seconds=time.perf_counter() - self.loop_start)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.examples += len(batch["target_item"])

    def on_train_end(self, trainer, module):
        sync(module.device)
        self.seconds = time.perf_counter() - self.start
        self._write(examples=self.examples, seconds=self.seconds)


def fit_loop(model: TwoTowerModule, data, accelerator: str, precision: str, warmup: int, steps: int) -> float:
    """examples/s of ``Trainer.fit`` on ``data``: a DataModule, or a DataLoader of ready batches."""
    timer = Timer(warmup)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=warmup + steps,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    if isinstance(data, L.LightningDataModule):
        trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, train_dataloaders=data)
    return timer.examples / timer.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_twin_arguments(p, "runs/bench/train", DEMO_TWIN)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not page-lock batches (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the towers")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--sparse-embeddings", action="store_true", help="sparse table gradients + SparseAdam")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both loops; the best of each is kept")
    p.add_argument("--section", default=None, help="docs/benchmarks.md section (default bench_train_<accelerator>)")
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs outside a Trainer
    config = preset(args.preset)
    batch_size = args.batch_size or config["batch_size"]
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")

    data = twin_from(args)
    pin = device.type == "cuda" and not args.no_pin
    dm = YambdaDataModule(str(data), batch_size=batch_size, num_workers=args.workers, pin_memory=pin)
    batches = take_batches(YambdaDataModule(str(data), batch_size=batch_size), args.warmup + args.steps)

    bf16 = config["precision"].startswith("bf16")
    sparse = args.sparse_embeddings
    options = dict(compile=args.compile, compile_mode=args.compile_mode, sparse_embeddings=sparse)
    bare = full = 0.0
    for _ in range(args.rounds):  # a shared machine drifts: interleave, keep the best of each
        rate, syncs = bare_loop(build_model(dm, config["model"], **options), batches, device, bf16, args.warmup)
        bare = max(bare, rate)
        full = max(full, fit_loop(build_model(dm, config["model"], **options), dm, args.accelerator,
                                  config["precision"], args.warmup, args.steps))
    name = machine(gpu=device.type == "cuda")
    print(f"bare loop {bare:,.0f} examples/s, fit loop {full:,.0f} examples/s, ratio {full / bare:.2f}"
          + (f", {syncs} host syncs per step" if syncs is not None else ""))
    synced = (f"\nOne step of the bare loop (forward, backward, optimizer) made {syncs} host syncs "
              "(`torch.cuda.set_sync_debug_mode`).\n" if syncs is not None else "")
    text = f"""## Training throughput ({args.accelerator})

Measured {dt.date.today().isoformat()} on {name}, torch {torch.__version__};
`python bench/bench_train.py --preset {args.preset} --accelerator {args.accelerator} --workers {args.workers} --batch-size {batch_size}{f' --steps {args.steps} --rounds {args.rounds}' if args.rounds > 1 else ''}{' --compile' if args.compile else ''}{f' --compile-mode {args.compile_mode}' if args.compile_mode != 'default' else ''}{' --sparse-embeddings' if sparse else ''}`
on a prepared dataset of {dm.num_items:,} items, model preset `{args.preset}` (precision {config['precision']}). {args.steps} timed steps after {args.warmup} warm-up steps, both loops in one run{f', best of {args.rounds} interleaved rounds' if args.rounds > 1 else ''}.

| loop | examples/s |
|---|---|
| bare PyTorch loop (pre-built batches on the device) | {bare:,.0f} |
| `Trainer.fit` with the DataModule ({args.workers} workers{', pinned memory' if pin else ''}) | {full:,.0f} |
| ratio fit / bare | {full / bare:.2f} |
{synced}"""
    write_section(Path(args.out), text, marker=args.section or f"bench_train_{args.accelerator}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
