"""lightning-tt: train, evaluate and serve a two-tower retrieval model on Yambda.

    lightning-tt fit|validate|test|predict --config configs/demo.yaml [...]   LightningCLI (model + data)
    lightning-tt demo [--workdir runs/demo]           synthesise, prepare, train and test the embedded default
    lightning-tt data synth --out DIR [...]           write a synthetic dataset in the Yambda layout
    lightning-tt data download --size 50m --out DIR   fetch a Yambda size from the Hugging Face hub
    lightning-tt data prepare --raw DIR --out DIR [--split.test_days D ...]   raw parquet -> prepared arrays
    lightning-tt data describe --data DIR             print the splits and a sample batch
    lightning-tt baselines --data DIR [--k [10,100]] [--tune]   the eight baselines (lightning_tt.baselines)
    lightning-tt sweep sweeps/X.yaml --trials N [-- fit flags]   a W&B sweep file run offline with Optuna
    lightning-tt export --ckpt_path X --out DIR [--index.nprobe P ...]   item embeddings, Faiss index, id mapping
    lightning-tt recommend --index DIR --ckpt_path X --user U --seed_item S [--k K]   (or --batch FILE --out FILE)
    lightning-tt serve --export DIR [--host 127.0.0.1] [--port 8000]   HTTP: /recommend, /health, /info, a browse page

Every command is parsed by jsonargparse, the library LightningCLI is built on: the Lightning loops by
LightningCLI, the others (lightning_tt.commands) from their functions' signatures and docstrings. So
options are spelled alike everywhere (``--index.nprobe`` here, ``--retrieval.index.nprobe`` in fit), lists
are written ``[10,100]``, each command's ``--help`` lists its options with their types, defaults and
choices, and a boolean given alone (``--overwrite``) means true.

Errors in the input (a missing file, a bad column, an empty split, an option out of range, a checkpoint
of other data...) are lightning_tt.errors.InputError: they print one line naming the file, column or
option and exit with status 1; a mistyped option or value exits with status 2 and one line naming it.
Anything else is a bug and keeps its traceback. Every output goes
through lightning_tt.outputs (never overlapping an input, replaced only with ``--overwrite``, atomic).

The Lightning commands are lightning_tt.lightning_cli (its config sections, the links from the data
into the model, the saved ``config.yaml``); this module only dispatches, and no module imports it.
"""

from __future__ import annotations

import sys

from lightning_tt.errors import InputError, usage_error

#: Handed to LightningCLI (lightning_tt.lightning_cli); the other commands are lightning_tt.commands.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


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
    parameters = inspect.signature(function).parameters.items()
    flags = {f"--{name}" for name, p in parameters if p.annotation in (bool, "bool")}
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
        usage_error(" ".join(["lightning-tt", *(args[:2] if args[:1] == ["data"] else args[:1])]), str(err))
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
            from lightning_tt.lightning_cli import lightning_cli

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
