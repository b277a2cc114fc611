"""Sweeps: every sweeps/*.yaml runs offline through ``lightning-tt sweep`` (the same file ``wandb sweep``
reads, so a mistyped key fails in CI, not in an agent), the W&B specs map to the Optuna distributions,
and an offline study prunes a trial that is clearly behind and resumes after a stop."""

import csv
import math
from pathlib import Path

import optuna.distributions as d
import pytest
import yaml

from lightning_tt.cli import main
from lightning_tt.errors import InputError
from lightning_tt.sweep import base_flags, distribution, flag_value, grid_points, read_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
        "--retrieval.index.nlist=16"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_sweep_file_runs_offline(path, tiny_prepared, tmp_path, monkeypatch):
    sweep = read_sweep(path)
    assert sweep["method"] in ("bayes", "random", "grid") and sweep["metric"]["goal"] == "maximize"
    assert sweep["metric"]["name"] == "val/next/exact_recall@100"
    assert base_flags(sweep) == ["--config", "configs/demo.yaml"]  # what `wandb agent` runs, less ${args}
    monkeypatch.chdir(ROOT)  # the command's config path is repo-relative
    out = tmp_path / "sweep"
    main(["sweep", str(path), "--trials", "2", "--out", str(out), "--",
          f"--data.data_dir={tiny_prepared}", f"--trainer.logger.init_args.save_dir={tmp_path}", *TINY])
    configs = sorted(tmp_path.rglob("config.yaml"))
    assert len(configs) == 2 and configs[0].parent != configs[1].parent  # one directory per run
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert float(rows[0][sweep["metric"]["name"]]) >= float(rows[1][sweep["metric"]["name"]])
    # Each trial's interval (users resampled) holds its value; the runner-up is compared with the best
    # on the same validation cases, paired.
    for row in rows:
        assert float(row["low"]) <= float(row[sweep["metric"]["name"]]) <= float(row["high"])
        assert (Path(row["run_dir"]) / "val_cases.parquet").is_file()
    assert rows[0]["vs_best"] == "best" and rows[1]["vs_best"] in ("noise", "worse")
    assert float(rows[1]["vs_best_low"]) <= float(rows[1][sweep["metric"]["name"]]) - float(
        rows[0][sweep["metric"]["name"]]) <= float(rows[1]["vs_best_high"])
    # Every drawn value is within its spec and reached the run's saved config.
    for row in rows:
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        for key, spec in sweep["parameters"].items():
            value = saved
            for part in key.split("."):  # retrieval.index.nprobe is nested one level deeper
                value = value[part]
            assert str(value) == row[key]
            if "values" in spec:
                assert value in spec["values"]
            else:
                assert spec["min"] <= value <= spec["max"]
    # best.yaml is a config fragment that --config accepts on top of the sweep's config.
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert set(best) <= {"model", "data", "retrieval", "trainer"}
    from lightning_tt.lightning_cli import lightning_cli

    cli = lightning_cli(["--config", "configs/demo.yaml", "--config", str(out / "best.yaml"),
                         f"--data.data_dir={tiny_prepared}"], run=False)
    for name, value in best["model"].items():  # every model value of the best trial reaches the model
        assert cli.model.hparams[name] == pytest.approx(value), name


def test_wandb_specs_map_to_optuna_distributions():
    assert distribution("a", {"values": [1, 2]}) == d.CategoricalDistribution([1, 2])
    assert distribution("a", {"value": "x"}) == d.CategoricalDistribution(["x"])
    assert distribution("a", {"min": 1, "max": 5}) == d.IntDistribution(1, 5)  # ints: int_uniform
    assert distribution("a", {"min": 0.1, "max": 0.5}) == d.FloatDistribution(0.1, 0.5)
    assert distribution("a", {"distribution": "int_uniform", "min": 2, "max": 9}) == d.IntDistribution(2, 9)
    assert distribution("a", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}) == \
        d.FloatDistribution(1e-4, 1e-2, log=True)
    found = distribution("a", {"distribution": "log_uniform", "min": 0, "max": 2})  # bounds are logs
    assert found.log and found.low == pytest.approx(1.0) and found.high == pytest.approx(math.e ** 2)
    assert distribution("a", {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25}) == d.FloatDistribution(0, 1)
    # q_* values are rounded to a multiple of q before they become flags; JSON choices decoded again.
    assert flag_value({"distribution": "q_uniform", "q": 0.25}, 0.61) == 0.5
    assert flag_value({"distribution": "q_log_uniform_values", "q": 8}, 29.0) == 32
    assert distribution("a", {"values": [[256], [512, 256]]}).choices == ("[256]", "[512, 256]")
    assert flag_value({"values": [[256], [512, 256]]}, "[512, 256]") == [512, 256]
    for spec, says in (({"distribution": "normal", "mu": 0, "sigma": 1, "min": 0, "max": 1}, "not supported"),
                       ({"min": 3, "max": 1}, "min must be below max"), ({"values": []}, "non-empty"),
                       ({"distribution": "log_uniform_values", "min": 0, "max": 1}, "min > 0"), (5, "mapping")):
        with pytest.raises(InputError, match="parameter a") as err:
            distribution("a", spec)
        assert says in str(err.value)


def test_grid_points_in_file_order():
    sweep = {"parameters": {"x": {"values": [1, 2]}, "y": {"value": "a"}, "z": {"values": [True, False]}}}
    assert grid_points(sweep) == [{"x": 1, "y": "a", "z": True}, {"x": 1, "y": "a", "z": False},
                                  {"x": 2, "y": "a", "z": True}, {"x": 2, "y": "a", "z": False}]
    with pytest.raises(InputError, match="w has a range"):
        grid_points({"parameters": {"w": {"min": 0.0, "max": 1.0}}})


@pytest.mark.parametrize("text, says", [("method: hyper\n", "method must be one of"),
                                        ("method: bayes\nmetric: {goal: up}\n", "metric must have a name"),
                                        ("method: random\nmetric: {name: m, goal: maximize}\nparameters: {}\n",
                                         "no parameters"),
                                        ("method: random\nmetric: {name: m, goal: maximize}\nparameters: {a: {values: "
                                         "[1]}}\ncommand: [lightning-tt, test]\n", "must run `lightning-tt fit")])
def test_a_bad_sweep_file_is_one_line(tmp_path, capsys, text, says):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--trials", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and str(path) in err and says in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_offline_study_prunes_a_trial_and_resumes(tiny_prepared, tmp_path, monkeypatch):
    """A grid of three learning rates, run as 2 trials, then resumed to 3: the third (1e-7, which
    learns nothing) is behind both others at its second epoch and is pruned."""
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/next/exact_recall@100", "goal": "maximize"},
        "parameters": {"model.learning_rate": {"values": [0.01, 0.005, 1.0e-7]}},
        "command": ["${env}", "lightning-tt", "fit", "--config", str(ROOT / "tests/conf/tiny.yaml"), "${args}"]}))
    out, db = tmp_path / "out", tmp_path / "study.db"
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    flags = ["--", f"--data.data_dir={tiny_prepared}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
             "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"]
    main(["sweep", str(sweep), "--trials", "2", "--out", str(out), "--storage", f"sqlite:///{db}", *flags])
    first = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert sorted(row["model.learning_rate"] for row in first) == ["0.005", "0.01"]
    main(["sweep", str(sweep), "--trials", "3", "--out", str(out), "--storage", f"sqlite:///{db}", *flags])
    rows = {row["model.learning_rate"]: row for row in csv.DictReader((out / "leaderboard.csv").open())}
    assert {lr: row["state"] for lr, row in rows.items()} == {"0.01": "complete", "0.005": "complete",
                                                               "1e-07": "pruned"}
    assert rows["0.01"]["trial"] == "0" and rows["1e-07"]["trial"] == "2"  # resumed: no trial run twice
    import optuna

    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3 and study.best_trial.params["model.learning_rate"] in (0.01, 0.005)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {"model": {"learning_rate": study.best_trial.params["model.learning_rate"]}}
    assert (out / "metric_vs_params.png").stat().st_size > 0
    # Asking again for 3 finished trials runs nothing.
    main(["sweep", str(sweep), "--trials", "3", "--out", str(out), "--storage", f"sqlite:///{db}", *flags])
    assert len(optuna.load_study(study_name="grid", storage=f"sqlite:///{db}").trials) == 3


def test_a_fit_flag_that_fit_refuses_stops_the_sweep_in_one_line(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "method": "random", "metric": {"name": "val/next/exact_recall@100", "goal": "maximize"},
        "parameters": {"model.temperature": {"values": [0.1]}},
        "command": ["lightning-tt", "fit", "--config", str(ROOT / "tests/conf/tiny.yaml"), "${args}"]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--trials", "1", "--out", str(tmp_path / "out"), "--", "--model.lerning_rate", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "lightning-tt: error: fit refused trial 0's flags" in err
    assert "Traceback" not in err
    rows = list(csv.DictReader((tmp_path / "out" / "leaderboard.csv").open()))
    assert [row["state"] for row in rows] == ["fail"]


def test_no_sweep_output_can_overwrite_what_fit_reads(tmp_path, capsys):
    """Starting a second sweep from the first one's best.yaml, in the same --out, would rewrite that
    config under its own trials: refused before any trial, naming the option."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "best.yaml").write_text("model:\n  temperature: 0.1\n")
    before = (out / "best.yaml").read_bytes()
    for flags in (["--config", str(out / "best.yaml")], [f"--data.data_dir={out}"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["sweep", str(SWEEPS[0]), "--trials", "1", "--out", str(out), "--", *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and ("is the input" in err or "lies inside the input" in err), err
    assert (out / "best.yaml").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["best.yaml"]
