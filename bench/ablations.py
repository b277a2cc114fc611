"""The ablation report: the two-tower model trained with one switch flipped at a time, for the same
budget, over several seeds, on the embedded default (the synthetic twin) and the development set
(real MovieLens behaviour in the Yambda layout).

    python bench/ablations.py [--dev DIR] [--seeds 0 1 2] [--workdir DIR (default runs/ablations)]

Each run is ``lightning-tt fit --config configs/demo.yaml`` with ``BASE`` (the first design, set
explicitly so that the rows keep their meaning when the shipped config changes), the variant's flags,
the dataset's epoch budget and ``--seed_everything S``; the checkpoint with the best ``val/next/exact_recall@100``
is then validated and tested. Exact (brute-force) rankings, so the index plays no part. Results are
appended to ``WORKDIR/results.jsonl`` as each run ends: an interrupted report resumes where it stopped.
The report, ``docs/ablations.md`` and ``docs/figures/ablations.png``, gives mean ± std over the seeds.
The development set's directory is ``--dev`` or, by default, the environment variable
``LIGHTNING_TT_DEV_SET`` (it is never copied into the project: its licence forbids redistribution); with
neither the script stops with an error, and a directory that holds no development set is skipped with
a note. With ``--baselines NAME=FILE`` (a metrics.json of
``lightning-tt baselines --tune``) the best tuned baseline of each column is shown under the variants.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import is_current, machine, prepared_twin  # noqa: E402

from lightning_tt.data.prepare import SplitConfig, prepare  # noqa: E402
from lightning_tt.lightning_cli import CONFIGS, lightning_cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEV_SET_VARIABLE = "LIGHTNING_TT_DEV_SET"
#: The first design every row starts from, whatever configs/demo.yaml ships today: temperature 0.05, no
#: mixed negatives, the masked-mean history, no feedback, next-track targets, the seed always shown,
#: ranking by u . v over the whole catalogue (no popularity term, the user's past kept).
BASE = ["--model.temperature", "0.05", "--model.mixed_negatives", "0", "--model.history_encoder", "mean",
        "--model.use_play_ratio", "false", "--data.feedback", "0", "--data.target_horizon", "0",
        "--model.seed_dropout", "0", "--model.paper_seed", "true", "--model.embedding_dim", "64",
        "--model.dropout", "0", "--model.weight_decay", "0", "--data.exclude_seen", "false",
        "--model.popularity_weight", "0"]
#: The second round's starting point: the two cheapest gains over the first design together.
NT = ["--model.mixed_negatives", "256", "--model.temperature", "0.1"]
ATTENTION = ["--model.history_encoder", "attention", "--model.use_play_ratio", "true"]
#: Part 2's cheap winners: 20 recent likes and dislikes, the seed hidden from half the training examples
#: and the paper protocol asked without it.
PART2 = ["--data.feedback", "20", "--model.seed_dropout", "0.5", "--model.paper_seed", "false"]
#: exclude_seen's default: decided from the data (data.seen.repeat_share).
AUTO_SEEN = ["--data.exclude_seen", "null"]
#: name -> the fit flags on top of BASE (None: configs/demo.yaml exactly as shipped).
VARIANTS = {
    "default": [],
    "logQ correction off": ["--model.logq_correction", "false"],
    "no user": ["--model.use_user", "false"],
    "no history": ["--model.use_history", "false"],
    "no seed": ["--model.use_seed", "false"],
    "no example age": ["--model.use_age", "false"],
    "no audio": ["--model.use_audio", "false"],
    "no artist": ["--model.use_artist", "false"],
    "no album": ["--model.use_album", "false"],
    "no length": ["--model.use_length", "false"],
    "mixed negatives 256": ["--model.mixed_negatives", "256"],
    "temperature 0.1": ["--model.temperature", "0.1"],
    "temperature 0.2": ["--model.temperature", "0.2"],
    # Part 2: each on top of NT.
    "NT: negatives 256 + temperature 0.1": NT,
    "NT + play-ratio weights (mean)": [*NT, "--model.use_play_ratio", "true"],
    "NT + recency pooling + play ratio": [*NT, "--model.history_encoder", "recency", "--model.use_play_ratio", "true"],
    "NT + attention": [*NT, "--model.history_encoder", "attention"],
    "NT + attention + play ratio": [*NT, *ATTENTION],
    "NT + 20 likes and dislikes": [*NT, "--data.feedback", "20"],
    "NT + 1-day horizon targets": [*NT, "--data.target_horizon", "86400"],
    "NT + seed dropout 0.5, seedless paper query": [*NT, "--model.seed_dropout", "0.5", "--model.paper_seed", "false"],
    "NT + dropout 0.3, embedding dim 128": [*NT, "--model.dropout", "0.3", "--model.embedding_dim", "128"],
    "NT + likes + seed dropout (mean history)": [*NT, *PART2],
    "NT + likes + seed dropout + attention + play ratio": [*NT, *PART2, *ATTENTION],
    # Retrieval: the user's past left out where the data has no repeats (auto: the development set, not
    # the twin), and beta log q put back into the ranking.
    "NT + likes + seed dropout, past left out (auto)": [*NT, *PART2, *AUTO_SEEN],
    "NT + likes + seed dropout, popularity weight 1 (past kept)": [*NT, *PART2, "--model.popularity_weight", "1"],
    "NT + likes + seed dropout, past out (auto), popularity weight 0.5": [*NT, *PART2, *AUTO_SEEN,
                                                                          "--model.popularity_weight", "0.5"],
    "NT + likes + seed dropout, past out (auto), popularity weight 1": [*NT, *PART2, *AUTO_SEEN,
                                                                        "--model.popularity_weight", "1"],
    "NT + likes + seed dropout, past out (auto), popularity weight 2": [*NT, *PART2, *AUTO_SEEN,
                                                                        "--model.popularity_weight", "2"],
    "shipped + attention + play ratio": [*NT, *PART2, *AUTO_SEEN, "--model.popularity_weight", "0.5", *ATTENTION],
    "configs/demo.yaml as shipped": None,
}
#: The development set's split (its README) and each dataset's epoch budget.
DEV_SPLIT = SplitConfig(test_days=730, val_days=365)
EPOCHS = {"embedded default": 2, "movielens-small": 5}
COLUMNS = [f"{split}/{protocol}/exact_recall@{k}" for split in ("val", "test") for protocol in ("next", "paper")
           for k in (10, 100)] + ["test/paper/exact_ndcg@10"]


def datasets(workdir: Path, dev: Path) -> dict[str, Path]:
    """{name: prepared directory}: the embedded default, and the development set when it is there."""
    found = {"embedded default": prepared_twin(workdir / "twin-prepared", workdir / "twin-raw")}
    if any(dev.glob("flat/*/multi_event.parquet")):
        prepared = workdir / "dev-prepared"
        if not is_current(prepared):
            prepare(dev, prepared, config=DEV_SPLIT, progress=False, overwrite=True)
        found["movielens-small"] = prepared
    else:
        print(f"note: no development set at {dev}; only the embedded default is measured")
    return found


def run(data: Path, flags: list[str], seed: int, epochs: int, run_dir: Path) -> dict:
    """Fit one variant, then validate and test its best checkpoint: {metric: value, ...}."""
    start = time.perf_counter()
    flags = BASE + flags if flags is not None else []
    cli = lightning_cli(["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.data_dir", str(data),
                         "--seed_everything", str(seed), "--trainer.max_epochs", str(epochs),
                         "--trainer.logger", "false", "--trainer.default_root_dir", str(run_dir),
                         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                         "--retrieval.index.kind", "flat", *flags])
    trainer, best = cli.trainer, cli.trainer.checkpoint_callback.best_model_path
    fit_seconds = time.perf_counter() - start
    values = {}
    for stage in (trainer.validate, trainer.test):
        stage(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
        values.update({k: float(v) for k, v in trainer.callback_metrics.items() if "/exact_" in k})
    epoch = int(Path(best).stem.split("epoch=")[1]) if "epoch=" in best else -1
    return {**values, "best_epoch": epoch, "fit_seconds": fit_seconds}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def best_baselines(path: Path) -> dict[str, tuple[str, float]]:
    """{column: (baseline, value)}: the best baseline of a ``baselines --tune`` metrics.json per column,
    read from its test values (the exact ranking is the baselines' only ranking)."""
    found = json.loads(path.read_text())
    best = {}
    for column in COLUMNS:
        name = column.replace("exact_", "")
        scored = [(values[name], baseline) for baseline, values in found.items() if name in values]
        if scored:
            value, baseline = max(scored)
            best[column] = (baseline, value)
    return best


#: Everything after this line of docs/ablations.md is written by hand and kept when the report is rewritten.
FINDINGS = "<!-- findings: written by hand, kept by bench/ablations.py -->"
COMPARED = ["test/next/recall@10", "test/next/recall@100", "test/paper/recall@100", "test/paper/ndcg@10"]


def comparison(model_runs: list[dict], baselines_file: Path, label: str) -> list[str]:
    """A markdown table: the model's ``label`` row (mean ± std) next to every tuned baseline of a
    ``baselines --tune`` metrics.json, on the test window, with the values the tuning chose."""
    found = json.loads(baselines_file.read_text())
    lines = ["| test window | next R@10 | next R@100 | paper R@100 | paper NDCG@10 | chosen on validation |",
             "|---|---|---|---|---|---|"]
    model = [mean_std([r[c.replace("/recall", "/exact_recall").replace("/ndcg", "/exact_ndcg")] for r in model_runs])
             for c in COMPARED]
    lines.append(f"| TwoTower, {label} (mean ± std, {len(model_runs)} seeds) | " + " | ".join(model) + " | |")
    for name, values in found.items():
        params = ", ".join(f"{k}={v}" for k, v in values.get("params", {}).items())
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in COMPARED) + f" | {params} |")
    return lines


def report(results: list[dict], baselines: dict[str, Path], seeds: list[int], out: Path, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in EPOCHS if any(r["dataset"] == name for r in results)]
    lines = [
        "# Ablations", "",
        f"Written by `python bench/ablations.py` on {dt.date.today()} ({machine()}).", "",
        "Each row starts from `configs/demo.yaml` with the first design set explicitly (`BASE` in the script: "
        "temperature 0.05, no mixed negatives, logQ correction on, every feature group on, the masked-mean "
        "history, no likes or dislikes, next-track targets, the seed always shown, lists ranked by u . v "
        "over the whole catalogue) and flips one switch. "
        "The rows marked NT start from mixed negatives 256 and temperature 0.1 instead (the starting point "
        "of the second round of changes); \"past out (auto)\" leaves the user's training positives out of the lists where the data "
        "has no repeats (the development set, not the twin), and \"popularity weight\" adds beta log q to "
        "the ranking (`docs/training.md`); the last row is `configs/demo.yaml` exactly as shipped. Every run trains with the same budget: "
        + ", ".join(f"{n}: {e} epochs" for n, e in EPOCHS.items()) + ". The checkpoint with the best "
        "`val/next/exact_recall@100` is validated and tested; values are exact (brute-force) rankings, as "
        f"mean ± std over seeds {', '.join(map(str, seeds))}. `Δ` is the change of test next-track Recall@100 "
        "against the default row; `best epoch` counts from 0; `fit s` is the mean wall time of a fit on this "
        "shared machine (the first runs overlapped with other jobs). The development set is MovieLens-small "
        "in the Yambda layout (`--split.test_days 730 --split.val_days 365`); a difference under about 0.01 in Recall@100 "
        "is noise there.", "",
    ]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for axis, name in zip(axes[0], names):
        rows = {v: [r for r in results if r["dataset"] == name and r["variant"] == v] for v in VARIANTS}
        rows = {v: r for v, r in rows.items() if r}
        default = statistics.mean(r["test/next/exact_recall@100"] for r in rows["default"])
        head = ["val next R@10", "val next R@100", "val paper R@10", "val paper R@100", "test next R@10",
                "test next R@100", "test paper R@10", "test paper R@100", "test paper NDCG@10"]
        lines += [f"## {name}", "", "| variant | " + " | ".join(head) + " | Δ test next R@100 | best epoch | fit s |",
                  "|---|" + "---|" * (len(head) + 3)]
        for variant, found in rows.items():
            cells = [mean_std([r[c] for r in found]) for c in COLUMNS]
            delta = statistics.mean(r["test/next/exact_recall@100"] for r in found) / default - 1
            epochs = ",".join(str(r["best_epoch"]) for r in found)
            seconds = statistics.mean(r["fit_seconds"] for r in found)
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {delta:+.1%} | {epochs} | {seconds:.0f} |")
        if name in baselines:
            best = best_baselines(baselines[name])
            cells = [f"{best[c][1]:.4f} ({best[c][0]})" if c in best else "" for c in COLUMNS]
            lines.append("| best tuned baseline | " + " | ".join(cells) + " | | | |")
            shipped = "configs/demo.yaml as shipped"
            lines += ["", *comparison(rows.get(shipped, rows["default"]), baselines[name],
                                      shipped if shipped in rows else "the first design")]
        lines.append("")
        means = [statistics.mean(r["test/next/exact_recall@100"] for r in found) for found in rows.values()]
        stds = [statistics.stdev(r["test/next/exact_recall@100"] for r in found) if len(found) > 1 else 0
                for found in rows.values()]
        axis.barh(list(rows)[::-1], means[::-1], xerr=stds[::-1], color="tab:blue", alpha=0.8)
        axis.axvline(default, color="black", linewidth=0.8)
        axis.set_title(f"{name}: test next-track Recall@100")
        axis.set_xlabel("mean ± std over seeds")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    lines += [f"![test next-track Recall@100 per variant]({figure.relative_to(out.parent).as_posix()})", ""]
    # What a person wrote under the findings marker of the previous report is kept.
    previous = out.read_text() if out.exists() else ""
    lines += [FINDINGS, previous.split(FINDINGS, 1)[1].lstrip("\n")] if FINDINGS in previous else [FINDINGS, ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", type=Path, default=os.environ.get(DEV_SET_VARIABLE) or None,
                        help=f"the development set's directory in the Yambda layout (default: ${DEV_SET_VARIABLE}; "
                             f"skipped with a note when it holds none)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=None, choices=list(VARIANTS), help="variants to run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--baselines", nargs="*", default=[], metavar="DATASET=FILE",
                        help="metrics.json of `baselines --tune` per dataset, e.g. 'movielens-small=FILE'")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/ablations.md")
    args = parser.parse_args()
    if args.dev is None:
        parser.exit(2, f"{parser.prog}: error: no development set: pass --dev DIR or set {DEV_SET_VARIABLE}=DIR\n")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results_file = args.workdir / "results.jsonl"
    results = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    done = {(r["dataset"], r["variant"], r["seed"]) for r in results}
    for dataset, data in datasets(args.workdir, args.dev).items():
        for variant, flags in VARIANTS.items():
            if args.only and variant not in args.only:
                continue
            for seed in args.seeds:
                if (dataset, variant, seed) in done:
                    continue
                run_dir = args.workdir / "runs" / f"{dataset}-{variant}-{seed}".replace(" ", "_")
                found = {"dataset": dataset, "variant": variant, "seed": seed,
                         **run(data, flags, seed, EPOCHS[dataset], run_dir)}
                print(f"[ablations] {dataset} | {variant} | seed {seed}: test next R@100 "
                      f"{found['test/next/exact_recall@100']:.4f} ({found['fit_seconds']:.0f} s)", flush=True)
                results.append(found)
                with results_file.open("a") as f:
                    f.write(json.dumps(found) + "\n")
    baselines = dict(item.split("=", 1) for item in args.baselines)
    report([r for r in results if r["seed"] in args.seeds], {k: Path(v) for k, v in baselines.items()}, args.seeds,
           args.out, args.out.parent / "figures" / "ablations.png")


if __name__ == "__main__":
    main()
