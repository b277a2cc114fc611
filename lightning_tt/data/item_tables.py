"""The item side tables of prepare, indexed by item index: the stream's raw ids remapped to indices,
artist and album per item (``side_vocab``) and the audio embeddings (``audio_table``), joined from the
three size-independent files. ``write_item_tables`` builds the item vocabulary (the items with any
training event, in raw-id order after padding and unknown) and writes them all.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lightning_tt.data import schema
from lightning_tt.data.arrays import float32_to_bfloat16, write_array
from lightning_tt.data.prepared import FIRST_ITEM, PAD, UNKNOWN
from lightning_tt.data.schema import RawDataError


def write_item_tables(tmp: Path, arrays: dict[str, dict], in_train: np.ndarray, track_length: np.ndarray,
                      sides: dict[str, Path], audio_dim: int, progress: bool = True) -> tuple[int, int]:
    """Write the item vocabulary and side tables into ``tmp`` and remap ``stream_item`` and ``signal_item``
    (raw ids until now) to item indices; add their entries to ``arrays``. ``in_train`` [max raw id + 1]
    says which raw ids have a training event, ``track_length`` [max raw id + 1] their length in seconds.
    Returns (num_items, items with audio)."""
    # Items: index 0 pad, 1 unknown, then training items in raw-id order.
    train_raw = np.flatnonzero(in_train)
    num_items = FIRST_ITEM + len(train_raw)
    item_lookup = np.full(len(in_train), UNKNOWN, dtype=np.int32)
    item_lookup[train_raw] = np.arange(FIRST_ITEM, num_items, dtype=np.int32)
    arrays["item_ids"] = write_array(tmp, "item_ids", np.concatenate([[0, 0], train_raw]).astype(np.uint32))
    length = np.zeros(num_items, dtype=np.float32)
    length[FIRST_ITEM:] = track_length[train_raw]
    arrays["item_length"] = write_array(tmp, "item_length", length)

    # A second thread remaps the stream's raw ids and joins artists and albums while this one joins
    # the audio embeddings (the largest input after the events).
    with ThreadPoolExecutor(max_workers=1) as helper:
        remapped = [helper.submit(remap_in_place, tmp, arrays[name], item_lookup)
                    for name in ("stream_item", "signal_item")]
        artists = helper.submit(side_vocab, sides["artists"], "artists", "artist_id", item_lookup, num_items)
        albums = helper.submit(side_vocab, sides["albums"], "albums", "album_id", item_lookup, num_items)
        arrays["item_audio"], has_audio = audio_table(sides["embeddings"], tmp, item_lookup, num_items, audio_dim,
                                                      progress)
        arrays["item_has_audio"] = write_array(tmp, "item_has_audio", has_audio)
        for name, job in (("artist", artists), ("album", albums)):
            per_item, raw_ids = job.result()
            arrays[f"item_{name}"] = write_array(tmp, f"item_{name}", per_item)
            arrays[f"{name}_ids"] = write_array(tmp, f"{name}_ids", raw_ids)
        for job in remapped:
            job.result()
    return num_items, int(has_audio.sum())


def remap_in_place(tmp: Path, entry: dict, lookup: np.ndarray, chunk: int = 1 << 24) -> None:
    """Replace raw item ids by indices (``lookup[raw]``) in an on-disk int32 array, chunk by chunk.

    Plain reads and writes rather than a memory map, so resident memory stays at one chunk.
    """
    dtype = np.dtype(entry["dtype"])
    with open(tmp / entry["file"], "r+b") as f:
        for start in range(0, entry["shape"][0], chunk):
            f.seek(start * dtype.itemsize)
            values = np.fromfile(f, dtype=dtype, count=chunk)
            f.seek(start * dtype.itemsize)
            lookup[values].astype(dtype, copy=False).tofile(f)


def _smallest_per_item(item_index: np.ndarray, other_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each item index >= 2 that appears, its smallest related raw id (one sort of packed keys)."""
    keep = item_index >= FIRST_ITEM
    key = (item_index[keep].astype(np.uint64) << np.uint64(32)) | other_raw[keep].astype(np.uint64)
    key.sort()
    items = (key >> np.uint64(32)).astype(np.int64)
    first = np.ones(len(key), dtype=bool)
    first[1:] = items[1:] != items[:-1]
    return items[first], (key[first] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def side_vocab(path: Path, kind: str, id_column: str, item_lookup: np.ndarray, num_items: int):
    """Map every item index to an index of ``id_column`` (artists or albums) from a mapping file;
    an item with several gets the smallest id, one with none the unknown index."""
    schema.check_schema(path, kind)
    table = schema.read_columns(path, [id_column, "item_id"])
    raw_item = schema.checked_ints(table, "item_id", path)
    other = schema.checked_ints(table, id_column, path, 1 << 32)
    known = raw_item < len(item_lookup)
    item_index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
    item_index[known] = item_lookup[raw_item[known]]
    items, others = _smallest_per_item(item_index, other)
    vocab = np.unique(others)
    per_item = np.full(num_items, UNKNOWN, dtype=np.int32)
    per_item[PAD] = PAD
    per_item[items] = FIRST_ITEM + np.searchsorted(vocab, others)
    raw_ids = np.concatenate([[0, 0], vocab]).astype(np.uint32)
    return per_item, raw_ids


def _embedding_groups(path: Path, column: str, audio_dim: int):
    """Yield (rows read, raw item ids [n], float32 vectors [n, D]) per row group of the embeddings file,
    skipping null embeddings; the next group is read and checked in a second thread meanwhile."""
    pf = pq.ParquetFile(path)

    def read(g: int, first_row: int):
        table = schema.read_columns(path, ["item_id", column], pf, g)
        raw_item = schema.checked_ints(table, "item_id", path)
        lists = table.column(column).combine_chunks()
        valid = ~lists.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        wrong = np.flatnonzero(valid & (lengths != audio_dim))
        if len(wrong):
            raise RawDataError(
                f"{path}: column '{column}' row {first_row + wrong[0]} has dimension {lengths[wrong[0]]}, "
                f"expected {audio_dim}"
            )
        # list_flatten skips null lists, so the rows of ``vectors`` are the valid rows in order.
        vectors = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if not np.isfinite(vectors).all():
            raise RawDataError(f"{path}: column '{column}' holds NaN or infinite values")
        return table.num_rows, raw_item[valid], vectors.reshape(-1, audio_dim)

    yield from schema.row_groups(path, pf, read)


def audio_table(path: Path, tmp: Path, item_lookup: np.ndarray, num_items: int, audio_dim: int,
                 progress: bool = False):
    """Write item_audio [num_items, D] as bfloat16 bits and item_has_audio; items without an embedding
    keep a zero row. bfloat16 is float32 truncated to its upper 16 bits (8 significant bits, relative
    error < 0.4%), so the conversion is a strided copy. The table is an output held in memory
    (num_items x D x 2 bytes) and written once.
    """
    column = schema.embedding_column(schema.check_schema(path, "embeddings"), path)
    audio = np.zeros((num_items, audio_dim), dtype=np.uint16)
    has_audio = np.zeros(num_items, dtype=bool)
    rows = pq.ParquetFile(path).metadata.num_rows
    bar = tqdm(total=rows, unit="row", unit_scale=True, desc="prepare: audio", disable=not progress)
    for rows_read, raw_item, vectors in _embedding_groups(path, column, audio_dim):
        bar.update(rows_read)
        known = raw_item < len(item_lookup)
        index = np.full(len(raw_item), UNKNOWN, dtype=np.int64)
        index[known] = item_lookup[raw_item[known]]
        keep = np.flatnonzero(index >= FIRST_ITEM)
        audio[index[keep]] = float32_to_bfloat16(vectors[keep])
        has_audio[index[keep]] = True
    bar.close()
    entry = write_array(tmp, "item_audio", audio)
    entry["encoding"] = "bfloat16"
    return entry, has_audio
