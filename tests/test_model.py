"""TwoTowerModule and its towers: shapes, feature switches, shared tables, the training step and the
brute-force Recall@k."""

import pytest
import torch

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.model.module import TwoTowerModule

SWITCHES = ["use_user", "use_history", "use_seed", "use_age", "use_item_id", "use_artist", "use_album",
            "use_length", "use_audio"]


@pytest.fixture(scope="module")
def data(tiny_prepared):
    dm = YambdaDataModule(str(tiny_prepared), batch_size=32, history=6)
    return dm, next(iter(dm.train_dataloader()))


def build(dm, **overrides):
    sizes = dict(num_users=dm.num_users, num_items=dm.num_items, num_artists=dm.num_artists,
                 num_albums=dm.num_albums, audio_dim=dm.audio_dim)
    return TwoTowerModule(data_dir=str(dm.data.path), embedding_dim=8, hidden_dims=[16], output_dim=8,
                          estimator_buckets=1024, **sizes, **overrides)


def test_towers_give_unit_vectors(data):
    dm, batch = data
    model = build(dm)
    u = model.query_tower(batch)
    v = model.item_tower(batch["target_item"])
    assert u.shape == v.shape == (32, 8)
    assert torch.allclose(u.norm(dim=1), torch.ones(32)) and torch.allclose(v.norm(dim=1), torch.ones(32))


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_feature_group_can_be_switched_off(data, switch):
    dm, batch = data
    full, ablated = build(dm), build(dm, **{switch: False})
    assert ablated.query_tower(batch).shape == (32, 8)
    widths = lambda m: (m.query_tower.mlp[0].in_features, m.item_tower.mlp[0].in_features)  # noqa: E731
    assert widths(ablated) != widths(full)  # the group really left the input


def test_the_item_tower_needs_a_feature(data):
    dm, _ = data
    off = {s: False for s in ["use_item_id", "use_artist", "use_album", "use_length", "use_audio"]}
    with pytest.raises(ValueError, match="item tower needs at least one feature"):
        build(dm, **off)


def test_shared_and_separate_tables(data):
    dm, _ = data
    shared, separate = build(dm), build(dm, share_tables=False)
    assert shared.query_tower.ids is shared.item_tower.ids
    assert separate.query_tower.ids is not separate.item_tower.ids
    extra = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert extra == 8 * (dm.num_items + dm.num_artists + dm.num_albums)


def test_audio_table_matches_the_prepared_arrays(data):
    from lightning_tt.data.arrays import bfloat16_to_float32

    dm, _ = data
    model = build(dm)
    items = torch.arange(dm.num_items)
    expected = torch.from_numpy(bfloat16_to_float32(dm.data["item_audio"]))
    has = torch.from_numpy(dm.data["item_has_audio"].copy())
    has[0] = False
    audio = model.table.audio_of(items)
    assert torch.equal(audio[has], expected[has])
    assert torch.equal(audio[~has], model.table.missing_audio.expand(int((~has).sum()), -1))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("mixed", [0, 5])
def test_training_step_updates_the_estimator_and_backpropagates(data, mixed):
    dm, batch = data
    model = build(dm, mixed_negatives=mixed)
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and int(model.estimator.step) == 1
    loss.backward()
    assert model.item_tower.ids.item.weight.grad.abs().sum() > 0
    assert model.query_tower.user.weight.grad.abs().sum() > 0
    uncorrected = build(dm, logq_correction=False)
    uncorrected.training_step(batch, 0)
    assert int(uncorrected.estimator.step) == 0


def test_recall_counts_hits_in_the_top_k(data):
    dm, batch = data
    model = build(dm, recall_k=[1, 3])
    # Item j embeds as e_(j mod 4) * (1 - j / 1e5), so a query e_c ranks the items of class c by
    # index: target t (>= 2) sits at rank (t - 2) // 4. Targets are 2..33; the first 16 queries ask for
    # e_(t mod 4), the last 16 for -e_(t mod 4) (their targets score lowest: never a hit).
    j = torch.arange(dm.num_items)
    model._catalogue = torch.nn.functional.one_hot(j % 4, 8).float() * (1 - j / 1e5)[:, None]
    batch = {**batch, "target_item": torch.arange(2, 34)}
    queries = torch.nn.functional.one_hot(batch["target_item"] % 4, 8).float()
    queries[16:] *= -1
    model.query_tower.forward = lambda b: queries
    model._evaluate(batch, "val", dataloader_idx=0)
    # @1: targets 2..5 (rank 0) -> 4 / 32; @3: targets 2..13 (ranks 0..2) -> 12 / 32.
    recall = model.metrics["val_next"].compute()
    assert recall[1].item() == pytest.approx(4 / 32) and recall[3].item() == pytest.approx(12 / 32)


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_faiss_callback_with_an_exact_index_matches_the_exact_metrics(data, tmp_path):
    import lightning as L

    from lightning_tt.eval.callback import FaissRetrieval

    dm, _ = data
    dm = YambdaDataModule(str(dm.data.path), batch_size=32, eval_batch_size=64, history=6)
    model = build(dm, recall_k=[5, 20])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FaissRetrieval(kind="flat")],
                        default_root_dir=tmp_path)
    trainer.test(model, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for k in (5, 20):
        assert m[f"test/next/recall@{k}"] == pytest.approx(m[f"test/next/exact_recall@{k}"])
        assert m[f"test/next/ann_exact_ratio@{k}"] == pytest.approx(1.0)
        for name in ("recall", "ndcg", "coverage"):
            assert m[f"test/paper/{name}@{k}"] == pytest.approx(m[f"test/paper/exact_{name}@{k}"])
    assert m["test/index/bytes"] > 0 and m["test/index/queries_per_second"] > 0
    assert m["test/next/exact_recall@20"] > 0  # not a vacuous comparison
