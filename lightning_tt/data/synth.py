"""Synthetic data in the exact Yambda raw layout, with planted structure that a model can learn.

``synthesize(out, rows, users, items, seed)`` writes the four files named in ``schema`` with exactly the real
dtypes. ``T`` = days * 86400 rounded down to a multiple of 5 s is the last timestamp. Generative story:

Catalogue (drawn from ``seed`` and ``items`` only)
  - ~items/10 artists, each a contiguous block of internal item indices (random block sizes, mean 10). A track
    starts a new album with p = 0.1, so each artist's block splits into albums of ~10 consecutive tracks.
  - G = min(20, max(1, artists // 5)) genres with equally many artists each. Within a genre the artists lie in
    random order on a 1-D style line with position s in [0, 1].
  - Audio: v = genre centroid N(0, I) + smooth function of the artist's s (genre-specific harmonics
    sum_j (a_j cos(pi j s) + b_j sin(pi j s)) / j, j = 1..4, a_j, b_j ~ N(0, 0.6^2 I)) + item noise N(0, 0.15^2 I).
    ``embed`` = v * lognormal(log 10, 0.3) / |v|; ``normalized_embed`` = embed / |embed|. 82% of items have one.
  - Popularity of item k at time t: (rank_k + 1)^-0.9 (random Zipf ranks) * (0.05 + exp(-z^2 / 2)),
    z = (t - peak_k) / width_k, peak_k ~ U(-0.1 T, 1.1 T), width_k = 0.15 T * lognormal(0, 0.5); tabulated at
    the middles of 16 epochs as per-genre CDFs.
  - Track length: round(lognormal(log 200, 0.35)) s, at least 30 s, constant per item.
  - Mapping files: 1.3% of items have no artist row, 8% no album row, 5% a second (compilation, ~15 tracks) album.

Users
  - uid: sorted sample of range(3 users). Taste ~ Dirichlet(0.3) over genres. Join time ~ U(0, 0.7 T). Active to the
    end: the last event is at T - slack, slack ~ Exp(2 days) (at most half the user's span); the heaviest user has
    slack 0, so the file's last timestamp is exactly T. Events per user: 5 + Multinomial(rows - 5 users, w),
    w ~ lognormal(0, 1) normalised, so the total is exactly ``rows``.

Events of a user, in time order
  - Listens come in sessions: a listen starts a new session with p = 1/12 (geometric lengths, mean 12).
  - Fresh draw: genre ~ taste, item ~ that genre's popularity at the epoch of the listen's approximate time (its
    rank among the user's events, mapped linearly onto [join, T - slack]). A session starts with a fresh draw;
    each next track is, given the previous one: p = 0.35 the next track of the same album (the album's first
    track after its last), p = 0.2 a random track of the same artist, p = 0.25 a random track of an artist 1..3
    positions away on the style line (same genre, nearby audio), p = 0.2 a fresh draw.
  - affinity = taste[genre(item)] / max(taste); played_ratio_pct = clip(round(N(20 + 75 affinity, 25)), 0, 160).
  - After a listen, at its timestamp: like with p = 0.02 + 0.08 affinity [ratio >= 50], else dislike with
    p = 0.03 (1 - affinity) [ratio < 30], else unlike or undislike with p = 0.001 each. Reactions take event
    slots: the user's sequence is cut after exactly its number of events.
  - Time: within a session the next listen comes max(5, round5(track_length * min(ratio, 100) / 100)) s later.
    Between sessions gaps are lognormal (median 6 h, sigma 1.5), scaled so the timeline fits [join, T - slack]
    (the in-session steps are scaled down too if even they do not fit), rounded down to multiples of 5 s.
  - is_organic = 1 with p = 0.7, per event.

Memory stays flat in ``rows``: users are simulated in chunks of about ``row_group_size`` events, each written as
one row group, vectorised over all sessions of the chunk (one numpy step per position in a session).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lightning_tt.data.schema import (
    ALBUM_SCHEMA,
    ARTIST_SCHEMA,
    AUDIO_DIM,
    DAY,
    EMBEDDINGS_SCHEMA,
    EVENT_CODES,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    LISTEN,
    events_path,
    side_paths,
)
from lightning_tt.errors import InputError
from lightning_tt.outputs import Output

MIN_EVENTS = 5  # events of every user at least
ITEMS_PER_ARTIST = 10
MAX_GENRES = 20
ALBUM_START_P = 0.1  # a track starts a new album with this probability: albums of ~10 tracks
EPOCHS = 16  # popularity is tabulated at this many times
SESSION_MEAN = 12
#: Next-track choices after a listen, in this order: album next, same artist, nearby artist, fresh draw.
ALBUM_NEXT, SAME_ARTIST, NEARBY_ARTIST, FRESH = range(4)
NEXT_CUM_P = np.cumsum([0.35, 0.2, 0.25])
ORGANIC_P = 0.7
RARE_P = 0.001  # unlike, undislike
EMBEDDED_P = 0.82
NO_ARTIST_P = 0.013
NO_ALBUM_P = 0.08
TWO_ALBUMS_P = 0.05
COMPILATION_SIZE = 15
HARMONICS = 4
EMBED_GROUP = 50_000  # items per row group of embeddings.parquet


def size_label(rows: int) -> str:
    """Short exact label of a row count: 200_000 -> '200k', 50_000_000 -> '50m', 1_500_000 -> '1.5m'."""
    for unit, suffix in ((10**9, "b"), (10**6, "m"), (10**3, "k")):
        if rows >= unit:
            whole, frac = divmod(rows, unit)
            decimals = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
            return f"{whole}.{decimals}{suffix}" if decimals else f"{whole}{suffix}"
    return str(rows)


@dataclass
class _Catalogue:
    """The item structure. Items, artists and albums are internal indices 0..n-1; ``*_raw`` holds file ids."""

    item_raw: np.ndarray  # (items,) uint32: item_id written for internal item k
    item_artist: np.ndarray  # (items,) artist of item k
    item_album: np.ndarray  # (items,) album of item k
    item_genre: np.ndarray  # (items,) genre of item k
    track_length: np.ndarray  # (items,) uint32 seconds
    artist_start: np.ndarray  # (artists,) first item of artist a (its items are a contiguous block)
    artist_size: np.ndarray  # (artists,) number of items of artist a
    artist_genre: np.ndarray  # (artists,) genre of artist a
    artist_pos: np.ndarray  # (artists,) index of artist a in style_order
    style_order: np.ndarray  # (artists,) artists sorted by (genre, position on the style line)
    genre_lo: np.ndarray  # (genres,) style_order[genre_lo[g]:genre_hi[g]] are the artists of genre g
    genre_hi: np.ndarray
    album_start: np.ndarray  # (albums,) first item of album b (its items are a contiguous block)
    genre_items: np.ndarray  # (items,) items sorted by genre
    genre_item_lo: np.ndarray  # (genres,) genre_items[genre_item_lo[g]:genre_item_hi[g]] are the items of genre g
    genre_item_hi: np.ndarray
    pop_cdf: np.ndarray  # (EPOCHS * items,) at e * items + j: e * genres + genre + cumulative popularity share at
    #                      epoch e of genre_items[..j] within that genre (in (0, 1]), increasing overall

    @property
    def n_items(self) -> int:
        return len(self.item_raw)

    @property
    def n_genres(self) -> int:
        return len(self.genre_lo)

    def style(self) -> np.ndarray:
        """(artists,) position of each artist on its genre's style line, in [0, 1]."""
        genre = self.artist_genre
        return (self.artist_pos - self.genre_lo[genre]) / np.maximum(self.genre_hi[genre] - self.genre_lo[genre] - 1, 1)

    def sample_fresh(self, epoch: np.ndarray, genre: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity within ``genre`` at ``epoch``, by inverting the CDF at ``u`` ~ U(0, 1)."""
        j = np.searchsorted(self.pop_cdf, epoch * self.n_genres + genre + u, side="right")
        base = epoch * self.n_items
        j = np.clip(j, base + self.genre_item_lo[genre], base + self.genre_item_hi[genre] - 1) - base
        return self.genre_items[j]

    def next_track(self, prev: np.ndarray, action: np.ndarray, u: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The track after ``prev`` for ``action`` in {ALBUM_NEXT, SAME_ARTIST, NEARBY_ARTIST}.

        ``u`` ~ U(0, 1) picks the track within the chosen artist; ``offset`` in {±1, ±2, ±3} the nearby artist
        (mirrored when it falls off the genre's style line).
        """
        album = self.item_album[prev]
        nxt = np.minimum(prev + 1, self.n_items - 1)
        same_album = (prev + 1 < self.n_items) & (self.item_album[nxt] == album)
        album_next = np.where(same_album, nxt, self.album_start[album])
        artist = self.item_artist[prev]
        genre = self.artist_genre[artist]
        lo, hi = self.genre_lo[genre], self.genre_hi[genre]
        pos = self.artist_pos[artist] + offset
        pos = np.where((pos < lo) | (pos >= hi), pos - 2 * offset, pos)
        nearby = self.style_order[np.clip(pos, lo, hi - 1)]
        target = np.where(action == SAME_ARTIST, artist, nearby)
        random_track = self.artist_start[target] + (u * self.artist_size[target]).astype(np.int64)
        return np.where(action == ALBUM_NEXT, album_next, random_track)


def _catalogue(rng: np.random.Generator, items: int, end: int) -> _Catalogue:
    n_artists = max(1, items // ITEMS_PER_ARTIST)
    cuts = np.sort(rng.choice(items - 1, n_artists - 1, replace=False) + 1)
    artist_start = np.concatenate([[0], cuts]).astype(np.int64)
    artist_size = np.diff(np.append(artist_start, items))
    item_artist = np.repeat(np.arange(n_artists), artist_size)

    n_genres = min(MAX_GENRES, max(1, n_artists // 5))
    artist_genre = rng.permutation(np.arange(n_artists) % n_genres)
    style_order = np.lexsort((rng.random(n_artists), artist_genre))
    artist_pos = np.empty(n_artists, np.int64)
    artist_pos[style_order] = np.arange(n_artists)
    sorted_genre = artist_genre[style_order]
    genres = np.arange(n_genres)

    track_in_artist = np.arange(items) - artist_start[item_artist]
    new_album = (track_in_artist == 0) | (rng.random(items) < ALBUM_START_P)
    item_genre = artist_genre[item_artist]
    genre_items = np.argsort(item_genre, kind="stable")
    item_sorted_genre = item_genre[genre_items]
    genre_item_lo = np.searchsorted(item_sorted_genre, genres, side="left")

    base = (rng.permutation(items) + 1.0) ** -0.9
    peak = rng.uniform(-0.1, 1.1, items) * end
    width = 0.15 * max(end, 1) * rng.lognormal(0.0, 0.5, items)
    pop_cdf = np.empty(EPOCHS * items)
    for e in range(EPOCHS):
        t = (e + 0.5) / EPOCHS * end
        weight = (base * (0.05 + np.exp(-0.5 * ((t - peak) / width) ** 2)))[genre_items]
        cum = np.cumsum(weight)
        before = np.concatenate([[0.0], cum])[genre_item_lo]  # cumulative weight before each genre's segment
        total = np.bincount(item_sorted_genre, weights=weight, minlength=n_genres)
        share = (cum - before[item_sorted_genre]) / total[item_sorted_genre]
        pop_cdf[e * items : (e + 1) * items] = e * n_genres + item_sorted_genre + share

    return _Catalogue(
        item_raw=rng.choice(3 * items, items, replace=False).astype(np.uint32),
        item_artist=item_artist,
        item_album=np.cumsum(new_album) - 1,
        item_genre=item_genre,
        track_length=np.maximum(30, np.rint(rng.lognormal(np.log(200.0), 0.35, items))).astype(np.uint32),
        artist_start=artist_start,
        artist_size=artist_size,
        artist_genre=artist_genre,
        artist_pos=artist_pos,
        style_order=style_order,
        genre_lo=np.searchsorted(sorted_genre, genres, side="left"),
        genre_hi=np.searchsorted(sorted_genre, genres, side="right"),
        album_start=np.flatnonzero(new_album),
        genre_items=genre_items,
        genre_item_lo=genre_item_lo,
        genre_item_hi=np.searchsorted(item_sorted_genre, genres, side="right"),
        pop_cdf=pop_cdf,
    )


@dataclass
class _Users:
    """Per-user arrays, indexed by internal user 0..users-1 (in uid order)."""

    uid_raw: np.ndarray  # (users,) uint32 uid, increasing
    taste: np.ndarray  # (users, genres) Dirichlet genre preferences
    cum_taste: np.ndarray  # (users, genres) cumulative sum of taste along genres
    count: np.ndarray  # (users,) number of events
    join: np.ndarray  # (users,) earliest allowed timestamp, a multiple of 5
    end: np.ndarray  # (users,) timestamp of the last event, a multiple of 5
    place: np.ndarray  # (users,) in [0, 1]: where the timeline sits in any room left in [join, end] (1: at end)


def _users(rng: np.random.Generator, users: int, rows: int, n_genres: int, end: int) -> _Users:
    taste = rng.dirichlet(np.full(n_genres, 0.3), users)
    weight = rng.lognormal(0.0, 1.0, users)
    count = MIN_EVENTS + rng.multinomial(rows - MIN_EVENTS * users, weight / weight.sum())
    join = (rng.uniform(0.0, 0.7, users) * end).astype(np.int64) // 5 * 5
    slack = np.minimum(rng.exponential(2 * DAY, users), (end - join) / 2).astype(np.int64) // 5 * 5
    place = rng.random(users)
    heaviest = int(np.argmax(count))
    slack[heaviest], place[heaviest] = 0, 1.0
    return _Users(
        uid_raw=np.sort(rng.choice(3 * users, users, replace=False)).astype(np.uint32),
        taste=taste,
        cum_taste=np.cumsum(taste, axis=1),
        count=count,
        join=join,
        end=end - slack,
        place=place,
    )


def _chunks(count: np.ndarray, size: int) -> np.ndarray:
    """Boundaries b (b[0] = 0, b[-1] = users) of user chunks holding about ``size`` events each."""
    cum = np.cumsum(count)
    ends = np.searchsorted(cum, np.arange(size, cum[-1], size), side="left") + 1
    return np.unique(np.concatenate([[0], ends, [len(count)]]))


def _events_chunk(cat: _Catalogue, people: _Users, lo: int, hi: int, end: int, rng: np.random.Generator) -> pa.Table:
    """Events of users lo..hi-1, as a table with EVENTS_SCHEMA sorted by (uid, timestamp)."""
    n = people.count[lo:hi]  # events of each user; as many listens are simulated, then the sequence is cut
    first = np.cumsum(n) - n  # index of each user's first listen (and, after the cut, first event)
    n_listens = int(n.sum())
    user = np.repeat(np.arange(hi - lo), n)  # (listens,) chunk-local user
    gu = lo + user  # (listens,) global user
    rank = np.arange(n_listens) - first[user]  # (listens,) index of the listen within its user
    new_session = (rank == 0) | (rng.random(n_listens) < 1 / SESSION_MEAN)
    session = np.cumsum(new_session) - 1  # (listens,) session id, unique within the chunk
    pos = np.arange(n_listens) - np.flatnonzero(new_session)[session]  # (listens,) index within its session
    action = np.searchsorted(NEXT_CUM_P, rng.random(n_listens), side="right")
    action[new_session] = FRESH
    track_u = rng.random(n_listens)
    offset = rng.integers(1, 4, n_listens) * rng.choice(np.array([-1, 1]), n_listens)

    item = np.empty(n_listens, np.int64)  # (listens,) internal item
    fresh = np.flatnonzero(action == FRESH)
    fu = gu[fresh]
    genre = np.minimum((people.cum_taste[fu] < rng.random(len(fresh))[:, None]).sum(axis=1), cat.n_genres - 1)
    approx_time = people.join[fu] + (people.end[fu] - people.join[fu]) * rank[fresh] / n[user[fresh]]
    epoch = np.minimum(approx_time * EPOCHS // max(end, 1), EPOCHS - 1).astype(np.int64)
    item[fresh] = cat.sample_fresh(epoch, genre, rng.random(len(fresh)))
    dependent = np.flatnonzero(action != FRESH)
    dependent = dependent[np.argsort(pos[dependent], kind="stable")]
    steps = np.searchsorted(pos[dependent], np.arange(1, pos.max() + 2))  # dependent[steps[k-1]:steps[k]]: pos k
    for start, stop in zip(steps[:-1], steps[1:]):  # position k of every session at once
        idx = dependent[start:stop]
        item[idx] = cat.next_track(item[idx - 1], action[idx], track_u[idx], offset[idx])

    affinity = people.taste[gu, cat.item_genre[item]] / people.taste[lo:hi].max(axis=1)[user]
    ratio = np.clip(np.rint(rng.normal(20 + 75 * affinity, 25)), 0, 160).astype(np.int64)
    played = np.maximum(5, np.rint(cat.track_length[item] * np.minimum(ratio, 100) / 500).astype(np.int64) * 5)
    like_p = 0.02 + 0.08 * affinity * (ratio >= 50)
    cum_p = like_p + 0.03 * (1 - affinity) * (ratio < 30)
    v = rng.random(n_listens)
    codes = [EVENT_CODES[name] for name in ("like", "dislike", "unlike", "undislike")]
    reaction = np.select([v < like_p, v < cum_p, v < cum_p + RARE_P, v < cum_p + 2 * RARE_P], codes, -1)

    # Interleave each listen with its reaction (if any), then cut every user's sequence to its n events.
    has = reaction >= 0
    listen_at = np.arange(n_listens) + np.cumsum(has) - has  # (listens,) event index of each listen
    n_all = n_listens + int(has.sum())
    ev_listen = np.empty(n_all, np.int64)  # (events,) the listen an event is or follows
    ev_listen[listen_at] = np.arange(n_listens)
    ev_listen[listen_at[has] + 1] = np.flatnonzero(has)
    ev_type = np.full(n_all, LISTEN, np.int32)
    ev_type[listen_at[has] + 1] = reaction[has]
    ev_user = user[ev_listen]
    keep = np.arange(n_all) - listen_at[first][ev_user] < n[ev_user]
    ev_listen, ev_type, ev_user = ev_listen[keep], ev_type[keep], ev_user[keep]

    # Time from each event to the next one of its user: 0 before a reaction and after the user's last event,
    # the played time within a session, a lognormal gap between sessions; then scaled to fit [join, end].
    next_listen = np.append(ev_type[1:] == LISTEN, False) & np.append(ev_user[1:] == ev_user[:-1], False)
    next_same_session = np.append(session[ev_listen[1:]] == session[ev_listen[:-1]], False)
    within = np.where(next_listen & next_same_session, played[ev_listen], 0)
    is_gap = next_listen & ~next_same_session
    gap = np.zeros(n_listens)  # (events,): the cut left exactly n_listens events
    gap[is_gap] = rng.lognormal(np.log(6 * 3600), 1.5, int(is_gap.sum()))
    n_users = hi - lo
    span = people.end[lo:hi] - people.join[lo:hi]
    within_sum = np.bincount(ev_user, weights=within, minlength=n_users)
    gap_sum = np.bincount(ev_user, weights=gap, minlength=n_users)
    room = span - within_sum
    shrink = 1 - 1e-9  # keeps the rounded-down steps' sum within span despite float error
    gap_scale = np.where(room > 0, room / np.maximum(gap_sum, 1e-9), 0.0) * shrink
    within_scale = np.where(room >= 0, 1.0, span / np.maximum(within_sum, 1) * shrink)
    step = (np.floor((within * within_scale[ev_user] + gap * gap_scale[ev_user]) / 5) * 5).astype(np.int64)
    spare = span - np.bincount(ev_user, weights=step, minlength=n_users).astype(np.int64)
    start = people.join[lo:hi] + (np.floor(people.place[lo:hi] * spare / 5) * 5).astype(np.int64)
    before = np.cumsum(step) - step
    timestamp = start[ev_user] + before - before[first][ev_user]

    is_listen = ev_type == LISTEN
    ev_item = item[ev_listen]
    return pa.Table.from_arrays(
        [
            pa.array(people.uid_raw[lo + ev_user]),
            pa.array(cat.item_raw[ev_item]),
            pa.array(timestamp.astype(np.uint32)),
            pa.array((rng.random(n_listens) < ORGANIC_P).astype(np.uint8)),
            pa.DictionaryArray.from_arrays(pa.array(ev_type), pa.array(EVENT_TYPES)),
            pa.array(ratio[ev_listen].astype(np.uint16), mask=~is_listen),
            pa.array(cat.track_length[ev_item], mask=~is_listen),
        ],
        schema=EVENTS_SCHEMA,
    )


def _float_lists(x: np.ndarray) -> pa.ListArray:
    """(n, d) float32 -> list<float32> array of n rows."""
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))


def _artist_audio(cat: _Catalogue, rng: np.random.Generator) -> np.ndarray:
    """(artists, AUDIO_DIM) float32: genre centroid + smooth function of the artist's style position."""
    centroid = rng.standard_normal((cat.n_genres, AUDIO_DIM))
    j = np.arange(1, HARMONICS + 1)
    coef = rng.standard_normal((cat.n_genres, 2 * HARMONICS, AUDIO_DIM)) * np.tile(0.6 / j, 2)[None, :, None]
    s = cat.style()[:, None]
    basis = np.concatenate([np.cos(np.pi * j * s), np.sin(np.pi * j * s)], axis=1)  # (artists, 2 HARMONICS)
    audio = np.empty((len(s), AUDIO_DIM), np.float32)
    for g in range(cat.n_genres):
        artists = cat.style_order[cat.genre_lo[g] : cat.genre_hi[g]]
        audio[artists] = centroid[g] + basis[artists] @ coef[g]
    return audio


def _write_embeddings(cat: _Catalogue, rng: np.random.Generator, path: Path) -> None:
    audio = _artist_audio(cat, rng)
    embedded = np.flatnonzero(rng.random(cat.n_items) < EMBEDDED_P)
    embedded = embedded[np.argsort(cat.item_raw[embedded])]
    norm = rng.lognormal(np.log(10.0), 0.3, cat.n_items).astype(np.float32)
    with pq.ParquetWriter(path, EMBEDDINGS_SCHEMA) as writer:
        for start in range(0, len(embedded), EMBED_GROUP):
            k = embedded[start : start + EMBED_GROUP]
            v = audio[cat.item_artist[k]] + 0.15 * rng.standard_normal((len(k), AUDIO_DIM), dtype=np.float32)
            embed = v * (norm[k] / np.linalg.norm(v, axis=1))[:, None]
            normalized = embed / np.linalg.norm(embed, axis=1, keepdims=True)
            arrays = [pa.array(cat.item_raw[k]), _float_lists(embed), _float_lists(normalized)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=EMBEDDINGS_SCHEMA))


def _write_artists(cat: _Catalogue, rng: np.random.Generator, path: Path) -> None:
    n_artists = len(cat.artist_start)
    artist_raw = rng.choice(3 * n_artists, n_artists, replace=False).astype(np.uint32)
    k = np.flatnonzero(rng.random(cat.n_items) >= NO_ARTIST_P)
    k = k[np.argsort(cat.item_raw[k])]
    arrays = [pa.array(artist_raw[cat.item_artist[k]]), pa.array(cat.item_raw[k])]
    pq.write_table(pa.Table.from_arrays(arrays, schema=ARTIST_SCHEMA), path)


def _write_albums(cat: _Catalogue, rng: np.random.Generator, path: Path) -> None:
    n_albums = len(cat.album_start)
    on_album = np.flatnonzero(rng.random(cat.n_items) >= NO_ALBUM_P)
    second = on_album[rng.random(len(on_album)) < TWO_ALBUMS_P / (1 - NO_ALBUM_P)]
    n_compilations = max(1, math.ceil(len(second) / COMPILATION_SIZE))
    album_raw = rng.choice(3 * (n_albums + n_compilations), n_albums + n_compilations, replace=False).astype(np.uint32)
    album = np.concatenate([cat.item_album[on_album], n_albums + rng.integers(n_compilations, size=len(second))])
    item = cat.item_raw[np.concatenate([on_album, second])]
    order = np.lexsort((album_raw[album], item))
    arrays = [pa.array(album_raw[album][order]), pa.array(item[order])]
    pq.write_table(pa.Table.from_arrays(arrays, schema=ALBUM_SCHEMA), path)


#: Written by synthesize beside the Yambda files (its arguments): marks a directory it may replace.
SYNTH_MARKER = "synth.json"


def synthesize(
    out: str | Path,
    rows: int = 200_000,
    users: int = 1_000,
    items: int = 20_000,
    seed: int = 0,
    size: str | None = None,
    days: float = 301.0,
    row_group_size: int = 1_000_000,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic Yambda-layout dataset under ``out``; return the path of the multi_event.parquet written.

    Files: ``out/flat/<size>/multi_event.parquet`` (``size`` defaults to ``size_label(rows)``) with exactly
    ``rows`` events of ``users`` users over ``days`` days, and the three side files for ``items`` items. The same
    arguments give the same files; the catalogue (side files, item structure) depends on ``seed`` and ``items`` only.
    See the module docstring for the generative story.

    ``out`` is written as a whole, atomically (lightning_tt.outputs): an existing directory is replaced
    only with ``overwrite``.
    """
    if users < 1 or items < 1 or row_group_size < 1:
        raise InputError(f"--users, --items and --row_group_size must be >= 1 (got {users}, {items}, {row_group_size})")
    if rows < MIN_EVENTS * users:
        raise InputError(f"--rows {rows} is below {MIN_EVENTS} events for each of --users {users}")
    if not 0 < days < 2**32 / DAY:
        raise InputError(f"--days {days} must be positive and fit uint32 seconds (< {2**32 // DAY})")
    size = size or size_label(rows)
    if not size or "/" in size or "\\" in size or size in (".", ".."):
        raise InputError(f"--size {size!r} must be a plain name such as 50m (it names the folder flat/<size>/)")
    # Replaces only an earlier synth output, never a downloaded dataset, a run's logs or other files.
    output = Output(out, "dir", option="--out", overwrite=overwrite, replaces=SYNTH_MARKER)
    end = math.floor(days * DAY) // 5 * 5
    streams = np.random.SeedSequence(seed).spawn(4)
    catalogue_rng, user_rng, event_rng, side_rng = (np.random.default_rng(s) for s in streams)
    cat = _catalogue(catalogue_rng, items, end)
    people = _users(user_rng, users, rows, cat.n_genres, end)

    with output.writing() as tmp:
        path = events_path(tmp, size)
        path.parent.mkdir(parents=True)
        bounds = _chunks(people.count, row_group_size)
        with pq.ParquetWriter(path, EVENTS_SCHEMA) as writer, tqdm(
            total=rows, unit="row", unit_scale=True, desc="synth events", disable=not progress
        ) as bar:
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                table = _events_chunk(cat, people, int(lo), int(hi), end, event_rng)
                writer.write_table(table, row_group_size=table.num_rows)
                bar.update(table.num_rows)

        sides = side_paths(tmp)
        _write_embeddings(cat, side_rng, sides["embeddings"])
        _write_artists(cat, side_rng, sides["artists"])
        _write_albums(cat, side_rng, sides["albums"])
        arguments = {"rows": rows, "users": users, "items": items, "seed": seed, "size": size, "days": days,
                     "row_group_size": row_group_size}
        (tmp / SYNTH_MARKER).write_text(json.dumps(arguments, indent=2))
    return events_path(out, size)
