"""Offline sweeps: a W&B sweep file sampled by Optuna, every trial a ``lightning-tt fit`` in this process.

    lightning-tt sweep sweeps/two-tower-bayes.yaml --trials 20 [--storage sqlite:///FILE] [--out DIR] [-- fit flags]

The sweep file is the one ``wandb sweep`` reads (``method``, ``metric``, ``parameters``, ``command``,
``early_terminate``); no W&B server is needed. Each trial draws one value per parameter and runs
``lightning-tt fit <the command's own flags> --KEY=VALUE ... <fit flags given after -->`` (flags after
``--`` come last, so they win). The trial's value is the best ``metric.name`` over its validation
epochs (by ``metric.goal``), and a trial clearly behind the others is stopped early (pruned) on that
metric through Optuna's Lightning integration. Trials log to W&B (offline by default) in one group,
the study's name.

Mapping of the W&B sweep specification to Optuna:

==========================================  ==================================================
W&B                                         Optuna
==========================================  ==================================================
``method: bayes`` / ``random`` / ``grid``   TPESampler / RandomSampler / every combination
                                            once, queued in the file's order
``values: [...]``, ``value: x``             CategoricalDistribution
``uniform`` / ``int_uniform``               FloatDistribution / IntDistribution
``log_uniform_values``                      FloatDistribution(log=True)
``log_uniform`` (min, max are logs)         FloatDistribution(e^min, e^max, log=True)
``q_uniform`` / ``q_log_uniform_values``    the same without ``q``; the drawn value is rounded
                                            to a multiple of ``q`` before it becomes a flag
``early_terminate: {type: hyperband}``      HyperbandPruner(min_resource=min_iter, reduction_factor=eta)
no ``early_terminate``                      PercentilePruner(25): prune a trial in the bottom
                                            quarter of the earlier trials at the same epoch
==========================================  ==================================================

The study lives in ``--storage`` (default ``sqlite:///OUT/study.db``), so an interrupted sweep resumes
where it stopped (a trial left running by a killed process is retried once after two minutes without a
heartbeat), and several processes may work on one study. ``--trials N`` is the number of finished
(complete or pruned) trials the study should reach. After every trial ``OUT`` holds
``leaderboard.csv``, ``metric_vs_params.png`` and ``best.yaml``, the best trial's parameters as a
config fragment: ``lightning-tt fit --config configs/demo.yaml --config OUT/best.yaml``. The
leaderboard gives each complete trial's 95% interval (``low``, ``high``: a bootstrap over the users of
its best epoch's validation cases, kept in ``{run_dir}/val_cases.parquet``) and its paired difference
to the best trial on the same cases (``vs_best_low``, ``vs_best_high``; ``vs_best`` = ``noise`` when that
interval holds 0): lightning_tt.eval.intervals.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
import warnings
from pathlib import Path

import pyarrow as pa
import yaml

from lightning_tt.errors import InputError
from lightning_tt.outputs import Output

#: W&B's command macros that are not flags of ``fit``.
MACROS = ("${env}", "${interpreter}", "${program}")
METHODS = ("bayes", "random", "grid")


def read_sweep(path: str | Path) -> dict:
    """The sweep file, checked: ``method``, ``metric`` (name, goal), ``parameters`` and a ``command``
    that runs ``fit``. InputError naming the file and the entry otherwise."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the sweep file: {err}") from err
    if not isinstance(sweep, dict):
        raise InputError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    if sweep.get("method") not in METHODS:
        raise InputError(f"{path}: method must be one of {', '.join(METHODS)}, got {sweep.get('method')!r}")
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or not metric.get("name") or metric.get("goal", "minimize") not in (
            "minimize", "maximize"):
        raise InputError(f"{path}: metric must have a name and a goal (minimize or maximize), got {metric!r}")
    if not isinstance(sweep.get("parameters"), dict) or not sweep["parameters"]:
        raise InputError(f"{path}: no parameters to sweep")
    command = sweep.get("command", ["${env}", "${interpreter}", "${program}", "${args}"])
    if "fit" not in command:
        raise InputError(f"{path}: the command must run `lightning-tt fit ...`, got {command!r}")
    for name, spec in sweep["parameters"].items():
        distribution(name, spec, path)  # every spec is checked before any trial runs
    return sweep


def base_flags(sweep: dict) -> list[str]:
    """The flags of the sweep's own command after ``fit`` (e.g. ``--config configs/demo.yaml``)."""
    command = [str(part) for part in sweep.get("command", [])]
    tail = command[command.index("fit") + 1:] if "fit" in command else []
    return [part for part in tail if part not in MACROS and not part.startswith("${args")]


def flag_inputs(flags: list[str]) -> dict[str, str]:
    """{option: path} of the files and directories that ``fit`` flags read (``--config``, ``--ckpt_path``,
    ``--data.data_dir``), so that no sweep output can overwrite them."""
    found, names = {}, ("--config", "--ckpt_path", "--data.data_dir")
    for i, flag in enumerate(flags):
        name, _, value = flag.partition("=")
        if name in names:
            value = value or (flags[i + 1] if i + 1 < len(flags) else "")
            if value:
                found[f"{name} {value}"] = value
    return found


def distribution(name: str, spec: dict, path: Path | str = "sweep"):
    """The Optuna distribution of one W&B parameter spec (see the module docstring)."""
    import optuna.distributions as d

    if not isinstance(spec, dict):
        raise InputError(f"{path}: parameter {name}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "values" in spec or "value" in spec:
        values = spec["values"] if "values" in spec else [spec["value"]]
        if not isinstance(values, list) or not values:
            raise InputError(f"{path}: parameter {name}: values must be a non-empty list")
        return d.CategoricalDistribution([_choice(v) for v in values])
    if "min" not in spec or "max" not in spec:
        raise InputError(f"{path}: parameter {name}: needs values, value or min and max")
    lo, hi = spec["min"], spec["max"]
    ints = isinstance(lo, int) and isinstance(hi, int)
    kind = spec.get("distribution", "int_uniform" if ints else "uniform")
    if not lo < hi:
        raise InputError(f"{path}: parameter {name}: min must be below max, got {lo} and {hi}")
    if kind == "int_uniform":
        return d.IntDistribution(int(lo), int(hi))
    if kind in ("uniform", "q_uniform"):
        return d.FloatDistribution(float(lo), float(hi))
    if kind in ("log_uniform_values", "q_log_uniform_values"):
        if lo <= 0:
            raise InputError(f"{path}: parameter {name}: {kind} needs min > 0, got {lo}")
        return d.FloatDistribution(float(lo), float(hi), log=True)
    if kind == "log_uniform":
        return d.FloatDistribution(math.exp(lo), math.exp(hi), log=True)
    raise InputError(f"{path}: parameter {name}: distribution {kind!r} is not supported offline; use values, "
                     f"uniform, int_uniform, log_uniform_values, log_uniform, q_uniform or q_log_uniform_values")


def _choice(value):
    """A categorical value as Optuna stores it: lists and mappings (``hidden_dims: [256]``) as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _suggest(trial, name: str, dist):
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def flag_value(spec: dict, value):
    """The drawn value as it becomes a flag: a JSON choice decoded again; rounded to a multiple of
    ``q`` for the ``q_*`` specs."""
    values = spec["values"] if "values" in spec else [spec["value"]] if "value" in spec else []
    decoded = {_choice(v): v for v in values}
    if value in decoded and isinstance(value, str):
        return decoded[value]
    if str(spec.get("distribution", "")).startswith("q_"):
        q = spec.get("q", 1)
        value = round(round(value / q) * q, 12)
        return int(value) if float(value).is_integer() and isinstance(q, int) else value
    return value


def grid_points(sweep: dict) -> list[dict]:
    """Every combination of a grid sweep's values, in the file's order (the last parameter fastest)."""
    params = sweep["parameters"]
    continuous = [name for name, spec in params.items() if "values" not in spec and "value" not in spec]
    if continuous:
        raise InputError(f"method grid needs values for every parameter; {continuous[0]} has a range")
    keys = list(params)
    return [dict(zip(keys, combination)) for combination in
            itertools.product(*(params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in keys))]


def _sampler(sweep: dict, seed: int):
    """TPE for bayes, random for random; a grid's points are queued in the study (``run_sweep``), so
    its sampler never draws."""
    import optuna

    if sweep["method"] == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(sweep: dict):
    import optuna

    early = sweep.get("early_terminate")
    if early:
        if early.get("type") != "hyperband":
            raise InputError(f"early_terminate: only type hyperband exists, got {early.get('type')!r}")
        return optuna.pruners.HyperbandPruner(min_resource=int(early.get("min_iter", 1)),
                                              reduction_factor=int(early.get("eta", 3)))
    return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=1)


def _pruning_callback(trial, monitor: str, maximize: bool):
    """Optuna's Lightning pruning callback, also keeping every validation value of ``monitor`` and, at the
    best epoch so far, the validation cases' values (``{run_dir}/val_cases.parquet``, a case table) for
    the leaderboard's intervals."""
    from optuna_integration import PyTorchLightningPruningCallback

    class RecordingPruning(PyTorchLightningPruningCallback):
        def __init__(self):
            super().__init__(trial, monitor)
            self.values: list[float] = []
            self.run_dir: str | None = None
            self.cases: str | None = None

        def setup(self, trainer, module, stage):
            from lightning_tt.runs import run_directory

            self.run_dir = str(run_directory(trainer))

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking and monitor in trainer.callback_metrics:
                value = float(trainer.callback_metrics[monitor])
                best = not self.values or (value > max(self.values) if maximize else value < min(self.values))
                self.values.append(value)
                if best and trainer.is_global_zero:
                    self._keep_cases(module)
            super().on_validation_end(trainer, module)

        def _keep_cases(self, module):
            cases, data_dir = getattr(module, "cases", {}).get("val"), module.hparams.get("data_dir")
            if cases is None or not data_dir or self.run_dir is None:
                return
            from lightning_tt.data.prepared import PreparedData
            from lightning_tt.eval.metrics import case_table, write_case_table

            path = Path(self.run_dir) / "val_cases.parquet"
            table = case_table(cases, list(module.hparams.recall_k), PreparedData(data_dir)["user_ids"],
                               f"trial {trial.number}", "val")
            write_case_table(Output(path, "file", option="val_cases.parquet", overwrite=True), table)
            self.cases = str(path)

    return RecordingPruning()


def run_sweep(sweep_file: str, trials: int, storage: str | None = None, out: str | None = None,
              fit_flags: list[str] | None = None, seed: int = 0, study_name: str | None = None) -> Path:
    """Run the study of ``sweep_file`` until it has ``trials`` finished trials; returns the output
    directory (leaderboard.csv, metric_vs_params.png, best.yaml)."""
    import optuna
    from optuna.storages import RDBStorage

    from lightning_tt.lightning_cli import lightning_cli

    if trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    sweep = read_sweep(sweep_file)
    name = study_name or Path(sweep_file).stem
    out_dir = Path(out or Path("runs") / "sweeps" / name)
    # Checked before any trial: no output may be, or lie in, the sweep file or what fit reads (a --config
    # best.yaml of an earlier sweep, given after --, would otherwise be rewritten under its trials).
    inputs = {"sweep file": sweep_file, **flag_inputs([*base_flags(sweep), *(fit_flags or [])])}
    for file in ("leaderboard.csv", "best.yaml", "metric_vs_params.png", "study.db"):
        Output(out_dir / file, "file", option="--out", inputs=inputs, overwrite=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out_dir / 'study.db'}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Retry, once, a trial whose process stopped sending heartbeats (killed). Optuna 4.9 renamed
            # both the callback and the storage's argument.
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(1)}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(1)}
            backend = RDBStorage(url, heartbeat_interval=30, grace_period=120, **retry)
    except Exception as err:  # sqlalchemy's errors: a bad URL or an unwritable file
        raise InputError(f"--storage {url}: cannot open the study: {err}") from err
    metric, goal = sweep["metric"]["name"], sweep["metric"].get("goal", "minimize")
    direction = "maximize" if goal == "maximize" else "minimize"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported once, by main
    study = optuna.create_study(study_name=name, storage=backend, direction=direction, load_if_exists=True,
                                sampler=_sampler(sweep, seed), pruner=_pruner(sweep))
    if study.direction.name.lower() != direction:
        raise InputError(f"--storage {url}: study {name!r} exists and {study.direction.name.lower()}s; the sweep "
                         f"file says {goal}")
    params = sweep["parameters"]
    space = {key: distribution(key, spec, sweep_file) for key, spec in params.items()}
    if sweep["method"] == "grid":  # every combination once, in the file's order, and no more
        points = grid_points(sweep)
        if trials > len(points):
            print(f"note: the grid has {len(points)} combinations; running {len(points)} trials, not {trials}")
            trials = len(points)
        if not study.trials:
            for point in points:
                study.enqueue_trial({key: _choice(value) for key, value in point.items()})
    base, extra = base_flags(sweep), list(fit_flags or [])
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective(trial):
        drawn = {key: flag_value(params[key], _suggest(trial, key, dist)) for key, dist in space.items()}
        flags = [*base, *(f"--{key}={value}" for key, value in drawn.items()), *extra]
        trial.set_user_attr("flags", drawn)
        callback = _pruning_callback(trial, metric, direction == "maximize")
        start = time.perf_counter()
        group = os.environ.get("WANDB_RUN_GROUP")
        os.environ["WANDB_RUN_GROUP"] = name  # every trial's W&B run in the study's group
        try:
            cli = lightning_cli(["fit", *flags], callbacks=[callback])
        except SystemExit as err:  # the argument parser refused a flag and said why above
            raise InputError(f"fit refused trial {trial.number}'s flags (see above): {' '.join(flags)}") from err
        finally:
            if group is None:
                os.environ.pop("WANDB_RUN_GROUP", None)
            else:
                os.environ["WANDB_RUN_GROUP"] = group
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            trial.set_user_attr("values", callback.values)
            trial.set_user_attr("run_dir", callback.run_dir)
            trial.set_user_attr("cases", callback.cases)
        if not callback.values:
            logged = sorted(k for k in cli.trainer.callback_metrics if k.startswith("val/"))
            raise InputError(f"{sweep_file}: metric {metric!r} was never logged by fit; validation logs "
                             f"{', '.join(logged) or 'nothing'}")
        return max(callback.values) if direction == "maximize" else min(callback.values)

    def report(study, trial):
        write_outputs(study, sweep, out_dir)

    done = sum(t.state in finished for t in study.trials)
    try:
        if done < trials:
            study.optimize(objective, n_trials=trials - done, catch=(),
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished), report])
    finally:  # also after a failed or interrupted trial: the leaderboard shows it
        write_outputs(study, sweep, out_dir)
    return out_dir


def write_outputs(study, sweep: dict, out_dir: Path) -> None:
    """leaderboard.csv (best first), metric_vs_params.png and best.yaml of the study so far."""
    import optuna

    metric, keys = sweep["metric"]["name"], list(sweep["parameters"])
    state = optuna.trial.TrialState
    shown = [t for t in study.trials if t.state in (state.COMPLETE, state.PRUNED, state.FAIL)]
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    shown.sort(key=lambda t: (t.state != state.COMPLETE, sign * (t.value if t.value is not None else 0), t.number))
    intervals = _intervals(shown, metric)
    with Output(out_dir / "leaderboard.csv", "file", overwrite=True).writing() as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["trial", "state", metric, "low", "high", "vs_best_low", "vs_best_high", "vs_best",
                             "epochs", *keys, "seconds", "run_dir"])
            for t in shown:
                flags = t.user_attrs.get("flags", t.params)
                writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                                 *intervals.get(t.number, [""] * 5),
                                 len(t.user_attrs.get("values", [])), *(flags.get(k, "") for k in keys),
                                 t.user_attrs.get("seconds", ""), t.user_attrs.get("run_dir", "")])
    complete = [t for t in shown if t.state == state.COMPLETE]
    if complete:
        best = complete[0]
        fragment: dict = {}
        for key, value in best.user_attrs.get("flags", best.params).items():
            node = fragment
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        text = (f"# Best trial {best.number} of sweep {study.study_name}: {metric} = {best.value:.6g}\n"
                + yaml.safe_dump(fragment, sort_keys=False))
        with Output(out_dir / "best.yaml", "file", overwrite=True).writing() as tmp:
            Path(tmp).write_text(text)
    _figure(shown, keys, metric, out_dir / "metric_vs_params.png")


def _intervals(trials: list, metric: str) -> dict[int, list]:
    """{trial number: [low, high, vs_best_low, vs_best_high, vs_best]}: the 95% user-clustered bootstrap
    interval of each complete trial's ``metric`` at its best epoch (its val_cases.parquet), and of its
    paired difference to the best trial (the first of ``trials``) on the same cases, ``vs_best`` =
    ``best`` (itself), ``noise`` (the difference's interval holds 0) or ``worse``/``better``. Empty when the
    metric has no per-case values (e.g. a loss) or a trial has no cases file."""
    import optuna
    import pyarrow.parquet as pq

    from lightning_tt.eval.intervals import case_columns, compare

    try:
        case_columns(metric)
    except InputError:
        return {}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("cases") and Path(t.user_attrs["cases"]).is_file()]
    if not complete:
        return {}
    tables = [pq.read_table(t.user_attrs["cases"]) for t in complete]
    names = [f"trial {t.number}" for t in complete]
    best = names[0]
    out = {}
    for t, name, table in zip(complete, names, tables):
        pair = pa.concat_tables([table, tables[0]]) if name != best else table
        try:
            found = compare(pair, metric, [name], reference=best)
        except InputError:  # not the same cases (another prepared directory): no paired difference
            found = compare(table, metric, [name])
            out[t.number] = [found.value[name].low, found.value[name].high, "", "", ""]
            continue
        d = found.difference[name]
        verdict = "best" if name == best else ("noise" if not d.excludes(0) else "better" if d.low > 0 else "worse")
        out[t.number] = [found.value[name].low, found.value[name].high, d.low, d.high, verdict]
    return out


def _figure(trials: list, keys: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.5 * rows), squeeze=False)
    for axis, key in zip(axes.ravel(), keys):
        states = (("COMPLETE", "tab:blue", "complete"), ("PRUNED", "tab:gray", "pruned (last value)"))
        for state, color, label in states:
            points = [(t.user_attrs.get("flags", t.params).get(key), t.value if t.value is not None else
                       (t.user_attrs.get("values") or [None])[-1]) for t in trials if t.state.name == state]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                xs = [x if isinstance(x, (int, float)) else str(x) for x, _ in points]
                axis.scatter(xs, [y for _, y in points], color=color, label=label, alpha=0.8)
        numeric = [t.user_attrs.get("flags", t.params).get(key) for t in trials]
        numeric = [x for x in numeric if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if numeric and min(numeric) > 0 and max(numeric) / min(numeric) > 20:
            axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.set_ylabel(metric)
    for axis in axes.ravel()[len(keys):]:
        axis.set_visible(False)
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    with Output(path, "file", overwrite=True).writing() as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
