"""The ``lightning-tt`` command.

    lightning-tt fit|validate|test|predict --config configs/demo.yaml [...]   LightningCLI (model + data)
    lightning-tt demo [--workdir runs/demo]           synthesise, prepare, train and test the embedded default
    lightning-tt data synth --out DIR [...]           write a synthetic dataset in the Yambda layout
    lightning-tt data download --size 50m --out DIR   fetch a Yambda size from the Hugging Face hub
    lightning-tt data prepare --raw DIR --out DIR     raw parquet -> prepared arrays + meta.json
    lightning-tt data describe --data DIR             print the splits and a sample batch
    lightning-tt baselines --data DIR [--out FILE]    Random, MostPop, DecayPop, Transitions, ItemKNN, iALS, BPR
    lightning-tt sweep sweeps/X.yaml --trials N [-- fit flags]   a W&B sweep file run offline with Optuna
    lightning-tt export --ckpt_path X --out DIR       item embeddings, Faiss index and id mapping
    lightning-tt recommend --index DIR --ckpt_path X --user U --seed-item S [--k K]   (or --batch FILE --out FILE)

Errors in the input (a missing file, a bad column, an empty split, an option out of range, a checkpoint
of other data...) are lightning_tt.errors.InputError: they print one line naming the file, column or
option and exit with status 1. Anything else is a bug and keeps its traceback. Every output goes
through lightning_tt.outputs (never overlapping an input, replaced only with ``--overwrite``, atomic).

The Lightning commands link the DataModule's sizes (``num_users``, ``num_items``, ``num_artists``,
``num_albums``, ``audio_dim``, read from meta.json) and ``data_dir`` into the model, so a config never
repeats them. The resolved config is saved as ``config.yaml`` in the run's log directory, next to its
``checkpoints/``; ``test --config that/config.yaml --ckpt_path that/checkpoints/X.ckpt`` rebuilds the run
in a fresh process, and ``fit ... --ckpt_path last.ckpt`` resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lightning_tt.data.prepare import SplitConfig
from lightning_tt.data.schema import RawDataError
from lightning_tt.errors import InputError

#: The embedded default: a synthetic dataset small enough for 2 CPU cores.
DEMO_SYNTH = {"rows": 300_000, "users": 2_000, "items": 20_000, "days": 30.0, "seed": 0}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def lightning_cli(args: list[str], run: bool = True, callbacks: list | None = None):
    """Run (or, with ``run=False``, only build) the LightningCLI over TwoTowerModule and YambdaDataModule.
    ``callbacks`` are added to the Trainer's (the sweep's pruning callback).

    W&B runs offline unless the user set WANDB_MODE or WANDB_API_KEY (no account or network needed).
    """
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from lightning_tt.outputs import Output
    from lightning_tt.runs import run_directory

    if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"

    class RunConfigSaver(SaveConfigCallback):
        """config.yaml in the run's own directory (lightning_tt.runs), for every logger; the full
        config also goes to W&B."""

        def setup(self, trainer, pl_module, stage):
            if self.already_saved:
                return
            if trainer.is_global_zero:
                path = run_directory(trainer) / self.config_filename
                output = Output(path, "file", option=self.config_filename, overwrite=self.overwrite)
                with output.writing() as tmp:
                    self.parser.save(self.config, tmp, multifile=self.multifile)
                for logger in trainer.loggers:
                    if type(logger).__name__ == "WandbLogger":
                        logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
            self.already_saved = True

    from lightning_tt.data.datamodule import YambdaDataModule
    from lightning_tt.eval.callback import FaissRetrieval
    from lightning_tt.eval.predictions import ParquetPredictionWriter
    from lightning_tt.eval.report import RunReport
    from lightning_tt.model.module import TwoTowerModule

    class TwoTowerCLI(LightningCLI):
        def _parse_ckpt_path(self):
            # LightningCLI reads the checkpoint's hyperparameters here with a bare torch.load: check first
            # that --ckpt_path is a checkpoint at all, so a wrong path gets one line, not an unpickling
            # traceback. (Whether it belongs to --data.data_dir is checked by the model's on_load_checkpoint.)
            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if path is not None:
                from lightning_tt.provenance import read_checkpoint

                read_checkpoint(path)
            super()._parse_ckpt_path()

        def add_arguments_to_parser(self, parser):
            # The index callback is a top-level section (``retrieval:``, ``--retrieval.nprobe 32``), so
            # configs and sweeps set its options by name.
            parser.add_lightning_class_args(FaissRetrieval, "retrieval")
            parser.add_lightning_class_args(ParquetPredictionWriter, "predictions")  # --predictions.output
            parser.add_lightning_class_args(RunReport, "report")  # --report.baselines_file
            parser.link_arguments("data.data_dir", "model.data_dir")
            # The window length sizes the history encoder's positions; K sizes the feedback bags; serving
            # leaves the past out as evaluation did.
            for name in ("num_users", "num_items", "num_artists", "num_albums", "audio_dim", "history", "feedback",
                         "exclude_seen"):
                parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
            # The checkpoint records which prepared data it was trained on (lightning_tt.provenance).
            parser.link_arguments("data.fingerprint", "model.data_fingerprint", apply_on="instantiate")

    # From the command line, LightningCLI reads sys.argv itself (DDP's launcher re-runs that command
    # line in each new process). Called from Python with other arguments (the demo, tests), it sees only
    # the program name in sys.argv, since it warns when sys.argv holds arguments of its own.
    from_command_line = list(args) == sys.argv[1:]
    argv = sys.argv
    if not from_command_line:
        sys.argv = sys.argv[:1]
    try:
        return TwoTowerCLI(TwoTowerModule, YambdaDataModule, args=None if from_command_line else args, run=run,
                           seed_everything_default=0, save_config_callback=RunConfigSaver,
                           # the DataModule's samplers shard by rank themselves
                           trainer_defaults={"use_distributed_sampler": False, "callbacks": list(callbacks or [])})
    finally:
        sys.argv = argv
        if run and "wandb" in sys.modules:  # one W&B run per command, also when several run in one process
            sys.modules["wandb"].finish()


def _add_split_options(p: argparse.ArgumentParser) -> None:
    d = SplitConfig()
    p.add_argument("--test-days", type=float, default=d.test_days, help="length of the test window in days (fractions allowed)")
    p.add_argument("--val-days", type=float, default=d.val_days, help="length of the validation window in days; 0 for none")
    p.add_argument("--gap-seconds", type=int, default=d.gap_seconds, help="gap before the test and the validation windows")
    p.add_argument("--history", type=int, default=d.history, help="default history window length N")
    p.add_argument("--min-played-pct", type=int, default=d.min_played_pct, help="a listen is a positive when played_ratio_pct >= this")


def _split_config(args: argparse.Namespace) -> SplitConfig:
    return SplitConfig(test_days=args.test_days, val_days=args.val_days, gap_seconds=args.gap_seconds,
                       history=args.history, min_played_pct=args.min_played_pct)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-tt", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="synthesise, prepare, train and test the embedded default")
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, help=f"LightningCLI {name} (lightning-tt {name} --help)", add_help=False)
    demo.add_argument("--workdir", default="runs/demo", help="where data, logs and checkpoints go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/demo.yaml's)")

    data = commands.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dataset in the Yambda layout")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--rows", type=int, default=200_000, help="number of event rows")
    synth.add_argument("--users", type=int, default=1_000)
    synth.add_argument("--items", type=int, default=20_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--days", type=float, default=301.0, help="time span in days (Yambda: 301)")
    synth.add_argument("--size", default=None, help="size label of flat/<size>/ (default: from --rows, e.g. 200k)")
    synth.add_argument("--row-group-size", type=int, default=1_000_000)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    down = data.add_parser("download", help="fetch one Yambda size from the Hugging Face hub")
    down.add_argument("--size", required=True, choices=["50m", "500m", "5b"])
    down.add_argument("--out", required=True, help="output directory (the Yambda layout)")
    down.add_argument("--revision", default=None, help="dataset revision (branch, tag or commit)")

    prep = data.add_parser("prepare", help="raw parquet -> prepared arrays + meta.json")
    prep.add_argument("--raw", required=True, help="directory in the Yambda layout")
    prep.add_argument("--size", default=None, help="which flat/<size>/ to use (default: the only one)")
    prep.add_argument("--out", required=True, help="output directory (written atomically)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    prep.add_argument("--audio-dim", type=int, default=128, help="expected audio embedding dimension (Yambda: 128)")
    _add_split_options(prep)

    base = commands.add_parser("baselines", help="evaluate the non-neural baselines on a prepared split")
    base.add_argument("--data", required=True, help="a prepared directory")
    base.add_argument("--split", default="test", choices=["val", "test"])
    base.add_argument("--k", type=int, nargs="+", default=[10, 50, 100, 200], help="cut-offs k")
    base.add_argument("--only", nargs="+", default=None, help="baseline names to run (default: all)")
    base.add_argument("--tune", action="store_true",
                      help="choose each baseline's hyperparameters on the validation window (grids in "
                           "lightning_tt/baselines.py), then report the test window with the chosen values")
    base.add_argument("--tune-metric", default="val/next/recall@100",
                      help="the validation metric --tune maximises (default val/next/recall@100)")
    base.add_argument("--out", default="runs/baselines/metrics.json", help="where metrics.json goes")
    base.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    sweep = commands.add_parser("sweep", help="run a W&B sweep file offline with Optuna (no W&B server)",
                                usage="lightning-tt sweep SWEEP_FILE --trials N [--storage URL] [--out DIR] "
                                      "[--seed S] [--study-name NAME] [-- fit flags]")
    sweep.add_argument("sweep_file", help="a W&B sweep file, e.g. sweeps/two-tower-bayes.yaml")
    sweep.add_argument("--trials", type=int, required=True,
                       help="finished (complete or pruned) trials the study should reach")
    sweep.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    sweep.add_argument("--out", default=None, help="leaderboard, figure and best.yaml (default runs/sweeps/NAME)")
    sweep.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    sweep.add_argument("--study-name", default=None, help="default: the sweep file's name without .yaml")

    exp = commands.add_parser("export", help="write item embeddings, the Faiss index and the id mapping")
    exp.add_argument("--ckpt_path", required=True)
    exp.add_argument("--out", required=True, help="output directory (written atomically)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export")
    exp.add_argument("--kind", default=None, help="flat, ivfflat, ivfpq, ivfpqfs, hnsw or ivfhnsw (default: the "
                     "training callback's, ivfpqfs)")
    exp.add_argument("--coarse", default=None, choices=["flat", "hnsw"], help="IVF coarse quantizer (default: by kind)")
    exp.add_argument("--nbits", type=int, default=8)
    for name in ("nlist", "m", "nprobe", "k-factor", "quantizer-ef-search", "train-sample"):
        exp.add_argument(f"--{name}", type=int, default=None, help="default: chosen from the catalogue's size and dim")
    exp.add_argument("--target-overlap", type=float, default=None,
                     help="calibrate nprobe and k_factor until the index keeps this share of the exact top 100 "
                          "(e.g. 0.98) on the validation window's queries")

    rec = commands.add_parser("recommend", help="top-k tracks for one user and seed track, or a file of them")
    rec.add_argument("--index", required=True, help="a directory written by `lightning-tt export`")
    rec.add_argument("--ckpt_path", required=True)
    rec.add_argument("--user", type=int, default=None, help="raw Yambda uid")
    rec.add_argument("--seed-item", type=int, default=None, help="raw Yambda item_id of the current track")
    rec.add_argument("--batch", default=None, help="a .parquet or .csv of requests (columns user, seed_item)")
    rec.add_argument("--out", default=None, help="with --batch: where the top-k lists go (parquet)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    rec.add_argument("--k", type=int, default=10)

    desc = data.add_parser("describe", help="print the splits and a sample batch of a prepared dataset")
    desc.add_argument("--data", required=True, help="a prepared directory")
    desc.add_argument("--batch-size", type=int, default=4)
    return parser


def _demo(workdir: Path, epochs: int | None) -> None:
    from lightning_tt.baselines import evaluate
    from lightning_tt.data.prepare import prepare
    from lightning_tt.data.prepared import PreparedData, PreparedDataError
    from lightning_tt.data.schema import find_size
    from lightning_tt.data.summary import summarize
    from lightning_tt.data.synth import synthesize
    from lightning_tt.outputs import Output
    from lightning_tt.runs import run_directory, write_json

    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    raw, prepared = workdir / "raw", workdir / "prepared"
    # The demo reuses what an earlier demo made, and never replaces a directory it did not make.
    try:
        find_size(raw, None)
        print(f"[demo] using the synthetic dataset in {raw}")
    except RawDataError as err:
        if raw.exists():
            raise InputError(f"--workdir {workdir}: {raw} exists but is not a dataset in the Yambda layout ({err}); "
                             f"remove it or choose another --workdir") from err
        print(f"[demo] synthesising {DEMO_SYNTH['rows']:,} events into {raw}")
        synthesize(raw, **DEMO_SYNTH)
    if (prepared / "meta.json").is_file():
        try:
            PreparedData(prepared)
            print(f"[demo] using the prepared arrays in {prepared}")
        except PreparedDataError as err:  # made by an older demo (another schema version) or damaged
            print(f"[demo] {err}: preparing {raw} -> {prepared} again")
            prepare(raw, prepared, config=SplitConfig(), overwrite=True)
    elif prepared.exists():
        raise InputError(f"--workdir {workdir}: {prepared} exists but holds no meta.json; remove it or choose another "
                         f"--workdir")
    else:
        print(f"[demo] preparing {raw} -> {prepared}")
        prepare(raw, prepared, config=SplitConfig())
    print(summarize(str(prepared)))

    config = CONFIGS / "demo.yaml"
    if not config.is_file():
        raise InputError(f"{config}: not found; run the demo from a checkout (pip install -e .)")
    overrides = ["--data.data_dir", str(prepared), "--trainer.logger.init_args.save_dir", str(workdir / "logs")]
    if epochs is not None:
        overrides += ["--trainer.max_epochs", str(epochs)]
    print(f"[demo] training: lightning-tt fit --config {config} {' '.join(overrides)}")
    fit = lightning_cli(["fit", "--config", str(config), *overrides])
    best = fit.trainer.checkpoint_callback.best_model_path
    run_dir = run_directory(fit.trainer)
    run_config = run_dir / "config.yaml"
    ks = sorted(fit.model.hparams.recall_k)
    baselines_file = workdir / "baselines" / "metrics.json"
    print(f"[demo] baselines: lightning-tt baselines --data {prepared} --k {' '.join(map(str, ks))} --out {baselines_file}")
    baselines = evaluate(str(prepared), "test", ks)
    # The demo's own file, made again at every demo run.
    write_json(Output(baselines_file, "file", inputs={"--data": prepared}, overwrite=True), baselines)
    print(f"[demo] testing: lightning-tt test --config {run_config} --ckpt_path {best} "
          f"--report.baselines_file {baselines_file}")
    test = lightning_cli(["test", "--config", str(run_config), "--ckpt_path", best,
                          "--report.baselines_file", str(baselines_file)])
    found = {name: float(value) for name, value in test.trainer.callback_metrics.items()}
    model = {name.replace("exact_", ""): value for name, value in found.items() if "/exact_" in name}
    paper_k = 100 if 100 in ks else ks[-1]
    columns = [f"test/next/recall@{k}" for k in ks] + [f"test/paper/ndcg@{ks[0]}", f"test/paper/recall@{paper_k}"]
    print("[demo] the test split, exact rankings (the model's ANN values are in its metrics.json):")
    print_table({"TwoTower": model, **baselines}, columns)
    print(f"[demo] checkpoint: {best}")
    print(f"[demo] run directory (config, checkpoints, W&B offline run under {workdir / 'logs' / 'wandb'}): {run_dir}")


def print_table(rows: dict[str, dict], columns: list[str], params: bool = False) -> None:
    """A fixed-width table: one row per model, one column per metric name; with ``params``, each row's
    ``params`` entry (a baseline's hyperparameters) after the numbers."""
    short = [c.split("/", 1)[1] for c in columns]
    print("    " + f"{'':<12}" + "".join(f"{c:>20}" for c in short) + ("  params" if params else ""))
    for name, values in rows.items():
        chosen = ", ".join(f"{k}={v}" for k, v in values.get("params", {}).items()) if params else ""
        print("    " + f"{name:<12}" + "".join(f"{values.get(c, float('nan')):>20.4f}" for c in columns)
              + (f"  {chosen}" if chosen else ""))


def _baselines(args: argparse.Namespace) -> None:
    from lightning_tt.baselines import evaluate, tune
    from lightning_tt.outputs import Output
    from lightning_tt.runs import write_json

    if args.tune and args.split != "test":
        raise InputError("--tune chooses on the validation window and reports the test window: drop --split val")
    out = Output(args.out, "file", inputs={"--data": args.data}, overwrite=args.overwrite)  # checked before the work
    ks = sorted(args.k)
    if args.tune:
        results = tune(args.data, ks, args.only, args.tune_metric)
    else:
        results = evaluate(args.data, args.split, ks, args.only)
    write_json(out, results)
    if args.tune:
        print(f"chosen on the validation window by {args.tune_metric}; the test window:")
    print_table(results, [f"{args.split}/next/recall@{k}" for k in ks] + [f"{args.split}/paper/ndcg@{ks[0]}",
                                                                          f"{args.split}/paper/recall@{ks[-1]}"],
                params=True)
    print(f"metrics written to {out.path}")


def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        _demo(Path(args.workdir), args.epochs)
        return
    if args.command == "baselines":
        _baselines(args)
        return
    if args.command == "sweep":
        from lightning_tt.sweep import run_sweep

        out = run_sweep(args.sweep_file, args.trials, args.storage, args.out, args.fit_flags, args.seed,
                        args.study_name)
        print((out / "best.yaml").read_text() if (out / "best.yaml").is_file() else "no trial completed")
        print(f"leaderboard: {out / 'leaderboard.csv'}; figure: {out / 'metric_vs_params.png'}; train with the "
              f"best: lightning-tt fit <the sweep's --config> --config {out / 'best.yaml'}")
        return
    if args.command == "export":
        from lightning_tt.eval.index import IndexConfig
        from lightning_tt.serve import export

        config = IndexConfig(kind=args.kind or IndexConfig.kind, nlist=args.nlist, m=args.m, nbits=args.nbits,
                             nprobe=args.nprobe, k_factor=args.k_factor, coarse=args.coarse, quantizer_ef_search=args.quantizer_ef_search,
                             train_sample=args.train_sample, target_overlap=args.target_overlap)
        meta = export(args.ckpt_path, args.out, config, overwrite=args.overwrite)
        print(f"exported {meta['items']:,} items ({meta['factory']}, nprobe {meta['nprobe']}, k_factor "
              f"{meta['k_factor']}, {meta['index_bytes'] / 2**20:.1f} MiB) to {args.out}")
        if meta["calibration"]:
            nprobe, k_factor, overlap = meta["calibration"][-1]
            print(f"calibrated on the validation queries: top-100 overlap {overlap:.3f} at nprobe {nprobe}, "
                  f"k_factor {k_factor} (target {meta['target_overlap']})")
        return
    if args.command == "recommend":
        from lightning_tt.serve import recommend, recommend_batch

        if args.batch is not None:
            if args.out is None or args.user is not None or args.seed_item is not None:
                raise InputError("--batch FILE needs --out FILE and no --user or --seed-item")
            found = recommend_batch(args.index, args.ckpt_path, args.batch, args.out, args.k, args.overwrite)
            print(f"{found['requests']:,} requests ({found['unknown_users']:,} unknown users, "
                  f"{found['unknown_seeds']:,} unknown seed items) at {found['queries_per_second']:,.0f} queries/s; "
                  f"top {args.k} written to {args.out}")
            return
        if args.user is None or args.seed_item is None:
            raise InputError("recommend needs --user and --seed-item, or --batch FILE --out FILE")
        items, notes = recommend(args.index, args.ckpt_path, args.user, args.seed_item, args.k)
        for note in notes:
            print(f"note: {note}")
        print(f"{'rank':>4}  {'item_id':>10}  score")
        for rank, (item, score) in enumerate(items, 1):
            print(f"{rank:>4}  {item:>10}  {score:.4f}")
        return
    if args.data_command == "synth":
        from lightning_tt.data.synth import synthesize

        path = synthesize(args.out, rows=args.rows, users=args.users, items=args.items, seed=args.seed,
                          size=args.size, days=args.days, row_group_size=args.row_group_size,
                          overwrite=args.overwrite)
        print(f"wrote {path}")
    elif args.data_command == "download":
        from lightning_tt.data.download import download

        print(f"downloaded Yambda {args.size} into {download(args.size, args.out, revision=args.revision)}")
    elif args.data_command == "prepare":
        from lightning_tt.data.prepare import prepare

        meta = prepare(args.raw, args.out, size=args.size, config=_split_config(args),
                       audio_dim=args.audio_dim, overwrite=args.overwrite)
        c = meta["counts"]
        print(f"prepared {args.out}: {c['train_examples']:,} train examples, {c['val_examples']:,} val cases, "
              f"{c['test_examples']:,} test cases in {meta['seconds']:.1f} s; dropped "
              f"{c['duplicate_events_dropped']:,} exact duplicate events")
    elif args.data_command == "describe":
        from lightning_tt.data.summary import summarize

        print(summarize(args.data, batch_size=args.batch_size))


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-tt``; ``args`` defaults to ``sys.argv[1:]``."""
    args = sys.argv[1:] if args is None else list(args)
    try:
        if args and args[0] in LIGHTNING_COMMANDS:
            lightning_cli(args)
            return
        fit_flags = []
        if args and args[0] == "sweep" and "--" in args:  # what follows -- goes to every trial's fit
            fit_flags, args = args[args.index("--") + 1:], args[: args.index("--")]
        parsed = _parser().parse_args(args)
        parsed.fit_flags = fit_flags
        _run(parsed)
    except InputError as err:  # a user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"lightning-tt: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
