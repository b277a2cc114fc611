"""The corrected in-batch softmax loss, forward + backward: the current dense, sync-free accidental-hit
mask against the previous sparse one (unique + nonzero, four host reads per step), side by side.

    python bench/bench_loss.py                                   # CPU, batch 4096, fp32
    python bench/bench_loss.py --accelerator gpu --batch-size 16384 --bf16 --compile

Inputs are random unit vectors; targets are drawn with probability proportional to rank^-s over a
catalogue of --items (s = --zipf), so a batch holds repeats as real listening does. On a GPU the current loss is also run once under
``torch.cuda.set_sync_debug_mode("error")``, which fails on any host sync. Results go to
docs/benchmarks.md (section bench_loss_<accelerator>).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import machine, write_section  # noqa: E402

from lightning_tt.model.loss import corrected_softmax_loss  # noqa: E402

CPU_NOTE = """
On a CPU a host read waits for nothing, so this only shows that the dense mask costs no more than the
sparse one; on a GPU each of the previous loss's four host reads also stalls the launch queue.
"""


def previous_loss(query, candidates, target_items, candidate_items, log_q, weight, temperature):
    """The loss as it was before the dense mask (commit 0010095): the accidental hits found sparsely."""
    batch = query.shape[0]
    logits = (query @ candidates.T).float().div_(temperature).sub_(log_q[None, :].float())
    _, inverse, counts = torch.unique(candidate_items, return_inverse=True, return_counts=True)
    column_count = counts[inverse]
    repeated = torch.nonzero(column_count[:batch] > 1).squeeze(1)
    if repeated.numel() > 0:
        columns = torch.nonzero(column_count > 1).squeeze(1)
        i, j = torch.nonzero(target_items[repeated][:, None] == candidate_items[columns][None, :], as_tuple=True)
        rows, cols = repeated[i], columns[j]
        keep = rows != cols
        logits[rows[keep], cols[keep]] = float("-inf")
    nll = F.cross_entropy(logits, torch.arange(batch, device=query.device), reduction="none")
    return (weight * nll).sum() / batch


def inputs(batch: int, dim: int, items: int, zipf: float, device: torch.device, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    popularity = np.arange(1, items + 1, dtype=np.float64) ** -zipf
    targets = np.random.default_rng(seed).choice(items, size=batch, p=popularity / popularity.sum())
    targets = torch.from_numpy(targets).to(device)
    query = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    candidates = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    log_q = (-torch.rand(batch, generator=generator) * 12).to(device)
    return query, candidates, targets, targets, log_q, torch.ones(batch, device=device)


def time_loss(loss_fn, args: tuple, bf16: bool, repeats: int) -> float:
    """Median seconds of one forward + backward."""
    device = args[0].device
    query, candidates = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss_fn(query, candidates, *args[2:], 0.05)
        value.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--items", type=int, default=3_000_000)
    p.add_argument("--zipf", type=float, default=0.8, help="popularity exponent s of the targets")
    p.add_argument("--bf16", action="store_true", help="under bf16 autocast, as the 500m config trains")
    p.add_argument("--compile", action="store_true", help="also the current loss through torch.compile")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    data = inputs(args.batch_size, args.dim, args.items, args.zipf, device)
    repeats = int((data[2][:, None] == data[2][None, :]).sum()) - args.batch_size
    losses = {"previous: sparse mask (unique + nonzero)": previous_loss, "current: dense mask": corrected_softmax_loss}
    if args.compile:
        losses["current, torch.compile"] = torch.compile(corrected_softmax_loss)
    values = {name: float(fn(*data, 0.05)) for name, fn in losses.items()}
    spread = max(values.values()) - min(values.values())
    assert spread < 1e-3 * abs(max(values.values())), f"the losses disagree: {values}"
    if device.type == "cuda":  # the current loss must not sync (forward and backward)
        query = data[0].clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            value = corrected_softmax_loss(query, *data[1:], 0.05)
        value.backward()
        torch.cuda.set_sync_debug_mode("default")
        print("current loss: no host sync in forward and backward")
    for name, fn in losses.items():  # warm-up (and compilation)
        time_loss(fn, data, args.bf16, 3)
    seconds = {name: [] for name in losses}
    for _ in range(3):  # interleaved rounds, so that both see the same machine state
        for name, fn in losses.items():
            seconds[name].append(time_loss(fn, data, args.bf16, args.repeats))
    best = {name: min(s) for name, s in seconds.items()}
    base = best[next(iter(losses))]
    rows = "\n".join(f"| {name} | {best[name] * 1e3:.2f} | {base / best[name]:.2f} |" for name in losses)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else machine()
    text = f"""## Loss: dense accidental-hit mask against the previous sparse one ({args.accelerator})

Measured {dt.date.today()} on {device_name}, torch {torch.__version__};
`python bench/bench_loss.py --accelerator {args.accelerator} --batch-size {args.batch_size} --dim {args.dim} --items {args.items} --zipf {args.zipf}{' --bf16' if args.bf16 else ''}{' --compile' if args.compile else ''}`.
Forward + backward of the loss alone on [{args.batch_size}, {args.dim}] queries and candidates, targets
drawn with probability ~ rank^-{args.zipf} ({repeats:,} accidental-hit pairs in the batch); best of 3
interleaved rounds of the median of {args.repeats} calls.{' The current loss ran once under `set_sync_debug_mode("error")`: no host sync.' if device.type == 'cuda' else ''}

| loss | ms per step | speed-up over previous |
|---|---|---|
{rows}
{'' if device.type == 'cuda' else CPU_NOTE}"""
    print(text)
    write_section(Path(args.out), text, f"bench_loss_{args.accelerator}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
