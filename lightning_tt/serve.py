"""Serving: export a trained model's item index, and recommend for one user and seed track.

``export`` writes, into a directory (atomically, through lightning_tt.outputs)::

    item_embeddings.npy   float32 [V - 2, o']  retrieval vector of every catalogue item (row r = item index r + 2):
                                               the item tower's output, and the popularity column with
                                               model.popularity_weight (TwoTowerModule.retrieval_items)
    item_ids.npy          uint32  [V - 2]      the raw Yambda item_id of each row
    index.faiss           the Faiss index over those rows (inner product)
    export.json           checkpoint, data directory and its fingerprint, index factory string, sizes,
                          search parameters (nprobe, k_factor; with target_overlap, how they were calibrated
                          on the validation window's next-track queries)

``recommend`` embeds the query from the user's current state in the prepared stream (the last N
listens, example age 0), with the given seed track, and searches the exported index (leaving the user's
past listens out when the model was trained with ``exclude_seen``), after checking
that the export, the checkpoint and the prepared data belong together (``open_export``).
``recommend_batch`` does the same for every row of a requests file, a chunk of requests at a time.

``Recommender`` is that path, opened once: raw ids -> vocabulary indices -> query batch (the training
features, FeatureGatherer.query) -> query tower -> index search (leaving seen items out) -> raw ids.
``recommend``, ``recommend_batch`` and the HTTP server (lightning_tt.server) all go through it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from lightning_tt.data.batches import FeatureGatherer, NextTrackDataset, to_tensors
from lightning_tt.data.feedback import NEVER
from lightning_tt.data.prepared import FIRST_ITEM, PreparedData
from lightning_tt.errors import InputError, one_line
from lightning_tt.eval.index import CALIBRATION_QUERIES, IndexConfig, build_index, search_unseen
from lightning_tt.model.module import TwoTowerModule
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


def export(ckpt_path: str | Path, out: str | Path, config: IndexConfig = IndexConfig(),  # noqa: B008
           overwrite: bool = False) -> dict:
    """Embed the catalogue, build the index and write the export directory; return export.json.

    ``out`` must not overlap the checkpoint or its data directory (lightning_tt.outputs), and an
    existing export is replaced only with ``overwrite``, after the new one is complete."""
    model, data = load_model(ckpt_path)
    inputs = {"--ckpt_path": ckpt_path, "the checkpoint's data_dir": data.path}
    # replaces: an earlier export only, never a run's logs or a dataset
    output = Output(out, "dir", option="--out", inputs=inputs, overwrite=overwrite, replaces="export.json")
    embeddings = model.retrieval_items()[FIRST_ITEM:].float().numpy()
    queries = _calibration_queries(model, data) if config.target_overlap is not None else None
    built = build_index(embeddings, config, queries=queries)
    with output.writing() as tmp:
        np.save(tmp / "item_embeddings.npy", embeddings)
        np.save(tmp / "item_ids.npy", np.asarray(data["item_ids"])[FIRST_ITEM:])
        faiss.write_index(built.index, str(tmp / "index.faiss"))
        meta = {"checkpoint": str(Path(ckpt_path).resolve()), "data_dir": str(data.path),
                "data_fingerprint": data.fingerprint, "factory": built.factory, "items": int(len(embeddings)),
                "dim": int(embeddings.shape[1]), "index_bytes": built.bytes, "nprobe": built.config.nprobe,
                "k_factor": built.config.k_factor, "target_overlap": config.target_overlap,
                "calibration": built.calibration}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    return meta


def _calibration_queries(model: TwoTowerModule, data: PreparedData) -> np.ndarray:
    """[Q, o'] retrieval queries of a seeded sample of CALIBRATION_QUERIES next-track cases of the
    validation window (the test window's when validation has none): what export calibrates the index's
    search parameters on."""
    split = "val" if data.num_examples("val") else "test"
    cases = NextTrackDataset(data, split, model.hparams.history, feedback=model.hparams.feedback)
    rows = np.arange(len(cases))
    if len(rows) > CALIBRATION_QUERIES:
        rows = np.sort(np.random.default_rng(0).choice(len(rows), CALIBRATION_QUERIES, replace=False))
    with torch.no_grad():
        return model(to_tensors(cases.arrays(rows))).float().numpy()


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
    dim = model.retrieval_dim
    if index.d < dim or stored.ndim != 2 or stored.shape[1] != dim:  # (an index may add zero columns)
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
        now = model.retrieval_items(torch.from_numpy(checked + FIRST_ITEM)).float().numpy()
    if not np.allclose(now, stored[checked], atol=1e-3):
        raise ServingError(f"--index {index_dir}: exported from another checkpoint ({exported_from}); its item "
                           f"embeddings are not those of --ckpt_path; export this checkpoint")
    return index, rows


def _search(index: faiss.Index, model, batch: dict[str, torch.Tensor], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [R, k], index rows [R, k]; -1 where none) of a request batch: its retrieval queries,
    leaving out its ``seen_items`` when it carries them."""
    with torch.no_grad():
        query = model(batch).float().numpy()
    seen = batch.get("seen_items")
    return search_unseen(index, query, k, seen.numpy() - FIRST_ITEM if seen is not None else None)


#: A seed index meaning "no seed given": the request is seeded by the user's last listen, as training's
#: examples are (FeatureGatherer.query).
LAST_LISTEN = -1


def _query_batch(gather: FeatureGatherer, user_index: np.ndarray, seed_index: np.ndarray) -> dict[str, torch.Tensor]:
    """A batch of R requests, asked now: each user's state after their last listen in the stream
    (the last N listens with their play ratios; every like and dislike counts), the given seed (organic:
    the user's own play), example age 0: the same features as training's (FeatureGatherer.query). Indices are
    [R]; a seed of LAST_LISTEN keeps the user's last listen (and its organic flag) as the seed."""
    offsets = np.asarray(gather.data["user_offsets"])
    user_index, seed_index = np.atleast_1d(user_index).astype(np.int64), np.atleast_1d(seed_index).astype(np.int64)
    arrays = gather.query(offsets[user_index + 1], user_index, np.full(len(user_index), NEVER, dtype=np.int64))
    given = seed_index != LAST_LISTEN
    arrays["seed_item"] = np.where(given, seed_index, arrays["seed_item"])
    arrays["seed_organic"] = np.where(given, 1, arrays["seed_organic"])  # a request is the user's own play
    arrays["example_age"] = np.zeros(len(user_index), np.float32)
    return to_tensors(arrays)


class IdLookup:
    """Raw ids -> vocabulary indices of one vocabulary (``raw_ids`` [V], index 0 padding, 1 unknown),
    sorted once so that each lookup is a binary search: O(R log V) for R ids."""

    def __init__(self, raw_ids: np.ndarray):
        known = np.asarray(raw_ids)[FIRST_ITEM:].astype(np.int64)
        self.order = np.argsort(known, kind="stable")
        self.sorted = known[self.order]

    def __call__(self, raw) -> np.ndarray:
        """Indices [R] of raw ids [R]; 1 (unknown) where a raw id is not in the vocabulary."""
        raw = np.atleast_1d(np.asarray(raw, dtype=np.int64))
        if not len(self.sorted):
            return np.ones(len(raw), dtype=np.int64)
        where = np.minimum(np.searchsorted(self.sorted, raw), len(self.sorted) - 1)
        return np.where(self.sorted[where] == raw, self.order[where] + FIRST_ITEM, 1)


def export_checkpoint(index_dir: str | Path) -> Path:
    """The checkpoint an export directory was written from (its export.json's ``checkpoint``)."""
    meta_path = Path(index_dir) / "export.json"
    try:
        checkpoint = json.loads(meta_path.read_text()).get("checkpoint")
    except FileNotFoundError as err:
        raise ServingError(f"--export {index_dir}: no export.json; create it with `lightning-tt export`") from err
    except (OSError, ValueError, AttributeError) as err:
        raise ServingError(f"--export {index_dir}: damaged export.json ({one_line(err)}); export it again") from err
    if not checkpoint:
        raise ServingError(f"--export {index_dir}: export.json names no checkpoint; export it again")
    return Path(checkpoint)


class Recommender:
    """An export opened for serving: the model (CPU, eval mode), its prepared data, the Faiss index and
    the raw item id of each index row [n], checked to belong together (``open_export``). ``ckpt_path``
    defaults to the checkpoint that export.json names.

    ``top_k`` is the one path from vocabulary indices to top-k lists that ``recommend``,
    ``recommend_batch`` and the HTTP server share. The gatherer carries every item of each user's listens (all
    are past at serving time), so each request can choose whether to leave them out; the default is the
    model's ``exclude_seen``."""

    def __init__(self, index_dir: str | Path, ckpt_path: str | Path | None = None, history: int | None = None):
        self.index_dir = Path(index_dir)
        self.ckpt_path = Path(ckpt_path) if ckpt_path is not None else export_checkpoint(index_dir)
        self.model, self.data = load_model(self.ckpt_path)
        self.index, self.rows = open_export(index_dir, self.model, self.data)
        self.meta = json.loads((self.index_dir / "export.json").read_text())
        self.exclude_seen = bool(self.model.hparams.get("exclude_seen"))
        self.gather = FeatureGatherer(self.data, history or self.model.hparams.history,
                                      feedback=self.model.hparams.feedback, seen="all")
        self.raw_items = np.asarray(self.rows, dtype=np.int64)
        catalogue = np.arange(len(self.rows)) + FIRST_ITEM
        artist, album = np.asarray(self.data["item_artist"])[catalogue], np.asarray(self.data["item_album"])[catalogue]
        # raw artist and album id of each index row [n]; -1 where the side table has none (index 1, unknown)
        artist_ids, album_ids = (np.asarray(self.data[name], dtype=np.int64) for name in ("artist_ids", "album_ids"))
        self.raw_artists = np.where(artist >= FIRST_ITEM, artist_ids[artist], -1)
        self.raw_albums = np.where(album >= FIRST_ITEM, album_ids[album], -1)
        self._exact: faiss.Index | None = None
        self._users, self._items = IdLookup(self.data["user_ids"]), IdLookup(self.data["item_ids"])

    @property
    def items(self) -> int:
        """Catalogue items in the index."""
        return len(self.rows)

    def check_k(self, k: int, option: str = "--k") -> None:
        if k < 1:
            raise ServingError(f"{option} must be >= 1, got {k}")
        if k > self.items:
            raise ServingError(f"{option} {k} is larger than the catalogue of {self.items:,} items")

    def user_indices(self, raw) -> np.ndarray:
        """Vocabulary indices [R] of raw user ids; 1 (unknown) where a raw id is not a known user."""
        return self._users(raw)

    def item_indices(self, raw) -> np.ndarray:
        """Vocabulary indices [R] of raw item ids; 1 (unknown) where a raw id is not in the catalogue."""
        return self._items(raw)

    def top_k(self, user_index: np.ndarray, seed_index: np.ndarray, k: int,
              exclude_seen: np.ndarray | bool | None = None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores [R, k] float32, index rows [R, k]; -inf and -1 where fewer than k were found) for R
        requests (vocabulary indices [R]; a seed of LAST_LISTEN seeds from the user's last listen).
        ``exclude_seen`` [R] (or one bool; None: the model's) leaves each user's past listens out;
        ``exact`` searches all items by brute force instead of the exported index."""
        batch = _query_batch(self.gather, user_index, seed_index)
        return self.search(batch, k, exclude_seen, exact)

    def search(self, batch: dict[str, torch.Tensor], k: int, exclude_seen: np.ndarray | bool | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``top_k`` of a query batch built elsewhere (an evaluation case, say): its ``seen_items`` are
        left out of the rows where ``exclude_seen`` holds."""
        keep = np.broadcast_to(self.exclude_seen if exclude_seen is None else exclude_seen, (len(batch["user"]),))
        batch = dict(batch)
        seen = batch.pop("seen_items", None)
        if seen is not None and keep.any():
            batch["seen_items"] = torch.where(torch.from_numpy(np.array(keep))[:, None], seen, 0)
        return _search(self.exact_index() if exact else self.index, self.model, batch, k)

    def exact_index(self) -> faiss.Index:
        """A brute-force inner-product index over the exported item vectors (built on first use): the
        exact lists that the ANN index approximates."""
        if self._exact is None:
            vectors = np.ascontiguousarray(np.load(self.index_dir / "item_embeddings.npy"), dtype=np.float32)
            exact = faiss.IndexFlatIP(vectors.shape[1])
            exact.add(vectors)
            self._exact = exact
        return self._exact


def recommend(index_dir: str | Path, ckpt_path: str | Path, user: int, seed_item: int, k: int = 10,
              history: int | None = None) -> tuple[list[tuple[int, float]], list[str]]:
    """Top-k (raw item id, score) for raw ``user`` and raw ``seed_item``, and notes about fallbacks."""
    served = Recommender(index_dir, ckpt_path, history)
    served.check_k(k)
    user_index, seed_index = served.user_indices([user]), served.item_indices([seed_item])
    notes = []
    if user_index[0] == 1:
        notes.append(f"unknown user {user}: no history; ranking from the seed track and the unknown-user embedding")
    if seed_index[0] == 1:
        notes.append(f"unknown seed item {seed_item}: not in the training catalogue; using the unknown-item features")
    scores, found = served.top_k(user_index, seed_index, k)
    return [(int(served.rows[r]), float(s)) for r, s in zip(found[0], scores[0]) if r >= 0], notes


#: Requests embedded and searched together by ``recommend_batch``.
REQUEST_CHUNK = 4096


def recommend_batch(index_dir: str | Path, ckpt_path: str | Path, requests: str | Path, out: str | Path,
                    k: int = 10, overwrite: bool = False, history: int | None = None) -> dict:
    """Top-k for every (``user``, ``seed_item``) row of ``requests`` (raw ids; a .parquet or .csv file),
    written to ``out`` (parquet: user, seed_item, item_ids list<int64>, scores list<float32>).

    Returns {"requests", "unknown_users", "unknown_seeds", "queries_per_second"}; queries/s counts the
    query batch, the query tower and the index search (Recommender.top_k), not the reading or writing of
    files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    served = Recommender(index_dir, ckpt_path, history)
    served.check_k(k)
    data = served.data
    output = Output(out, "file", option="--out", overwrite=overwrite,  # checked before any request is read
                    inputs={"--index": index_dir, "--ckpt_path": ckpt_path, "--batch": requests,
                            "the checkpoint's data_dir": data.path})
    path = Path(requests)
    try:
        if path.suffix == ".csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ServingError(f"--batch {path}: cannot read the requests ({one_line(err)}); give a .parquet or .csv "
                           f"file with columns user and seed_item") from err
    missing = [c for c in ("user", "seed_item") if c not in table.column_names]
    if missing:
        raise ServingError(f"--batch {path}: no column {missing[0]!r} (has {table.column_names}); the requests need "
                           f"user and seed_item, as raw ids")
    try:
        users = table.column("user").to_numpy().astype(np.int64)
        seeds = table.column("seed_item").to_numpy().astype(np.int64)
    except (pa.ArrowInvalid, TypeError, ValueError) as err:
        raise ServingError(f"--batch {path}: user and seed_item must be integer raw ids without nulls "
                           f"({one_line(err)})") from err
    user_index, seed_index = served.user_indices(users), served.item_indices(seeds)
    lists, values, seconds = [], [], 0.0
    for start in range(0, len(users), REQUEST_CHUNK):
        chunk = slice(start, start + REQUEST_CHUNK)
        tick = time.perf_counter()
        scores, found = served.top_k(user_index[chunk], seed_index[chunk], k)
        seconds += time.perf_counter() - tick
        lists.append(np.where(found >= 0, served.raw_items[np.maximum(found, 0)], -1))
        values.append(scores.astype(np.float32))
    lists = np.concatenate(lists) if lists else np.zeros((0, k), dtype=np.int64)
    values = np.concatenate(values) if values else np.zeros((0, k), dtype=np.float32)
    result = pa.table({"user": users, "seed_item": seeds,
                       "item_ids": pa.array(list(lists), pa.list_(pa.int64())),
                       "scores": pa.array(list(values), pa.list_(pa.float32()))})
    with output.writing() as tmp:
        pq.write_table(result, tmp)
    return {"requests": len(users), "unknown_users": int((user_index == 1).sum()),
            "unknown_seeds": int((seed_index == 1).sum()), "queries_per_second": len(users) / max(seconds, 1e-9)}
