"""The LightningCLI of ``lightning-tt fit|validate|test|predict``: TwoTowerModule and YambdaDataModule,
the callbacks as top-level sections, the links from the data into the model, and the shipped configs.

Config sections (``--section.option`` on the command line, ``section:`` in a config file)::

    trainer      Lightning's Trainer (``--trainer.max_epochs``, ``--trainer.logger``...)
    model        TwoTowerModule               lightning_tt/model/module.py
    data         YambdaDataModule             lightning_tt/data/datamodule.py
    retrieval    FaissRetrieval (the index)   lightning_tt/eval/callback.py  (``--retrieval.index.nprobe``)
    report       RunReport                    lightning_tt/eval/report.py    (``--report.baselines_file``)
    predictions  ParquetPredictionWriter      lightning_tt/eval/predictions.py (``--predictions.output``)

Linked, so a config never repeats them: ``data.data_dir`` -> ``model.data_dir``, and at instantiation
the DataModule's sizes (``num_users``, ``num_items``, ``num_artists``, ``num_albums``, ``audio_dim``, read
from meta.json), ``history``, ``feedback``, ``exclude_seen`` and ``fingerprint`` -> the model's.

Configs are read in omegaconf mode: a config may refer to its own values (``output_dim:
${model.embedding_dim}``), resolved when the file is read. The resolved config is saved as
``config.yaml`` in the run's directory (lightning_tt.runs), next to its ``checkpoints/``.

A misconfiguration (an unknown key, a value of the wrong type, a class that does not exist, a ``${...}``
that names no key) is one line naming the key, ``lightning-tt fit: error: ... (see lightning-tt fit
--help)``, with exit status 2, as the other commands' mistyped options; ``--data.data_dir`` is checked
to be a prepared directory before anything else runs.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_tt.data.datamodule import YambdaDataModule, check_val_window
from lightning_tt.data.prepared import PreparedData, PreparedDataError
from lightning_tt.errors import one_line, usage_error
from lightning_tt.eval.callback import FaissRetrieval
from lightning_tt.eval.predictions import ParquetPredictionWriter
from lightning_tt.eval.report import RunReport
from lightning_tt.model.module import TwoTowerModule
from lightning_tt.outputs import Output
from lightning_tt.provenance import read_checkpoint
from lightning_tt.runs import run_directory

#: The shipped configs (package data: installed with the package, also outside a checkout).
CONFIGS = Path(__file__).resolve().parent / "configs"

#: The DataModule's values the model takes at instantiation (sizes from meta.json; the window length
#: sizes the history encoder's positions; K sizes the feedback bags; serving leaves the past out as
#: evaluation did; the fingerprint records which prepared data a checkpoint was trained on).
LINKED_AT_INSTANTIATION = {"num_users": "num_users", "num_items": "num_items", "num_artists": "num_artists",
                           "num_albums": "num_albums", "audio_dim": "audio_dim", "history": "history",
                           "feedback": "feedback", "exclude_seen": "exclude_seen", "fingerprint": "data_fingerprint"}


class RunConfigSaver(SaveConfigCallback):
    """config.yaml in the run's own directory (lightning_tt.runs), for every logger; the full config also
    goes to W&B."""

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


class TwoTowerCLI(LightningCLI):
    """LightningCLI with the sections and links of the module docstring; its parsers raise ArgumentError
    instead of printing their usage and exiting (``lightning_cli`` makes it one line)."""

    def parse_arguments(self, parser, args):
        from omegaconf.errors import OmegaConfBaseException

        try:
            super().parse_arguments(parser, args)
        except OmegaConfBaseException as err:  # a ${...} of a config file that names no key
            key = f"{err.full_key}: " if getattr(err, "full_key", None) else ""
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]  # (then its full_key again)
            raise ArgumentError(None, f"{_failing_config(args)}: {key}{reason}") from err
        subcommand = self.config.get("subcommand")
        data_dir = self.config.get(f"{subcommand}.data.data_dir" if subcommand else "data.data_dir")
        if data_dir is not None:  # before the seed, the loggers and the model: one line naming the option
            try:
                data = PreparedData(data_dir)
            except PreparedDataError as err:
                raise PreparedDataError(f"--data.data_dir {data_dir}: {err}") from err
            if subcommand == "fit":  # (YambdaDataModule.setup checks it again, for Trainer.fit in Python)
                check_val_window(data, self.config.get("fit.trainer.limit_val_batches"))

    def _parse_ckpt_path(self):
        # LightningCLI reads the checkpoint's hyperparameters here with a bare torch.load: check first that
        # --ckpt_path is a checkpoint at all, so a wrong path gets one line, not an unpickling traceback.
        # (Whether it belongs to --data.data_dir is checked by the model's on_load_checkpoint.)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None:
            read_checkpoint(path)
        super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(FaissRetrieval, "retrieval")
        parser.add_lightning_class_args(ParquetPredictionWriter, "predictions")
        parser.add_lightning_class_args(RunReport, "report")
        parser.link_arguments("data.data_dir", "model.data_dir")
        for source, target in LINKED_AT_INSTANTIATION.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")


def lightning_cli(args: list[str], run: bool = True, callbacks: list | None = None) -> TwoTowerCLI:
    """Run (or, with ``run=False``, only build) the LightningCLI on ``args`` (``["fit", "--config", ...]``;
    without a subcommand when ``run=False``). ``callbacks`` are added to the Trainer's (the sweep's
    pruning callback).

    W&B runs offline unless the user set WANDB_MODE or WANDB_API_KEY (no account or network needed)."""
    if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
    # From the command line, LightningCLI reads sys.argv itself (DDP's launcher re-runs that command line
    # in each new process). Called from Python with other arguments (the demo, tests), it sees only the
    # program name in sys.argv, since it warns when sys.argv holds arguments of its own.
    from_command_line = list(args) == sys.argv[1:]
    argv = sys.argv
    if not from_command_line:
        sys.argv = sys.argv[:1]
    omegaconf = {"parser_mode": "omegaconf", "exit_on_error": False}
    try:
        return TwoTowerCLI(TwoTowerModule, YambdaDataModule, args=None if from_command_line else args, run=run,
                           parser_kwargs={**omegaconf, **{name: omegaconf for name in LightningCLI.subcommands()}},
                           seed_everything_default=0, save_config_callback=RunConfigSaver,
                           # the DataModule's samplers shard by rank themselves
                           trainer_defaults={"use_distributed_sampler": False, "callbacks": list(callbacks or [])})
    except ArgumentError as err:  # a misconfiguration: one line that names the key, exit 2 (argparse's)
        command = f"lightning-tt {args[0]}" if args and args[0] in LightningCLI.subcommands() else "lightning-tt"
        usage_error(command, parser_message(err))
    finally:
        sys.argv = argv
        if run and "wandb" in sys.modules:  # one W&B run per command, also when several run in one process
            sys.modules["wandb"].finish()


def parser_message(err: ArgumentError) -> str:
    """jsonargparse's message as one line that names the key: of a union's many attempts, the reason a
    class_path failed (``Parser key "trainer.logger": class_path 'no.such.Logger': No module named 'no'``)
    or the types it expected, not the whole list."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0]
    for line, reason in zip(lines, lines[1:]):
        found = re.fullmatch(r"- Problem with given class_path (.+):", line)
        if found:
            return f"{head} class_path {found[1]}: {reason}"
    if "Does not validate against any of the Union subtypes" in lines:
        expected = [m[1] for m in (re.fullmatch(r"- Expected a <class '(\w+)'>", line) for line in lines) if m]
        given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
        if expected and given is not None:
            names = [{"NoneType": "None"}.get(name, name) for name in expected]
            return f"{head} expected {' or '.join(names)}, got {given}"
    return one_line(" ".join(lines), limit=400)


def _failing_config(args: list[str] | None) -> str:
    """``--config FILE`` for the first config file of ``args`` whose ``${...}`` cannot be resolved (for
    messages; the command line's values when none of them is)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if args is None else list(args)
    files = [value for flag, value in zip(args, args[1:]) if flag in ("--config", "-c")]
    files += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for file in files:
        try:
            OmegaConf.to_object(OmegaConf.load(file))
        except OmegaConfBaseException:
            return f"--config {file}"
        except Exception:  # unreadable: not the file this error came from
            continue
    return "a command-line value"
