"""Hand-written raw datasets in the Yambda layout, for tests whose expected values are worked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_tt.data import schema
from lightning_tt.data.schema import DAY

#: The hand-worked dataset's last timestamp (day 10).
END = 10 * DAY


def event(uid, item, ts, kind="listen", ratio=80, length=200):
    """One row of multi_event.parquet; playback columns are null unless it is a listen."""
    listen = kind == "listen"
    return {
        "uid": uid, "item_id": item, "timestamp": ts, "is_organic": 1, "event_type": kind,
        "played_ratio_pct": ratio if listen else None, "track_length_seconds": length if listen else None,
    }


def events_table(rows: list[dict]) -> pa.Table:
    columns = {name: [r[name] for r in rows] for name in schema.EVENTS_SCHEMA.names}
    arrays = []
    for field in schema.EVENTS_SCHEMA:
        if pa.types.is_dictionary(field.type):
            arrays.append(pa.array(columns[field.name], pa.string()).dictionary_encode())
        else:
            arrays.append(pa.array(columns[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=schema.EVENTS_SCHEMA)


def write_raw(root: Path, rows: list[dict], items=None, size: str = "tiny", dim: int = 4,
              row_group_size: int | None = None, no_artist=(), no_album=(), no_audio=(), second_album=()):
    """Write a raw directory. Item ``i`` gets artist ``1000 + i // 2``, album ``2000 + i``, and the
    embedding ``[i + 1, 1, 0, ...]`` (normalised in ``normalized_embed``) (``dim`` wide); items in
    ``second_album`` are also on album ``1999`` (smaller id, so it is the one prepare keeps)."""
    root = Path(root)
    (root / "flat" / size).mkdir(parents=True, exist_ok=True)
    pq.write_table(events_table(rows), schema.events_path(root, size), row_group_size=row_group_size)
    items = sorted({r["item_id"] for r in rows}) if items is None else items
    artists = [(1000 + i // 2, i) for i in items if i not in no_artist]
    pq.write_table(pa.table({"artist_id": pa.array([a for a, _ in artists], pa.uint32()),
                             "item_id": pa.array([i for _, i in artists], pa.uint32())}), root / schema.ARTIST_FILE)
    albums = [(2000 + i, i) for i in items if i not in no_album] + [(1999, i) for i in second_album]
    pq.write_table(pa.table({"album_id": pa.array([a for a, _ in albums], pa.uint32()),
                             "item_id": pa.array([i for _, i in albums], pa.uint32())}), root / schema.ALBUM_FILE)
    with_audio = [i for i in items if i not in no_audio]
    vectors = [[float(i) + 1.0, 1.0] + [0.0] * (dim - 2) for i in with_audio]
    normalised = [list(np.asarray(v) / np.linalg.norm(v)) for v in vectors]
    pq.write_table(pa.table({
        "item_id": pa.array(with_audio, pa.uint32()),
        "embed": pa.array(vectors, pa.list_(pa.float32())),
        "normalized_embed": pa.array(normalised, pa.list_(pa.float32())),
    }), root / schema.EMBEDDINGS_FILE)
    return root


def hand_rows():
    """The hand-worked dataset of test_prepare.py (end = day 10; defaults give
    train_end 687600, val [689400, 775800), test [777600, 864000])."""
    L = lambda i: 100 + i  # noqa: E731  track length of item i
    return [
        event(5, 10, 100, ratio=80, length=L(10)),
        event(5, 10, 100, "like"),
        event(5, 11, 200, ratio=30, length=L(11)),
        event(5, 12, 300, ratio=100, length=L(12)),
        event(5, 13, 687_595, ratio=120, length=L(13)),
        event(5, 14, 688_000, ratio=90, length=L(14)),
        event(5, 15, 700_000, ratio=60, length=L(15)),
        event(5, 16, 776_000, ratio=90, length=L(16)),
        event(5, 99, 800_000, ratio=70, length=L(99)),
        event(5, 10, 800_005, ratio=40, length=L(10)),
        event(5, 12, END, ratio=55, length=L(12)),
        event(7, 10, 690_000, ratio=90, length=L(10)),
        event(7, 11, 800_000, ratio=90, length=L(11)),
        event(9, 11, 50, ratio=50, length=L(11)),
        event(9, 12, 60, "dislike"),
        event(9, 12, 800_000, ratio=50, length=L(12)),
    ]
