"""Hostile use of every command: nothing an input holds is ever lost (checked byte for byte), a wrong
combination or a degenerate request is refused instead of giving a wrong number, and a user's mistake
is one line naming the file or option with exit status 1, while a bug keeps its traceback.

Kept fast: the hand-worked raw data, the session's tiny prepared set and three 4-step trainings.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lightning_tt.cli import main
from lightning_tt.data import schema
from lightning_tt.data.prepare import SplitConfig, prepare
from tests.helpers import tree

CONF = Path(__file__).parent / "conf" / "tiny.yaml"
# Checkpoints are read from another run's directory on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The dirpath has changed")


def fails(capsys, *args) -> str:
    """Run ``lightning-tt ARGS``; it must exit with status 1 and print one error line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lightning-tt: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def hidden(directory: Path) -> list[str]:
    """Temporaries and set-aside copies (names starting with '.') left in ``directory``."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("."))


# -- trained models shared by the tests below ---------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_prepared, tmp_path_factory):
    """Three 4-step trainings: ``a`` and ``b`` (another seed) on the session's tiny data, ``c`` on the
    same raw files prepared with other options (same sizes, another fingerprint)."""
    root = tmp_path_factory.mktemp("runs")
    other = root / "other"
    prepare(tiny_prepared.parent / "raw", other, config=SplitConfig(test_days=2, val_days=2, min_played_pct=60),
            progress=False)

    def fit(name, data, *extra):
        main(["fit", "--config", str(CONF), "--data.data_dir", str(data), "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(root / name), *extra])
        return next((root / name).glob("tiny/*/checkpoints/last.ckpt"))

    return {"a": fit("a", tiny_prepared), "b": fit("b", tiny_prepared, "--seed_everything", "1"),
            "c": fit("c", other), "data": tiny_prepared, "other": other, "root": root}


# -- data loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "through flat/..", "raw through flat/..", "inside", "around"])
def test_prepare_never_destroys_its_raw_input(hand_raw, tmp_path, capsys, spelling):
    out, raw = {
        "same": (hand_raw, hand_raw),
        "through flat/..": (hand_raw / "flat" / "..", hand_raw),
        "raw through flat/..": (hand_raw, hand_raw / "flat" / ".."),
        "inside": (hand_raw / "prepared", hand_raw),
        "around": (tmp_path, hand_raw),
    }[spelling]
    before = tree(hand_raw)
    line = fails(capsys, "data", "prepare", "--raw", raw, "--out", out, "--overwrite", "--audio_dim", "4")
    assert f"--out {out}:" in line and "the input" in line and "(--raw)" in line
    assert tree(hand_raw) == before and hidden(hand_raw) == [] and hidden(hand_raw.parent) == []


def test_export_never_destroys_the_run_it_reads(runs, capsys):
    ckpt = runs["a"]
    run = ckpt.parent.parent
    before, data_before = tree(run), tree(runs["data"])
    for out in (run, ckpt.parent, ckpt, runs["data"], runs["data"] / "export"):
        line = fails(capsys, "export", "--ckpt_path", ckpt, "--out", out, "--overwrite", "--index.kind", "flat")
        assert f"--out {out}:" in line and "the input" in line
    assert tree(run) == before and tree(runs["data"]) == data_before
    assert hidden(run) == [] and hidden(run.parent) == []


def test_synth_replaces_an_existing_directory_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["data", "synth", "--out", out, "--rows", "600", "--users", "20", "--items", "200", "--days", "5"]
    main([str(a) for a in args])
    first = tree(out)
    assert "exists; pass --overwrite" in fails(capsys, *args)
    assert tree(out) == first
    main([str(a) for a in args] + ["--overwrite", "--seed", "1"])  # its own output: replaced
    assert (out / "flat" / "600" / "multi_event.parquet").is_file() and tree(out) != first
    assert hidden(tmp_path) == []


@pytest.fixture
def not_outputs(runs, tmp_path):
    """Directories no command may replace (copies, so that a failure cannot damage the shared runs): a
    fit run's log directory (checkpoints/, config.yaml, metrics.csv), a prepared dataset, raw data in
    the Yambda layout that synth did not write (as downloaded), and a directory of someone's files."""
    run = shutil.copytree(runs["a"].parent.parent, tmp_path / "logs" / "tiny" / "version_0")
    prepared = shutil.copytree(runs["other"], tmp_path / "prepared")
    raw = shutil.copytree(runs["data"].parent / "raw", tmp_path / "downloaded",
                          ignore=shutil.ignore_patterns("synth.json"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "precious.txt").write_text("keep")
    return {"run": run, "prepared": prepared, "raw": raw, "notes": notes}


def test_export_never_replaces_a_directory_that_is_not_an_export(runs, not_outputs, tmp_path, capsys):
    """--ckpt_path a copy of the checkpoint, so the output overlaps no input: --out a run's directory
    used to delete that run's checkpoints with --overwrite."""
    ckpt = shutil.copy(runs["a"], tmp_path / "copy.ckpt")
    before = {name: tree(path) for name, path in not_outputs.items()}
    assert (not_outputs["run"] / "checkpoints" / "last.ckpt").is_file()
    for name, out in not_outputs.items():
        for overwrite in ([], ["--overwrite"]):
            line = fails(capsys, "export", "--ckpt_path", ckpt, "--out", out, "--index.kind", "flat", *overwrite)
            assert f"--out {out}: exists and holds no export.json" in line, (name, line)
    assert {name: tree(path) for name, path in not_outputs.items()} == before
    assert (not_outputs["run"] / "checkpoints" / "last.ckpt").is_file()
    assert hidden(tmp_path) == [] and hidden(not_outputs["run"].parent) == []
    export, empty = tmp_path / "export", tmp_path / "empty"
    empty.mkdir()
    for out in (export, export, empty):  # an earlier export, and an empty directory, are replaced
        main(["export", "--ckpt_path", str(ckpt), "--out", str(out), "--index.kind", "flat", "--overwrite"])
        assert (out / "export.json").is_file()


def test_prepare_and_synth_never_replace_a_directory_they_did_not_write(not_outputs, hand_raw, tmp_path, capsys):
    before = {name: tree(path) for name, path in not_outputs.items()}
    prepare_args = ["data", "prepare", "--raw", hand_raw, "--audio_dim", "4"]
    synth_args = ["data", "synth", "--rows", "600", "--users", "20", "--items", "200", "--days", "5"]
    for name, out in not_outputs.items():
        for overwrite in ([], ["--overwrite"]):
            if name != "prepared":  # (prepare may replace a prepared directory)
                line = fails(capsys, *prepare_args, "--out", out, *overwrite)
                assert f"--out {out}: exists and holds no meta.json" in line, (name, line)
            line = fails(capsys, *synth_args, "--out", out, *overwrite)
            assert f"--out {out}: exists and holds no synth.json" in line, (name, line)
    assert {name: tree(path) for name, path in not_outputs.items()} == before
    assert hidden(tmp_path) == []
    main([str(a) for a in [*prepare_args, "--out", not_outputs["prepared"], "--overwrite"]])  # its own kind
    assert json.loads((not_outputs["prepared"] / "meta.json").read_text())["vocab"]["audio_dim"] == 4


@pytest.mark.parametrize("command", ["prepare", "export", "synth"])
def test_a_directory_output_never_replaces_a_file(runs, hand_raw, tmp_path, capsys, command):
    target = tmp_path / "results.bin"
    target.write_bytes(b"\x00precious")
    args = {"prepare": ["data", "prepare", "--raw", hand_raw, "--audio_dim", "4"],
            "export": ["export", "--ckpt_path", runs["a"], "--index.kind", "flat"],
            "synth": ["data", "synth", "--rows", "600", "--users", "20", "--items", "200"]}[command]
    line = fails(capsys, *args, "--out", target, "--overwrite")
    assert "exists and is a file, but this command writes a directory" in line
    assert target.read_bytes() == b"\x00precious" and hidden(tmp_path) == []


def test_baselines_output_is_checked_before_the_work(tiny_prepared, tmp_path, capsys):
    inside = tiny_prepared / "metrics.json"
    assert "lies inside the input" in fails(capsys, "baselines", "--data", tiny_prepared, "--out", inside)
    assert not inside.exists()
    out = tmp_path / "metrics.json"
    out.write_text("{}")
    assert "exists; pass --overwrite" in fails(capsys, "baselines", "--data", tiny_prepared, "--out", out)
    main(["baselines", "--data", str(tiny_prepared), "--out", str(out), "--overwrite", "--only", "MostPop",
          "--k", "10"])
    assert set(json.loads(out.read_text())) == {"MostPop"}


# -- silent wrong results -----------------------------------------------------------------------------


def test_baselines_refuse_degenerate_requests(hand_raw, tmp_path, capsys):
    data = tmp_path / "p"
    prepare(hand_raw, data, audio_dim=4, config=SplitConfig(val_days=0), progress=False)
    out = tmp_path / "metrics.json"
    base = ["baselines", "--data", data, "--out", out]
    assert "the val window has no cases" in fails(capsys, *base, "--split", "val", "--k", "1")
    catalogue = json.loads((data / "meta.json").read_text())["vocab"]["num_items"] - 2
    for k in (-5, 0, catalogue + 1):
        line = fails(capsys, *base, "--k", k)
        assert f"--k: cut-offs must lie in 1..{catalogue} (the catalogue), got [{k}]" in line
    line = fails(capsys, *base, "--only", "[MostPop,NoSuchBaseline]")
    assert "--only: unknown baseline(s) ['NoSuchBaseline']; choose from Random, MostPop" in line
    assert not out.exists()
    line = fails(capsys, "validate", "--config", CONF, "--data.data_dir", data, "--model.recall_k", "[1]",
                 "--trainer.logger.init_args.save_dir", tmp_path / "logs")
    assert f"{data}: the val window has no cases" in line


def test_recommend_refuses_an_index_that_is_not_the_checkpoints(runs, tmp_path, capsys):
    exports = {}
    for name in ("a", "b", "c"):
        exports[name] = tmp_path / f"export-{name}"
        main(["export", "--ckpt_path", str(runs[name]), "--out", str(exports[name]), "--index.kind", "flat"])
    ask = ["--user", "1", "--seed_item", "1", "--k", "3"]
    main(["recommend", "--index", str(exports["a"]), "--ckpt_path", str(runs["a"]), *ask])  # its own: fine
    capsys.readouterr()
    line = fails(capsys, "recommend", "--index", exports["b"], "--ckpt_path", runs["a"], *ask)
    assert f"--index {exports['b']}: exported from another checkpoint ({runs['b'].resolve()})" in line
    line = fails(capsys, "recommend", "--index", exports["c"], "--ckpt_path", runs["a"], *ask)
    assert f"--index {exports['c']}: exported from a model of other prepared data" in line

    # An index of another dimension (as a model with another output_dim exports it).
    import faiss

    other = shutil.copytree(exports["a"], tmp_path / "export-4d")
    n = len(np.load(other / "item_ids.npy"))
    vectors = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    np.save(other / "item_embeddings.npy", vectors)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    faiss.write_index(index, str(other / "index.faiss"))
    line = fails(capsys, "recommend", "--index", other, "--ckpt_path", runs["a"], *ask)
    assert "vectors of dimension 4, but --ckpt_path embeds in 8 dimensions" in line
    (other / "index.faiss").write_bytes(b"garbage")
    assert "damaged export" in fails(capsys, "recommend", "--index", other, "--ckpt_path", runs["a"], *ask)
    assert "--k 5000 is larger than the catalogue" in fails(capsys, "recommend", "--index", exports["a"],
                                                            "--ckpt_path", runs["a"], "--user", "1",
                                                            "--seed_item", "1", "--k", "5000")


@pytest.mark.parametrize("command", ["test", "validate", "predict", "fit"])
def test_a_checkpoint_of_other_data_is_refused_before_the_loop(runs, tmp_path, capsys, command):
    """Same sizes (the linked num_* agree), another preparation: the numbers would be silently wrong."""
    line = fails(capsys, command, "--config", CONF, "--data.data_dir", runs["other"], "--ckpt_path", runs["a"],
                 "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.enable_progress_bar", "false",
                 "--predictions.output", tmp_path / "top.parquet")
    assert f"{runs['a']}: trained on other prepared data" in line and f"than {runs['other']} holds" in line
    assert not list(tmp_path.rglob("metrics.json")) and not (tmp_path / "top.parquet").exists()


def test_export_refuses_a_checkpoint_whose_data_directory_changed(runs, tmp_path, capsys):
    checkpoint = torch.load(runs["a"], weights_only=True)
    checkpoint["hyper_parameters"]["data_dir"] = str(runs["other"])  # as if re-prepared with other options
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    line = fails(capsys, "export", "--ckpt_path", moved, "--out", tmp_path / "export")
    assert f"{moved}: trained on other prepared data" in line
    assert not (tmp_path / "export").exists()


@pytest.mark.filterwarnings("ignore:`ModelCheckpoint\\(monitor='val/next/exact_recall@100'\\)` could not find")
def test_fit_without_a_val_window_is_refused_unless_validation_is_off(tiny_prepared, tmp_path, capsys):
    """Data prepared with --split.val_days 0 used to train blind (no val metric, so no best checkpoint)."""
    import lightning as L

    from lightning_tt.data.datamodule import YambdaDataModule
    from lightning_tt.errors import InputError

    data = tmp_path / "noval"
    prepare(tiny_prepared.parent / "raw", data, config=SplitConfig(test_days=2, val_days=0), progress=False)
    args = ["fit", "--config", CONF, "--data.data_dir", data, "--trainer.logger.init_args.save_dir", tmp_path / "logs",
            "--trainer.enable_progress_bar", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lightning-tt: error: {data}: the val window has no cases") and "val_days 0" in err
    assert "--trainer.limit_val_batches 0" in err and not (tmp_path / "logs").exists()  # before any run directory
    # On purpose: trains, and the shipped configs' ModelCheckpoint (save_last) keeps last.ckpt.
    main([str(a) for a in args] + ["--trainer.limit_val_batches", "0"])
    assert [p.name for p in (tmp_path / "logs").glob("tiny/*/checkpoints/*.ckpt")] == ["last.ckpt"]
    # Trainer.fit from Python meets the same check in the DataModule's setup.
    module = YambdaDataModule(str(data), batch_size=64)
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(InputError, match="the val window has no cases"):
        module.setup("fit")
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0)
    module.setup("fit")


def test_a_batch_larger_than_the_training_set_is_refused(tiny_prepared, tmp_path, capsys):
    line = fails(capsys, "fit", "--config", CONF, "--data.data_dir", tiny_prepared, "--data.batch_size", "1000000",
                 "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.enable_progress_bar", "false")
    assert "data.batch_size 1,000,000 is larger than the" in line and "training examples" in line
    assert not list(tmp_path.rglob("*.ckpt"))


# -- user mistakes that used to be tracebacks ---------------------------------------------------------


def test_checkpoint_path_mistakes(runs, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(runs["a"].read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    cases = {tmp_path / "missing.ckpt": "not found", tmp_path: "is a directory, not a checkpoint file",
             text: "not a checkpoint (not an archive written by torch.save)", truncated: "not a",
             foreign: "not a lightning-tt checkpoint", "best": "give the checkpoint's file"}
    for path, message in cases.items():
        for args in (["test", "--config", CONF, "--data.data_dir", runs["data"]],
                     ["export", "--out", tmp_path / "export"],
                     ["recommend", "--index", tmp_path, "--user", "1", "--seed_item", "1"]):
            line = fails(capsys, *args, "--ckpt_path", path)
            assert f"--ckpt_path {path}: {message}" in line, (args[0], line)


@pytest.mark.parametrize("recall_k, message", [("[10, 100000]", "model.recall_k 100000 is larger than the catalogue"),
                                               ("[10, -5]", "model.recall_k must be cut-offs >= 1")])
def test_recall_k_out_of_range(tiny_prepared, tmp_path, capsys, recall_k, message):
    line = fails(capsys, "fit", "--config", CONF, "--data.data_dir", tiny_prepared, "--model.recall_k", recall_k,
                 "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.enable_progress_bar", "false")
    assert message in line


@pytest.fixture
def prepared_copy(tiny_prepared, tmp_path):
    return shutil.copytree(tiny_prepared, tmp_path / "prepared")


def test_a_damaged_prepared_directory_names_the_file(prepared_copy, capsys):
    (prepared_copy / "stream_ts.bin").unlink()
    line = fails(capsys, "data", "describe", "--data", prepared_copy)
    assert f"{prepared_copy / 'stream_ts.bin'}: not found (listed in {prepared_copy / 'meta.json'})" in line
    line = fails(capsys, "fit", "--config", CONF, "--data.data_dir", prepared_copy)
    assert "stream_ts.bin: not found" in line
    with open(prepared_copy / "item_length.bin", "ab") as f:
        f.write(b"\x00")
    (prepared_copy / "stream_ts.bin").write_bytes(b"")
    assert "bytes, " in fails(capsys, "data", "describe", "--data", prepared_copy)


def test_a_corrupt_meta_json_names_the_file(prepared_copy, capsys):
    meta = prepared_copy / "meta.json"
    meta.write_text(meta.read_text()[:100])
    line = fails(capsys, "baselines", "--data", prepared_copy)
    assert f"{meta}: not readable JSON" in line


def test_a_damaged_parquet_page_names_the_file(hand_raw, tmp_path, capsys):
    path = schema.events_path(hand_raw, "tiny")
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)  # item_id's first data page
    with open(path, "r+b") as f:
        f.seek(column.data_page_offset + 8)
        f.write(b"\xff" * 24)
    line = fails(capsys, "data", "prepare", "--raw", hand_raw, "--out", tmp_path / "out", "--audio_dim", "4")
    assert f"{path}: cannot decode column(s)" in line and "in row group 0" in line and "the file is damaged" in line
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []


def test_predict_output_mistakes(runs, tmp_path, capsys):
    args = ["predict", "--config", CONF, "--data.data_dir", runs["data"], "--ckpt_path", runs["a"],
            "--trainer.logger.init_args.save_dir", tmp_path / "logs", "--trainer.enable_progress_bar", "false"]
    folder = tmp_path / "preddir"
    folder.mkdir()
    line = fails(capsys, *args, "--predictions.output", folder)
    assert f"--predictions.output {folder}: exists and is a directory" in line
    assert hidden(tmp_path) == [] and list(folder.iterdir()) == []
    existing = tmp_path / "top.parquet"
    existing.write_bytes(b"old")
    assert "exists; pass --predictions.overwrite true" in fails(capsys, *args, "--predictions.output", existing)
    assert existing.read_bytes() == b"old"
    assert "is the input" in fails(capsys, *args, "--predictions.output", runs["a"])
    main([str(a) for a in args] + ["--predictions.output", str(existing), "--predictions.overwrite", "true"])
    assert pq.read_table(existing).num_rows > 0 and hidden(tmp_path) == []


# -- unclear one-liners -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, shown", [("--split.test_days", ".nan", "nan"),
                                                ("--split.val_days", ".inf", "inf"),
                                                ("--split.gap_seconds", "-1", "-1")])
def test_split_options_out_of_range_name_the_option(hand_raw, tmp_path, capsys, flag, value, shown):
    line = fails(capsys, "data", "prepare", "--raw", hand_raw, "--out", tmp_path / "out", "--audio_dim", "4", flag,
                 value)
    assert f"{flag} must be a finite number >= 0, got {shown}" in line  # (YAML spells them .nan, .inf)


@pytest.mark.parametrize("args, says", [
    (["data", "prepare", "--raw", "r", "--out", "o", "--split.test_days", "soon"], 'Parser key "split.test_days"'),
    (["export", "--ckpt_path", "c", "--out", "o", "--index.kind", "ivf"], 'Parser key "index.kind"'),
    (["data", "prepare", "--raw", "r", "--out", "o", "--test-days", "2"], "unrecognized arguments: --test-days"),
    (["data", "prepare", "--raw", "r"], "data.prepare.out"),
    ([], 'expected "command" to be one of'),
])
def test_a_mistyped_option_gets_one_line_naming_it(capsys, args, says):
    """Refused by the parser before any work: status 2 (argparse's), one line with the option and where
    to look (--help lists the choices), no usage block and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--help" in err


# -- litter and repeated commands ---------------------------------------------------------------------


def test_a_killed_prepare_leaves_no_litter_after_the_next_run(hand_raw, tmp_path):
    """kill -9 in the middle of writing, then the same command again."""
    code = f"""
        import os, signal
        import lightning_tt.data.prepare as p
        def die(tmp, *args):
            (tmp / "stream_item.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        p._prepare_into = die
        p.prepare({str(hand_raw)!r}, {str(tmp_path / 'out')!r}, audio_dim=4, progress=False)
    """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path)
    assert child.returncode == -signal.SIGKILL
    assert [name.split("-")[0] for name in hidden(tmp_path)] == [".out.tmp"] and not (tmp_path / "out").exists()
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(tmp_path / "out"), "--audio_dim", "4"])
    assert (tmp_path / "out" / "meta.json").is_file() and hidden(tmp_path) == []


def test_commands_without_a_logger_do_not_clash(runs, tmp_path):
    """--trainer.logger=false: fit then test in the same default_root_dir each keep their config."""
    common = ["--config", str(CONF), "--data.data_dir", str(runs["data"]), "--trainer.logger=false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    main(["fit", *common])
    main(["test", *common, "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    assert sorted(p.parent.name for p in tmp_path.glob("*/config.yaml")) == ["version_0", "version_1"]
    assert (tmp_path / "version_1" / "metrics.json").is_file()


# -- errors -------------------------------------------------------------------------------------------


def test_a_bug_keeps_its_traceback(tiny_prepared, monkeypatch):
    """Only the project's InputError becomes one line; anything else is a bug to report."""
    from lightning_tt.data import summary

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(summary, "summarize", broken)
    with pytest.raises(ZeroDivisionError):
        main(["data", "describe", "--data", str(tiny_prepared)])


def test_the_command_line_exits_1_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_tt.cli", "data", "describe", "--data", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"lightning-tt: error: {tmp_path / 'meta.json'}: not found; is {tmp_path} a "
                                     f"directory written by `lightning-tt data prepare`?")

