"""TwoTowerModule and its towers: shapes, feature switches, shared tables, the training step and the
brute-force Recall@k."""

import pytest
import torch

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.errors import InputError
from lightning_tt.model.loss import corrected_softmax_loss
from lightning_tt.model.module import TwoTowerModule
from tests.helpers import HostReads

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
    with pytest.raises(InputError, match="item tower needs at least one feature"):
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


def test_host_reads_sees_a_sync():  # the detector itself, so that the test below can fail
    x = torch.tensor([0.0, 2.0, 0.0])
    with HostReads() as reads:
        x.nonzero()
        x[x > 1]
        x.sum().item()
    assert len(reads.seen) == 3


@pytest.mark.parametrize("mixed", [0, 5])
def test_the_training_step_never_waits_for_the_device(data, mixed):
    dm, batch = data
    batch = {**batch, "target_item": batch["target_item"].clone()}
    batch["target_item"][1] = batch["target_item"][0]  # an accidental hit to mask
    model = build(dm, mixed_negatives=mixed)
    model.training_step(batch, 0)  # the estimator's first step (no host read either, but special)
    with HostReads() as reads:
        model.training_step(batch, 1).backward()
    assert reads.seen == []


@pytest.mark.slow
def test_the_compiled_step_computes_what_the_eager_one_does(data):
    # model.compile (the 500m config's setting) compiles both towers and the loss (about 35 s on 2 cores
    # without Inductor's cache, under 10 s with it).
    dm, batch = data
    steps = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = build(dm, compile=compile, mixed_negatives=3)
        model.configure_model()
        torch.manual_seed(1)  # the same mixed negatives
        loss = model.training_step(batch, 0)
        loss.backward()
        steps.append((loss.detach(), model.item_tower.ids.item.weight.grad, model.query_tower.mlp[0].weight.grad))
    assert model.loss_function is not corrected_softmax_loss
    for eager, compiled in zip(*steps):
        assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-6)


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
    recall = model.metrics["val"].compute()
    assert set(recall) == {"val/next/exact_recall@1", "val/next/exact_recall@3"}  # only the updated protocol
    assert recall["val/next/exact_recall@1"] == pytest.approx(4 / 32)
    assert recall["val/next/exact_recall@3"] == pytest.approx(12 / 32)


def test_the_exact_search_in_chunks_gives_the_whole_matrix_lists(data, monkeypatch):
    dm, _ = data
    model = build(dm)
    torch.manual_seed(0)
    model._catalogue = torch.randn(dm.num_items, 8)
    model._catalogue[7] = model._catalogue[9]  # a tie, broken the same way in every chunk
    queries = torch.randn(50, 8)
    seen = torch.randint(0, dm.num_items, (50, 4))
    whole = queries @ model._catalogue.T
    whole[:, :2] = float("-inf")
    whole.scatter_(1, seen, float("-inf"))
    expected = whole.topk(20, dim=1)
    monkeypatch.setattr(TwoTowerModule, "SCORE_ENTRIES", 7 * dm.num_items)  # 8 chunks of 7 queries, the last of 1
    scores, items = model._top_k(queries, 20, seen)
    assert torch.equal(items, expected.indices)
    torch.testing.assert_close(scores, expected.values)  # the matrix product's blocking can move the last bit


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_faiss_callback_with_an_exact_index_matches_the_exact_metrics(data, tmp_path):
    import lightning as L

    from lightning_tt.eval.callback import FaissRetrieval
    from lightning_tt.eval.index import IndexConfig
    from lightning_tt.eval.report import RunReport

    dm, _ = data
    dm = YambdaDataModule(str(dm.data.path), batch_size=32, eval_batch_size=64, history=6)
    torch.manual_seed(0)  # deterministic; an untrained model still hits some targets in its top 20
    model = build(dm, recall_k=[20, 100])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FaissRetrieval(IndexConfig(kind="flat")), RunReport()],
                        default_root_dir=tmp_path)
    trainer.test(model, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for k in (20, 100):
        assert m[f"test/next/exact_recall@{k}"] > 0  # not a vacuous comparison (no ratio without a hit)
        assert m[f"test/next/recall@{k}"] == pytest.approx(m[f"test/next/exact_recall@{k}"])
        assert m[f"test/next/ann_exact_ratio@{k}"] == pytest.approx(1.0)
        for name in ("recall", "ndcg", "coverage"):
            assert m[f"test/paper/{name}@{k}"] == pytest.approx(m[f"test/paper/exact_{name}@{k}"])
    assert m["test/index/bytes"] > 0 and m["test/index/queries_per_second"] > 0


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_each_epochs_summary_shows_that_epochs_mean_training_loss(data, tmp_path, capsys):
    import lightning as L

    class StepLosses(L.Callback):  # (epoch, loss, batch size) of every training step
        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps.append((trainer.current_epoch, float(outputs["loss"]), len(batch["target_item"])))

    dm, _ = data
    dm = YambdaDataModule(str(dm.data.path), batch_size=32, eval_batch_size=256, history=6)
    steps = StepLosses()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=5, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[steps], default_root_dir=tmp_path)
    trainer.fit(build(dm), datamodule=dm)
    means = []
    for epoch in (0, 1):
        rows = [(loss, n) for e, loss, n in steps.steps if e == epoch]
        means.append(sum(loss * n for loss, n in rows) / sum(n for _, n in rows))
    assert abs(means[0] - means[1]) > 1e-3  # the two epochs differ, so a lagged summary would show
    printed = [float(line.split("train/loss ")[1].split(",")[0]) for line in capsys.readouterr().out.splitlines()
               if line.startswith("epoch ")]
    assert printed == pytest.approx(means, abs=1e-4)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(means[1], rel=1e-5)


def test_ddp_leaves_the_buffers_alone(data, tmp_path):
    # DDP would broadcast rank zero's buffers before every forward (the item table: ~0.8 GB at 3M items).
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dm, _ = data
    model = build(dm)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        assert not wrapped.will_sync_module_buffers()
        assert len(list(model.buffers())) >= 10  # table, estimator and loss sum: all left out
    finally:
        dist.destroy_process_group()


class _Snapshots:
    """Item-table weights before the first step and after each step of a 2-step fit."""

    @staticmethod
    def fit(dm, tmp_path, **overrides) -> list[torch.Tensor]:
        import lightning as L

        class EpsFree(TwoTowerModule):  # eps ~ 0: Adam's first step is exactly lr * sign(g)
            def configure_optimizers(self):
                optimizers = super().configure_optimizers()
                for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                    for group in optimizer.param_groups:
                        group["eps"] = 1e-30
                return optimizers

        class Snap(L.Callback):
            def __init__(self):
                self.weights = []

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if not self.weights:
                    self.weights.append(module.item_tower.ids.item.weight.detach().clone())

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.weights.append(module.item_tower.ids.item.weight.detach().clone())

        torch.manual_seed(0)
        sizes = dict(num_users=dm.num_users, num_items=dm.num_items, num_artists=dm.num_artists,
                     num_albums=dm.num_albums, audio_dim=dm.audio_dim)
        model = EpsFree(data_dir=str(dm.data.path), embedding_dim=8, hidden_dims=[16], output_dim=8,
                        estimator_buckets=1024, learning_rate=1e-3, **sizes, **overrides)
        snap = Snap()
        trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[snap], default_root_dir=tmp_path)
        trainer.fit(model, datamodule=dm)
        return snap.weights


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_sparse_embeddings_take_the_first_adam_step_and_then_leave_untouched_rows_alone(data, tmp_path):
    dm, _ = data
    dm = YambdaDataModule(str(dm.data.path), batch_size=32, history=6)
    dense = _Snapshots.fit(dm, tmp_path / "d")
    sparse = _Snapshots.fit(dm, tmp_path / "s", sparse_embeddings=True)
    assert len(dense) == len(sparse) == 3  # max_steps=2 counts batches, also with two optimizers
    assert torch.equal(dense[0], sparse[0])  # the same start
    # Step 1 from zero moments: m = (1 - b1) g, v = (1 - b2) g^2, so both optimizers move every entry
    # with a gradient by lr * sign(g) and no other entry: the same weights.
    moved = (sparse[1] - sparse[0]).abs()
    assert torch.allclose(sparse[1], dense[1], atol=1e-6)
    steps = moved[moved > 0]
    assert len(steps) > 0 and torch.allclose(steps, torch.full_like(steps, 1e-3), rtol=1e-4)  # float32 rounding
    # Step 2: a row of step 1's batch that step 2 did not look up keeps its weights under SparseAdam,
    # while dense Adam keeps moving it with its momentum.
    first = (sparse[1] != sparse[0]).any(dim=1)
    second = (sparse[2] != sparse[1]).any(dim=1)
    only_first = first & ~second
    assert only_first.sum() > 0
    assert ((dense[2] - dense[1])[only_first].abs().sum(dim=1) > 0).all()


def test_an_unknown_compile_mode_is_named(data):
    dm, _ = data
    with pytest.raises(InputError, match="model.compile_mode must be one of default, reduce-overhead"):
        build(dm, compile=True, compile_mode="fastest")


def test_sparse_embeddings_refuse_weight_decay(data):
    dm, _ = data
    with pytest.raises(InputError, match="weight_decay must be 0 with model.sparse_embeddings"):
        build(dm, sparse_embeddings=True, weight_decay=0.01)


def test_sparse_embeddings_refuse_fp16(data, tmp_path):
    import lightning as L

    dm, _ = data
    trainer = L.Trainer(accelerator="cpu", precision="16-true", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(InputError, match="sparse_embeddings needs trainer.precision 32-true, bf16-mixed or bf16-true"):
        trainer.fit(build(dm, sparse_embeddings=True), datamodule=YambdaDataModule(str(dm.data.path), batch_size=32,
                                                                                   history=6))
