"""Sequence training of the query tower (model.query_tower sequence): a query at every slot of a history
window, none of which sees its target or anything later, and the targets and weights it trains on."""

import pytest
import torch

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.errors import InputError
from tests.model.test_model import build

SEQUENCE = dict(query_tower="sequence", history_encoder="attention", use_play_ratio=True, history=6,
                attention_heads=2)


@pytest.fixture(scope="module")
def data(tiny_prepared):
    dm = YambdaDataModule(str(tiny_prepared), batch_size=32, history=6)
    return dm, next(iter(dm.train_dataloader()))


def test_no_slot_sees_a_later_listen_and_the_last_slot_is_the_example_query(data):
    dm, batch = data
    torch.manual_seed(0)
    model = build(dm, **SEQUENCE, sequence_positions=6).eval()
    with torch.no_grad():
        queries = model.query_tower.positions(batch, 6)  # [B, 6, o]
        assert queries.shape == (32, 6, 8)
        assert torch.allclose(queries[:, -1], model.query_tower(batch), atol=1e-6)  # what evaluation asks
        for j in range(5):  # everything after slot j (the listens j + 1.., the target) replaced
            changed = {**batch, "history_item": batch["history_item"].clone(),
                       "history_ratio": batch["history_ratio"].clone(), "target_item": batch["target_item"] + 1}
            changed["history_item"][:, j + 1:] = torch.randint(2, dm.num_items, (32, 5 - j))
            changed["history_ratio"][:, j + 1:] = torch.rand(32, 5 - j)
            again = model.query_tower.positions(changed, 6)
            assert torch.allclose(again[:, : j + 1], queries[:, : j + 1], atol=1e-6), j
            assert not torch.allclose(again[:, j + 1], queries[:, j + 1], atol=1e-4)  # a later slot does see it


def test_the_targets_are_the_next_positive_listens_by_hand(data):
    """One window of 6 slots, 2 of padding: items 0 0 7 8 9 10, play weights . . 1.0 0.3 0.9 0.6, target 11
    (weight 0.8). With P = 4 slots (2..5): slot 2 -> 8 is dropped (0.3 < 0.5, not a positive), slot 3 -> 9
    (0.9), slot 4 -> 10 (0.6), slot 5 -> the target 11 (0.8). With P = 6 the padded slots 0, 1 add nothing."""
    dm, batch = data
    one = {key: value[:1].clone() for key, value in batch.items()}
    one["history_item"][:] = torch.tensor([[0, 0, 7, 8, 9, 10]])
    one["history_mask"][:] = torch.tensor([[False, False, True, True, True, True]])
    one["history_ratio"][:] = torch.tensor([[0, 0, 1.0, 0.3, 0.9, 0.6]])
    one["target_item"][:], one["weight"][:] = 11, 0.8
    for positions in (4, 6):
        model = build(dm, **SEQUENCE, sequence_positions=positions)
        queries, targets, weight = model.sequence_queries(one)
        assert targets.tolist() == [9, 10, 11] and weight.tolist() == pytest.approx([0.9, 0.6, 0.8])
        assert queries.shape == (3, 8)


def test_a_training_step_runs_over_every_kept_slot(data):
    dm, batch = data
    model = build(dm, **SEQUENCE, mixed_negatives=4, seed_dropout=0.5)
    _, targets, _ = model.sequence_queries(batch)
    assert len(batch["target_item"]) < len(targets) <= 6 * len(batch["target_item"])
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and int(model._train_loss[1]) == len(targets)
    loss.backward()
    assert model.query_tower.encoder.position.grad.abs().sum() > 0


@pytest.mark.parametrize("options", [dict(history_encoder="mean"), dict(feedback=5), dict(use_organic=True),
                                     dict(sequence_positions=0)])
def test_sequence_training_needs_the_attention_encoder_and_no_later_state(data, options):
    dm, _ = data
    with pytest.raises(InputError, match="model.query_tower sequence needs model.history_encoder attention"):
        build(dm, **{**SEQUENCE, **options})
