"""Every sweeps/*.yaml: its parameters are drawn with a small local sampler (the distributions W&B
sweeps use) and its command runs through the CLI on tiny data, so a sweep never fails on a mistyped
key or an impossible value."""

import math
import random
from pathlib import Path

import pytest
import yaml

from lightning_tt.cli import main

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


def draw(spec: dict, rng: random.Random):
    """One value of a W&B sweep parameter spec."""
    if "values" in spec:
        return rng.choice(spec["values"])
    if "value" in spec:
        return spec["value"]
    kind = spec.get("distribution", "uniform")
    lo, hi = spec["min"], spec["max"]
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if kind == "int_uniform":
        return rng.randint(lo, hi)
    if kind == "uniform":
        return rng.uniform(lo, hi)
    raise ValueError(f"distribution {kind!r} is not handled by this sampler")


def command(sweep: dict, params: dict) -> list[str]:
    """The run's argv after the program name: ${args} becomes --key=value per parameter."""
    argv = []
    for part in sweep["command"]:
        if part == "${args}":
            argv += [f"--{key}={value}" for key, value in params.items()]
        elif part not in ("${env}", "${interpreter}", "${program}", sweep["program"]):
            argv.append(part)
    return argv


@pytest.fixture
def prepared(tiny_prepared):
    return tiny_prepared


def test_there_is_a_sweep():
    assert SWEEPS


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_sweep_runs(path, prepared, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("bayes", "random", "grid") and sweep["metric"]["goal"] == "maximize"
    assert sweep["metric"]["name"] == "val/next/exact_recall@100"
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # the command's config path is repo-relative
    rng = random.Random(0)
    for _ in range(2):
        params = {key: draw(spec, rng) for key, spec in sweep["parameters"].items()}
        argv = command(sweep, params) + [
            f"--data.data_dir={prepared}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
            "--retrieval.nlist=16",
        ]
        main(argv)
    configs = sorted(tmp_path.rglob("config.yaml"))
    assert len(configs) == 2 and configs[0].parent != configs[1].parent  # one directory per run
