"""Retrieval's popularity knobs chosen again on the validation windows: the shipped config's trained
checkpoints of ``bench/ablations.py`` re-scored, without training, for every popularity half-life h,
weight beta (queries with a seed track: next-track) and seedless weight (queries without one: the
paper protocol's), pooled over datasets, windows and seeds.

    python bench/ablations.py --dev DIR --only "configs/demo.yaml as shipped" ...   # the checkpoints
    python bench/retrieval_knobs.py [--workdir runs/ablations] [--out docs/ablations.md]

Score of item i for a query u (docs/training.md): ``u . v_i / tau + beta_q * log q_h(i)``, where q_h is
the training positives' counts decayed with half-life h (validation windows) and beta_q is
``popularity_weight`` for a query with a seed track, ``seedless_popularity_weight`` for one without. The
two weights act on disjoint queries, so for each h the grid pairs them up (one validation run scores one
beta on the next-track cases and one seedless weight on the paper lists). These knobs change no weight
of the towers: a checkpoint is only re-scored.

The choice: for each dataset, a knob's value is its mean over (window, seed) divided by the shipped
knobs' mean (so every dataset weighs the same, whatever its scale); the objective is the mean over
datasets of the three #22 target metrics' ratios, next-track Recall@10 and Recall@100 (which depend on h
and beta) and paper Recall@100 (h and the seedless weight). Validation windows only: the test windows are
read by ``bench/ablations.py`` once the chosen knobs are a variant there. Rows go to
``WORKDIR/knobs.jsonl`` as each run ends (an interrupted run resumes); the table goes to a section of
``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import EPOCHS, SHIPPED, prepared_dir, run_tag  # noqa: E402
from common import machine, write_section  # noqa: E402

from lightning_tt.lightning_cli import CONFIGS, lightning_cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: The half-lives (validation windows; None: no decay) and the paired (beta, seedless weight) grid.
HALF_LIVES = [0.5, 1.0, 2.0, 4.0, 8.0, None]
WEIGHTS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
SEEDLESS = [0.5, 1.0, 2.0, 3.0, 4.0, 6.0]
#: What configs/demo.yaml ships: (h, beta, seedless weight).
SHIPPED_KNOBS = (4.0, 0.5, 2.0)
NEXT = ["val/next/exact_recall@10", "val/next/exact_recall@100"]
PAPER = "val/paper/exact_recall@100"


def checkpoints(workdir: Path) -> list[tuple[str, int, int, Path, Path]]:
    """(dataset, window, seed, prepared directory, best checkpoint) of every shipped-config run in
    ``workdir`` (bench/ablations.py's layout)."""
    found = []
    for line in (workdir / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["variant"] != SHIPPED:
            continue
        best = sorted((workdir / "runs" / run_tag(r["dataset"], r["variant"], r["window"], r["seed"]))
                      .rglob("best-epoch=*.ckpt"))
        if best:
            found.append((r["dataset"], r["window"], r["seed"], prepared_dir(workdir, r["dataset"], r["window"]),
                          best[-1]))
    return found


def validate(data: Path, ckpt: Path, half_life: float | None, weight: float, seedless: float) -> dict[str, float]:
    """Validation's exact metrics of ``ckpt`` on ``data`` scored with the given knobs."""
    with tempfile.TemporaryDirectory() as tmp:
        cli = lightning_cli(["--config", str(CONFIGS / "demo.yaml"), "--data.data_dir", str(data),
                             "--trainer.logger", "false", "--trainer.default_root_dir", tmp,
                             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                             "--retrieval.index.kind", "flat",
                             "--model.popularity_half_life", "null" if half_life is None else str(half_life),
                             "--model.popularity_weight", str(weight),
                             "--model.seedless_popularity_weight", str(seedless)], run=False)
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
        return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "/exact_" in k}


def choose(rows: list[dict]) -> tuple[tuple, list[str]]:
    """(the chosen (h, beta, seedless weight), markdown lines of the validation table). A tie keeps the
    shipped knobs."""
    datasets = sorted({r["dataset"] for r in rows})

    def mean(dataset: str, metric: str, **knobs) -> float:
        return statistics.mean(r[metric] for r in rows if r["dataset"] == dataset
                               and all(r[k] == v for k, v in knobs.items()))

    h0, b0, s0 = SHIPPED_KNOBS

    def next_ratio(h, b) -> float:  # mean over datasets and the two next-track metrics
        return statistics.mean(mean(d, m, half_life=h, weight=b) / mean(d, m, half_life=h0, weight=b0)
                               for d in datasets for m in NEXT)

    def paper_ratio(h, s) -> float:
        return statistics.mean(mean(d, PAPER, half_life=h, seedless=s) / mean(d, PAPER, half_life=h0, seedless=s0)
                               for d in datasets)

    best = max(((h, b, s) for h in HALF_LIVES for b in WEIGHTS for s in SEEDLESS),
               key=lambda k: ((2 * next_ratio(k[0], k[1]) + paper_ratio(k[0], k[2])) / 3, k == SHIPPED_KNOBS))
    label = lambda h: "none" if h is None else f"{h:g}"  # noqa: E731
    lines = ["Next-track: the mean over datasets of validation R@10 and R@100, each ÷ the shipped knobs' "
             f"(h {label(h0)}, beta {b0:g}); rows: half-life h, columns: beta.", "",
             "| h | " + " | ".join(f"beta {b:g}" for b in WEIGHTS) + " |", "|---|" + "---|" * len(WEIGHTS)]
    lines += [f"| {label(h)} | " + " | ".join(f"{next_ratio(h, b):.3f}" for b in WEIGHTS) + " |" for h in HALF_LIVES]
    lines += ["", f"Paper protocol: validation R@100 ÷ the shipped knobs' (h {label(h0)}, seedless weight {s0:g}); "
              "columns: the seedless weight.", "",
              "| h | " + " | ".join(f"seedless {s:g}" for s in SEEDLESS) + " |", "|---|" + "---|" * len(SEEDLESS)]
    lines += [f"| {label(h)} | " + " | ".join(f"{paper_ratio(h, s):.3f}" for s in SEEDLESS) + " |"
              for h in HALF_LIVES]
    lines += ["", "Per dataset at the shipped and the chosen knobs (validation, mean over windows and seeds):", "",
              "| dataset | knobs (h, beta, seedless) | next R@10 | next R@100 | paper R@100 | runs |",
              "|---|---|---|---|---|---|"]
    for d in datasets:
        for name, (h, b, s) in (("shipped", SHIPPED_KNOBS), ("chosen", best)):
            runs = len({(r["window"], r["seed"]) for r in rows if r["dataset"] == d})
            lines.append(f"| {d} | {name}: {label(h)}, {b:g}, {s:g} | {mean(d, NEXT[0], half_life=h, weight=b):.4f} | "
                         f"{mean(d, NEXT[1], half_life=h, weight=b):.4f} | "
                         f"{mean(d, PAPER, half_life=h, seedless=s):.4f} | {runs} |")
    objective = (2 * next_ratio(best[0], best[1]) + paper_ratio(best[0], best[2])) / 3
    lines += ["", f"**Chosen: h {label(best[0])}, beta {best[1]:g}, seedless weight {best[2]:g}** "
              f"(objective {objective:.3f}; the shipped knobs' is 1.000)."]
    return best, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ablations.md")
    parser.add_argument("--report-only", action="store_true", help="score nothing: the table from knobs.jsonl")
    args = parser.parse_args()
    if not (args.workdir / "results.jsonl").exists():
        parser.exit(2, f"{parser.prog}: error: no bench/ablations.py runs in {args.workdir} (no results.jsonl); "
                       f"run it with --only {SHIPPED!r} first\n")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    rows_file = args.workdir / "knobs.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r["dataset"], r["window"], r["seed"], r["half_life"], r["weight"], r["seedless"]) for r in rows}
    runs = checkpoints(args.workdir)
    if not runs:
        parser.exit(2, f"{parser.prog}: error: no checkpoint of {SHIPPED!r} under {args.workdir / 'runs'}\n")
    for (dataset, window, seed, data, ckpt), h in itertools.product([] if args.report_only else runs, HALF_LIVES):
        for weight, seedless in zip(WEIGHTS, SEEDLESS):
            if (dataset, window, seed, h, weight, seedless) in done:
                continue
            row = {"dataset": dataset, "window": window, "seed": seed, "half_life": h, "weight": weight,
                   "seedless": seedless, **validate(data, ckpt, h, weight, seedless)}
            rows.append(row)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[knobs] {dataset} w{window} s{seed} h {h} beta {weight} seedless {seedless}: "
                  f"val next R@100 {row[NEXT[1]]:.4f}, paper R@100 {row[PAPER]:.4f}", flush=True)
    # choose reads the next-track values by (h, beta) and the paper values by (h, seedless weight).
    best, lines = choose(rows)
    budget = ", ".join(f"{n}: {e} epochs" for n, e in EPOCHS.items())
    text = "\n".join([f"### Retrieval knobs on validation (`python bench/retrieval_knobs.py`, {dt.date.today()}, "
                      f"{machine()})", "", f"The shipped config's checkpoints ({budget}), re-scored.", "", *lines])
    write_section(args.out, text, marker="retrieval-knobs")
    print(text)
    print(f"wrote {args.out}; chosen (h, beta, seedless) = {best}")


if __name__ == "__main__":
    main()
