"""No leakage, on every example of a synthetic dataset, for all splits and both protocols.

The reference is rebuilt here from the raw parquet with plain Python (one list of listens per user in
file order), independently of prepare's vectorised pass; every batch row must equal it, every history
entry must come strictly before its target in file order and not later in time, and the set of
examples must be exactly the Listen+ listens inside each window.
"""

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from lightning_tt.data import schema
from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.synth import synthesize

HISTORY = 6


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
    """uid -> list of (raw item, ts, ratio) of its listens in file order; uid -> first event ts."""
    listens, first = defaultdict(list), {}
    for uid, item, ts, kind, ratio in zip(events["uid"], events["item_id"], events["timestamp"],
                                          events["event_type"], events["played_ratio_pct"]):
        first.setdefault(uid, ts)
        if kind == "listen":
            listens[uid].append((item, ts, ratio))
    return listens, first


def windows(b):
    return {
        "train": lambda t: t < b["train_end"],
        "val": lambda t: b["val_start"] <= t < b["val_end"],
        "test": lambda t: t >= b["test_start"],
    }


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_next_track_example(synthetic, split):
    data, events = synthetic
    listens, first = reference(events)
    b = data.boundaries
    inside = windows(b)[split]
    item_raw = np.asarray(data["item_ids"])
    index_of = {int(raw): i for i, raw in enumerate(item_raw) if i >= 2}
    to_index = lambda raw: index_of.get(raw, 1)  # noqa: E731
    user_raw = np.asarray(data["user_ids"])
    offsets = np.asarray(data["user_offsets"])

    dataset = NextTrackDataset(data, split, HISTORY)
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
        n = len(before)
        assert batch["history_length"][k] == n
        assert list(batch["history_item"][k][HISTORY - n :]) == [to_index(i) for i, _, _ in before]
        assert not batch["history_item"][k][: HISTORY - n].any()
        assert batch["seed_item"][k] == (to_index(before[-1][0]) if before else 0)
        expected_age = b["train_max_timestamp"] - ts if split == "train" else 0
        assert batch["example_age"][k] == expected_age and expected_age >= 0

    expected = {(uid, j) for uid, evs in listens.items() if first[uid] < b["train_end"]
                for j, (_, ts, ratio) in enumerate(evs) if inside(ts) and ratio >= 50}
    assert seen == expected


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_paper_list(synthetic, split):
    data, events = synthetic
    listens, first = reference(events)
    start = data.boundaries[f"{split}_start"]
    inside = windows(data.boundaries)[split]
    index_of = {int(raw): i for i, raw in enumerate(np.asarray(data["item_ids"])) if i >= 2}
    to_index = lambda raw: index_of.get(raw, 1)  # noqa: E731
    user_raw = np.asarray(data["user_ids"])
    dataset = PaperListDataset(data, split, HISTORY)
    batch = dataset.arrays(np.arange(len(dataset)))
    users = set()
    for k in range(len(dataset)):
        uid = int(user_raw[batch["user"][k]])
        users.add(uid)
        before = [e for e in listens[uid] if e[1] < start][-HISTORY:]  # the state at the window start
        n = len(before)
        assert list(batch["history_item"][k][HISTORY - n :]) == [to_index(i) for i, _, _ in before]
        assert batch["example_age"][k] == 0
        targets = [to_index(i) for i, t, r in listens[uid] if inside(t) and r >= 50]
        assert list(batch["target_items"][k][: batch["target_count"][k]]) == targets  # repeats kept
    expected = {uid for uid, evs in listens.items() if first[uid] < data.boundaries["train_end"]
                and any(inside(t) and r >= 50 for _, t, r in evs)}
    assert users == expected
