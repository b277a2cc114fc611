"""The history encoders (mean, recency, attention), the play ratio, the feedback bags, seed dropout and
the paper protocol's seedless query: hand-computed pooling weights, masking, and the training step."""

import math

import pytest
import torch

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.errors import InputError
from lightning_tt.model.history import HistoryAttention, HistoryPooling
from lightning_tt.model.module import TwoTowerModule
from tests.helpers import HostReads

MASK = torch.tensor([[False, True, True]])
RATIO = torch.tensor([[0.0, 1.0, 0.0]])


def test_mean_pooling_weights():
    plain, by_ratio = HistoryPooling(False, 4, False), HistoryPooling(False, 4, True)
    assert torch.allclose(plain.weights(MASK, RATIO), torch.tensor([[0.0, 0.5, 0.5]]))
    ratio = torch.tensor([[0.9, 0.6, 0.2]])  # the padded slot's value must not count
    assert torch.allclose(by_ratio.weights(MASK, ratio), torch.tensor([[0.0, 0.75, 0.25]]))
    assert torch.equal(by_ratio.weights(MASK, torch.zeros(1, 3)), torch.zeros(1, 3))  # all skipped: no history


def test_recency_pooling_starts_as_the_mean_and_uses_the_last_positions():
    pooling = HistoryPooling(True, 4, True)
    assert torch.allclose(pooling.weights(MASK, RATIO), torch.tensor([[0.0, 0.5, 0.5]]))
    with torch.no_grad():  # a window of 3 uses positions 1..3 of 4; the real slots are positions 2 and 3
        pooling.position_logit.copy_(torch.tensor([5.0, 5.0, math.log(3), 0.0]))
    assert torch.allclose(pooling.weights(MASK, RATIO), torch.tensor([[0.0, 0.75, 0.25]]))
    with torch.no_grad():
        pooling.ratio_weight.fill_(math.log(2))  # softmax(log 3 + log 2 * 1, 0): 6/7 and 1/7
    assert torch.allclose(pooling.weights(MASK, RATIO), torch.tensor([[0.0, 6 / 7, 1 / 7]]))
    x = torch.tensor([[[100.0, 100.0], [7.0, 0.0], [0.0, 7.0]]])
    assert torch.allclose(pooling(x, MASK, RATIO), torch.tensor([[6.0, 1.0]]))
    assert torch.equal(pooling(x, torch.zeros(1, 3, dtype=torch.bool), RATIO), torch.zeros(1, 2))
    with pytest.raises(InputError, match="longer than the model's 4 learned positions"):
        pooling(torch.zeros(1, 5, 2), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5))


def test_attention_reads_each_row_alone_and_ignores_padding():
    torch.manual_seed(0)
    encoder = HistoryAttention(features=3, width=8, positions=5, blocks=2, heads=2, dropout=0.0, use_play_ratio=True)
    encoder.eval()
    x, ratio = torch.randn(3, 4, 3), torch.rand(3, 4)
    mask = torch.tensor([[True] * 4, [False, False, True, True], [False] * 4])
    out = encoder(x, mask, ratio)
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(8))  # no history: nothing
    for b in range(2):  # the same as alone: no mixing across the batch (the per-head masks line up)
        assert torch.allclose(encoder(x[b : b + 1], mask[b : b + 1], ratio[b : b + 1]), out[b : b + 1], atol=1e-5)
    noisy = x.clone()
    noisy[1, :2] = 100.0  # padded slots' features can't leak into the result
    assert torch.allclose(encoder(noisy, mask, ratio)[1], out[1], atol=1e-5)
    swapped = x.clone()
    swapped[0, [2, 3]] = x[0, [3, 2]]  # order matters (learned positions)
    assert not torch.allclose(encoder(swapped, mask, ratio)[0], out[0], atol=1e-4)
    ratio2 = ratio.clone()
    ratio2[0, 3] = 1 - ratio2[0, 3]  # and the play ratio is an input
    assert not torch.allclose(encoder(x, mask, ratio2)[0], out[0], atol=1e-4)
    with pytest.raises(InputError, match="attention_heads 3 must divide"):
        HistoryAttention(3, 8, 5, 1, 3, 0.0, False)


@pytest.fixture(scope="module")
def data(tiny_prepared):
    dm = YambdaDataModule(str(tiny_prepared), batch_size=32, history=6, feedback=3)
    return dm, next(iter(dm.train_dataloader()))


def build(dm, **overrides):
    sizes = dict(num_users=dm.num_users, num_items=dm.num_items, num_artists=dm.num_artists,
                 num_albums=dm.num_albums, audio_dim=dm.audio_dim, history=dm.history, feedback=dm.feedback)
    return TwoTowerModule(data_dir=str(dm.data.path), embedding_dim=8, hidden_dims=[16], output_dim=8,
                          estimator_buckets=1024, **{**sizes, **overrides})


VARIANTS = [dict(history_encoder="recency", use_play_ratio=True),
            dict(history_encoder="attention", use_play_ratio=True),
            dict(history_encoder="attention", attention_blocks=2), dict(use_play_ratio=True),
            dict(seed_dropout=0.5, use_organic=True), dict(popularity_weight=0.5, logq_correction=False)]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_variant_trains_without_waiting_for_the_device(data, options):
    dm, batch = data
    model = build(dm, **options)
    model.training_step(batch, 0)
    with HostReads() as reads:
        loss = model.training_step(batch, 1)
        loss.backward()
    assert reads.seen == [] and torch.isfinite(loss)
    assert model.query_tower.user.weight.grad.abs().sum() > 0


def test_the_feedback_bags_enter_the_query(data):
    dm, batch = data
    assert batch["liked_item"].shape == (32, 3) and batch["liked_item"].any()  # the twin has likes
    with_bags, without = build(dm), build(dm, feedback=0)
    widths = with_bags.query_tower.mlp[0].in_features, without.query_tower.mlp[0].in_features
    assert widths[0] - widths[1] == 2 * (3 * 8 + 1 + dm.audio_dim)
    liked = batch["liked_item"].any(1)
    other = {**batch, "liked_item": torch.zeros_like(batch["liked_item"])}
    changed = (with_bags.query_tower(batch) - with_bags.query_tower(other)).abs().sum(1) > 0
    assert torch.equal(changed, liked)  # exactly the rows with likes change


def test_use_organic_reads_the_seed_listens_flag(data):
    dm, batch = data
    model = build(dm, use_organic=True)
    assert model.query_tower.mlp[0].in_features == build(dm).query_tower.mlp[0].in_features + 1
    assert set(batch["seed_organic"].tolist()) == {0, 1}  # the twin draws it per listen
    flipped = {**batch, "seed_organic": 1 - batch["seed_organic"]}
    assert ((model.query_tower(batch) - model.query_tower(flipped)).abs().sum(1) > 0).all()


def test_seed_dropout_hides_the_seed_and_paper_seed_false_asks_without_it(data):
    dm, batch = data
    model = build(dm, seed_dropout=1.0, paper_seed=False)
    seen = []
    model.query_tower.register_forward_pre_hook(lambda _, args: seen.append(args[0]["seed_item"]))
    model.training_step(batch, 0)
    assert not seen[-1].any() and batch["seed_item"].any()  # hidden in the step, the batch untouched
    paper = next(iter(dm.paper_dataloader("test")))
    model.eval()
    model._evaluate(paper, "test", 1)
    assert not seen[-1].any()
    model._evaluate(next(iter(dm.test_dataloader()[0])), "test", 0)
    assert seen[-1].any()  # next-track cases keep their seed
    with pytest.raises(InputError, match="seed_dropout must be in"):
        build(dm, seed_dropout=1.5)
    with pytest.raises(InputError, match="history_encoder must be one of mean, recency, attention"):
        build(dm, history_encoder="lstm")


def test_attention_and_feedback_train_under_bf16_autocast(data):
    # The GPU configs train with bf16-mixed precision; the CPU has the same autocast rules for these ops.
    dm, batch = data
    model = build(dm, history_encoder="attention", use_play_ratio=True, use_organic=True, popularity_weight=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.query_tower.encoder.project.weight.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # retrieval, as validation runs it
        model.eval()
        scores, top = model._top_k(model.retrieval_query(batch), 10)
    assert torch.isfinite(scores).all() and (top >= 2).all()
