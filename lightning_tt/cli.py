"""lightning-tt: train, evaluate and serve a two-tower retrieval model on Yambda.

    lightning-tt fit|validate|test|predict --config configs/demo.yaml [...]   LightningCLI (model + data)
    lightning-tt demo [--workdir runs/demo]           synthesise, prepare, train and test the embedded default
    lightning-tt data synth --out DIR [...]           write a synthetic dataset in the Yambda layout
    lightning-tt data download --size 50m --out DIR   fetch a Yambda size from the Hugging Face hub
    lightning-tt data prepare --raw DIR --out DIR [--split.test_days D ...]   raw parquet -> prepared arrays
    lightning-tt data describe --data DIR             print the splits and a sample batch
    lightning-tt baselines --data DIR [--k [10,100]] [--tune]   Random, MostPop, DecayPop, Transitions, ItemKNN, iALS, BPR
    lightning-tt sweep sweeps/X.yaml --trials N [-- fit flags]   a W&B sweep file run offline with Optuna
    lightning-tt export --ckpt_path X --out DIR [--index.nprobe P ...]   item embeddings, Faiss index, id mapping
    lightning-tt recommend --index DIR --ckpt_path X --user U --seed_item S [--k K]   (or --batch FILE --out FILE)

Every command is parsed by jsonargparse, the library LightningCLI is built on: the Lightning loops by
LightningCLI, the others (lightning_tt.commands) from their functions' signatures and docstrings. So
options are spelled alike everywhere (``--index.nprobe`` here, ``--retrieval.nprobe`` in fit), lists
are written ``[10,100]``, each command's ``--help`` lists its options with their types, defaults and
choices, and a boolean given alone (``--overwrite``) means true.

Errors in the input (a missing file, a bad column, an empty split, an option out of range, a checkpoint
of other data...) are lightning_tt.errors.InputError: they print one line naming the file, column or
option and exit with status 1; a mistyped option or value exits with status 2 and one line naming it.
Anything else is a bug and keeps its traceback. Every output goes
through lightning_tt.outputs (never overlapping an input, replaced only with ``--overwrite``, atomic).

The Lightning commands link the DataModule's sizes (``num_users``, ``num_items``, ``num_artists``,
``num_albums``, ``audio_dim``, read from meta.json) and ``data_dir`` into the model, so a config never
repeats them. The resolved config is saved as ``config.yaml`` in the run's log directory, next to its
``checkpoints/``; ``test --config that/config.yaml --ckpt_path that/checkpoints/X.ckpt`` rebuilds the run
in a fresh process, and ``fit ... --ckpt_path last.ckpt`` resumes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning_tt.errors import InputError

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
        # omegaconf: a config may refer to its own values (``output_dim: ${model.embedding_dim}``); the
        # references are resolved when the file is read, and config.yaml records the resolved values.
        omegaconf = {"parser_mode": "omegaconf"}
        return TwoTowerCLI(TwoTowerModule, YambdaDataModule, args=None if from_command_line else args, run=run,
                           parser_kwargs={**omegaconf, **{name: omegaconf for name in LIGHTNING_COMMANDS}},
                           seed_everything_default=0, save_config_callback=RunConfigSaver,
                           # the DataModule's samplers shard by rank themselves
                           trainer_defaults={"use_distributed_sampler": False, "callbacks": list(callbacks or [])})
    finally:
        sys.argv = argv
        if run and "wandb" in sys.modules:  # one W&B run per command, also when several run in one process
            sys.modules["wandb"].finish()


def _parser():
    """The jsonargparse parser of the commands that are not Lightning loops (lightning_tt.commands): one
    subcommand per function, its options from the function's signature and docstring."""
    from jsonargparse import ArgumentParser

    from lightning_tt.commands import COMMANDS, DATA_COMMANDS, POSITIONAL

    def command(function) -> ArgumentParser:
        parser = ArgumentParser(description=function.__doc__.split("\n\n")[0], exit_on_error=False)
        parser.add_function_arguments(function, as_positional=function in POSITIONAL, as_group=False,
                                      skip={"fit_flags"})
        return parser

    def first_line(function) -> str:
        return function.__doc__.split("\n")[0].rstrip(".")

    parser = ArgumentParser(prog="lightning-tt", description=__doc__.split("\n")[0], exit_on_error=False)
    commands = parser.add_subcommands(dest="command")
    for name in LIGHTNING_COMMANDS:  # listed in --help; main() hands them to LightningCLI before parsing
        commands.add_subcommand(name, ArgumentParser(), help=f"LightningCLI {name} (lightning-tt {name} --help)")
    for name, function in COMMANDS.items():
        commands.add_subcommand(name, command(function), help=first_line(function))
    data = ArgumentParser(description="dataset commands", exit_on_error=False)
    commands.add_subcommand("data", data, help="dataset commands: synth, download, prepare, describe")
    data_commands = data.add_subcommands(dest="command")
    for name, function in DATA_COMMANDS.items():
        data_commands.add_subcommand(name, command(function), help=first_line(function))
    return parser


def _bare_booleans(args: list[str]) -> list[str]:
    """``--overwrite`` and ``--tune`` given without a value mean true (jsonargparse wants ``--overwrite true``)."""
    import inspect

    from lightning_tt.commands import COMMANDS, DATA_COMMANDS

    if not args:
        return args
    function = DATA_COMMANDS.get(args[1]) if args[0] == "data" and len(args) > 1 else COMMANDS.get(args[0])
    if function is None:
        return args
    flags = {f"--{name}" for name, p in inspect.signature(function).parameters.items() if p.annotation in (bool, "bool")}
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in flags and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("true")
    return out


def _run(args: list[str], fit_flags: list[str]) -> None:
    """Parse ``args`` (a command that is not a Lightning loop) and call its function."""
    from jsonargparse import ArgumentError

    from lightning_tt.commands import COMMANDS, DATA_COMMANDS

    parser = _parser()
    try:
        config = parser.parse_args(_bare_booleans(args))
        init = parser.instantiate(config)
    except ArgumentError as err:  # a mistyped option or value: one line that names it, exit 2 (argparse's)
        command = " ".join(["lightning-tt", *(args[:2] if args[:1] == ["data"] else args[:1])])
        print(f"{command}: error: {' '.join(str(err).split())} (see {command} --help)", file=sys.stderr)
        raise SystemExit(2) from err
    if init.command == "data":
        options, function = init.data[init.data.command], DATA_COMMANDS[init.data.command]
    else:
        options, function = init[init.command], COMMANDS[init.command]
    options = dict(options.items())  # instantiated: a dataclass option is its object
    if function is COMMANDS["sweep"]:
        options["fit_flags"] = fit_flags
    function(**options)


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
        _run(args, fit_flags)
    except InputError as err:  # a user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"lightning-tt: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
