"""lightning-tt fit / test / resume / predict through LightningCLI on a tiny synthetic dataset, with a
real config (tests/conf/tiny.yaml)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lightning_tt.cli import main
from lightning_tt.data.prepared import PreparedData

CONF = Path(__file__).parent / "conf" / "tiny.yaml"


@pytest.fixture
def prepared(tiny_prepared):
    return tiny_prepared


def fit(prepared, runs, *extra):
    main(["fit", "--config", str(CONF), "--data.data_dir", str(prepared),
          "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false", *extra])
    return sorted((runs / "tiny").iterdir())[-1]


def test_fit_saves_config_next_to_checkpoints_and_links_sizes(prepared, tmp_path):
    run = fit(prepared, tmp_path)
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["data_dir"] == str(prepared) and "num_items" not in config["model"]  # linked, not repeated
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # primitives only
    meta = yaml.safe_load((prepared / "meta.json").read_text())
    assert ckpt["hyper_parameters"]["num_items"] == meta["vocab"]["num_items"]  # linked from the DataModule
    assert ckpt["hyper_parameters"]["data_dir"] == str(prepared)
    assert int(ckpt["state_dict"]["estimator.step"]) == 4
    assert "estimator.gap" in ckpt["state_dict"] and "table.audio" not in ckpt["state_dict"]
    second = fit(prepared, tmp_path)  # a second run in the same place gets its own directory
    assert second != run and (second / "config.yaml").is_file()


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resuming into a new version directory
def test_test_in_a_fresh_process_and_resume(prepared, tmp_path, capsys):
    run = fit(prepared, tmp_path)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    baselines = tmp_path / "baselines.json"  # as `lightning-tt baselines --split test --k 10 100` writes it
    baselines.write_text(json.dumps({"iALS": {"test/next/recall@10": 0.1, "test/next/recall@100": 0.2}}))
    result = subprocess.run(
        [sys.executable, "-m", "lightning_tt.cli", "test", "--config", str(run / "config.yaml"),
         "--ckpt_path", str(best),
         "--trainer.enable_progress_bar", "false", "--report.baselines_file", str(baselines),
         "--retrieval.index.kind", "ivfflat", "--retrieval.index.nlist", "16", "--retrieval.index.nprobe", "1",
         "--retrieval.index.target_overlap", "0.99"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/next/exact_recall@100" in result.stdout
    written = Path(result.stdout.split("metrics written to ")[1].split()[0])
    metrics = json.loads(written.read_text())  # the test run's directory, beside its config.yaml
    assert (written.parent / "config.yaml").is_file()
    for figure in ("recall_at_k.png", "ann_tradeoff.png"):  # PNG files, beside metrics.json
        assert (written.parent / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every test case's exact value, beside metrics.json: their means are the exact metrics.
    cases = pq.read_table(written.parent / "test_cases.parquet").to_pylist()
    nxt = [row for row in cases if row["protocol"] == "next"]
    paper = [row for row in cases if row["protocol"] == "paper"]
    assert [row["case"] for row in nxt] == list(range(len(nxt))) and {row["system"] for row in cases} == {"TwoTower"}
    assert sum(row["recall@100"] for row in nxt) / len(nxt) == pytest.approx(metrics["test/next/exact_recall@100"])
    assert sum(row["recall@10"] for row in paper) / len(paper) == pytest.approx(metrics["test/paper/exact_recall@10"])
    assert sum(row["dcg@10"] for row in paper) / sum(row["idcg@10"] for row in paper) == pytest.approx(
        metrics["test/paper/exact_ndcg@10"])
    user_ids = np.asarray(PreparedData(prepared)["user_ids"])
    assert {row["uid"] for row in cases} <= set(user_ids[2:].tolist()) and nxt[0]["dcg@10"] is None
    for name in ("test/next/recall@100", "test/next/exact_recall@100", "test/next/ann_exact_ratio@100",
                 "test/paper/ndcg@10", "test/paper/exact_coverage@100", "test/index/build_seconds"):
        assert name in metrics, name
    # Calibrated: one list of 16 holds few of the exact top 100, so more were probed, and the lists kept
    # (almost) all of it.
    assert metrics["test/index/nprobe"] > 1 and metrics["test/next/ann_exact_ratio@100"] > 0.95

    with pytest.raises(SystemExit) as exit_info:  # a bad baselines file stops test before its loop
        main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), "--trainer.enable_progress_bar",
              "false", "--report.baselines_file", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 1 and "missing.json" in capsys.readouterr().err

    last = str(run / "checkpoints" / "last.ckpt")
    resumed = fit(prepared, tmp_path, "--ckpt_path", last, "--trainer.max_epochs", "2")
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8
    assert int(ckpt["state_dict"]["estimator.step"]) == 8  # the estimator continued, not restarted


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resuming into a new version directory
def test_sparse_embeddings_fit_and_resume(prepared, tmp_path):
    run = fit(prepared, tmp_path, "--model.sparse_embeddings", "true")
    resumed = fit(prepared, tmp_path, "--model.sparse_embeddings", "true", "--ckpt_path",
                  str(run / "checkpoints" / "last.ckpt"), "--trainer.max_epochs", "2")
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8  # batches, not optimizer steps
    assert len(ckpt["optimizer_states"]) == 2  # SparseAdam (tables) and Adam (the rest)
    tables = ckpt["optimizer_states"][0]["state"]
    assert tables and all(s["exp_avg"].shape[1] == 8 for s in tables.values())  # rows of the 8-d tables


def test_predict_writes_top_k_to_parquet(prepared, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from lightning_tt.data.prepared import PreparedData
    from lightning_tt.lightning_cli import lightning_cli

    out_file = tmp_path / "top.parquet"
    cli = lightning_cli(["predict", "--config", str(CONF), "--data.data_dir", str(prepared),
                         "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                         "--predictions.output", str(out_file)])
    out = cli.trainer.predict_loop.predictions
    assert out[0]["items"].shape[1] == 100 and (out[0]["items"] >= 2).all()
    assert torch.all(out[0]["scores"][:, :-1] >= out[0]["scores"][:, 1:])  # sorted
    table = pq.read_table(out_file).to_pydict()
    data = PreparedData(prepared)
    assert len(table["case"]) == data.num_examples("test") and table["case"][:3] == [0, 1, 2]
    item_ids = np.asarray(data["item_ids"])
    assert table["item_ids"][0] == item_ids[out[0]["items"][0].numpy()].tolist()  # raw ids, best first
    assert all(len(row) == 100 for row in table["scores"])


def test_a_mistyped_option_fails_clearly(prepared, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONF), "--data.data_dir", str(prepared), "--model.temprature", "0.1"])
    assert exit_info.value.code != 0
    assert "temprature" in capsys.readouterr().err


def _config(tmp_path, edit) -> Path:
    """tests/conf/tiny.yaml changed by ``edit(config)``, written into tmp_path."""
    config = yaml.safe_load(CONF.read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


MISCONFIGURATIONS = {  # name: (extra flags, or a config edit; what the one line must hold)
    "unknown flag": (["--model.nonsense", "1"], ["--model.nonsense"]),
    "unknown key in a config": (lambda c: c["model"].update(nonsense=1), ["model.nonsense"]),
    "wrong type": (["--model.temperature", "abc"], ['"model.temperature"', "abc"]),
    "wrong type in a config": (lambda c: c["model"].update(temperature="abc"), ['"model.temperature"', "abc"]),
    "wrong type of a union": (["--trainer.max_epochs", "x"], ['"trainer.max_epochs"', "expected int or None, got x"]),
    "missing logger class": (["--trainer.logger.class_path", "no.such.Logger"],
                             ['"trainer.logger"', "'no.such.Logger': No module named 'no'"]),
    "unknown logger option": (["--trainer.logger.init_args.nonsense", "1"], ['"trainer.logger"', "'nonsense'"]),
    "missing callback class": (["--trainer.callbacks+=lightning.pytorch.callbacks.NoSuch"],
                               ['"trainer.callbacks"', "has no attribute 'NoSuch'"]),
    "missing callback class in a config": (
        lambda c: c["trainer"]["callbacks"].append({"class_path": "no.such.Callback"}),
        ['"trainer.callbacks"', "'no.such.Callback'"]),
    "bad interpolation": (lambda c: c["model"].update(output_dim="${model.nope}"),
                          ["edited.yaml: model.output_dim: Interpolation key 'model.nope' not found"]),
}


@pytest.mark.parametrize("case", MISCONFIGURATIONS)
def test_a_misconfiguration_is_one_line_naming_the_key(prepared, tmp_path, capsys, case):
    """As the other commands' mistyped options: status 2, one line naming the key and pointing at
    --help; no usage block, no traceback, nothing run."""
    change, says = MISCONFIGURATIONS[case]
    config = _config(tmp_path, change) if callable(change) else CONF
    args = ["fit", "--config", str(config), "--data.data_dir", str(prepared), "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"), *([] if callable(change) else change)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("lightning-tt fit: error: ") and err.strip().endswith("(see lightning-tt fit --help)")
    assert all(part in err for part in says), err
    assert not (tmp_path / "logs").exists()


def test_a_misconfiguration_on_the_command_line_prints_only_its_line(prepared, tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_tt.cli", "fit", "--config", str(CONF), "--data.data_dir",
                             str(prepared), "--model.temperature", "abc"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 2
    assert result.stderr == ('lightning-tt fit: error: Parser key "model.temperature": Expected a <class \'float\'>. '
                             'Got value: abc (see lightning-tt fit --help)\n')


@pytest.mark.parametrize("where", ["not prepared", "missing"])
def test_an_unprepared_data_dir_is_one_line_naming_the_option(tiny_prepared, tmp_path, capsys, where):
    data = tiny_prepared.parent / "raw" if where == "not prepared" else tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONF), "--data.data_dir", str(data), "--trainer.logger.init_args.save_dir",
              str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lightning-tt: error: --data.data_dir {data}: {data / 'meta.json'}: not found")
    assert not (tmp_path / "logs").exists()


def test_configs_in_the_repository_parse(prepared):
    from lightning_tt.lightning_cli import CONFIGS, lightning_cli

    for config in sorted(CONFIGS.glob("*.yaml")):
        cli = lightning_cli(["--config", str(config), "--data.data_dir", str(prepared),
                             "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"], run=False)
        assert cli.model.hparams.num_items == cli.datamodule.num_items
        assert cli.model.hparams.output_dim == cli.model.hparams.embedding_dim  # ${model.embedding_dim}


def test_a_config_may_interpolate_its_own_values(prepared, tmp_path):
    """LightningCLI runs in omegaconf mode: ${...} in a config resolves to the value it names when the
    file is read (so a later flag for the named value does not move it)."""
    from omegaconf import OmegaConf

    from lightning_tt.lightning_cli import CONFIGS, lightning_cli

    config = yaml.safe_load(CONF.read_text())
    reference = "${model.embedding_dim}"
    config["model"].update(embedding_dim=12, output_dim=reference, hidden_dims=[reference])
    path = tmp_path / "interpolated.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = lightning_cli(["--config", str(path), "--data.data_dir", str(prepared)], run=False)
    assert cli.model.hparams.output_dim == 12 and list(cli.model.hparams.hidden_dims) == [12]
    cli = lightning_cli(["--config", str(path), "--data.data_dir", str(prepared), "--model.embedding_dim", "6"],
                        run=False)
    assert cli.model.hparams.embedding_dim == 6 and cli.model.hparams.output_dim == 12
    # The demo config's own references: its data lives under its logger's save_dir.
    demo = OmegaConf.to_container(OmegaConf.load(CONFIGS / "demo.yaml"), resolve=True)
    assert demo["data"]["data_dir"] == demo["trainer"]["logger"]["init_args"]["save_dir"] + "/prepared"
    assert demo["model"]["output_dim"] == demo["model"]["embedding_dim"] == 64


def test_export_and_recommend(prepared, tmp_path, capsys):
    import numpy as np

    from lightning_tt.data.prepared import PreparedData
    from lightning_tt.serve import Recommender, _query_batch, load_model, recommend

    run = fit(prepared, tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "export"), "--index.kind", "flat"])
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    data = PreparedData(prepared)
    assert meta["items"] == data.vocab["num_items"] - 2 and meta["factory"] == "Flat"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temporary left
    assert meta["calibration"] is None and meta["nprobe"] is not None
    capsys.readouterr()
    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "calibrated"), "--index.kind", "ivfflat",
          "--index.nlist", "16", "--index.nprobe", "1", "--index.target_overlap", "0.99"])
    calibrated = json.loads((tmp_path / "calibrated" / "export.json").read_text())
    nprobe, _, overlap = calibrated["calibration"][-1]  # on the validation window's queries
    assert calibrated["nprobe"] == nprobe > 1 and (overlap >= 0.99 or nprobe == 16)
    import faiss

    stored = faiss.read_index(str(tmp_path / "calibrated" / "index.faiss"))
    assert faiss.extract_index_ivf(stored).nprobe == nprobe  # the file serves with the calibrated value
    assert f"nprobe {nprobe}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an existing export is replaced only with --overwrite
        main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "export"), "--index.kind", "flat"])
    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "export"), "--index.kind", "flat", "--overwrite"])

    user, seed = int(data["user_ids"][2]), int(data["item_ids"][5])
    items, notes = recommend(tmp_path / "export", ckpt, user, seed, k=5)
    assert not notes and len(items) == 5
    # A flat index must return exactly the model's own best items, mapped back to raw ids.
    model, _ = load_model(ckpt)
    embeddings = model.retrieval_items()[2:]
    query = model(_query_batch(Recommender(tmp_path / "export", ckpt).gather, 2, 5))
    best = (embeddings @ query[0]).topk(5).indices.numpy() + 2
    assert [i for i, _ in items] == np.asarray(data["item_ids"])[best].tolist()

    main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", ckpt, "--user", "987654321",
          "--seed_item", "123456789", "--k", "3"])
    out = capsys.readouterr().out
    assert "unknown user 987654321" in out and "unknown seed item 123456789" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 3  # still 3 answers

    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--index", str(tmp_path / "nowhere"), "--ckpt_path", ckpt, "--user", "1",
              "--seed_item", "1"])
    assert exit_info.value.code == 1 and "no export.json" in capsys.readouterr().err

    # Many requests in one call: the same lists as one request at a time, unknown ids counted.
    import pyarrow.parquet as pq

    requests = tmp_path / "requests.csv"
    other = int(data["user_ids"][3])
    requests.write_text(f"user,seed_item\n{user},{seed}\n987654321,{seed}\n{other},123456789\n")
    lists = tmp_path / "top.parquet"
    main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", ckpt, "--batch", str(requests),
          "--out", str(lists), "--k", "5"])
    assert "3 requests (1 unknown users, 1 unknown seed items) at" in capsys.readouterr().out
    table = pq.read_table(lists).to_pylist()
    assert [(row["user"], row["seed_item"]) for row in table] == [(user, seed), (987654321, seed), (other, 123456789)]
    assert table[0]["item_ids"] == [i for i, _ in items]
    assert table[0]["scores"] == pytest.approx([s for _, s in items], abs=1e-5)
    for row, (u, s) in zip(table[1:], ((987654321, seed), (other, 123456789))):
        single, _ = recommend(tmp_path / "export", ckpt, u, s, k=5)
        assert row["item_ids"] == [i for i, _ in single]
    for args, says in ((["--out", str(lists)], "exists; pass --overwrite"), ([], "needs --out"),
                       (["--out", str(tmp_path / "x.parquet"), "--user", "1"], "no --user")):
        with pytest.raises(SystemExit):
            main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", ckpt, "--batch", str(requests),
                  *args])
        assert says in capsys.readouterr().err
    inside = prepared / "top.parquet"  # the checkpoint's data is an input too
    with pytest.raises(SystemExit):
        main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", ckpt, "--batch", str(requests),
              "--out", str(inside)])
    assert "lies inside the input" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "bad.csv").write_text("uid,seed_item\n1,2\n")
    with pytest.raises(SystemExit):
        main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", ckpt, "--batch",
              str(tmp_path / "bad.csv"), "--out", str(tmp_path / "y.parquet")])
    assert "no column 'user'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_wandb_offline_runs_get_their_own_directories(prepared, tmp_path, monkeypatch):
    """With the configs' WandbLogger, offline: each command is its own W&B run with its own directory
    (config.yaml, checkpoints, metrics.json), and the W&B files are written locally."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # W&B keeps its settings process-wide: start from the environment set above
    args = ["--config", str(CONF), "--data.data_dir", str(prepared), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.project", "tt"]
    main(["fit", *args])
    main(["fit", *args])
    runs = sorted(p.parent for p in (tmp_path / "tt").glob("*/config.yaml"))
    assert len(runs) == 2 and all((run / "checkpoints" / "last.ckpt").is_file() for run in runs)
    main(["test", *args, "--ckpt_path", str(runs[0] / "checkpoints" / "last.ckpt")])
    assert len(list((tmp_path / "tt").glob("*/metrics.json"))) == 1
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 3
    wandb.teardown()


def _cli(cwd, *args) -> subprocess.CompletedProcess:
    """``lightning-tt ARGS`` in a fresh process (DDP's launcher re-runs that command once per rank)."""
    result = subprocess.run([sys.executable, "-m", "lightning_tt.cli", *args], capture_output=True, text=True,
                            cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


NEW_INPUTS = ["--model.history_encoder", "attention", "--model.use_play_ratio", "true", "--data.feedback", "3",
              "--model.paper_seed", "false", "--data.exclude_seen", "true", "--model.popularity_weight", "1",
              "--model.popularity_prior", "counts", "--model.popularity_half_life", "2",
              "--model.seedless_popularity_weight", "3"]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_the_query_inputs_of_part_two_survive_checkpoint_reuse(prepared, tmp_path, capsys):
    """Attention over the history with play ratios, recent likes and dislikes, horizon targets, seed
    dropout, the popularity term and lists without the user's past: fit, resume, weights_only loading,
    test, export and recommend all read them back."""
    import numpy as np

    from lightning_tt.data.prepared import PreparedData
    from lightning_tt.serve import Recommender, _query_batch

    run = fit(prepared, tmp_path, *NEW_INPUTS, "--data.target_horizon", "86400", "--model.seed_dropout", "0.3")
    ckpt = run / "checkpoints" / "last.ckpt"
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (hparams["history"], hparams["feedback"], hparams["history_encoder"]) == (5, 3, "attention")  # linked
    assert hparams["exclude_seen"] is True and hparams["popularity_weight"] == 1
    assert (hparams["popularity_prior"], hparams["popularity_half_life"], hparams["seedless_popularity_weight"]) == (
        "counts", 2, 3)
    resumed = fit(prepared, tmp_path, *NEW_INPUTS, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "2")
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    main(["test", "--config", str(CONF), "--data.data_dir", str(prepared), "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "test"), *NEW_INPUTS, "--ckpt_path", str(ckpt)])
    assert "metrics written to" in capsys.readouterr().out
    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "export"), "--index.kind", "flat"])
    served = Recommender(tmp_path / "export")  # the checkpoint that export.json names
    model, data, gather = served.model, served.data, served.gather
    assert served.ckpt_path == ckpt.resolve() and served.exclude_seen
    from lightning_tt.data.popularity import log_prior

    # The counts prior is rebuilt from the prepared data when the checkpoint is loaded, not stored in it.
    assert torch.equal(model.log_popularity, torch.from_numpy(log_prior(PreparedData(prepared), 2.0)))
    assert (gather.history, gather.feedback) == (5, 3)  # what training used
    requests = tmp_path / "requests.csv"
    users = [int(u) for u in np.asarray(PreparedData(prepared)["user_ids"])[2:6]]
    requests.write_text("user,seed_item\n" + "".join(f"{u},{int(data['item_ids'][5])}\n" for u in users))
    main(["recommend", "--index", str(tmp_path / "export"), "--ckpt_path", str(ckpt), "--batch", str(requests),
          "--out", str(tmp_path / "top.parquet"), "--k", "5"])
    import pyarrow.parquet as pq

    top = pq.read_table(tmp_path / "top.parquet").column("item_ids").to_pylist()
    batch = _query_batch(gather, np.arange(2, 6), np.full(4, 5))
    scores = model(batch) @ model.retrieval_items().T
    assert model.retrieval_dim == 9 and (batch["seen_items"] > 0).any()  # output_dim 8 and the popularity column
    scores[:, :2] = -torch.inf
    scores.scatter_(1, batch["seen_items"], -torch.inf)  # the user's positives of every split: all past now
    best = scores.topk(5, dim=1).indices.numpy()
    assert top == np.asarray(data["item_ids"])[best].tolist()  # the exact index returns the model's own lists


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_two_processes_give_the_numbers_of_one(prepared, tmp_path):
    """fit, test and predict under 2-process DDP (gloo on the CPU), with the Faiss callback on. With
    eval_batch_size 1024 the paper lists make a single batch, so rank 1 sees none: every collective
    must still be entered by both ranks. The test metrics of 2 processes must equal those of 1."""
    common = ["--config", str(CONF), "--data.data_dir", str(prepared), "--trainer.enable_progress_bar", "false",
              "--trainer.strategy", "ddp", "--data.eval_batch_size", "1024"]
    _cli(tmp_path, "fit", *common, "--trainer.devices", "2", "--trainer.logger.init_args.save_dir", "fit",
         "--trainer.callbacks.monitor", "val/next/recall@100",  # an ANN value, logged on every rank
         "--model.sparse_embeddings", "true",  # DDP reduces the tables' sparse gradients too
         *NEW_INPUTS)
    ckpt = str(next((tmp_path / "fit" / "tiny").glob("*/checkpoints/last.ckpt")))
    metrics = {}
    for devices in (1, 2):
        out = _cli(tmp_path, "test", *common, *NEW_INPUTS, "--trainer.devices", str(devices), "--ckpt_path", ckpt,
                   "--retrieval.index.kind", "flat", "--trainer.logger.init_args.save_dir", f"test{devices}").stdout
        metrics[devices] = json.loads((tmp_path / out.split("metrics written to ")[1].split()[0]).read_text())
    assert metrics[1].keys() == metrics[2].keys()
    assert "test/paper/ndcg@10" in metrics[2] and "test/next/ann_exact_ratio@100" in metrics[2]
    for name, value in metrics[1].items():
        if "/index/" not in name:  # timings differ
            assert metrics[2][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert metrics[2]["test/next/ann_exact_ratio@100"] == pytest.approx(1.0)  # a flat index is exact

    _cli(tmp_path, "predict", *common, *NEW_INPUTS, "--trainer.devices", "2", "--ckpt_path", ckpt,
         "--trainer.logger.init_args.save_dir", "predict", "--predictions.output", str(tmp_path / "top.parquet"))
    import pyarrow.parquet as pq

    from lightning_tt.data.prepared import PreparedData

    table = pq.read_table(tmp_path / "top.parquet")  # one file: rank zero merged the parts
    assert sorted(table.column("case").to_pylist()) == list(range(PreparedData(prepared).num_examples("test")))
    assert all(len(row) == 100 for row in table.column("item_ids").to_pylist())
    assert [p.name for p in tmp_path.iterdir() if "top" in p.name] == ["top.parquet"]  # no part left behind


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(cwd, probe_dir, *args) -> list[subprocess.CompletedProcess]:
    """``lightning-tt ARGS --trainer.num_nodes 2 --trainer.devices 1`` as two processes started the way a
    cluster starts one per node: the same command with NODE_RANK 0 and 1 and a shared MASTER_ADDR/PORT."""
    port = str(_free_port())
    processes = []
    for node in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node),
               "RANK_PROBE_DIR": str(probe_dir), "PYTHONPATH": str(Path(__file__).parent)}
        env.pop("LOCAL_RANK", None)
        processes.append(subprocess.Popen([sys.executable, "-m", "lightning_tt.cli", *args, "--trainer.num_nodes", "2",
                                           "--trainer.devices", "1", "--trainer.strategy", "ddp"], cwd=cwd, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_two_nodes_shard_by_global_rank_and_give_the_numbers_of_one(prepared, tmp_path):
    """fit and test as 2 nodes x 1 process (gloo): each node trains on its own half of the examples (by
    global rank), the frequency estimators stay identical, one process writes the run's files, and the
    test metrics equal those of a single process."""
    from lightning_tt.data.prepared import PreparedData

    probe = tmp_path / "probe"
    probe.mkdir()
    common = ["--config", str(CONF), "--data.data_dir", str(prepared), "--trainer.enable_progress_bar", "false",
              "--data.eval_batch_size", "1024"]
    _two_nodes(tmp_path, probe, "fit", *common, "--trainer.logger.init_args.save_dir", "fit",
               "--trainer.callbacks+=rank_probe.RankProbe", "--trainer.limit_train_batches", "null",
               "--trainer.max_epochs", "1")
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["global_rank"], r["node_rank"], r["local_rank"], r["world_size"]) for r in ranks] == [(0, 0, 0, 2),
                                                                                                     (1, 1, 0, 2)]
    assert [r["sampler"] for r in ranks] == [[0, 2], [1, 2]]
    first, second = (set(r["epoch0"]) for r in ranks)
    train = PreparedData(prepared).num_examples("train")
    assert not first & second and len(first) == len(second) and len(first | second) > train - 2 * 64 * 2
    assert ranks[0]["estimator"] == ranks[1]["estimator"]  # every node applies every node's items
    runs = list((tmp_path / "fit" / "tiny").iterdir())
    assert len(runs) == 1 and len(list(tmp_path.rglob("config.yaml"))) == 1  # one process wrote the run
    ckpt = str(runs[0] / "checkpoints" / "last.ckpt")
    metrics = {}
    test = ["test", *common, "--ckpt_path", ckpt, "--retrieval.index.kind", "flat"]
    found = _two_nodes(tmp_path, probe, *test, "--trainer.logger.init_args.save_dir", "test2")
    metrics[2] = json.loads((tmp_path / found[0].stdout.split("metrics written to ")[1].split()[0]).read_text())
    assert "metrics written to" not in found[1].stdout  # node 1 writes nothing
    out = _cli(tmp_path, *test, "--trainer.devices", "1", "--trainer.logger.init_args.save_dir", "test1").stdout
    metrics[1] = json.loads((tmp_path / out.split("metrics written to ")[1].split()[0]).read_text())
    assert metrics[1].keys() == metrics[2].keys()
    for name, value in metrics[1].items():
        if "/index/" not in name:
            assert metrics[2][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def option_help(help_text: str) -> dict[str, str]:
    """{--option: its help text, less the '(type: ..., default: ...)' jsonargparse adds} from --help output."""
    found, current = {}, None
    for line in help_text.splitlines():
        stripped = line.strip()
        if line.startswith("  --"):
            current = stripped.split()[0].split(",")[0]
            found[current] = " ".join(stripped.split()[1:])
        elif current is not None and line.startswith("      ") and stripped:
            found[current] += " " + stripped
        else:
            current = None
    return {name: text.split("(type:")[0].replace(name.split(".")[-1].upper(), "").strip()
            for name, text in found.items()}


def test_fit_help_explains_every_option_of_ours(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--help"])
    assert stop.value.code == 0
    options = option_help(capsys.readouterr().out)
    ours = {name: text for name, text in options.items()
            if name.startswith(("--model.", "--data.", "--retrieval.", "--report.", "--predictions."))}
    assert {"--model.temperature", "--data.batch_size", "--retrieval.index.nprobe", "--retrieval.warm_start",
            "--report.baselines_file", "--predictions.output"} <= set(ours)
    unexplained = sorted(name for name, text in ours.items() if len(text) < 10 and not name.endswith(".help"))
    assert unexplained == []
    assert "width d of the user, item, artist and album embeddings" in ours["--model.embedding_dim"]


def test_option_help_sees_an_option_without_help():
    text = ("options:\n  --model.a A           what a does (type: int, default: 1)\n"
            "  --model.b B           (type: int, default: 2)\n")
    assert option_help(text) == {"--model.a": "what a does", "--model.b": ""}


def test_fit_with_a_sequence_trained_query_tower(prepared, tmp_path):
    run = fit(prepared, tmp_path, "--model.query_tower", "sequence", "--model.history_encoder", "attention",
              "--model.sequence_positions", "3")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["query_tower"] == "sequence"
    metrics = (run / "metrics.csv").read_text() if (run / "metrics.csv").exists() else ""
    assert "val/next/exact_recall@100" in metrics


def test_a_sequence_tower_without_attention_is_one_line(prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(prepared, tmp_path, "--model.query_tower", "sequence")
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "model.query_tower sequence needs model.history_encoder attention" in err and "Traceback" not in err


def test_validate_on_a_sample_of_the_validation_window(prepared, tmp_path):
    """--data.val_cases: the validation epoch scores that many next-track cases and paper lists."""
    from lightning_tt.data.batches import case_sample
    from lightning_tt.lightning_cli import lightning_cli

    args = ["--config", str(CONF), "--data.data_dir", str(prepared), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]
    every = lightning_cli(args, run=False)
    every.trainer.validate(every.model, datamodule=every.datamodule)
    some = lightning_cli([*args, "--data.val_cases", "30"], run=False)
    some.model.load_state_dict(every.model.state_dict())
    some.trainer.validate(some.model, datamodule=some.datamodule)
    for protocol in ("next", "paper"):
        users, values = every.model.cases["val"][protocol]
        chosen = case_sample(len(users), 30)
        assert len(users) > 30 and len(some.model.cases["val"][protocol][0]) == 30
        assert np.array_equal(some.model.cases["val"][protocol][0], users[chosen])  # the same model, those cases
        np.testing.assert_allclose(some.model.cases["val"][protocol][1], values[chosen])
