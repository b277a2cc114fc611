"""LightningDataModule over a prepared directory (``lightning-tt data prepare`` output).

Sizes (``num_users``, ``num_items``, ``num_artists``, ``num_albums``, ``audio_dim``) are read from
``meta.json`` in the constructor, so LightningCLI can link them into the model at instantiate time.
Batches are dicts of tensors; their keys and shapes are listed in :mod:`lightning_tt.data.batches`.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from lightning_tt.data.batches import BatchIndexSampler, CaseSample, NextTrackDataset, PaperListDataset, case_sample
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.seen import resolve_exclude_seen
from lightning_tt.errors import InputError


def check_val_window(data: PreparedData, limit_val_batches: int | float | None) -> None:
    """Refuse to fit on ``data`` without a val window unless validation is off (``limit_val_batches``
    0): it would train blind, and a ModelCheckpoint monitoring a val/ metric would never pick a best."""
    if limit_val_batches != 0 and data.num_examples("val") == 0:
        raise InputError(f"{data.path}: the val window has no cases (prepared with --split.val_days 0?), so fit "
                         f"cannot validate; prepare the data with a val window, or pass --trainer.limit_val_batches 0 "
                         f"to train without validation (a ModelCheckpoint monitoring a val/ metric then writes only "
                         f"its last.ckpt, with save_last)")


class YambdaDataModule(L.LightningDataModule):
    """Training examples and evaluation cases of one prepared dataset.

    Args:
        data_dir: a directory written by ``lightning-tt data prepare``.
        batch_size: training examples per batch.
        eval_batch_size: evaluation cases per batch (default: ``batch_size``).
        history: history window length N (default: the ``--split.history`` the data was prepared with).
        num_workers: DataLoader worker processes (0 assembles batches in the training process).
        seed: seed of the per-epoch shuffling of training examples.
        pin_memory: page-locked batches, for fast copies to a GPU.
        feedback: K, the number of the user's most recent likes and of their most recent dislikes
            every query carries (``liked_item``, ``disliked_item``; 0 = none). Linked into the model.
        target_horizon: seconds; > 0 draws each training target from the user's Listen+ listens
            within this horizon after the example's time (the day-ahead protocol's question), 0
            trains on the next track only. Evaluation cases are unchanged.
        exclude_seen: leave out of each evaluation list every item its user listened to before the case,
            the window's earlier listens included (the batches carry them as ``seen_items``), as the
            baselines' ``exclude_seen`` does; None (auto):
            when fewer than 1% of the training positives repeat one of their user's earlier positives
            (data consumed once, such as films; lightning_tt.data.seen). Linked into the model, which
            then also leaves the past out when serving.
        val_cases: at most this many validation next-track cases, and at most this many paper lists, a
            seeded sample of each (``batches.case_sample``: the same cases in every epoch and run),
            kept in their order; None: every case. It bounds the validation epoch, whose exact metrics
            score each case against the whole catalogue (cases x items); the test window is never sampled.
    """

    def __init__(self, data_dir: str, batch_size: int = 4096, eval_batch_size: int | None = None,
                 history: int | None = None, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False, feedback: int = 0, target_horizon: int = 0,
                 exclude_seen: bool | None = None, val_cases: int | None = None):
        super().__init__()
        self.data = PreparedData(data_dir)
        # The model holds the resolved value (linked); loggers refuse a key the two hold with different values.
        self.exclude_seen = resolve_exclude_seen(self.data, exclude_seen)
        self.save_hyperparameters(ignore=["exclude_seen"])
        self.history = int(history if history is not None else self.data.default_history)
        if self.history < 1:
            raise InputError(f"data.history must be >= 1, got {self.history}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if value < 1:
                raise InputError(f"data.{name} must be >= 1, got {value}")
        for name, value in (("num_workers", num_workers), ("feedback", feedback), ("target_horizon", target_horizon)):
            if value < 0:
                raise InputError(f"data.{name} must be >= 0, got {value}")
        if val_cases is not None and val_cases < 1:
            raise InputError(f"data.val_cases must be >= 1 (or null: every validation case), got {val_cases}")
        self.feedback = feedback
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size

    def setup(self, stage: str) -> None:
        """Checks against the data, before any loop starts: training needs at least one full batch per
        process (the last partial batch is dropped), evaluation a non-empty window."""
        replicas, _ = self._replicas()
        if stage == "fit":
            examples = self.data.num_examples("train") // replicas
            if examples < self.batch_size:
                per = " per process" if replicas > 1 else ""
                raise InputError(f"data.batch_size {self.batch_size:,} is larger than the {examples:,} training "
                                 f"examples"
                                 f"{per} in {self.data.path}: no training batch; choose a smaller data.batch_size")
            # and a val window, unless validation is off (--trainer.limit_val_batches 0)
            check_val_window(self.data, self.trainer.limit_val_batches if self.trainer else None)
        split = {"validate": "val", "test": "test", "predict": "test"}.get(stage)
        if split and self.data.num_examples(split) == 0:
            raise InputError(f"{self.data.path}: the {split} window has no cases (prepared with --split.val_days 0?); "
                             f"prepare the data with a {split} window")

    @property
    def fingerprint(self) -> str:
        """The prepared data's fingerprint (meta.json), linked into the model as ``data_fingerprint``."""
        return self.data.fingerprint

    @property
    def num_users(self) -> int:
        return int(self.data.vocab["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.data.vocab["num_items"])

    @property
    def num_artists(self) -> int:
        return int(self.data.vocab["num_artists"])

    @property
    def num_albums(self) -> int:
        return int(self.data.vocab["num_albums"])

    @property
    def audio_dim(self) -> int:
        return int(self.data.vocab["audio_dim"])

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        replicas, rank = self._replicas()
        sampler = BatchIndexSampler(len(dataset), batch_size, shuffle=train, drop_last=train,
                                    seed=self.hparams.seed, num_replicas=replicas, rank=rank)
        workers = self.hparams.num_workers
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=self.hparams.pin_memory)

    def dataset(self, split: str) -> NextTrackDataset:
        """Next-track examples of ``split`` in {train, val, test}."""
        horizon = self.hparams.target_horizon if split == "train" else 0
        return NextTrackDataset(self.data, split, self.history, self.feedback, horizon,
                                exclude_seen=self.exclude_seen and split != "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), self.batch_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        """[next-track cases, paper-protocol lists] of the validation window (each sampled to at most
        ``val_cases``)."""
        cases = self._sampled(self.dataset("val"), "val")
        return [self._loader(cases, self.eval_batch_size, train=False), self.paper_dataloader("val")]

    def test_dataloader(self) -> list[DataLoader]:
        """[next-track cases, paper-protocol lists] of the test window."""
        return [self._loader(self.dataset("test"), self.eval_batch_size, train=False), self.paper_dataloader("test")]

    def predict_dataloader(self) -> DataLoader:
        """The test window's next-track cases (``predict`` returns top-k lists for them)."""
        return self._loader(self.dataset("test"), self.eval_batch_size, train=False)

    def paper_dataloader(self, split: str) -> DataLoader:
        """Paper-protocol lists of ``split`` in {val, test} (one query per user with targets; batches of
        ``eval_batch_size // 16`` users, since each carries all its targets)."""
        dataset = PaperListDataset(self.data, split, self.history, self.feedback, self.exclude_seen)
        return self._loader(self._sampled(dataset, split), max(1, self.eval_batch_size // 16), train=False)

    def _sampled(self, dataset, split: str):
        """``dataset`` (cases or paper lists of ``split``) seen through the ``val_cases`` sample when
        ``split`` is val and a sample is asked for; as it is otherwise."""
        if split != "val" or self.hparams.val_cases is None:
            return dataset
        return CaseSample(dataset, case_sample(len(dataset), self.hparams.val_cases))
