"""prepare on the hand-worked dataset of conftest.hand_rows: every array checked against values worked
out by hand (see the comments), then invariance to row-group size and the atomic output."""

import json

import numpy as np
import pytest

from lightning_tt.data.arrays import bfloat16_to_float32, float32_to_bfloat16
from lightning_tt.data.batches import NextTrackDataset, PaperListDataset, play_weight
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.schema import DAY
from lightning_tt.errors import InputError
from tests.rawdata import END, event, hand_rows, write_raw


@pytest.fixture
def hand(hand_prepared):
    return PreparedData(hand_prepared)


def arr(data, name):
    return np.asarray(data[name]).tolist()


def test_boundaries_follow_the_yambda_defaults():
    b = SplitConfig().boundaries(26_000_000)
    assert b["test_start"] == 25_913_600  # docs/design.md §3
    assert b["val_end"] == 25_913_600 - 1800
    assert b["val_start"] == 25_913_600 - 1800 - DAY
    assert b["train_end"] == 25_913_600 - 1800 - DAY - 1800
    no_val = SplitConfig(test_days=0.5, val_days=0, gap_seconds=60).boundaries(1000_000)
    assert no_val["test_start"] == 1000_000 - 43_200
    assert no_val["train_end"] == 1000_000 - 43_200 - 60


def test_vocabularies_and_item_tables(hand):
    # uid 7's first event (690000) is after train_end (687600): dropped. Kept users 5, 9 -> 2, 3.
    assert arr(hand, "user_ids") == [0, 0, 5, 9]
    assert hand.counts["users_dropped_no_train_history"] == 1
    # Items with a training event of a kept user: 10, 11, 12 (listens, like, dislike), 13.
    assert arr(hand, "item_ids") == [0, 0, 10, 11, 12, 13]
    # Artists 1000 + i // 2; item 13 has none -> unknown (1).
    assert arr(hand, "artist_ids") == [0, 0, 1005, 1006]
    assert arr(hand, "item_artist") == [0, 1, 2, 2, 3, 1]
    # Albums 2000 + i; item 11 is also on album 1999 and keeps the smaller id.
    assert arr(hand, "album_ids") == [0, 0, 1999, 2010, 2012, 2013]
    assert arr(hand, "item_album") == [0, 1, 3, 2, 4, 5]
    assert arr(hand, "item_length") == [0, 0, 110, 111, 112, 113]
    assert arr(hand, "item_has_audio") == [False, False, True, True, False, True]
    assert hand.meta["arrays"]["item_audio"]["encoding"] == "bfloat16"
    audio = bfloat16_to_float32(hand["item_audio"])
    expected_10 = np.array([11, 1, 0, 0]) / np.hypot(11, 1)
    np.testing.assert_allclose(audio[2], expected_10, rtol=2**-8)  # bfloat16: 8 significant bits
    assert not audio[4].any() and not audio[0].any()
    assert hand.vocab == {"num_users": 4, "num_items": 6, "num_artists": 4, "num_albums": 6, "audio_dim": 4,
                          "padding_index": 0, "unknown_index": 1}


def test_stream_examples_and_paper_lists(hand):
    # Stream: listens of users 5 then 9 in file order; 14, 15, 16 and 99 were never in training -> 1.
    assert arr(hand, "stream_item") == [2, 3, 4, 5, 1, 1, 1, 1, 2, 4, 3, 4]
    assert arr(hand, "stream_ts")[:4] == [100, 200, 300, 687_595]
    assert arr(hand, "user_offsets") == [0, 0, 0, 10, 12]
    # Listen+ (>= 50%) by window; 688000 and 776000 fall in gaps, the 30% and 40% listens are no positives.
    assert arr(hand, "train_pos") == [0, 2, 3, 10]
    assert arr(hand, "val_pos") == [5]
    assert arr(hand, "test_pos") == [7, 9, 11]
    # Paper lists: state = first stream position at or after the window start.
    assert arr(hand, "paper_val_user") == [2] and arr(hand, "paper_val_pos") == [5]
    assert arr(hand, "paper_test_user") == [2, 3] and arr(hand, "paper_test_pos") == [7, 11]
    assert arr(hand, "paper_test_offsets") == [0, 2, 3]
    assert arr(hand, "signal_item") == [2, 4] and arr(hand, "signal_type") == [1, 2]
    assert arr(hand, "signal_user") == [2, 3]
    assert hand.boundaries["train_max_timestamp"] == 687_595
    assert hand.boundaries["test_end"] == END


def test_training_batch(hand):
    b = NextTrackDataset(hand, "train", history=2)[np.array([0, 1, 2, 3])]
    assert b["user"].tolist() == [2, 2, 2, 3]
    # Example 2 is the listen of item 13 at position 3: history = positions 1, 2 (items 11, 12).
    assert b["history_item"].tolist() == [[0, 0], [2, 3], [3, 4], [0, 0]]
    assert b["history_mask"].tolist() == [[False, False], [True, True], [True, True], [False, False]]
    assert b["history_length"].tolist() == [0, 2, 2, 0]
    assert b["seed_item"].tolist() == [0, 3, 4, 0]
    assert b["target_item"].tolist() == [2, 4, 5, 3]
    # The batch holds indices; the model looks the rest up in the item table (padding has no features).
    table = hand.item_features()
    assert table["artist"][b["history_item"].numpy()].tolist() == [[0, 0], [2, 2], [2, 3], [0, 0]]
    assert table["album"][b["history_item"].numpy()].tolist() == [[0, 0], [3, 2], [2, 4], [0, 0]]
    assert table["has_audio"][b["seed_item"].numpy()].tolist() == [False, True, False, False]
    assert table["track_length"][b["seed_item"].numpy()].tolist() == [0, 111, 112, 0]
    assert table["artist"][b["target_item"].numpy()].tolist() == [2, 3, 1, 2]
    # age = 687595 - timestamp
    assert b["example_age"].tolist() == [687_495, 687_295, 0, 687_545]
    # weight = min(ratio, 100) / 100 for ratios 80, 100, 120, 50
    assert b["weight"].tolist() == pytest.approx([0.8, 1.0, 1.0, 0.5])
    assert set(b) == {"user", "history_item", "history_mask", "history_length", "history_ratio", "seed_item",
                      "seed_organic", "example_age", "target_item", "weight"}


def test_evaluation_batches(hand):
    b = NextTrackDataset(hand, "test", history=3)[np.array([0, 1, 2])]
    assert b["target_item"].tolist() == [1, 4, 4]
    # Case 1 (position 9) sees the evaluation-window events before it (positions 6-8), not itself.
    assert b["history_item"].tolist() == [[1, 1, 1], [1, 1, 2], [0, 0, 3]]
    assert b["example_age"].tolist() == [0, 0, 0]
    p = PaperListDataset(hand, "test", history=3)[np.array([0, 1])]
    assert p["history_item"].tolist() == [[1, 1, 1], [0, 0, 3]]  # state at test_start
    assert p["target_items"].tolist() == [[1, 4], [4, 0]]
    assert p["target_count"].tolist() == [2, 1]


def test_play_weight_formula():
    assert play_weight(np.array([0, 50, 90, 100, 160])).tolist() == pytest.approx([0, 0.5, 0.9, 1.0, 1.0])


def test_row_group_size_does_not_change_the_output(tmp_path):
    # Users 5, 6 and 9 (uid 7 is dropped). User 6's first event is a like: with one row per group,
    # their first listen (in the validation window) opens a group whose previous stream row is user
    # 5's, later than val_start; it is still user 6's state at the window start.
    rows = hand_rows()
    rows[11:11] = [event(6, 11, 100, "like"), event(6, 12, 700_000, ratio=80, length=112)]
    outputs = []
    for group in (1, 3, 100):
        raw = write_raw(tmp_path / f"raw{group}", rows, row_group_size=group, no_audio=(12,))
        prepare(raw, tmp_path / f"out{group}", audio_dim=4, progress=False)
        data = PreparedData(tmp_path / f"out{group}")
        outputs.append({name: arr(data, name) for name in data.meta["arrays"]})
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0]["user_ids"] == [0, 0, 5, 6, 9]
    assert outputs[0]["paper_val_user"] == [2, 3] and outputs[0]["paper_val_pos"] == [5, 10]
    assert outputs[0]["val_pos"] == [5, 10]


def test_output_is_atomic_and_not_overwritten_by_default(hand_raw, tmp_path):
    out = tmp_path / "out"
    prepare(hand_raw, out, audio_dim=4, progress=False)
    with pytest.raises(InputError, match="--overwrite"):
        prepare(hand_raw, out, audio_dim=4, progress=False)
    meta = prepare(hand_raw, out, audio_dim=4, overwrite=True, progress=False,
                   config=SplitConfig(min_played_pct=60))
    assert json.loads((out / "meta.json").read_text())["config"]["min_played_pct"] == 60
    assert meta["counts"]["train_examples"] == 3  # 80%, 100%, 120%: the 50% listen of user 9 drops out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temporary directories left


def test_bfloat16_round_trip():
    x = np.array([[1.0, -2.5, 0.0, 3.0e-3], [65504.0, 1e-30, 0.1, -0.7]], dtype=np.float32)
    bits = float32_to_bfloat16(x)
    assert bits.dtype == np.uint16 and bits.shape == x.shape
    assert bits[0, 0] == 0x3F80 and bits[0, 1] == 0xC020  # 1.0 and -2.5 are exact in bfloat16
    back = bfloat16_to_float32(bits)
    assert back[0, :3].tolist() == [1.0, -2.5, 0.0]
    assert np.all(np.abs(back - x) <= np.abs(x) * 2**-7)  # truncation keeps 8 significant bits
    assert np.all(np.abs(back) <= np.abs(x))  # and rounds toward zero


def all_arrays(path) -> dict[str, bytes]:
    data = PreparedData(path)
    return {name: np.ascontiguousarray(data[name]).tobytes() for name in data.meta["arrays"]}


@pytest.mark.parametrize("group", [1, 3, 100])
def test_exact_duplicate_events_are_dropped(tmp_path, group):
    """Every row written twice (and a listen repeated after a like at the same second, so the copies are
    not neighbours; with 1-row groups every copy sits in another row group): the output is byte for
    byte that of the clean file, and meta.json counts what was dropped."""
    rows = hand_rows()
    clean = write_raw(tmp_path / "clean", rows, row_group_size=group)
    doubled = [row for row in rows for _ in range(2)]
    like_at = next(i for i, r in enumerate(doubled) if r["event_type"] == "like")  # user 5, item 10, t = 100
    doubled.insert(like_at + 1, dict(doubled[like_at - 1]))  # listen, listen, like, listen: 3 copies
    dirty = write_raw(tmp_path / "dirty", doubled, row_group_size=group)
    prepare(clean, tmp_path / "a", audio_dim=4, progress=False)
    meta = prepare(dirty, tmp_path / "b", audio_dim=4, progress=False)
    assert all_arrays(tmp_path / "a") == all_arrays(tmp_path / "b")
    assert meta["counts"]["duplicate_events_dropped"] == len(rows) + 1
    assert meta["counts"]["raw_rows"] == 2 * len(rows) + 1
    assert PreparedData(tmp_path / "a").counts["duplicate_events_dropped"] == 0


def test_same_second_events_that_differ_are_kept(tmp_path):
    # Same (uid, timestamp): another item, or another event type, is not a duplicate.
    rows = [event(5, 10, 100, ratio=80), event(5, 11, 100, ratio=80), event(5, 10, 100, "like"),
            event(5, 12, 200, ratio=60), event(5, 12, 200, "dislike"), event(5, 10, 900_000, ratio=70)]
    raw = write_raw(tmp_path / "raw", rows, row_group_size=2)
    meta = prepare(raw, tmp_path / "out", audio_dim=4, progress=False, config=SplitConfig(val_days=0))
    assert meta["counts"]["duplicate_events_dropped"] == 0
    assert meta["counts"]["stream_listens"] == 4 and meta["counts"]["signals"] == 2


def test_the_cli_reports_the_duplicates_it_dropped(tmp_path, capsys):
    from lightning_tt.cli import main

    raw = write_raw(tmp_path / "raw", [row for row in hand_rows() for _ in range(2)])
    main(["data", "prepare", "--raw", str(raw), "--out", str(tmp_path / "out"), "--audio_dim", "4"])
    assert f"dropped {len(hand_rows())} exact duplicate events" in capsys.readouterr().out


def test_fingerprint_identifies_the_inputs_options_and_vocabularies(hand_raw, tmp_path):
    import shutil

    first = prepare(hand_raw, tmp_path / "a", audio_dim=4, progress=False)["fingerprint"]
    moved = shutil.copytree(hand_raw, tmp_path / "elsewhere")  # the same files in another place
    assert prepare(moved, tmp_path / "b", audio_dim=4, progress=False)["fingerprint"] == first
    assert len(first) == 64 and PreparedData(tmp_path / "a").fingerprint == first
    other_options = prepare(hand_raw, tmp_path / "c", audio_dim=4, progress=False,
                            config=SplitConfig(min_played_pct=60))
    assert other_options["fingerprint"] != first
    assert other_options["vocab"] == PreparedData(tmp_path / "a").vocab  # same sizes, yet not the same data
    rows = hand_rows()
    rows[0]["item_id"] = 11  # another file of the same shape
    other_file = write_raw(tmp_path / "raw2", rows, row_group_size=4, second_album=(11,), no_artist=(13,),
                           no_audio=(12,))
    assert prepare(other_file, tmp_path / "d", audio_dim=4, progress=False)["fingerprint"] != first


def test_a_signed_played_ratio_column_is_read_like_the_unsigned_one(tmp_path):
    """int16 is a valid integer type for played_ratio_pct; nulls on non-listen rows must not overflow it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lightning_tt.data import schema

    raw = write_raw(tmp_path / "raw", hand_rows())
    prepare(raw, tmp_path / "unsigned", audio_dim=4, progress=False)
    path = schema.events_path(raw, "tiny")
    table = pq.read_table(path)
    column = table.schema.get_field_index("played_ratio_pct")
    pq.write_table(table.set_column(column, "played_ratio_pct", pc.cast(table.column(column), pa.int16())), path)
    prepare(raw, tmp_path / "signed", audio_dim=4, progress=False)
    assert all_arrays(tmp_path / "signed") == all_arrays(tmp_path / "unsigned")


@pytest.mark.parametrize("group", [1, 3, 100])
def test_a_backtest_window_is_the_data_cut_at_its_end(tmp_path, group):
    """--split.window 1 (1-day windows) treats the data as ending one test window earlier, at day 9 =
    777,600 (a listen lies exactly there): every array is byte for byte that of the file cut there and
    prepared as window 0, the boundaries are day 9's, and meta.json counts the events it dropped."""
    rows = hand_rows() + [event(9, 13, 9 * DAY, ratio=90, length=113)]
    rows.sort(key=lambda r: (r["uid"], r["timestamp"]))
    cut = [r for r in rows if r["timestamp"] <= 9 * DAY]
    full = prepare(write_raw(tmp_path / "full", rows, row_group_size=group), tmp_path / "a", audio_dim=4,
                   progress=False, config=SplitConfig(window=1))
    alone = prepare(write_raw(tmp_path / "cut", cut, row_group_size=group), tmp_path / "b", audio_dim=4,
                    progress=False)
    assert all_arrays(tmp_path / "a") == all_arrays(tmp_path / "b")
    assert full["boundaries"] == {**alone["boundaries"], "min_timestamp": 50}
    assert full["boundaries"]["test_start"] == 8 * DAY and full["boundaries"]["test_end"] == 9 * DAY
    assert full["boundaries"]["train_end"] == 8 * DAY - 2 * 1800 - DAY  # 601,200
    assert full["counts"]["events_after_window_dropped"] == len(rows) - len(cut) == 5  # 3 of user 5, 1 each of 7, 9
    assert alone["counts"]["events_after_window_dropped"] == 0
    assert full["config"]["window"] == 1 and full["fingerprint"] != alone["fingerprint"]


def test_the_window_option_is_checked_and_named(hand_raw, tmp_path):
    with pytest.raises(InputError, match="--split.window must be a whole number"):
        prepare(hand_raw, tmp_path / "a", audio_dim=4, progress=False, config=SplitConfig(window=1.5))
    with pytest.raises(InputError, match="--split.window must be a finite number >= 0"):
        prepare(hand_raw, tmp_path / "a", audio_dim=4, progress=False, config=SplitConfig(window=-1))
    with pytest.raises(Exception, match="split 'train' is empty.*--split.window"):
        prepare(hand_raw, tmp_path / "a", audio_dim=4, progress=False, config=SplitConfig(window=9))
