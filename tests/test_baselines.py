"""Baselines on the hand-worked dataset (conftest.hand_rows): training positives are items 2 (t=100),
4 (t=300), 5 (t=687595) of user 2 and item 3 (t=50) of user 3; seeds -> positives 3 -> 4 and 4 -> 5."""

import numpy as np
import pytest

from lightning_tt.baselines import BPR, IALS, DecayPop, ItemKNN, MostPop, Random, Transitions, evaluate
from lightning_tt.data.prepare import prepare
from lightning_tt.data.prepared import PreparedData
from lightning_tt.errors import InputError


@pytest.fixture
def data(hand_raw, tmp_path):
    prepare(hand_raw, tmp_path / "p", audio_dim=4, progress=False)
    return PreparedData(tmp_path / "p")


def rec(baseline, data, users=(2,), seeds=(0,), history=((0,),), k=2):
    return baseline.fit(data).recommend(np.array(users), np.array(seeds), np.array(history), k).tolist()


def test_popularity(data):
    assert rec(MostPop(), data, k=4) == [[2, 3, 4, 5]]  # one positive each: ties by index
    # Weights 0.5 ** (age / 1 day): item 5 is the newest (age 0), then 4, 2 and 3.
    assert rec(DecayPop(), data, k=4) == [[5, 4, 2, 3]]
    random = rec(Random(), data, users=(2, 3), k=4)
    assert all(sorted(r) == [2, 3, 4, 5] for r in random)  # all four training items, never 0 or 1


def test_transitions(data):
    assert rec(Transitions(), data, users=(2, 2, 2), seeds=(3, 4, 2), history=((0,),) * 3) == [[4, 2], [5, 2], [2, 3]]


def test_item_knn(data):
    # Items 2, 4 and 5 share user 2 (cosine 1 with each other); item 3 shares nobody.
    assert rec(ItemKNN(), data, history=((4, 0),)) == [[2, 5]]
    assert rec(ItemKNN(), data, history=((2, 4),)) == [[5, 2]]  # 5 scores 2, item 2 scores 1 (from 4)


@pytest.mark.parametrize("cls", [IALS, BPR])
def test_factorization_runs_and_filters(data, cls):
    lists = rec(cls(), data, users=(2, 3), k=4)
    assert all(sorted(row) == [2, 3, 4, 5] for row in lists)


def test_evaluate_by_hand(data):
    out = evaluate(str(data.path), "test", ks=[1, 2], names=["MostPop", "Transitions"])
    # Next-track test cases: targets 1 (unknown), 4, 4 with seeds 1, 2, 3 -> Transitions hits the
    # third (3 -> 4) at rank 1; MostPop ([2, 3]) never.
    assert out["MostPop"]["test/next/recall@2"] == 0.0
    assert out["Transitions"]["test/next/recall@1"] == pytest.approx(1 / 3)
    # Paper lists: user 2 (targets 1, 4; seed 1 -> MostPop [2, 3]), user 3 (target 4; seed 3 -> [4, 2]).
    t = out["Transitions"]
    assert t["test/paper/recall@1"] == pytest.approx(0.5) and t["test/paper/ndcg@1"] == pytest.approx(0.5)
    assert t["test/paper/coverage@2"] == pytest.approx(3 / 4)  # {2, 3, 4} of 4 training items


def test_figure_curves_take_the_file_and_count_the_cheap_ones_it_lacks(data, tmp_path):
    import json

    from lightning_tt.baselines import baseline_recall_curves

    # Without a file: the cheap ones, counted now (the values of test_evaluate_by_hand).
    live = baseline_recall_curves(str(data.path), [1, 2])
    assert set(live) == {"MostPop", "DecayPop", "Transitions"}
    assert live["Transitions"] == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)}
    # A file's baselines are taken as written (also a cheap one: not counted again).
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"iALS": {"test/next/recall@1": 0.25, "test/next/recall@2": 0.5, "test/paper/ndcg@1": 0.1},
                                "Transitions": {"test/next/recall@1": 0.9, "test/next/recall@2": 0.95}}))
    curves = baseline_recall_curves(str(data.path), [1, 2], str(path))
    assert curves["iALS"] == {1: 0.25, 2: 0.5} and curves["Transitions"] == {1: 0.9, 2: 0.95}
    assert set(curves) == {"iALS", "Transitions", "MostPop", "DecayPop"}


@pytest.mark.parametrize("text, says", [(None, "No such file"), ("{not json", "Expecting property name"),
                                        ('{"iALS": {"test/next/recall@1": 0.2}}', "iALS has no test/next/recall@2"),
                                        ('[1, 2]', "expected {baseline")])
def test_a_bad_baselines_file_is_named(tmp_path, text, says):
    from lightning_tt.baselines import read_recall_curves

    path = tmp_path / "b.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match="b.json") as err:
        read_recall_curves(str(path), [1, 2])
    assert says in str(err.value) and "report.baselines_file" in str(err.value)
