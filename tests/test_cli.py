"""The lightning-tt command end to end on small data: synth -> prepare -> describe, and demo."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lightning_tt import demo
from lightning_tt.cli import main


def test_synth_prepare_describe(tmp_path, capsys):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    main(["data", "synth", "--out", str(raw), "--rows", "20000", "--users", "100", "--items", "2000",
          "--days", "20", "--seed", "1"])
    assert (raw / "flat" / "20k" / "multi_event.parquet").is_file()
    main(["data", "prepare", "--raw", str(raw), "--out", str(prepared), "--split.history", "10",
          "--split.test_days", "2", "--split.val_days", "2"])
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["config"]["history"] == 10 and meta["source"]["size"] == "20k"
    assert meta["boundaries"]["test_start"] == 20 * 86_400 - 2 * 86_400
    assert meta["counts"]["raw_rows"] == 20_000
    out = capsys.readouterr().out
    assert f"prepared {prepared}:" in out
    main(["data", "describe", "--data", str(prepared), "--batch_size", "3"])
    out = capsys.readouterr().out
    assert "sample train batch (B=3, N=10)" in out
    assert "history_item                int64    [3x10]" in out
    assert "target_items" in out  # the paper-protocol sample


@pytest.mark.slow  # the whole demo (train, baselines, test) twice: about a minute on 2 cores
@pytest.mark.filterwarnings("ignore:The number of training batches")
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_demo_synthesises_once_and_reuses(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SYNTH", {"rows": 20_000, "users": 100, "items": 2_000, "days": 20.0, "seed": 0})
    main(["demo", "--workdir", str(tmp_path)])
    first = capsys.readouterr().out
    assert "[demo] synthesising 20,000 events" in first and "[demo] preparing" in first
    assert "splits (Listen+ = played_ratio_pct >= 50)" in first
    assert all(name in first for name in ("TwoTower", "Transitions", "MostPop", "iALS", "BPR", "ItemKNN"))
    baselines = json.loads((tmp_path / "baselines" / "metrics.json").read_text())  # for test's recall_at_k.png
    assert set(baselines) == {"Random", "MostPop", "DecayPop", "Transitions", "ItemKNN", "iALS", "BPR"}  # not SASRec
    assert "--report.baselines_file" in first
    checkpoint = first.split("[demo] checkpoint: ")[1].splitlines()[0]
    assert checkpoint.endswith(".ckpt") and (tmp_path / "logs").is_dir() and Path(checkpoint).is_file()
    exported = json.loads((tmp_path / "export" / "export.json").read_text())  # what the printed serve command serves
    assert exported["checkpoint"] == str(Path(checkpoint).resolve())
    assert f"lightning-tt serve --export {tmp_path / 'export'}" in first
    main(["demo", "--workdir", str(tmp_path)])
    second = capsys.readouterr().out
    assert "[demo] using the synthetic dataset" in second and "[demo] using the prepared arrays" in second
    assert "[demo] exporting" in second and (tmp_path / "export" / "export.json").is_file()  # replaced, not refused


def test_describe_a_directory_that_is_not_prepared(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "describe", "--data", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "meta.json: not found" in capsys.readouterr().err


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "transmogrify"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_baselines_command_writes_metrics_json(hand_raw, tmp_path, capsys):
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(tmp_path / "p"), "--audio_dim", "4"])
    out = tmp_path / "b" / "metrics.json"
    main(["baselines", "--data", str(tmp_path / "p"), "--k", "[1,2]", "--only", "[MostPop,Transitions]",
          "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"MostPop", "Transitions"}
    assert results["Transitions"]["test/next/recall@1"] == pytest.approx(1 / 3)
    assert "Transitions" in capsys.readouterr().out
    # Beside it, every case's values: the 3 next-track cases (users 5, 5, 9) and 2 paper lists per baseline.
    cases = pq.read_table(tmp_path / "b" / "metrics_cases.parquet").to_pylist()
    transitions = [row for row in cases if row["system"] == "Transitions" and row["protocol"] == "next"]
    assert [row["uid"] for row in transitions] == [5, 5, 9] and sum(row["recall@1"] for row in transitions) == 1
    assert len(cases) == 2 * (3 + 2) and {row["split"] for row in cases} == {"test"}


def test_baselines_tune_writes_the_chosen_values(hand_raw, tmp_path, capsys):
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(tmp_path / "p"), "--audio_dim", "4"])
    out = tmp_path / "b" / "metrics.json"
    main(["baselines", "--data", str(tmp_path / "p"), "--k", "[1,2]", "--only", "[DecayPop,iALS]", "--tune",
          "--tune_metric", "val/paper/ndcg@2", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"DecayPop", "iALS"}
    for name, values in results.items():
        assert values["tuning"]["metric"] == "val/paper/ndcg@2" and "test/next/recall@2" in values
        assert values["tuning"]["points"] == {"DecayPop": 10, "iALS": 48}[name]
    assert results["DecayPop"]["params"]["half_life_days"] in (0.0625, 0.25, 1.0, 4.0, 16.0)
    printed = capsys.readouterr().out
    assert "chosen on the validation window by val/paper/ndcg@2" in printed
    assert f"half_life_days={results['DecayPop']['params']['half_life_days']}" in printed
    for args, says in ((["--split", "val"], "drop --split val"), (["--tune_metric", "test/next/recall@1"],
                                                                  "not a validation metric")):
        with pytest.raises(SystemExit):
            main(["baselines", "--data", str(tmp_path / "p"), "--tune", "--k", "1", "--out", str(tmp_path / "x.json"),
                  *args])
        assert says in capsys.readouterr().err
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(tmp_path / "noval"), "--audio_dim", "4",
          "--split.val_days", "0"])
    with pytest.raises(SystemExit):
        main(["baselines", "--data", str(tmp_path / "noval"), "--tune", "--k", "1", "--out", str(tmp_path / "y.json")])
    assert "no validation window to tune on" in capsys.readouterr().err
