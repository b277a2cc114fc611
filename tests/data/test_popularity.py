"""Item popularity from the training positives (lightning_tt.data.popularity), by hand on the hand data."""

import math

import numpy as np
import pytest

from lightning_tt.data import popularity as popularity_module
from lightning_tt.data.popularity import item_popularity, log_prior, window_days
from lightning_tt.data.prepared import PreparedData

#: The hand data's training positives (tests/rawdata.hand_rows, default split: training ends at 687,600):
#: raw item 10 at t=100, 12 at 300, 13 at 687,595 (the last training event) and 11 at 50, as item indices
#: 2, 4, 5 and 3. Raw 11 at 200 played 30% (not a positive); raw 14 lies in the gap, 15 and 10 again in
#: validation and test: none of them counts.
TRAIN_MAX = 687_595
AGES = {2: TRAIN_MAX - 100, 3: TRAIN_MAX - 50, 4: TRAIN_MAX - 300, 5: 0}


@pytest.fixture
def data(hand_prepared):
    return PreparedData(hand_prepared)


def test_counts_and_decayed_counts_by_hand(data, monkeypatch):
    assert data.boundaries["train_max_timestamp"] == TRAIN_MAX
    counts = item_popularity(data)
    expected = np.zeros(data.vocab["num_items"])
    expected[[2, 3, 4, 5]] = 1.0
    assert counts.tolist() == expected.tolist()  # later events and the 30% listen count nothing
    decayed = item_popularity(data, half_life_days=2.0)
    for item, age in AGES.items():
        expected[item] = 0.5 ** (age / (2 * 86_400))
    assert decayed == pytest.approx(expected, rel=1e-12)
    assert decayed[5] == 1.0 and decayed[4] == pytest.approx(0.5 ** (687_295 / 172_800))
    monkeypatch.setattr(popularity_module, "CHUNK", 1)  # one positive per chunk: the same sums
    assert item_popularity(data, half_life_days=2.0) == pytest.approx(decayed, rel=1e-12)
    with pytest.raises(ValueError, match="half_life_days must be > 0"):
        item_popularity(data, half_life_days=0.0)


def test_log_prior_counts_half_lives_in_validation_windows(data):
    assert window_days(data) == 1.0  # validation [689,400, 775,800): one day
    plain = log_prior(data)
    assert plain.dtype == np.float32 and plain[5] == pytest.approx(math.log(2)) and plain[0] == 0.0
    decayed = log_prior(data, half_life_windows=3.0)  # 3 windows = 3 days
    assert decayed == pytest.approx(np.log1p(item_popularity(data, half_life_days=3.0)), rel=1e-6)
    assert decayed[4] == pytest.approx(math.log1p(0.5 ** (687_295 / (3 * 86_400))), rel=1e-6)


def test_window_days_falls_back_to_the_test_window(tmp_path):
    from lightning_tt.data.prepare import SplitConfig, prepare
    from tests.rawdata import hand_rows, write_raw

    out = tmp_path / "prepared"
    prepare(write_raw(tmp_path / "raw", hand_rows()), out, config=SplitConfig(test_days=2, val_days=0),
            audio_dim=4, progress=False)
    assert window_days(PreparedData(out)) == 2.0
