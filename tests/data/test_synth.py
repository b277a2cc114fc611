"""Tests of the synthetic Yambda-layout generator: layout, dtypes, invariants, determinism, planted structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lightning_tt.data.schema import (
    ALBUM_SCHEMA,
    ARTIST_SCHEMA,
    AUDIO_DIM,
    EMBEDDINGS_SCHEMA,
    EVENTS_SCHEMA,
    check_raw_dir,
    events_path,
    side_paths,
)
from lightning_tt.data.synth import size_label, synthesize
from lightning_tt.errors import InputError

SMALL = {"rows": 20_000, "users": 100, "items": 2_000, "row_group_size": 4_000, "progress": False}
END = 301 * 86_400  # default days=301 is already a multiple of 5 s


def _read_all(out):
    return {
        "events": pq.read_table(events_path(out, "20k")),
        **{name: pq.read_table(path) for name, path in side_paths(out).items()},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "raw"
    path = synthesize(out, seed=0, **SMALL)
    return out, path, _read_all(out)


@pytest.fixture(scope="module")
def events(data):
    """Event columns as numpy arrays (event_type decoded to strings)."""
    t = data[2]["events"]
    return {
        "uid": t["uid"].to_numpy(),
        "item": t["item_id"].to_numpy(),
        "ts": t["timestamp"].to_numpy().astype(np.int64),
        "type": np.asarray(t["event_type"].cast(pa.string()).to_numpy(zero_copy_only=False)),
        "ratio": t["played_ratio_pct"].to_numpy(zero_copy_only=False),
    }


def test_size_label():
    assert [size_label(n) for n in (999, 1_000, 200_000, 1_500_000, 50_000_000, 5_000_000_000)] == [
        "999", "1k", "200k", "1.5m", "50m", "5b"
    ]


def test_layout_and_exact_schemas(data):
    out, path, tables = data
    assert path == events_path(out, "20k") and check_raw_dir(out) == "20k"
    assert pq.read_schema(path).remove_metadata() == EVENTS_SCHEMA
    assert tables["events"].schema.remove_metadata() == EVENTS_SCHEMA
    assert tables["embeddings"].schema.remove_metadata() == EMBEDDINGS_SCHEMA
    assert tables["artists"].schema.remove_metadata() == ARTIST_SCHEMA
    assert tables["albums"].schema.remove_metadata() == ALBUM_SCHEMA


def test_event_invariants(data, events):
    path = data[1]
    assert len(events["uid"]) == SMALL["rows"]
    assert pq.ParquetFile(path).metadata.num_row_groups >= 3
    uid, ts = events["uid"], events["ts"]
    assert np.all((np.diff(uid.astype(np.int64)) > 0) | ((np.diff(uid.astype(np.int64)) == 0) & (np.diff(ts) >= 0)))
    users, counts = np.unique(uid, return_counts=True)
    assert len(users) == SMALL["users"] and counts.min() >= 5 and users.max() > SMALL["users"]  # not dense
    assert np.all(ts % 5 == 0) and ts.min() >= 0 and ts.max() == END
    listen = events["type"] == "listen"
    assert {"listen", "like", "dislike"} <= set(np.unique(events["type"]))
    t = data[2]["events"]
    for column in ("played_ratio_pct", "track_length_seconds"):
        assert np.array_equal(t[column].is_null().to_numpy(zero_copy_only=False), ~listen)
    assert events["ratio"][listen].max() > 100 and events["ratio"][listen].max() <= 160
    # A reaction shares the timestamp of the listen it follows, for the same item.
    reaction = np.flatnonzero(~listen)
    assert np.all(events["ts"][reaction] == events["ts"][reaction - 1])
    assert np.all(events["item"][reaction] == events["item"][reaction - 1])
    # Track length is constant per item.
    length = t["track_length_seconds"].to_numpy(zero_copy_only=False)[listen]
    lengths = pa.table({"item": events["item"][listen], "len": length})
    per_item = lengths.group_by("item").aggregate([("len", "min"), ("len", "max")])
    assert pc.all(pc.equal(per_item["len_min"], per_item["len_max"])).as_py()


def test_side_files(data):
    tables = data[2]
    items = set(tables["events"]["item_id"].to_pylist())
    artists, albums, emb = tables["artists"], tables["albums"], tables["embeddings"]
    artist_items = artists["item_id"].to_numpy()
    assert len(set(artist_items)) == len(artist_items)  # one artist per item
    assert 0 < SMALL["items"] - len(artist_items) < 0.05 * SMALL["items"]
    album_items, album_counts = np.unique(albums["item_id"].to_numpy(), return_counts=True)
    assert 0.02 * SMALL["items"] < SMALL["items"] - len(album_items) < 0.15 * SMALL["items"]
    assert 0.02 * SMALL["items"] < (album_counts == 2).sum() < 0.1 * SMALL["items"] and album_counts.max() == 2
    ids = emb["item_id"].to_numpy()
    catalogue = set(artist_items) | set(album_items) | set(ids)
    assert len(catalogue | items) <= SMALL["items"] and len(items - catalogue) <= 2
    assert np.all(np.diff(ids.astype(np.int64)) > 0)
    assert 0.7 * SMALL["items"] < len(ids) < 0.9 * SMALL["items"]
    embed = np.stack(emb["embed"].to_numpy(zero_copy_only=False))
    unit = np.stack(emb["normalized_embed"].to_numpy(zero_copy_only=False))
    assert embed.shape == unit.shape == (len(ids), AUDIO_DIM)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.std(np.linalg.norm(embed, axis=1)) > 0.5  # embed is not normalised
    np.testing.assert_allclose(unit, embed / np.linalg.norm(embed, axis=1, keepdims=True), atol=1e-6)


def test_deterministic(data, tmp_path):
    tables = data[2]
    synthesize(tmp_path / "same", seed=0, **SMALL)
    again = _read_all(tmp_path / "same")
    for name, table in tables.items():
        assert again[name].equals(table), name
    synthesize(tmp_path / "other", seed=1, **SMALL)
    other = _read_all(tmp_path / "other")
    assert not other["events"].equals(tables["events"])
    assert not other["embeddings"].equals(tables["embeddings"])


def test_planted_structure(data, events):
    tables = data[2]
    artist_of = dict(zip(tables["artists"]["item_id"].to_pylist(), tables["artists"]["artist_id"].to_pylist()))
    listen = np.flatnonzero(events["type"] == "listen")
    uid, ts, item = events["uid"][listen], events["ts"][listen], events["item"][listen]
    artist = np.array([artist_of.get(i, -1) for i in item])
    # Consecutive listens of one session (same user, within 15 minutes) mostly share the artist.
    pair = (uid[1:] == uid[:-1]) & (ts[1:] - ts[:-1] <= 900) & (artist[1:] >= 0) & (artist[:-1] >= 0)
    same_artist = (artist[1:] == artist[:-1])[pair].mean()
    shuffled = np.random.default_rng(0).permutation(artist)
    random_pairs = (shuffled[1:] == shuffled[:-1])[(shuffled[1:] >= 0) & (shuffled[:-1] >= 0)].mean()
    assert pair.sum() > 5_000 and same_artist > 0.3 and random_pairs < 0.05, (same_artist, random_pairs)
    # Likes follow well-played listens, dislikes poorly played ones.
    before = np.flatnonzero(events["type"] != "listen") - 1
    kind = events["type"][before + 1]
    ratio = events["ratio"].astype(float)
    assert ratio[before[kind == "like"]].mean() > ratio[before[kind == "dislike"]].mean() + 20
    # Items of one artist have nearby audio embeddings.
    emb = tables["embeddings"]
    unit = np.stack(emb["normalized_embed"].to_numpy(zero_copy_only=False))
    emb_artist = np.array([artist_of.get(i, -1) for i in emb["item_id"].to_pylist()])
    rows = np.flatnonzero(emb_artist >= 0)
    cos = unit[rows] @ unit[rows].T
    same = emb_artist[rows][:, None] == emb_artist[rows][None, :]
    np.fill_diagonal(same, False)
    assert cos[same].mean() > cos[~same].mean() + 0.3


def test_too_few_rows():
    with pytest.raises(InputError, match="below 5 events"):
        synthesize("unused", rows=10, users=5, items=100, progress=False)
