"""No leakage, on every example of a synthetic dataset, for all splits and both protocols.

The reference is rebuilt here from the raw parquet with plain Python (one list of listens per user in
file order, one list of likes and dislikes), independently of prepare's vectorised pass; every batch row
must equal it, every history entry must come strictly before its target in file order and not later in
time, every like or dislike strictly before the query time (with unlike and undislike applied), and the
set of examples must be exactly the Listen+ listens inside each window. Serving's queries (the state
after the last listen, asked now) are checked against the same reference.
"""

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from lightning_tt.data import schema
from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
from lightning_tt.data.feedback import LOOKBACK
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.synth import synthesize

HISTORY = 6
FEEDBACK = 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    synthesize(root / "raw", rows=30_000, users=120, items=3_000, seed=3, days=20, row_group_size=7_000,
               progress=False)
    config = SplitConfig(test_days=2, val_days=2, gap_seconds=3600, history=HISTORY)
    prepare(root / "raw", root / "prepared", config=config, progress=False)
    events = pq.read_table(schema.events_path(root / "raw", "30k")).to_pydict()
    return PreparedData(root / "prepared"), events


def reference(events):
    """uid -> list of (raw item, ts, ratio) of its listens in file order; uid -> first event ts; uid -> list
    of (raw item, ts, event type) of its other events; uid -> is_organic of each listen."""
    listens, first, signals, organic = defaultdict(list), {}, defaultdict(list), defaultdict(list)
    for uid, item, ts, kind, ratio, own in zip(events["uid"], events["item_id"], events["timestamp"],
                                               events["event_type"], events["played_ratio_pct"], events["is_organic"]):
        first.setdefault(uid, ts)
        if kind == "listen":
            listens[uid].append((item, ts, ratio))
            organic[uid].append(own)
        else:
            signals[uid].append((item, ts, kind))
    return listens, first, signals, organic


def feedback(signals, to_index, time, on, off):
    """The last FEEDBACK items (as indices) ``on``-ed strictly before ``time`` and not ``off``-ed or
    ``on``-ed again since, among the last LOOKBACK * FEEDBACK ``on`` events before ``time``; oldest first,
    0-padded on the left (the same item index is one item, as in the prepared arrays)."""
    events = sorted(((to_index(i), ts, kind) for i, ts, kind in signals if ts < time and kind in (on, off)),
                    key=lambda e: (e[1], e[2] == off, e[0]))
    ons = [(n, e) for n, e in enumerate(events) if e[2] == on][-LOOKBACK * FEEDBACK :]
    holding = [e[0] for n, e in ons if not any(later[0] == e[0] for later in events[n + 1 :])]
    items = holding[-FEEDBACK:]
    return [0] * (FEEDBACK - len(items)) + items


def check_query(row, k, listens, signals, to_index, time):
    """Row ``k`` of a batch holds the history (items, play ratios) ``listens`` and the feedback as of ``time``."""
    n = len(listens)
    assert row["history_length"][k] == n
    assert list(row["history_item"][k][HISTORY - n :]) == [to_index(i) for i, _, _ in listens]
    assert not row["history_item"][k][: HISTORY - n].any()
    expected_ratio = [min(r, 100) / 100 for _, _, r in listens]
    ratio = row["history_ratio"][k]
    assert np.allclose(ratio[HISTORY - n :], expected_ratio) and not ratio[: HISTORY - n].any()
    assert list(row["liked_item"][k]) == feedback(signals, to_index, time, "like", "unlike")
    assert list(row["disliked_item"][k]) == feedback(signals, to_index, time, "dislike", "undislike")


def windows(b):
    return {
        "train": lambda t: t < b["train_end"],
        "val": lambda t: b["val_start"] <= t < b["val_end"],
        "test": lambda t: t >= b["test_start"],
    }


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_next_track_example(synthetic, split):
    data, events = synthetic
    listens, first, signals, organic = reference(events)
    b = data.boundaries
    inside = windows(b)[split]
    item_raw = np.asarray(data["item_ids"])
    index_of = {int(raw): i for i, raw in enumerate(item_raw) if i >= 2}
    to_index = lambda raw: index_of.get(raw, 1)  # noqa: E731
    user_raw = np.asarray(data["user_ids"])
    offsets = np.asarray(data["user_offsets"])

    dataset = NextTrackDataset(data, split, HISTORY, feedback=FEEDBACK)
    assert len(dataset) > 50
    batch = dataset.arrays(np.arange(len(dataset)))
    pos = np.asarray(data[f"{split}_pos"])

    seen = set()
    for k in range(len(dataset)):
        uid = int(user_raw[batch["user"][k]])
        j = int(pos[k] - offsets[batch["user"][k]])  # the target is this user's j-th listen
        item, ts, ratio = listens[uid][j]
        seen.add((uid, j))
        assert first[uid] < b["train_end"]  # the user has training history
        assert inside(ts) and ratio >= 50
        assert batch["target_item"][k] == to_index(item)
        before = listens[uid][max(0, j - HISTORY) : j]  # strictly earlier in file order
        assert all(t <= ts for _, t, _ in before)  # and never later in time
        check_query(batch, k, before, signals[uid], to_index, ts)  # feedback strictly before the target
        assert batch["seed_item"][k] == (to_index(before[-1][0]) if before else 0)
        assert batch["seed_organic"][k] == (organic[uid][j - 1] if before else 0)
        expected_age = b["train_max_timestamp"] - ts if split == "train" else 0
        assert batch["example_age"][k] == expected_age and expected_age >= 0

    expected = {(uid, j) for uid, evs in listens.items() if first[uid] < b["train_end"]
                for j, (_, ts, ratio) in enumerate(evs) if inside(ts) and ratio >= 50}
    assert seen == expected


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_paper_list(synthetic, split):
    data, events = synthetic
    listens, first, signals, organic = reference(events)
    start = data.boundaries[f"{split}_start"]
    inside = windows(data.boundaries)[split]
    index_of = {int(raw): i for i, raw in enumerate(np.asarray(data["item_ids"])) if i >= 2}
    to_index = lambda raw: index_of.get(raw, 1)  # noqa: E731
    user_raw = np.asarray(data["user_ids"])
    dataset = PaperListDataset(data, split, HISTORY, feedback=FEEDBACK)
    batch = dataset.arrays(np.arange(len(dataset)))
    users = set()
    for k in range(len(dataset)):
        uid = int(user_raw[batch["user"][k]])
        users.add(uid)
        before = [e for e in listens[uid] if e[1] < start][-HISTORY:]  # the state at the window start
        check_query(batch, k, before, signals[uid], to_index, start)
        assert batch["example_age"][k] == 0
        targets = [to_index(i) for i, t, r in listens[uid] if inside(t) and r >= 50]
        assert list(batch["target_items"][k][: batch["target_count"][k]]) == targets  # repeats kept
    expected = {uid for uid, evs in listens.items() if first[uid] < data.boundaries["train_end"]
                and any(inside(t) and r >= 50 for _, t, r in evs)}
    assert users == expected


def test_serving_queries_are_the_state_after_the_last_listen(synthetic):
    from lightning_tt.data.batches import FeatureGatherer
    from lightning_tt.serve import LAST_LISTEN, _query_batch

    data, events = synthetic
    listens, _, signals, _ = reference(events)
    index_of = {int(raw): i for i, raw in enumerate(np.asarray(data["item_ids"])) if i >= 2}
    to_index = lambda raw: index_of.get(raw, 1)  # noqa: E731
    user_raw = np.asarray(data["user_ids"])
    users = np.arange(2, len(user_raw))
    batch = {k: v.numpy() for k, v in _query_batch(FeatureGatherer(data, HISTORY, FEEDBACK), users,
                                                   np.full(len(users), 7)).items()}
    assert (batch["seed_item"] == 7).all() and not batch["example_age"].any()
    for k, u in enumerate(users):
        uid = int(user_raw[u])
        check_query(batch, k, listens[uid][-HISTORY:], signals[uid], to_index, float("inf"))  # every signal counts
    # No seed given: the seed is the user's last listen, as in training's examples (the seed is history[-1]).
    unseeded = {k: v.numpy() for k, v in _query_batch(FeatureGatherer(data, HISTORY, FEEDBACK), users,
                                                      np.full(len(users), LAST_LISTEN)).items()}
    for k, u in enumerate(users):
        last = listens[int(user_raw[u])][-1]
        assert unseeded["seed_item"][k] == to_index(last[0]) == unseeded["history_item"][k, -1]
    assert (unseeded["history_item"] == batch["history_item"]).all()


def test_horizon_targets_are_the_users_own_later_listens_within_the_horizon(synthetic):
    data, _ = synthetic
    horizon = 6 * 3600
    plain = NextTrackDataset(data, "train", HISTORY)
    drawn = NextTrackDataset(data, "train", HISTORY, target_horizon=horizon)
    pos = np.asarray(data["train_pos"], dtype=np.int64)
    ts = np.asarray(data["stream_ts"], dtype=np.int64)
    user = plain.gather.user_of(pos)
    index = np.arange(len(pos))
    assert np.array_equal(plain.targets(index), index)
    later = 0
    for _ in range(5):
        target = drawn.targets(index)
        assert (user[target] == user).all() and (target >= index).all()  # the same user, not the past
        assert (ts[pos[target]] - ts[pos] <= horizon).all()
        later += (target > index).sum()
    assert later > len(index)  # most users listen more than once in 6 hours
    batch = drawn.arrays(index[:64])  # the query is still the state before the example's own listen
    assert np.array_equal(batch["history_item"], plain.arrays(index[:64])["history_item"])
    with pytest.raises(ValueError, match="only for training"):
        NextTrackDataset(data, "val", HISTORY, target_horizon=horizon)
