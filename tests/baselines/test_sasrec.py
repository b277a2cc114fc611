"""SASRec (lightning_tt.baselines.sasrec): causality, its losses by hand, its training windows on the
hand-worked dataset, reproducibility, a planted successor chain, and the evaluate/tune plumbing."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_tt.baselines import ALL, SASRec, evaluate, evaluation, tune
from lightning_tt.baselines.sasrec import SASRecEncoder, full_softmax_loss, sampled_softmax_loss, training_windows
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import FIRST_ITEM, PreparedData
from lightning_tt.data.schema import DAY
from tests.rawdata import event, write_raw

#: Small and quick: enough steps for the planted chain, a few seconds on 2 cores.
SMALL = {"dim": 16, "blocks": 1, "max_len": 8, "dropout": 0.0, "lr": 2e-2, "epochs": 30, "max_steps": 30}
#: A few quick steps, for tests of determinism and plumbing rather than quality.
QUICK = {"dim": 8, "blocks": 1, "max_len": 8, "batch_size": 32, "max_steps": 2}


class QuickSASRec(SASRec):
    """SASRec fitted with QUICK's settings (its 2 steps whatever the grid's max_steps) and the grid's dropout,
    for the evaluate/tune plumbing (the name, grid and ranking are SASRec's)."""

    def fit(self, data):
        for name, value in QUICK.items():
            setattr(self, name, value)
        return super().fit(data)


def test_encoder_is_causal_and_padding_is_harmless():
    torch.manual_seed(0)
    encoder = SASRecEncoder(num_items=20, dim=8, blocks=2, heads=2, max_len=6, dropout=0.0).eval()
    sequence = torch.tensor([[0, 0, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]])
    changed = sequence.clone()
    changed[:, 4:] = torch.tensor([[9, 10], [11, 12]])  # items after t = 3
    with torch.no_grad():
        before, after = encoder(sequence), encoder(changed)
    assert torch.isfinite(before).all()  # padding positions attend to themselves: no empty attention row
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-3)


def test_full_softmax_loss_is_cross_entropy():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries, targets = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([0, 2])
    assert full_softmax_loss(queries, targets, table).item() == pytest.approx(
        F.cross_entropy(queries @ table.T, targets).item(), abs=1e-6)
    # By hand for the first query: scores (1, 2, 3), target 0.
    single = full_softmax_loss(queries[:1], targets[:1], table).item()
    assert single == pytest.approx(-1 + math.log(math.e + math.e ** 2 + math.e ** 3), abs=1e-6)


def test_sampled_softmax_loss_by_hand():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    query, target = torch.tensor([[1.0, 2.0]]), torch.tensor([0])  # scores s = (1, 2, 3)
    q = torch.tensor([0.5, 0.25, 0.25])
    sampled = torch.tensor([1, 2, 0])  # S = 3; the third is an accidental hit of the target: left out
    # -s_0 + log(e^{s_0} + e^{s_1} / (3 * 0.25) + e^{s_2} / (3 * 0.25))
    expected = -1 + math.log(math.e + math.e ** 2 / 0.75 + math.e ** 3 / 0.75)
    assert sampled_softmax_loss(query, target, table, sampled, q).item() == pytest.approx(expected, abs=1e-6)
    # A repeated sample counts twice: s = [2, 2] -> e^{2} / (2 * 0.25) each.
    twice = sampled_softmax_loss(query, target, table, torch.tensor([1, 1]), q).item()
    assert twice == pytest.approx(-1 + math.log(math.e + 2 * math.e ** 2 / 0.5), abs=1e-6)


def test_training_windows_on_the_hand_worked_dataset(hand_prepared):
    # User 2's training listens are items 2, 3, 4, 5 (3 is not a positive: 30% played); user 3 has only 3.
    inputs, targets = training_windows(PreparedData(hand_prepared), max_len=2)
    # Windows of 3: [3, 4, 5] (targets 4, 5) and [pad, 2, 3] (target 3 is no positive, 2 has no input: dropped).
    assert inputs.tolist() == [[3, 4]] and targets.tolist() == [[4, 5]]
    inputs, targets = training_windows(PreparedData(hand_prepared), max_len=4)
    assert inputs.tolist() == [[0, 2, 3, 4]] and targets.tolist() == [[0, 0, 4, 5]]


def chain(root, users=40, items=30, listens=24, seed=0):
    """Every user plays the cycle 100 -> 101 -> ... -> 100 + items - 1 -> 100 from a random start:
    ``listens`` in training (days 0..9), 3 on the validation day and 3 on the test day."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start = int(rng.integers(items))
        times = [int(t) for t in np.sort(rng.choice(10 * DAY, listens, replace=False))]
        times += [10 * DAY + 3600 * (i + 1) for i in range(3)] + [11 * DAY + 3600 * (i + 1) for i in range(3)]
        rows += [event(u, 100 + (start + i) % items, t) for i, t in enumerate(times)]
    rows.sort(key=lambda r: (r["uid"], r["timestamp"]))
    raw = write_raw(root / "raw", rows)
    prepare(raw, root / "prepared", config=SplitConfig(test_days=1, val_days=1, gap_seconds=60), audio_dim=4,
            progress=False)
    return root / "prepared"


def test_it_learns_a_planted_successor_chain(tmp_path):
    data_dir = chain(tmp_path)
    out = evaluate(str(data_dir), "test", ks=[1, 5], names=["MostPop", "SASRec"], params={"SASRec": SMALL})
    sasrec, most_pop = out["SASRec"], out["MostPop"]
    assert most_pop["test/next/recall@5"] < 0.4  # 5 of 30 items, about 1/6
    assert sasrec["test/next/recall@1"] > 0.8  # the seed's successor first
    assert sasrec["test/next/recall@5"] > 2 * most_pop["test/next/recall@5"]


def test_fits_with_the_same_seed_give_the_same_lists(tiny_prepared):
    data = PreparedData(tiny_prepared)
    users = np.array([2, 3, 4])
    history = np.array([[0, 0, 5, 6], [7, 8, 9, 10], [1, 1, 1, 12]])
    lists = [SASRec(**QUICK, seed=seed).fit(data).recommend(users, history[:, -1], history, 20)
             for seed in (0, 0, 1)]
    assert np.array_equal(lists[0], lists[1])
    assert not np.array_equal(lists[0], lists[2])


def test_padding_and_unknown_are_never_recommended(tiny_prepared):
    data = PreparedData(tiny_prepared)
    model = SASRec(**QUICK).fit(data)
    catalogue = data.vocab["num_items"] - FIRST_ITEM
    history = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 5], [5, 6, 7]])  # nothing known, only unknown, mixed, full
    lists = model.recommend(np.array([2, 3, 4, 5]), history[:, -1], history, catalogue)
    assert (lists >= FIRST_ITEM).all()
    assert all(len(set(row)) == catalogue for row in lists.tolist())  # the whole catalogue, once each
    assert lists[0].tolist() == lists[1].tolist() == model.by_popularity.tolist()  # no known listen: popularity
    alone = model.recommend(np.array([4]), np.array([5]), np.array([[5]]), 20)  # unknown dropped: as if [5]
    assert lists[2, :20].tolist() == alone[0].tolist()


def test_it_runs_through_evaluate_and_tune(tiny_prepared, monkeypatch):
    assert ALL[-1] is SASRec
    monkeypatch.setattr(evaluation, "ALL", (QuickSASRec,))
    out = evaluate(str(tiny_prepared), "test", ks=[10, 100], names=["SASRec"])
    found = tune(str(tiny_prepared), [10, 100], names=["SASRec"], progress=False)
    assert found["SASRec"]["tuning"]["points"] == 8  # dropout x max_steps x exclude_seen; 4 fits
    for result in (out["SASRec"], found["SASRec"]):
        metrics = {name: value for name, value in result.items() if "/" in name}
        assert metrics and all(0.0 <= value <= 1.0 for value in metrics.values())
    assert found["SASRec"]["params"]["dropout"] in (0.2, 0.5)


def test_a_catalogue_above_full_softmax_items_trains_with_the_sampled_softmax(tiny_prepared, monkeypatch):
    import lightning_tt.baselines.sasrec as sasrec

    calls, real = [], sasrec.sampled_softmax_loss
    monkeypatch.setattr(sasrec, "sampled_softmax_loss", lambda *args: calls.append(len(args[3])) or real(*args))
    data = PreparedData(tiny_prepared)
    SASRec(**QUICK).fit(data)
    assert calls == []
    model = SASRec(**QUICK, full_softmax_items=100, negatives=16).fit(data)
    assert calls == [16, 16]
    history = np.array([[5, 6, 7]])
    assert (model.recommend(np.array([2]), history[:, -1], history, 10) >= FIRST_ITEM).all()
