"""Serving: export a trained model's item index, and recommend for one user and seed track.

``export`` writes, into a directory (atomically: a temporary sibling renamed on success)::

    item_embeddings.npy   float32 [V - 2, o]   item tower output of every catalogue item (row r = item index r + 2)
    item_ids.npy          uint32  [V - 2]      the raw Yambda item_id of each row
    index.faiss           the Faiss index over those rows (inner product)
    export.json           checkpoint, data directory, index factory string, sizes

``recommend`` embeds the query from the user's current state in the prepared stream (the last N
listens, example age 0), with the given seed track, and searches the exported index.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import faiss
import numpy as np
import torch

from lightning_tt.data.prepared import PreparedData
from lightning_tt.eval.index import IndexConfig, build_index
from lightning_tt.model.module import FIRST_ITEM, TwoTowerModule


class ServingError(ValueError):
    """A request that cannot be served (unknown ids, a missing export...), with a message for the user."""


def load_model(ckpt_path: str | Path) -> TwoTowerModule:
    path = Path(ckpt_path)
    if not path.is_file():
        raise ServingError(f"{path}: checkpoint not found")
    model = TwoTowerModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return model.eval()


def export(ckpt_path: str | Path, out: str | Path, config: IndexConfig = IndexConfig(),
           overwrite: bool = False) -> dict:
    """Embed the catalogue, build the index and write the export directory; return export.json."""
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out}: output directory exists; pass --overwrite to replace it")
    model = load_model(ckpt_path)
    data = PreparedData(model.hparams.data_dir)
    embeddings = model.item_embeddings()[FIRST_ITEM:].float().numpy()
    built = build_index(embeddings, config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        np.save(tmp / "item_embeddings.npy", embeddings)
        np.save(tmp / "item_ids.npy", np.asarray(data["item_ids"])[FIRST_ITEM:])
        faiss.write_index(built.index, str(tmp / "index.faiss"))
        meta = {"checkpoint": str(Path(ckpt_path).resolve()), "data_dir": str(data.path), "factory": built.factory,
                "items": int(len(embeddings)), "dim": int(embeddings.shape[1]), "index_bytes": built.bytes}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


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
    index_dir = Path(index_dir)
    if not (index_dir / "export.json").is_file():
        raise ServingError(f"{index_dir}: no export.json; create it with `lightning-tt export`")
    if k < 1:
        raise ServingError(f"--k must be >= 1, got {k}")
    model = load_model(ckpt_path)
    data = PreparedData(model.hparams.data_dir)
    notes = []
    user_index = _index_of(data["user_ids"], user, notes,
                           f"unknown user {user}: no history; ranking from the seed track and the unknown-user embedding")
    seed_index = _index_of(data["item_ids"], seed_item, notes,
                           f"unknown seed item {seed_item}: not in the training catalogue; using the unknown-item features")
    batch = _query_batch(data, user_index, seed_index, history or data.default_history)
    with torch.no_grad():
        query = model(batch).float().numpy()
    index = faiss.read_index(str(index_dir / "index.faiss"))
    rows = np.load(index_dir / "item_ids.npy")
    scores, found = index.search(query, k)
    return [(int(rows[r]), float(s)) for r, s in zip(found[0], scores[0]) if r >= 0], notes
