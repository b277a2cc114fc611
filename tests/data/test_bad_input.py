"""Bad input: each case exits non-zero with one message naming the file and column, and leaves no
output directory (complete-looking or temporary) behind."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lightning_tt.cli import main
from lightning_tt.data import schema
from tests.rawdata import event, hand_rows, write_raw


def run_prepare(raw, tmp_path, capsys, *extra):
    out = tmp_path / "prepared"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "prepare", "--raw", str(raw), "--out", str(out), "--audio_dim", "4", *extra])
    assert exit_info.value.code == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]  # no temporary left
    return capsys.readouterr().err


def rewrite_events(raw, change):
    """Apply ``change`` to the events table of a raw directory and write it back."""
    path = schema.events_path(raw, "tiny")
    pq.write_table(change(pq.read_table(path)), path)
    return path


def test_missing_file(hand_raw, tmp_path, capsys):
    (hand_raw / schema.EMBEDDINGS_FILE).unlink()
    err = run_prepare(hand_raw, tmp_path, capsys)
    assert "embeddings.parquet: file not found" in err


def test_missing_events_file(tmp_path, capsys):
    (tmp_path / "raw" / "flat").mkdir(parents=True)
    err = run_prepare(tmp_path / "raw", tmp_path, capsys)
    assert "multi_event.parquet found" in err


def test_missing_column(hand_raw, tmp_path, capsys):
    path = rewrite_events(hand_raw, lambda t: t.drop_columns(["played_ratio_pct"]))
    err = run_prepare(hand_raw, tmp_path, capsys)
    assert f"{path}: missing column 'played_ratio_pct'" in err


def test_mistyped_column(hand_raw, tmp_path, capsys):
    def uid_as_string(t):
        return t.set_column(0, "uid", pc.cast(t.column("uid"), pa.string()))

    path = rewrite_events(hand_raw, uid_as_string)
    err = run_prepare(hand_raw, tmp_path, capsys)
    assert f"{path}: column 'uid' has type string, expected an integer" in err


def test_mistyped_embedding_column(hand_raw, tmp_path, capsys):
    path = hand_raw / schema.EMBEDDINGS_FILE
    pq.write_table(pa.table({"item_id": pa.array([10], pa.uint32()), "normalized_embed": pa.array(["x"])}), path)
    err = run_prepare(hand_raw, tmp_path, capsys)
    assert f"{path}: column 'normalized_embed' has type string, expected list<float>" in err


def test_unsorted_rows(tmp_path, capsys):
    rows = hand_rows()
    rows[2], rows[3] = rows[3], rows[2]  # user 5: t=300 before t=200
    raw = write_raw(tmp_path / "raw", rows)
    err = run_prepare(raw, tmp_path, capsys)
    assert "not sorted by (uid, timestamp): column 'timestamp' decreases at row 3" in err


def test_unsorted_users_across_row_groups(tmp_path, capsys):
    rows = hand_rows()
    raw = write_raw(tmp_path / "raw", rows[13:] + rows[:13], row_group_size=3)  # user 9 before user 5
    err = run_prepare(raw, tmp_path, capsys)
    assert "column 'uid' decreases at row 3" in err


def test_unknown_event_type(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", hand_rows() + [event(9, 12, 800_001, "skip")])
    err = run_prepare(raw, tmp_path, capsys)
    assert "multi_event.parquet: column 'event_type' has unknown value(s) ['skip']" in err


def test_out_of_range_played_ratio(tmp_path, capsys):
    rows = hand_rows()
    rows[0]["played_ratio_pct"] = 5000
    raw = write_raw(tmp_path / "raw", rows)
    err = run_prepare(raw, tmp_path, capsys)
    assert "column 'played_ratio_pct' has out-of-range value 5000 at row 0" in err


def test_is_organic_other_than_0_or_1(tmp_path, capsys):
    rows = hand_rows()
    rows[2]["is_organic"] = 7
    raw = write_raw(tmp_path / "raw", rows)
    err = run_prepare(raw, tmp_path, capsys)
    assert "column 'is_organic' has value 7 at row 2 (allowed 0 or 1)" in err


def test_negative_ids_in_wider_integer_columns(hand_raw, tmp_path, capsys):
    def negative_item(t):
        items = pc.cast(t.column("item_id"), pa.int64()).to_pylist()
        items[5] = -3
        return t.set_column(1, "item_id", pa.array(items, pa.int64()))

    rewrite_events(hand_raw, negative_item)
    err = run_prepare(hand_raw, tmp_path, capsys)
    assert "column 'item_id' has out-of-range value -3" in err


def test_listen_without_played_ratio(tmp_path, capsys):
    rows = hand_rows()
    rows[3]["played_ratio_pct"] = None
    raw = write_raw(tmp_path / "raw", rows)
    err = run_prepare(raw, tmp_path, capsys)
    assert "column 'played_ratio_pct' is null on listen row 3" in err


def test_embedding_of_wrong_dimension(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", hand_rows(), dim=3)
    err = run_prepare(raw, tmp_path, capsys)
    assert "embeddings.parquet: column 'normalized_embed' row 0 has dimension 3, expected 4" in err


@pytest.mark.parametrize(
    "flags, split",
    [(["--split.val_days", "0.001"], "val"), (["--split.min_played_pct", "121"], "train"),
     (["--split.test_days", "0.5", "--split.min_played_pct", "56"], "test")],
)
def test_empty_split(hand_raw, tmp_path, capsys, flags, split):
    err = run_prepare(hand_raw, tmp_path, capsys, *flags)
    assert f"split '{split}' is empty" in err and "column 'timestamp'" in err


def test_bad_option(hand_raw, tmp_path, capsys):
    err = run_prepare(hand_raw, tmp_path, capsys, "--split.history", "0")
    assert "--split.history must be >= 1" in err


def test_existing_output_is_kept(hand_raw, tmp_path, capsys):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for overwrite in ([], ["--overwrite"]):  # not a prepared directory: refused either way
        with pytest.raises(SystemExit) as exit_info:
            main(["data", "prepare", "--raw", str(hand_raw), "--out", str(out), "--audio_dim", "4", *overwrite])
        assert exit_info.value.code == 1
        assert "holds no meta.json" in capsys.readouterr().err
        assert (out / "keep.txt").read_text() == "precious"
    earlier = tmp_path / "earlier"
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(earlier), "--audio_dim", "4"])
    with pytest.raises(SystemExit):  # an earlier prepared directory: replaced only with --overwrite
        main(["data", "prepare", "--raw", str(hand_raw), "--out", str(earlier), "--audio_dim", "4"])
    assert "pass --overwrite to replace it" in capsys.readouterr().err


def test_failure_keeps_the_previous_output(hand_raw, tmp_path, capsys):
    out = tmp_path / "prepared"
    main(["data", "prepare", "--raw", str(hand_raw), "--out", str(out), "--audio_dim", "4"])
    before = (out / "meta.json").read_text()
    rewrite_events(hand_raw, lambda t: t.drop_columns(["timestamp"]))
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--raw", str(hand_raw), "--out", str(out), "--audio_dim", "4", "--overwrite"])
    assert (out / "meta.json").read_text() == before
