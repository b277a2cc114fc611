"""The Yambda raw layout: file names, columns, dtypes and event types, and the checks of their values.

Everything that knows what the raw parquet files look like lives here, so that ``synth`` (which writes
them), ``download`` (which fetches and checks them) and ``prepare`` (which reads them) agree by
construction. See docs/design.md §2 for the real dataset.

Layout of a raw directory::

    DIR/flat/<size>/multi_event.parquet
    DIR/embeddings.parquet
    DIR/artist_item_mapping.parquet
    DIR/album_item_mapping.parquet
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lightning_tt.errors import InputError, one_line

SIZES = ("50m", "500m", "5b")
EVENTS_FILE = "multi_event.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
ARTIST_FILE = "artist_item_mapping.parquet"
ALBUM_FILE = "album_item_mapping.parquet"

#: event_type values in the order of our integer codes (``EVENT_CODES[name]``).
EVENT_TYPES = ("listen", "like", "dislike", "unlike", "undislike")
EVENT_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
LISTEN = EVENT_CODES["listen"]

#: Exact dtypes of the real files. ``synth`` writes exactly these.
EVENTS_SCHEMA = pa.schema(
    [
        ("uid", pa.uint32()),
        ("item_id", pa.uint32()),
        ("timestamp", pa.uint32()),
        ("is_organic", pa.uint8()),
        ("event_type", pa.dictionary(pa.int32(), pa.string())),
        ("played_ratio_pct", pa.uint16()),
        ("track_length_seconds", pa.uint32()),
    ]
)
EMBEDDINGS_SCHEMA = pa.schema(
    [
        ("item_id", pa.uint32()),
        ("embed", pa.list_(pa.float32())),
        ("normalized_embed", pa.list_(pa.float32())),
    ]
)
ARTIST_SCHEMA = pa.schema([("artist_id", pa.uint32()), ("item_id", pa.uint32())])
ALBUM_SCHEMA = pa.schema([("album_id", pa.uint32()), ("item_id", pa.uint32())])

AUDIO_DIM = 128
T = TypeVar("T")


class RawDataError(InputError):
    """A raw input file is missing, damaged, has the wrong columns or holds invalid values.

    The message always names the file (and the column where one is at fault).
    """


def read_columns(path: Path, columns: list[str], parquet: pq.ParquetFile | None = None,
                 row_group: int | None = None) -> pa.Table:
    """``columns`` of the parquet file at ``path``: the whole file, or one ``row_group`` of the open
    ``parquet``. A file that cannot be decoded (a damaged page, a truncated file) is a RawDataError
    naming the file and the row group, not a pyarrow traceback."""
    try:
        if row_group is None:
            return pq.read_table(path, columns=columns)
        return parquet.read_row_group(row_group, columns=columns)
    except (OSError, pa.ArrowException) as err:
        where = f" in row group {row_group}" if row_group is not None else ""
        raise RawDataError(f"{path}: cannot decode column(s) {', '.join(columns)}{where} ({one_line(err)}); the file "
                           f"is damaged: download or write it again") from err


def events_path(raw_dir: str | Path, size: str) -> Path:
    return Path(raw_dir) / "flat" / size / EVENTS_FILE


def side_paths(raw_dir: str | Path) -> dict[str, Path]:
    """Paths of the three size-independent files, keyed by a short name."""
    raw_dir = Path(raw_dir)
    return {
        "embeddings": raw_dir / EMBEDDINGS_FILE,
        "artists": raw_dir / ARTIST_FILE,
        "albums": raw_dir / ALBUM_FILE,
    }


def find_size(raw_dir: str | Path, size: str | None) -> str:
    """Return ``size`` or, when it is None, the only size present under ``raw_dir/flat``."""
    flat = Path(raw_dir) / "flat"
    present = sorted(p.parent.name for p in flat.glob(f"*/{EVENTS_FILE}")) if flat.is_dir() else []
    if size is not None:
        if not events_path(raw_dir, size).is_file():
            raise RawDataError(
                f"{events_path(raw_dir, size)}: file not found (sizes present: {present or 'none'})"
            )
        return size
    if len(present) == 1:
        return present[0]
    if not present:
        raise RawDataError(f"{flat}: no flat/<size>/{EVENTS_FILE} found; is --raw a Yambda directory?")
    raise RawDataError(f"{flat}: several sizes present {present}; choose one with --size")


def _is_integer(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_float_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def _is_string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


# Column checks per file: name -> (predicate, what the column must be). Integer widths are accepted
# loosely (other datasets in this layout may use int64); the kind must match.
_CHECKS = {
    "events": {
        "uid": (_is_integer, "an integer"),
        "item_id": (_is_integer, "an integer"),
        "timestamp": (_is_integer, "an integer"),
        "event_type": (_is_string_like, "a string or dictionary<string>"),
        "played_ratio_pct": (_is_integer, "an integer"),
        "track_length_seconds": (_is_integer, "an integer"),
        "is_organic": (_is_integer, "an integer"),
    },
    "embeddings": {
        "item_id": (_is_integer, "an integer"),
    },
    "artists": {"artist_id": (_is_integer, "an integer"), "item_id": (_is_integer, "an integer")},
    "albums": {"album_id": (_is_integer, "an integer"), "item_id": (_is_integer, "an integer")},
}


def embedding_column(schema: pa.Schema, path: Path) -> str:
    """The audio-embedding column to use: ``normalized_embed`` if present, else ``embed``."""
    for name in ("normalized_embed", "embed"):
        if name in schema.names:
            if not _is_float_list(schema.field(name).type):
                raise RawDataError(
                    f"{path}: column '{name}' has type {schema.field(name).type}, expected list<float>"
                )
            return name
    raise RawDataError(f"{path}: missing column 'normalized_embed' (or 'embed')")


def check_schema(path: Path, kind: str) -> pa.Schema:
    """Open ``path`` and check its columns for ``kind`` in {events, embeddings, artists, albums}.

    Reads only the footer. Raises RawDataError naming the file and column on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise RawDataError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise RawDataError(f"{path}: not a readable parquet file ({err})") from err
    for column, (ok, expected) in _CHECKS[kind].items():
        if column not in schema.names:
            raise RawDataError(f"{path}: missing column '{column}' (has {schema.names})")
        actual = schema.field(column).type
        if not ok(actual):
            raise RawDataError(f"{path}: column '{column}' has type {actual}, expected {expected}")
    if kind == "embeddings":
        embedding_column(schema, path)
    return schema


def check_raw_dir(raw_dir: str | Path, size: str | None = None) -> str:
    """Check that ``raw_dir`` holds all four files for a size with valid schemas; return the size."""
    size = find_size(raw_dir, size)
    check_schema(events_path(raw_dir, size), "events")
    for kind, path in side_paths(raw_dir).items():
        check_schema(path, kind)
    return size


# Values: the checks every reader of the raw files applies (prepare's events pass and item tables).

#: Timestamps are seconds; one day of them.
DAY = 86_400
#: Raw ids index dense lookup tables, so they must stay below this bound.
MAX_RAW_ID = 1 << 30
#: played_ratio_pct above this is treated as corrupt (far above the real range, docs/design.md §2).
MAX_PLAYED_RATIO_PCT = 1000
#: The events file's columns that prepare reads.
EVENT_COLUMNS = ["uid", "item_id", "timestamp", "event_type", "played_ratio_pct", "track_length_seconds", "is_organic"]


def column_range(pf: pq.ParquetFile, column: str, path: Path) -> tuple[int, int]:
    """(min, max) of an integer column from row-group statistics, scanning the column if absent."""
    index = pf.schema_arrow.get_field_index(column)
    lo, hi = None, None
    for i in range(pf.num_row_groups):
        stats = pf.metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            table = read_columns(path, [column])
            mm = pc.min_max(table.column(column))
            return int(mm["min"].as_py()), int(mm["max"].as_py())
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return int(lo), int(hi)


def event_codes(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """event_type strings -> int8 codes of EVENT_TYPES; unknown or null values are errors."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    out = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise RawDataError(f"{path}: column 'event_type' has null values")
        names = chunk.dictionary.to_pylist()
        unknown = sorted(set(names) - set(EVENT_CODES))
        lookup = np.array([EVENT_CODES.get(n, -1) for n in names], dtype=np.int8)
        codes = lookup[chunk.indices.to_numpy(zero_copy_only=False)]
        if unknown and (codes < 0).any():
            raise RawDataError(
                f"{path}: column 'event_type' has unknown value(s) {unknown}; expected {list(EVENT_TYPES)}"
            )
        out.append(codes)
    return np.concatenate(out) if out else np.zeros(0, np.int8)


def checked_ints(table: pa.Table, column: str, path: Path, hi: int | None = None) -> np.ndarray:
    """A non-null integer column as numpy (its own dtype, no copy), checked to lie in [0, hi)."""
    col = table.column(column)
    if col.null_count:
        raise RawDataError(f"{path}: column '{column}' has {col.null_count} null values")
    values = col.to_numpy()
    if len(values):
        lo = values.min() if np.issubdtype(values.dtype, np.signedinteger) else 0
        top = values.max() if hi is not None or lo < 0 else 0
        if lo < 0 or (hi is not None and top >= hi):
            bad = lo if lo < 0 else top
            allowed = f"0..{hi - 1}" if hi is not None else ">= 0"
            raise RawDataError(f"{path}: column '{column}' has out-of-range value {bad} (allowed {allowed})")
    return values


def listen_columns(table: pa.Table, is_listen: np.ndarray, path: Path, first_row: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(played_ratio_pct, track_length_seconds, is_organic as uint8) of one row group as numpy, nulls as
    0, checked on its listen rows (``is_listen`` [n]): no null ratio, ratio in 0..MAX_PLAYED_RATIO_PCT,
    length >= 0, is_organic 0 or 1. Other event types may hold anything there. ``first_row`` is the
    group's first row in the file, for the messages."""
    column = table.column("played_ratio_pct")
    if column.null_count:  # nulls are allowed on other event types only
        null = is_listen & column.is_null().to_numpy(zero_copy_only=False)
        if null.any():
            row = first_row + int(np.argmax(null))
            raise RawDataError(f"{path}: column 'played_ratio_pct' is null on listen row {row}")
    ratio = pc.fill_null(column, 0).to_numpy()  # in the column's own integer type
    bad = is_listen & ((ratio < 0) | (ratio > MAX_PLAYED_RATIO_PCT))
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(
            f"{path}: column 'played_ratio_pct' has out-of-range value {ratio[i]} at row {first_row + i} "
            f"(allowed 0..{MAX_PLAYED_RATIO_PCT})"
        )
    length = pc.fill_null(table.column("track_length_seconds"), 0).to_numpy()
    bad = is_listen & (length < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(f"{path}: column 'track_length_seconds' has out-of-range value {length[i]} at row "
                           f"{first_row + i} (allowed >= 0)")
    organic = pc.fill_null(table.column("is_organic"), 0).to_numpy()
    bad = is_listen & (organic != 0) & (organic != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise RawDataError(f"{path}: column 'is_organic' has value {organic[i]} at row {first_row + i} "
                           f"(allowed 0 or 1)")
    return ratio, length, organic.astype(np.uint8)


def unsorted_error(path: Path, row: int, column: str) -> RawDataError:
    """The error for an events file that is not sorted by (uid, timestamp) at ``row``."""
    return RawDataError(
        f"{path}: rows are not sorted by (uid, timestamp): column '{column}' decreases at row {row}; "
        f"the file must be sorted by (uid, timestamp)"
    )


def row_groups(path: Path, parquet: pq.ParquetFile, decode: Callable[[int, int], T]) -> Iterator[T]:
    """``decode(g, first_row)`` of every row group ``g`` of the open ``parquet`` (at ``path``), in order,
    with the next group read and decoded in a second thread meanwhile (pyarrow and numpy release the
    GIL, so reading overlaps the caller's work on the current group). ``first_row`` is the group's first
    row in the file."""
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(decode, 0, 0) if sizes else None
        for g in range(len(sizes)):
            group = pending.result()
            if g + 1 < len(sizes):
                pending = reader.submit(decode, g + 1, int(starts[g + 1]))
            yield group
