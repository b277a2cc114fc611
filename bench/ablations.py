"""The ablation report: the two-tower model trained with one switch flipped at a time, for the same
budget, over several seeds and rolling-origin test windows, next to every baseline tuned on each
window's validation window, on the embedded default (the synthetic twin) and the development sets
(real behaviour in the Yambda layout).

    python bench/ablations.py [--dev DIR ...] [--windows 3] [--seeds 0 1] [--only VARIANT ...]
                              [--workdir DIR (default runs/ablations)]

Every dataset is prepared once per window K = 0 .. windows - 1 (``--split.window K``: the data treated
as ending K test windows earlier, so the test windows do not overlap and each has its own validation
window and training cut). Each run is ``lightning-tt fit --config configs/demo.yaml`` with ``BASE``
(the first design, set explicitly so that the rows keep their meaning when the shipped config
changes; ``None``: the shipped config as it is), the variant's flags, the dataset's epoch budget and
``--seed_everything S``; the checkpoint with the best ``val/next/exact_recall@100`` is then validated and
tested. Exact (brute-force) rankings, so the index plays no part. The baselines are ``lightning-tt
baselines --tune`` per window. Results go to ``WORKDIR/results.jsonl`` and every test case's values
to ``WORKDIR/cases/`` as each run ends: an interrupted report resumes where it stopped.

The report, ``docs/ablations.md`` and ``docs/figures/ablations.png``, pools every window and seed: each
value has a user-clustered bootstrap 95% interval (lightning_tt.eval.intervals: a case's value is the
mean over seeds, a user is one cluster over all windows), each variant's difference to the reference
row is paired on the same cases and called noise when its interval holds 0, and the shipped config is
compared with the best tuned baseline of each column by the ratio's interval.

The development sets are ``--dev`` (directories in the Yambda layout, or directories of them) or, by
default, the environment variable ``LIGHTNING_TT_DEV_SET``; they are never copied into the project
(their licences forbid redistribution). With neither the script stops with an error; a directory that
holds no development set is skipped with a note.
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
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import is_current, machine, prepared_twin, write_section  # noqa: E402

from lightning_tt.baselines import tune  # noqa: E402
from lightning_tt.data.prepare import SplitConfig, prepare  # noqa: E402
from lightning_tt.data.prepared import PreparedData  # noqa: E402
from lightning_tt.eval.intervals import compare  # noqa: E402
from lightning_tt.eval.metrics import case_table  # noqa: E402
from lightning_tt.lightning_cli import CONFIGS, lightning_cli  # noqa: E402
from lightning_tt.outputs import Output  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEV_SET_VARIABLE = "LIGHTNING_TT_DEV_SET"
#: The first design every row starts from, whatever configs/demo.yaml ships today: temperature 0.05, no
#: mixed negatives, the masked-mean history, no feedback, next-track targets, the seed always shown,
#: ranking by u . v over the whole catalogue (no popularity term, the user's past kept; the estimator's q
#: for the rows that add a popularity weight).
BASE = ["--model.temperature", "0.05", "--model.mixed_negatives", "0", "--model.history_encoder", "mean",
        "--model.use_play_ratio", "false", "--data.feedback", "0", "--data.target_horizon", "0",
        "--model.seed_dropout", "0", "--model.paper_seed", "true", "--model.embedding_dim", "64",
        "--model.dropout", "0", "--model.weight_decay", "0", "--data.exclude_seen", "false",
        "--model.popularity_weight", "0", "--model.seedless_popularity_weight", "null",
        "--model.popularity_prior", "estimator", "--model.popularity_half_life", "null"]
#: The second round's starting point: the two cheapest gains over the first design together.
NT = ["--model.mixed_negatives", "256", "--model.temperature", "0.1"]
ATTENTION = ["--model.history_encoder", "attention", "--model.use_play_ratio", "true"]
#: Part 2's cheap winners: 20 recent likes and dislikes, the seed hidden from half the training examples
#: and the paper protocol asked without it.
PART2 = ["--data.feedback", "20", "--model.seed_dropout", "0.5", "--model.paper_seed", "false"]
#: exclude_seen's default: decided from the data (data.seen.repeat_share).
AUTO_SEEN = ["--data.exclude_seen", "null"]


class OnShipped(list):
    """Fit flags applied on top of configs/demo.yaml as shipped (not on top of BASE)."""


#: name -> the fit flags on top of BASE (None: configs/demo.yaml exactly as shipped; OnShipped: on top of it).
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
    # Part 3: one change at a time on top of the shipped config.
    "shipped, 10 epochs": OnShipped(["--trainer.max_epochs", "10"]),
    "shipped + attention + play ratio (on shipped)": OnShipped(ATTENTION),
    "shipped + embedding dim 128": OnShipped(["--model.embedding_dim", "128"]),
    "shipped + mixed negatives 1024": OnShipped(["--model.mixed_negatives", "1024"]),
    "shipped + popularity weight 1": OnShipped(["--model.popularity_weight", "1"]),
    "shipped + temperature 0.05": OnShipped(["--model.temperature", "0.05"]),
    "shipped + dropout 0.2": OnShipped(["--model.dropout", "0.2"]),
    # The popularity prior of part 4: the shipped config before it (the estimator's q, one weight).
    "shipped with the estimator prior (before part 4)": OnShipped(
        ["--model.popularity_prior", "estimator", "--model.popularity_half_life", "null",
         "--model.seedless_popularity_weight", "null"]),
    # The sequence-trained query tower against the per-example one, same epochs: both need the
    # attention encoder and no likes (their state is the example's, later than a window's earlier slots).
    "shipped + attention, no likes (per example)": OnShipped([*ATTENTION, "--data.feedback", "0"]),
    "shipped + attention, no likes, sequence-trained (8 slots)": OnShipped(
        [*ATTENTION, "--data.feedback", "0", "--model.query_tower", "sequence", "--model.sequence_positions", "8"]),
    # Part 7: the retrieval knobs bench/retrieval_knobs.py chose on validation, pooled over both sets.
    "shipped + knobs chosen on validation (h 1, beta 1, seedless 3)": OnShipped(
        ["--model.popularity_half_life", "1", "--model.popularity_weight", "1",
         "--model.seedless_popularity_weight", "3"]),
    # Part 7: the optimiser's step and the history's length, not varied on the shipped config before.
    "shipped + learning rate 0.003": OnShipped(["--model.learning_rate", "0.003"]),
    "shipped + history 20": OnShipped(["--data.history", "20"]),
    "shipped + history 100": OnShipped(["--data.history", "100"]),
}
#: Each dataset's split (the development set's from its README) and epoch budget; unknown development
#: sets get the development split.
SPLITS = {"embedded default": SplitConfig(), "movielens-small": SplitConfig(test_days=730, val_days=365)}
EPOCHS = {"embedded default": 2, "movielens-small": 5}
DEV_EPOCHS = 5
#: The test values the report gives intervals for (the case tables hold exact rankings).
COLUMNS = ["test/next/recall@10", "test/next/recall@100", "test/paper/recall@100", "test/paper/ndcg@10"]
HEAD = ["next R@10", "next R@100", "paper R@100", "paper NDCG@10"]
#: The row the others are compared with: the shipped config when it was run, else the first design.
SHIPPED, FIRST = "configs/demo.yaml as shipped", "default"


def dev_sets(paths: list[Path]) -> dict[str, Path]:
    """{name: raw directory} of the development sets under ``paths`` (each a set, or a directory of sets)."""
    found = {}
    for path in paths:
        candidates = [path, *sorted(p for p in path.iterdir() if p.is_dir())] if path.is_dir() else [path]
        sets = [raw for raw in candidates if any(raw.glob("flat/*/multi_event.parquet"))]
        if not sets:
            print(f"note: no development set at {path} (no flat/<size>/multi_event.parquet); skipped")
        found.update({raw.name: raw for raw in sets})
    return found


def run_tag(dataset: str, variant: str, window: int, seed: int) -> str:
    """The name of one run's directory under ``WORKDIR/runs`` and of its case table under ``WORKDIR/cases``."""
    return f"{dataset}-{variant}-w{window}-{seed}".replace(" ", "_").replace("/", "_")


def prepared_dir(workdir: Path, dataset: str, window: int) -> Path:
    """Where ``dataset``'s prepared arrays for test window ``window`` live in ``workdir``."""
    return workdir / f"{'twin' if dataset == 'embedded default' else dataset}-prepared-w{window}"


def datasets(workdir: Path, dev: list[Path], windows: int) -> dict[str, list[Path]]:
    """{name: [prepared directory of window 0, 1, ...]}: the embedded default and every development set."""
    found = {"embedded default": [prepared_twin(prepared_dir(workdir, "embedded default", k), workdir / "twin-raw",
                                                config=SplitConfig(window=k)) for k in range(windows)]}
    for name, raw in dev_sets(dev).items():
        split, found[name] = SPLITS.get(name, SPLITS["movielens-small"]), []
        for k in range(windows):
            prepared = prepared_dir(workdir, name, k)
            if not is_current(prepared):
                prepare(raw, prepared, config=SplitConfig(**{**split.__dict__, "window": k}), progress=False,
                        overwrite=True)
            found[name].append(prepared)
    return found


def run(data: Path, flags: list[str] | None, seed: int, epochs: int, run_dir: Path) -> tuple[dict, dict]:
    """Fit one variant, then validate and test its best checkpoint: ({metric: value, ...}, the test
    window's per-case values, RetrievalMetrics.cases)."""
    start = time.perf_counter()
    flags = [] if flags is None else list(flags) if isinstance(flags, OnShipped) else BASE + flags
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
    return {**values, "best_epoch": epoch, "fit_seconds": fit_seconds}, cli.model.cases["test"]


def tagged(table: pa.Table, window: int, seed: int) -> pa.Table:
    """A case table with ``window`` and ``seed`` columns."""
    return table.append_column("window", pa.array([window] * len(table), pa.int64())).append_column(
        "seed", pa.array([seed] * len(table), pa.int64()))


def tuned_baselines(data: Path, window: int, out: Path) -> pa.Table:
    """Every baseline tuned on ``data``'s validation window and scored on its test window: a case table,
    cached in ``out`` (its metrics in a .json beside it); a baseline missing from the cache is tuned and added."""
    from lightning_tt.baselines import ALL

    cached = pq.read_table(out) if out.exists() else None
    metrics = json.loads(out.with_suffix(".json").read_text()) if out.exists() else {}
    missing = [cls.name for cls in ALL if cls.name not in metrics]
    if missing:
        cases: dict = {}
        metrics.update(tune(str(data), [10, 100], missing, cases=cases, progress=False))
        user_ids = PreparedData(data)["user_ids"]
        table = tagged(pa.concat_tables([case_table(kept, [10, 100], user_ids, name, "test")
                                         for name, kept in cases.items()]), window, 0)
        cached = table if cached is None else pa.concat_tables([cached, table])
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(cached, out.with_suffix(".tmp"))
        out.with_suffix(".json").write_text(json.dumps(metrics, indent=2))
        out.with_suffix(".tmp").replace(out)
    return cached


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


#: Everything after this line of docs/ablations.md is written by hand and kept when the report is rewritten.
FINDINGS = "<!-- findings: written by hand, kept by bench/ablations.py -->"


def _common_windows(cases: pa.Table, systems: list[str]) -> pa.Table:
    """``cases`` of ``systems``, on the windows every one of them has (a paired comparison needs the same cases)."""
    mine = cases.filter(pc.is_in(cases["system"], pa.array(systems)))
    windows = None
    for system in systems:
        have = set(mine.filter(pc.equal(mine["system"], system))["window"].to_pylist())
        windows = have if windows is None else windows & have
    return mine.filter(pc.is_in(mine["window"], pa.array(sorted(windows or []), pa.int64())))


def variant_table(cases: pa.Table, variants: list[str], reference: str) -> list[str]:
    """Markdown rows: each variant's pooled test values with intervals and its paired difference to
    ``reference`` at next-track and paper Recall@100."""
    lines = ["| variant | " + " | ".join(HEAD) + f" | Δ next R@100 vs {reference!r} | Δ paper R@100 | windows × seeds |",
             "|---|" + "---|" * (len(HEAD) + 3)]
    for variant in variants:
        pair = _common_windows(cases, [variant, reference])
        cells = [compare(pair, c, [variant]).value[variant].format() for c in COLUMNS]
        deltas = []
        for column in ("test/next/recall@100", "test/paper/recall@100"):
            d = compare(pair, column, [variant], reference=reference).difference[variant]
            deltas.append("—" if variant == reference else
                          f"{d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]{'' if d.excludes(0) else ' noise'}")
        mine = pair.filter(pc.equal(pair["system"], variant))
        runs = len(set(zip(mine["window"].to_pylist(), mine["seed"].to_pylist())))
        lines.append(f"| {variant} | " + " | ".join(cells) + " | " + " | ".join(deltas) + f" | {runs} |")
    return lines


def baseline_table(cases: pa.Table, model: str, baselines: list[str]) -> list[str]:
    """Markdown rows: ``model`` and every tuned baseline (pooled, with intervals), then the model's ratio
    to the best baseline of each column (the best by its pooled value) with the ratio's interval."""
    pair = _common_windows(cases, [model, *baselines])
    lines = ["| system | " + " | ".join(HEAD) + " |", "|---|" + "---|" * len(HEAD)]
    found = {c: compare(pair, c, [model, *baselines]) for c in COLUMNS}
    for system in [model, *baselines]:
        lines.append(f"| {system} | " + " | ".join(found[c].value[system].format() for c in COLUMNS) + " |")
    ratios = []
    for column in COLUMNS:
        best = max(baselines, key=lambda b: found[column].value[b].value)
        ratio = compare(pair, column, [model], reference=best).ratio[model]
        verdict = "above" if ratio.low > 1 else "below" if ratio.high < 1 else "within noise"
        ratios.append(f"{ratio.format(3)}× {best} ({verdict})")
    lines.append(f"| **{model} / best baseline** | " + " | ".join(ratios) + " |")
    return lines


def report(results: list[dict], cases: dict[str, pa.Table], seeds: list[int], windows: int, out: Path,
           figure: Path, results_doc: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in cases if any(r["dataset"] == name for r in results)]
    lines = [
        "# Ablations", "",
        f"Written by `python bench/ablations.py` on {dt.date.today()} ({machine()}).", "",
        "Each row starts from `configs/demo.yaml` with the first design set explicitly (`BASE` in the script: "
        "temperature 0.05, no mixed negatives, logQ correction on, every feature group on, the masked-mean "
        "history, no likes or dislikes, next-track targets, the seed always shown, lists ranked by u . v "
        "over the whole catalogue) and flips one switch. "
        "The rows marked NT start from mixed negatives 256 and temperature 0.1 instead; \"past out (auto)\" "
        "leaves the user's training positives out of the lists where the data has no repeats, and "
        "\"popularity weight\" adds beta log q to the ranking (`docs/training.md`); "
        f"`{SHIPPED}` is the shipped config exactly. Every run trains with the same budget: "
        + ", ".join(f"{n}: {e} epochs" for n, e in EPOCHS.items()) + ". The checkpoint with the best "
        "`val/next/exact_recall@100` is tested; values are exact (brute-force) rankings on the test windows.", "",
        f"**Pooled over {windows} rolling-origin test windows** (`--split.window 0..{windows - 1}`: non-overlapping "
        "test windows, each with its own validation window and training cut) **and seeds "
        f"{', '.join(map(str, seeds))}**. Every value is `value [95% interval]`, the interval from a bootstrap "
        "over users (2,000 resamples; a case's value is its mean over seeds; one user is one cluster over all "
        "windows: `lightning_tt/eval/intervals.py`, `docs/evaluation.md`). A Δ is paired: both rows on the same "
        "cases and resamples; **noise** marks a Δ whose interval holds 0. The baselines are tuned on each "
        "window's validation window (`lightning-tt baselines --tune`).", "",
    ]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for axis, name in zip(axes[0], names):
        table = cases[name]
        systems = set(table["system"].to_pylist())
        variants = [v for v in VARIANTS if v in systems]
        reference = SHIPPED if SHIPPED in variants else variants[0]
        lines += [f"## {name}", "", *variant_table(table, variants, reference), ""]
        baselines = [b for b in dict.fromkeys(table["system"].to_pylist()) if b not in VARIANTS]
        if baselines:
            compared = baseline_table(table, reference, baselines)
            lines += ["The reference row next to the tuned baselines (pooled over the same windows):", "",
                      *compared, ""]
            if results_doc is not None:
                runs = len(set(zip(table["window"].to_pylist(), table["seed"].to_pylist())))
                cases_of = len(set(zip(table["window"].to_pylist(), table["protocol"].to_pylist(),
                                       table["case"].to_pylist())))
                write_section(results_doc, "\n".join(
                    [f"Written by `python bench/ablations.py` on {dt.date.today()}: {name}, {cases_of:,} test cases "
                     f"and lists over the windows, {runs} (window, seed) runs of the model; 95% user-clustered "
                     f"bootstrap intervals.", "", *compared]), marker=f"quality-{name.replace(' ', '-')}")
        found = [compare(_common_windows(table, [v]), "test/next/recall@100", [v]).value[v] for v in variants]
        axis.barh(variants[::-1], [f.value for f in found][::-1],
                  xerr=[[f.value - f.low for f in found][::-1], [f.high - f.value for f in found][::-1]],
                  color="tab:blue", alpha=0.8)
        axis.set_title(f"{name}: test next-track Recall@100")
        axis.set_xlabel("pooled over windows and seeds, 95% interval")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    lines += [f"![test next-track Recall@100 per variant]({figure.relative_to(out.parent).as_posix()})", ""]
    # What a person wrote under the findings marker of the previous report is kept.
    previous = out.read_text() if out.exists() else ""
    lines += [FINDINGS, previous.split(FINDINGS, 1)[1].lstrip("\n")] if FINDINGS in previous else [FINDINGS, ""]
    with Output(out, "file", overwrite=True).writing() as tmp:  # one rename: never half written
        tmp.write_text("\n".join(lines))
    print(f"wrote {out} and {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", type=Path, nargs="+",
                        default=[Path(os.environ[DEV_SET_VARIABLE])] if os.environ.get(DEV_SET_VARIABLE) else None,
                        help=f"development sets in the Yambda layout, or directories of them (default: "
                             f"${DEV_SET_VARIABLE}; one that holds none is skipped with a note)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--windows", type=int, default=3, help="rolling-origin test windows per dataset")
    parser.add_argument("--only", nargs="+", default=None, choices=list(VARIANTS), help="variants to run")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset names to run (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="fit and tune nothing: write the report from the runs and baselines already in --workdir")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/ablations.md")
    parser.add_argument("--results", type=Path, default=ROOT / "docs/results.md",
                        help="where the shipped config's table against the tuned baselines goes (a section per dataset)")
    args = parser.parse_args()
    if args.dev is None:
        parser.exit(2, f"{parser.prog}: error: no development set: pass --dev DIR or set {DEV_SET_VARIABLE}=DIR\n")
    if args.windows < 1:
        parser.exit(2, f"{parser.prog}: error: --windows must be >= 1, got {args.windows}\n")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results_file = args.workdir / "results.jsonl"
    results = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    done = {(r["dataset"], r["variant"], r["window"], r["seed"]) for r in results}
    cases: dict[str, list[pa.Table]] = {}
    for dataset, windows in datasets(args.workdir, args.dev, args.windows).items():
        if args.datasets and dataset not in args.datasets:
            continue
        tables = cases.setdefault(dataset, [])
        for window, data in enumerate(windows):
            baselines_file = args.workdir / "baselines" / f"{dataset}-w{window}.parquet"
            if not args.report_only:
                tables.append(tuned_baselines(data, window, baselines_file))
            elif baselines_file.exists():
                tables.append(pq.read_table(baselines_file))
            for variant, flags in VARIANTS.items():
                if args.only and variant not in args.only:
                    continue
                for seed in args.seeds:
                    tag = run_tag(dataset, variant, window, seed)
                    case_file = args.workdir / "cases" / f"{tag}.parquet"
                    if (dataset, variant, window, seed) not in done and not args.report_only:
                        found, kept = run(data, flags, seed, EPOCHS.get(dataset, DEV_EPOCHS),
                                          args.workdir / "runs" / tag)
                        table = case_table(kept, [10, 50, 100, 200], PreparedData(data)["user_ids"], variant, "test")
                        case_file.parent.mkdir(parents=True, exist_ok=True)
                        pq.write_table(tagged(table, window, seed), case_file)
                        found = {"dataset": dataset, "variant": variant, "window": window, "seed": seed, **found}
                        print(f"[ablations] {dataset} | {variant} | window {window} | seed {seed}: test next R@100 "
                              f"{found['test/next/exact_recall@100']:.4f} ({found['fit_seconds']:.0f} s)", flush=True)
                        results.append(found)
                        with results_file.open("a") as f:
                            f.write(json.dumps(found) + "\n")
                    if seed in args.seeds and case_file.exists():
                        tables.append(pq.read_table(case_file))
    pooled = {name: pa.concat_tables(tables, promote_options="default") for name, tables in cases.items() if tables}
    report([r for r in results if r["seed"] in args.seeds], pooled, args.seeds, args.windows, args.out,
           args.out.parent / "figures" / "ablations.png", args.results)


if __name__ == "__main__":
    main()
