"""MostPop and Transitions on the hand-worked dataset (conftest.hand_rows)."""

import numpy as np
import pytest

from lightning_tt.baselines import evaluate, most_popular, recall, transition_lists
from lightning_tt.data.prepare import prepare
from lightning_tt.data.prepared import PreparedData


@pytest.fixture
def prepared(hand_raw, tmp_path):
    prepare(hand_raw, tmp_path / "p", audio_dim=4, progress=False)
    return tmp_path / "p"


def test_hand_worked_baselines(prepared):
    data = PreparedData(prepared)
    # Training positives: items 2, 4, 5, 3 once each; ties go to the lower index.
    assert most_popular(data, 2).tolist() == [2, 3]
    # Training transitions (seed -> positive) with a known seed: 3 -> 4 and 4 -> 5.
    assert transition_lists(data, np.array([3, 4, 2]), 2).tolist() == [[4, 2], [5, 2], [2, 3]]
    # Test cases: targets 1 (unknown), 4, 4 with seeds 1 (unknown), 2, 3.
    result = evaluate(str(prepared), "test", ks=[1, 2])
    assert result["MostPop"] == {1: 0.0, 2: 0.0}
    assert result["Transitions"] == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)}


def test_recall_formula():
    lists = np.array([[5, 6, 7], [7, 8, 9]])
    assert recall(lists, np.array([6, 1]), [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: 0.5}
