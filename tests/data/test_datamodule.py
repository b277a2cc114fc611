"""YambdaDataModule: sizes from meta.json at construction, documented batch shapes, sampling."""

import numpy as np
import pytest
import torch

from lightning_tt.data.batches import BatchIndexSampler
from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.data.prepared import PreparedDataError


@pytest.fixture
def prepared(hand_prepared):
    return hand_prepared


def test_sizes_are_known_right_after_construction(prepared):
    dm = YambdaDataModule(str(prepared), batch_size=2)
    assert (dm.num_users, dm.num_items, dm.num_artists, dm.num_albums, dm.audio_dim) == (4, 6, 4, 6, 4)
    assert dm.history == 50  # the prepare default, overridable
    assert YambdaDataModule(str(prepared), history=7).history == 7


def test_a_directory_that_is_not_prepared(tmp_path):
    with pytest.raises(PreparedDataError, match="meta.json: not found"):
        YambdaDataModule(str(tmp_path))


def test_batch_shapes_and_dtypes(prepared):
    dm = YambdaDataModule(str(prepared), batch_size=3, eval_batch_size=2, history=5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 1  # 4 training examples, batch 3, last partial batch dropped
    b = batches[0]
    B, N = 3, 5
    shapes = {"user": (B,), "history_item": (B, N), "history_mask": (B, N), "history_length": (B,),
              "history_ratio": (B, N), "seed_item": (B,), "seed_organic": (B,), "example_age": (B,),
              "target_item": (B,), "weight": (B,)}
    assert {k: tuple(v.shape) for k, v in b.items()} == shapes
    for key, value in b.items():
        if key.endswith("_mask"):
            assert value.dtype == torch.bool, key
        elif key.endswith(("age", "weight", "_ratio")):
            assert value.dtype == torch.float32, key
        else:
            assert value.dtype == torch.int64, key
    # Validation and test keep every case; paper lists carry padded targets.
    next_val, paper_val = dm.val_dataloader()
    assert sum(len(x["target_item"]) for x in next_val) == 1 and sum(len(x["user"]) for x in paper_val) == 1
    assert [len(x["target_item"]) for x in dm.test_dataloader()[0]] == [2, 1]
    paper = next(iter(YambdaDataModule(str(prepared), eval_batch_size=32).paper_dataloader("test")))
    assert paper["target_items"].shape == (2, 2) and paper["target_count"].tolist() == [2, 1]


def test_item_features(prepared):
    from lightning_tt.data.prepared import PreparedData

    table = PreparedData(prepared).item_features()
    assert table["artist"].tolist() == [0, 1, 2, 2, 3, 1]
    assert table["audio"].shape == (6, 4) and table["audio"].dtype == np.int16  # bfloat16 bits
    assert table["has_audio"].tolist() == [False, False, True, True, False, True]


def test_sampler_shuffles_per_epoch_deterministically():
    sampler = BatchIndexSampler(10, 4, shuffle=True, drop_last=True, seed=1)
    first = [b.tolist() for b in sampler]
    assert len(first) == 2 and all(len(b) == 4 for b in first)
    assert first == [b.tolist() for b in sampler]  # same epoch, same order
    sampler.set_epoch(1)
    assert first != [b.tolist() for b in sampler]


def test_sampler_shards_across_ranks():
    train = [BatchIndexSampler(11, 2, shuffle=True, drop_last=True, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    shards = [np.concatenate(list(s)) for s in train]
    assert len(shards[0]) == len(shards[1]) == 4 and not set(shards[0]) & set(shards[1])
    evals = [BatchIndexSampler(11, 2, shuffle=False, drop_last=False, num_replicas=2, rank=r) for r in (0, 1)]
    covered = sorted(np.concatenate([np.concatenate(list(s)) for s in evals]).tolist())
    assert covered == list(range(11))  # evaluation loses no case


def test_lightning_trainer_drives_the_loaders(prepared):
    """A real Trainer consumes the batch-index loaders: dict batches, a new shuffle every epoch."""
    import lightning as L

    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(6, 2)

        def training_step(self, batch, batch_idx):
            seen.append((self.current_epoch, batch["target_item"].tolist()))
            return self.embedding(batch["target_item"]).sum()

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val/count", float(len(batch["user"])))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = YambdaDataModule(str(prepared), batch_size=2, history=3, seed=5)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Probe(), datamodule=dm)
    assert [e for e, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3]  # 4 examples / batch 2, every epoch
    orders = [sum((items for e, items in seen if e == epoch), []) for epoch in range(4)]
    assert all(sorted(o) == [2, 3, 4, 5] for o in orders)  # every training target once per epoch
    assert len({tuple(o) for o in orders}) > 1  # reshuffled between epochs (set_epoch reached the sampler)


def test_datasets_pickle_without_their_arrays(prepared):
    """Spawned DataLoader workers receive the directory and reopen the memory maps."""
    import pickle

    from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
    from lightning_tt.data.prepared import PreparedData

    data = PreparedData(prepared)
    for dataset in (NextTrackDataset(data, "train", 3), PaperListDataset(data, "test", 3)):
        index = np.arange(len(dataset))
        before = dataset[index]
        copy = pickle.loads(pickle.dumps(dataset))
        assert isinstance(copy.gather.stream_item, np.memmap)  # reopened, not copied into the pickle
        after = copy[index]
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_case_sample_is_seeded_sorted_and_without_repeats():
    from lightning_tt.data.batches import case_sample

    sample = case_sample(1_000, 100)
    assert len(sample) == len(np.unique(sample)) == 100
    assert np.all(np.diff(sample) > 0) and 0 <= sample.min() and sample.max() < 1_000
    assert np.array_equal(sample, case_sample(1_000, 100))  # the same cases in every run
    assert not np.array_equal(sample, case_sample(1_000, 100, seed=1))
    assert np.array_equal(case_sample(7, None), np.arange(7))
    assert np.array_equal(case_sample(7, 7), np.arange(7)) and np.array_equal(case_sample(7, 50), np.arange(7))


def _cases(loader) -> dict:
    """Every batch's keys concatenated; those padded per batch (seen_items, target_items) as each
    case's sorted non-padding items."""
    batches, ragged = list(loader), ("seen_items", "target_items")
    out = {key: torch.cat([b[key] for b in batches]) for key in batches[0] if key not in ragged}
    for key in ragged:
        if key in batches[0]:
            out[key] = [sorted(row[row > 0].tolist()) for b in batches for row in b[key]]
    return out


def test_val_cases_samples_the_validation_window_only(tiny_prepared):
    from lightning_tt.data.batches import case_sample

    full = YambdaDataModule(str(tiny_prepared), batch_size=64, eval_batch_size=32, history=5, exclude_seen=True)
    sampled = YambdaDataModule(str(tiny_prepared), batch_size=64, eval_batch_size=32, history=5, exclude_seen=True,
                               val_cases=40)
    assert len(full.paper_dataloader("val").dataset) > 40  # both protocols are really sampled
    (full_next, full_paper), (next_, paper) = full.val_dataloader(), sampled.val_dataloader()
    every, some = _cases(full_next), _cases(next_)
    assert len(every["target_item"]) > 40 == len(some["target_item"])
    chosen = torch.from_numpy(case_sample(len(every["target_item"]), 40))
    for key in ("user", "target_item", "seed_item", "history_item"):  # the cases at those indices
        assert torch.equal(some[key], every[key][chosen]), key
    assert some["seen_items"] == [every["seen_items"][i] for i in chosen.tolist()]
    assert any(some["seen_items"])
    every_paper, some_paper = _cases(full_paper), _cases(paper)
    lists = len(every_paper["user"])
    assert len(some_paper["user"]) == min(lists, 40)
    chosen = case_sample(lists, 40)
    assert torch.equal(some_paper["user"], every_paper["user"][torch.from_numpy(chosen)])
    assert some_paper["target_items"] == [every_paper["target_items"][i] for i in chosen.tolist()]
    # the test window is never sampled
    assert len(_cases(sampled.test_dataloader()[0])["user"]) == len(_cases(full.test_dataloader()[0])["user"])


def test_val_cases_must_be_positive(prepared):
    from lightning_tt.errors import InputError

    with pytest.raises(InputError, match="data.val_cases must be >= 1"):
        YambdaDataModule(str(prepared), val_cases=0)
