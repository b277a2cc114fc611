"""Serving: export a trained model's item index, and recommend for one user and seed track.

``export`` writes, into a directory (atomically, through lightning_tt.outputs)::

    item_embeddings.npy   float32 [V - 2, o]   item tower output of every catalogue item (row r = item index r + 2)
    item_ids.npy          uint32  [V - 2]      the raw Yambda item_id of each row
    index.faiss           the Faiss index over those rows (inner product)
    export.json           checkpoint, data directory and its fingerprint, index factory string, sizes

``recommend`` embeds the query from the user's current state in the prepared stream (the last N
listens, example age 0), with the given seed track, and searches the exported index, after checking
that the export, the checkpoint and the prepared data belong together (``open_export``).
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import torch

from lightning_tt.data.prepared import PreparedData
from lightning_tt.errors import InputError, one_line
from lightning_tt.eval.index import IndexConfig, build_index
from lightning_tt.model.module import FIRST_ITEM, TwoTowerModule
from lightning_tt.outputs import Output
from lightning_tt.provenance import check_same_data, read_checkpoint


class ServingError(InputError):
    """A request that cannot be served (unknown ids, a missing or mismatched export...), with a message
    for the user."""


def load_model(ckpt_path: str | Path) -> tuple[TwoTowerModule, PreparedData]:
    """The model of ``ckpt_path`` (on the CPU, in eval mode) and the prepared data it was trained on,
    checked to be that data (lightning_tt.provenance) before the weights are loaded."""
    checkpoint = read_checkpoint(ckpt_path)
    data_dir = checkpoint["hyper_parameters"].get("data_dir")
    if not data_dir:
        raise ServingError(f"--ckpt_path {ckpt_path}: the checkpoint names no data_dir (a model trained outside "
                           f"`lightning-tt fit`?)")
    data = PreparedData(data_dir)
    check_same_data(checkpoint["hyper_parameters"].get("data_fingerprint"), data.fingerprint, str(ckpt_path),
                    str(data.path))
    del checkpoint
    model = TwoTowerModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    return model.eval(), data


def export(ckpt_path: str | Path, out: str | Path, config: IndexConfig = IndexConfig(),
           overwrite: bool = False) -> dict:
    """Embed the catalogue, build the index and write the export directory; return export.json.

    ``out`` must not overlap the checkpoint or its data directory (lightning_tt.outputs), and an
    existing export is replaced only with ``overwrite``, after the new one is complete."""
    model, data = load_model(ckpt_path)
    output = Output(out, "dir", option="--out", inputs={"--ckpt_path": ckpt_path, "the checkpoint's data_dir": data.path},
                    overwrite=overwrite)
    embeddings = model.item_embeddings()[FIRST_ITEM:].float().numpy()
    built = build_index(embeddings, config)
    with output.writing() as tmp:
        np.save(tmp / "item_embeddings.npy", embeddings)
        np.save(tmp / "item_ids.npy", np.asarray(data["item_ids"])[FIRST_ITEM:])
        faiss.write_index(built.index, str(tmp / "index.faiss"))
        meta = {"checkpoint": str(Path(ckpt_path).resolve()), "data_dir": str(data.path),
                "data_fingerprint": data.fingerprint, "factory": built.factory, "items": int(len(embeddings)),
                "dim": int(embeddings.shape[1]), "index_bytes": built.bytes}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    return meta


#: Catalogue rows whose embeddings recommend recomputes to check that an export is the model's own.
CHECKED_ROWS = 8


def open_export(index_dir: str | Path, model: TwoTowerModule, data: PreparedData) -> tuple[faiss.Index, np.ndarray]:
    """The Faiss index and raw item ids [n] of an export directory, checked to belong to ``model`` and
    ``data``: the same data fingerprint, the model's output dimension, one raw id per indexed vector,
    and the stored embeddings of a few catalogue rows equal to what the model computes for them now (an
    index exported from another checkpoint differs there)."""
    index_dir = Path(index_dir)
    meta_path = index_dir / "export.json"
    if not meta_path.is_file():
        raise ServingError(f"--index {index_dir}: no export.json; create it with `lightning-tt export`")
    try:
        meta = json.loads(meta_path.read_text())
        index = faiss.read_index(str(index_dir / "index.faiss"))
        rows = np.load(index_dir / "item_ids.npy")
        stored = np.load(index_dir / "item_embeddings.npy", mmap_mode="r")
    except (OSError, ValueError, RuntimeError) as err:  # faiss raises RuntimeError for a damaged index
        raise ServingError(f"--index {index_dir}: damaged export ({one_line(err)}); export it again") from err
    exported_from = meta.get("checkpoint", "another checkpoint")
    if meta.get("data_fingerprint") != data.fingerprint:
        raise ServingError(f"--index {index_dir}: exported from a model of other prepared data ({exported_from}), not "
                           f"the data of --ckpt_path ({data.path}); export this checkpoint")
    dim = model.hparams.output_dim
    if index.d != dim or stored.ndim != 2 or stored.shape[1] != dim:
        raise ServingError(f"--index {index_dir}: vectors of dimension {index.d}, but --ckpt_path embeds in {dim} "
                           f"dimensions; export this checkpoint")
    if not len(rows) == index.ntotal == len(stored):
        raise ServingError(f"--index {index_dir}: damaged export ({index.ntotal} vectors, {len(rows)} item ids, "
                           f"{len(stored)} embeddings); export it again")
    if len(rows) != data.vocab["num_items"] - FIRST_ITEM:
        raise ServingError(f"--index {index_dir}: {len(rows):,} items, but the model's catalogue has "
                           f"{data.vocab['num_items'] - FIRST_ITEM:,}; export this checkpoint")
    checked = np.unique(np.linspace(0, len(rows) - 1, CHECKED_ROWS).astype(np.int64))
    with torch.no_grad():
        now = model.item_tower(torch.from_numpy(checked + FIRST_ITEM)).float().numpy()
    if not np.allclose(now, stored[checked], atol=1e-3):
        raise ServingError(f"--index {index_dir}: exported from another checkpoint ({exported_from}); its item "
                           f"embeddings are not those of --ckpt_path; export this checkpoint")
    return index, rows


def _query_batch(data: PreparedData, user_index: int, seed_index: int, history: int) -> dict[str, torch.Tensor]:
    """A one-row lean batch: the user's last ``history`` listens (everything in the stream is the past
    at serving time), the given seed, example age 0."""
    offsets = np.asarray(data["user_offsets"])
    start, end = offsets[user_index], offsets[user_index + 1]
    recent = np.asarray(data["stream_item"][max(start, end - history) : end], dtype=np.int64)
    items = np.zeros(history, dtype=np.int64)
    items[history - len(recent) :] = recent
    return {
        "user": torch.tensor([user_index]),
        "history_item": torch.from_numpy(items)[None, :],
        "history_mask": torch.from_numpy(items > 0)[None, :],
        "seed_item": torch.tensor([seed_index]),
        "example_age": torch.zeros(1),
    }


def _index_of(raw_ids: np.ndarray, raw: int, notes: list[str], unknown: str) -> int:
    """Vocabulary index of a raw id, or 1 (unknown) with ``unknown`` added to ``notes``."""
    found = np.flatnonzero(np.asarray(raw_ids)[FIRST_ITEM:] == raw)
    if len(found):
        return int(found[0]) + FIRST_ITEM
    notes.append(unknown)
    return 1


def recommend(index_dir: str | Path, ckpt_path: str | Path, user: int, seed_item: int, k: int = 10,
              history: int | None = None) -> tuple[list[tuple[int, float]], list[str]]:
    """Top-k (raw item id, score) for raw ``user`` and raw ``seed_item``, and notes about fallbacks."""
    if k < 1:
        raise ServingError(f"--k must be >= 1, got {k}")
    model, data = load_model(ckpt_path)
    index, rows = open_export(index_dir, model, data)
    if k > len(rows):
        raise ServingError(f"--k {k} is larger than the catalogue of {len(rows):,} items")
    notes = []
    user_index = _index_of(data["user_ids"], user, notes,
                           f"unknown user {user}: no history; ranking from the seed track and the unknown-user embedding")
    seed_index = _index_of(data["item_ids"], seed_item, notes,
                           f"unknown seed item {seed_item}: not in the training catalogue; using the unknown-item features")
    batch = _query_batch(data, user_index, seed_index, history or data.default_history)
    with torch.no_grad():
        query = model(batch).float().numpy()
    scores, found = index.search(query, k)
    return [(int(rows[r]), float(s)) for r, s in zip(found[0], scores[0]) if r >= 0], notes
