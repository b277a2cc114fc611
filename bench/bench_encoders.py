"""Training cost of each history encoder and query input, next to the masked mean, in one run.

    python bench/bench_encoders.py [--data DIR] [--preset demo] [--accelerator cpu] [--rounds 3]

Every variant runs the bare training loop of bench_train.py (training_step + backward + Adam on
batches built beforehand, history 50, the preset's model sizes and batch size: a config in configs/,
common.preset) on the same batches; the rounds are interleaved and the best of each variant is kept, so
the ratios to the mean are what a shared machine's drift leaves alone. The data is ``--data`` or the
embedded default's synthetic twin (made once in ``--workdir``). Written to docs/benchmarks.md, section
``bench_encoders``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import bare_loop  # noqa: E402
from common import (  # noqa: E402
    BENCHMARKS,
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

#: name -> model options (``feedback`` also sets the DataModule's K).
VARIANTS = {
    "mean (bags)": {},
    "mean, play-ratio weights": dict(use_play_ratio=True),
    "recency + play ratio": dict(history_encoder="recency", use_play_ratio=True),
    "attention, 1 block + play ratio": dict(history_encoder="attention", use_play_ratio=True),
    "attention, 2 blocks + play ratio": dict(history_encoder="attention", use_play_ratio=True, attention_blocks=2),
    "mean + 20 likes and 20 dislikes": dict(feedback=20),
    "attention, 1 block + play ratio, sequence-trained (8 slots)": dict(
        history_encoder="attention", use_play_ratio=True, query_tower="sequence", sequence_positions=8),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_twin_arguments(p, "runs/bench/train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    config = preset(args.preset)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    data = twin_from(args)
    batches = {}
    for feedback in sorted({v.get("feedback", 0) for v in VARIANTS.values()}):
        dm = YambdaDataModule(str(data), batch_size=config["batch_size"], history=50, feedback=feedback)
        batches[feedback] = (dm, take_batches(dm, args.warmup + args.steps))
    best = dict.fromkeys(VARIANTS, 0.0)
    for _ in range(args.rounds):
        for name, options in VARIANTS.items():
            dm, built = batches[options.get("feedback", 0)]
            model = build_model(dm, config["model"], **options, history=50)
            rate, _ = bare_loop(model, built, device, config["precision"].startswith("bf16"), args.warmup)
            best[name] = max(best[name], rate)
            print(f"{name}: {rate:,.0f} examples/s", flush=True)
    base = best["mean (bags)"]
    rows = "\n".join(f"| {name} | {rate:,.0f} | {rate / base:.2f} |" for name, rate in best.items())
    name = machine(gpu=device.type == "cuda")
    text = f"""## History encoders: training cost ({args.accelerator})

Measured {dt.date.today().isoformat()} on {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s);
`python bench/bench_encoders.py --preset {args.preset} --accelerator {args.accelerator} --rounds {args.rounds}`:
the bare training step (forward, backward, Adam) of the `{args.preset}` preset (batch {config['batch_size']},
history 50, 256 mixed negatives off) on the demo's twin, {args.steps} timed steps after {args.warmup} warm-up
steps, best of {args.rounds} interleaved rounds. The machine is shared: read the ratios, measured side by
side, not the absolute rates. Examples/s counts training examples; the sequence-trained row trains up to 8
queries per example (model.query_tower sequence: a query at each of the last 8 slots of the window, one
Transformer pass), so its loss has up to 8 times the rows of the others.

| query tower | examples/s | × mean |
|---|---|---|
{rows}
"""
    write_section(Path(args.out), text, marker="bench_encoders")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
