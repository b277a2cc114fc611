"""Leaving the user's past out of the lists (exclude_seen) and the popularity term of retrieval."""

import math

import faiss
import numpy as np
import pytest
import torch

from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.data.prepare import prepare
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.seen import SeenItems, repeat_share, resolve_exclude_seen
from lightning_tt.errors import InputError
from lightning_tt.eval import index as index_module
from lightning_tt.eval.callback import FaissRetrieval
from lightning_tt.eval.index import IndexConfig, build_index, search_unseen
from lightning_tt.model.module import TwoTowerModule
from tests.rawdata import event, hand_rows, write_raw


def prepared(tmp_path, rows) -> PreparedData:
    out = tmp_path / "prepared"
    prepare(write_raw(tmp_path / "raw", rows), out, audio_dim=4, progress=False)
    return PreparedData(out)


def test_seen_items_and_repeat_share_by_hand(tmp_path):
    # The hand data (test_prepare.py): user index 2 (raw 5) listens to raw 10, 11 (30%: not a positive),
    # 12, 13 in training (items 2, 3, 4, 5), then raw 14 in the gap, 15 in the val window and 16 in the
    # gap before the test window, all three outside the training vocabulary (item 1, unknown); then in
    # the test window raw 99 (unknown) at stream position 7, 10 at 8 and 12 at 9. User 3 (raw 9) listens
    # to raw 11 (item 3) in training and 12 (item 4) in the test window. Nobody repeats a training
    # positive, so auto leaves the past out.
    data = prepared(tmp_path / "a", hand_rows())
    assert repeat_share(data) == 0.0 and resolve_exclude_seen(data, None) is True
    assert resolve_exclude_seen(data, False) is False
    # Every listen before the test window, Listen+ or not; at the window start (paper lists).
    test = SeenItems(data, "test")
    assert test.padded(np.array([2, 3, 0])).tolist() == [[1, 2, 3, 4, 5], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # A test case adds the window's own listens before it: the case at position 9 (raw 12) has seen
    # positions 7 and 8 (items 1 and 2) too, the case at 7 nothing more; user 3's case at 11 nothing more.
    start = int(np.asarray(data["user_offsets"])[2])
    assert test.padded(np.array([2, 2, 3]), np.array([start + 9, start + 7, start + 11])).tolist() == [
        [1, 2, 3, 4, 5, 1, 2], [1, 2, 3, 4, 5, 0, 0], [3, 0, 0, 0, 0, 0, 0]]
    # The val window starts before raw 15 (position 5): only raw 14 of the gap is before it.
    assert SeenItems(data, "val").padded(np.array([2])).tolist() == [[1, 2, 3, 4, 5]]
    assert SeenItems(data, "val").padded(np.array([2]), np.array([start + 6])).tolist() == [[1, 2, 3, 4, 5, 1]]
    # Serving: the whole stream.
    assert SeenItems(data, "all").padded(np.array([2, 3])).tolist() == [[1, 2, 3, 4, 5], [3, 4, 0, 0, 0]]
    with pytest.raises(ValueError, match="scope must be one of val, test, all"):
        SeenItems(data, "train")

    # User 5 plays raw item 10 again at t=500 (90%): 5 training positives, 4 distinct pairs.
    rows = hand_rows()
    data = prepared(tmp_path / "b", rows[:4] + [event(5, 10, 500, ratio=90, length=110)] + rows[4:])
    assert repeat_share(data) == pytest.approx(1 - 4 / 5)
    assert resolve_exclude_seen(data, None) is False and resolve_exclude_seen(data, True) is True
    # With a cap, whole users only: the first 4 positives are all user 2's (10, 12, 10, 13): 1 - 3/4.
    assert repeat_share(data, limit=4) == pytest.approx(1 - 3 / 4)
    assert SeenItems(data, "test").padded(np.array([2])).tolist() == [[1, 2, 3, 4, 5]]  # distinct


def test_evaluation_batches_carry_every_listen_before_the_case_and_nothing_later(tiny_prepared):
    data = PreparedData(tiny_prepared)
    offsets, items, ts = (np.asarray(a) for a in (data["user_offsets"], data["stream_item"], data["stream_ts"]))
    for split in ("val", "test"):
        cases = NextTrackDataset(data, split, 5, exclude_seen=True)
        batch = cases.arrays(np.arange(len(cases)))
        later = 0
        for user, pos, row in zip(batch["user"], np.asarray(cases.pos), batch["seen_items"]):
            assert set(row[row > 0].tolist()) == set(items[offsets[user]:pos].tolist())
            later += pos > offsets[user] and ts[pos - 1] >= data.boundaries[f"{split}_start"]
        assert later > 0  # some cases leave out listens of their own window
        lists = PaperListDataset(data, split, 5, exclude_seen=True)
        batch = lists.arrays(np.arange(len(lists)))
        for user, row in zip(batch["user"], batch["seen_items"]):
            past = [p for p in range(offsets[user], offsets[user + 1]) if ts[p] < data.boundaries[f"{split}_start"]]
            assert set(row[row > 0].tolist()) == set(items[past].tolist())
    assert "seen_items" not in NextTrackDataset(data, "test", 5).arrays(np.arange(3))
    with pytest.raises(ValueError, match="evaluation"):
        NextTrackDataset(data, "train", 5, exclude_seen=True)


def test_the_datamodule_resolves_auto_from_the_data(tiny_prepared):
    assert repeat_share(PreparedData(tiny_prepared)) > 0.01  # people replay tracks in the twin
    assert YambdaDataModule(str(tiny_prepared)).exclude_seen is False
    module = YambdaDataModule(str(tiny_prepared), exclude_seen=True, eval_batch_size=64)
    assert module.exclude_seen is True and "seen_items" in next(iter(module.val_dataloader()[0]))


def test_search_unseen_drops_seen_rows_and_keeps_the_order():
    # Five items on a line: the score of row r for query (1, 0) is r; query (-1, 0) ranks them backwards.
    index = faiss.IndexFlatIP(2)
    index.add(np.array([[r, 0.0] for r in range(5)], dtype=np.float32))
    queries = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    scores, rows = search_unseen(index, queries, 3, np.array([[4, 2, -1], [0, -2, -2]]))
    assert rows.tolist() == [[3, 1, 0], [1, 2, 3]]
    assert scores.tolist() == [[3.0, 1.0, 0.0], [-1.0, -2.0, -3.0]]
    # Fewer than k left: -1 rows with score -inf; without seen rows the plain search.
    scores, rows = search_unseen(index, queries[:1], 4, np.array([[4, 3, 2]]))
    assert rows.tolist() == [[1, 0, -1, -1]] and scores[0, 2] == -np.inf
    assert search_unseen(index, queries, 2)[1].tolist() == [[4, 3], [0, 1]]


def tiny_model(tiny_prepared, **options) -> TwoTowerModule:
    data = PreparedData(tiny_prepared)
    vocab = data.vocab
    return TwoTowerModule(str(tiny_prepared), num_users=vocab["num_users"], num_items=vocab["num_items"],
                          num_artists=vocab["num_artists"], num_albums=vocab["num_albums"],
                          audio_dim=vocab["audio_dim"], embedding_dim=8, hidden_dims=[16], output_dim=8,
                          history=5, temperature=0.1, estimator_buckets=4096, **options).eval()


def test_popularity_weight_adds_beta_tau_log_q(tiny_prepared):
    torch.manual_seed(0)
    model = tiny_model(tiny_prepared, popularity_weight=0.5)
    plain = tiny_model(tiny_prepared)
    plain.load_state_dict(model.state_dict())
    # Step 1 starts every gap at g = num_items / 4 and moves items 5, 6, 7 to 0.99 g + 0.01 (1 step since 0);
    # step 2 moves item 5 again, to 0.99 (0.99 g + 0.01) + 0.01, and items 9, 10, 11 (2 steps since 0)
    # to 0.99 g + 0.02. Item 8, like every other item, is never seen: g.
    model.estimator.update(torch.tensor([5, 5, 6, 7]))
    model.estimator.update(torch.tensor([5, 9, 10, 11]))
    data = PreparedData(tiny_prepared)
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in
             NextTrackDataset(data, "val", 5).arrays(np.arange(4)).items()}
    items = torch.tensor([5, 6, 8])
    with torch.no_grad():
        score = model.retrieval_query(batch) @ model.retrieval_items(items).T
        dot = plain.query_tower(batch) @ plain.item_tower(items).T
    gap = data.vocab["num_items"] / 4
    once = 0.99 * gap + 0.01
    twice, late = 0.99 * once + 0.01, 0.99 * gap + 0.02
    log_q = torch.tensor([-math.log(twice), -math.log(once), -math.log(gap)])
    # The column is centred on the catalogue's mean log q (items 2 .. V - 1; 6 seen, the rest not).
    catalogue = data.vocab["num_items"] - 2
    centre = -(math.log(twice) + 2 * math.log(once) + 3 * math.log(late) + (catalogue - 6) * math.log(gap)) / catalogue
    assert model.retrieval_dim == 9 and plain.retrieval_dim == 8
    assert torch.allclose(score, dot + 0.5 * 0.1 * (log_q - centre), atol=1e-5)
    assert abs(float(model.retrieval_items()[2:, -1].sum())) < 1e-4  # centred over the catalogue
    assert plain.retrieval_items(items).shape == (3, 8)


def test_counts_prior_adds_beta_tau_log_of_the_decayed_training_counts(tiny_prepared):
    from lightning_tt.data.seen import positives

    torch.manual_seed(0)
    data = PreparedData(tiny_prepared)
    _, items, times = positives(data)  # the training positives (user, item, time), counted here by hand
    num_items, train_max = data.vocab["num_items"], data.boundaries["train_max_timestamp"]
    window = (data.boundaries["val_end"] - data.boundaries["val_start"]) / 86_400  # 2 days
    for half_life, weights in ((None, np.ones(len(items))),
                               (1.5, 0.5 ** ((train_max - times) / (1.5 * window * 86_400)))):
        model = tiny_model(tiny_prepared, popularity_weight=0.5, popularity_prior="counts",
                           popularity_half_life=half_life)
        log_c = np.log(np.bincount(items, weights=weights, minlength=num_items) + 1.0)
        expected = 0.5 * 0.1 * (log_c - log_c[2:].mean())  # beta tau (log(c + 1) - the catalogue's mean)
        assert model.retrieval_items()[:, -1].numpy() == pytest.approx(expected, abs=1e-5)
        assert "log_popularity" not in model.state_dict()  # reloaded from the data, like the item table
    assert 0 < expected[2:].max() - expected[2:].min()
    model.estimator.update(torch.tensor([5, 5, 6]))  # the estimator no longer moves the column
    assert model.retrieval_items()[:, -1].numpy() == pytest.approx(expected, abs=1e-5)
    bare = TwoTowerModule(num_items=num_items, popularity_weight=0.5, popularity_prior="counts")
    assert bare.retrieval_items()[:, -1].abs().max() == 0  # no data: every item alike
    for bad, match in (({"popularity_prior": "recent"}, "model.popularity_prior must be one of estimator, counts"),
                       ({"popularity_half_life": 0.0}, "model.popularity_half_life must be > 0")):
        with pytest.raises(InputError, match=match):
            TwoTowerModule(num_items=num_items, **bad)


def test_seedless_queries_take_their_own_popularity_weight(tiny_prepared):
    torch.manual_seed(0)
    data = PreparedData(tiny_prepared)
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in
             NextTrackDataset(data, "val", 5).arrays(np.arange(4)).items()}
    batch["seed_item"][2:] = 0  # rows 2 and 3 ask without a seed track
    plain = tiny_model(tiny_prepared)
    items = torch.arange(2, 40)
    with torch.no_grad():
        dot = plain.query_tower(batch) @ plain.item_tower(items).T
    for beta, seedless in ((0.5, 2.0), (0.0, 1.5), (0.5, None)):
        model = tiny_model(tiny_prepared, popularity_weight=beta, seedless_popularity_weight=seedless,
                           popularity_prior="counts", popularity_half_life=2.0)
        model.load_state_dict(plain.state_dict())
        log_q = model.log_popularity
        term = 0.1 * (log_q[items] - log_q[2:].mean())  # tau (log q(i) - the catalogue's mean)
        asked_without = beta if seedless is None else seedless
        weights = torch.tensor([beta, beta, asked_without, asked_without])
        with torch.no_grad():
            score = model.retrieval_query(batch) @ model.retrieval_items(items).T
        assert model.retrieval_dim == 9
        assert torch.allclose(score, dot + weights[:, None] * term[None, :], atol=1e-5)
    assert term.abs().max() > 0.01
    assert tiny_model(tiny_prepared, seedless_popularity_weight=0.0).retrieval_dim == 8  # no weight, no column


def test_exact_and_ann_lists_leave_the_same_items_out(tiny_prepared):
    torch.manual_seed(0)
    model = tiny_model(tiny_prepared, popularity_weight=1.0)
    data = PreparedData(tiny_prepared)
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in
             NextTrackDataset(data, "test", 5, exclude_seen=True).arrays(np.arange(64)).items()}
    with torch.no_grad():
        queries = model.retrieval_query(batch)
        _, top = model._top_k(queries, 20, batch["seen_items"])
        scores = queries @ model.catalogue().T
    for row, seen, ranked in zip(scores, batch["seen_items"], top):
        row[:2] = -math.inf
        row[seen] = -math.inf
        assert ranked.tolist() == row.topk(20).indices.tolist()  # the best unseen items, in order
        assert not set(ranked.tolist()) & set(seen.tolist())
    built = build_index(model.catalogue()[2:].numpy(), IndexConfig("flat"))
    ann, _ = FaissRetrieval._search(built, queries, 20, batch["seen_items"])
    assert torch.equal(ann, top)


def test_search_unseen_in_blocks_gives_the_lists_of_one_call(monkeypatch):
    # A re-ranked fast-scan index holds depth x k_factor candidates per query: the blocks are sized by both.
    rng = np.random.default_rng(0)
    built = build_index(rng.standard_normal((20_000, 32)).astype(np.float32),
                        IndexConfig(kind="ivfpqfs", nprobe=4, k_factor=8))
    assert built.factory.endswith("RFlat")
    queries = rng.standard_normal((1_000, 32)).astype(np.float32)
    seen = rng.integers(-1, 20_000, (1_000, 30))
    whole = [search_unseen(built.index, queries, 50, s) for s in (None, seen)]
    calls = []
    search = type(built.index).search
    monkeypatch.setattr(type(built.index), "search", lambda self, x, k, *a, **kw: (calls.append((len(x), k)),
                                                                                    search(self, x, k, *a, **kw))[1])
    monkeypatch.setattr(index_module, "SEARCH_ENTRIES", 37 * 80 * 8)  # 37 queries at depth 50 + 30 and k_factor 8
    for s, (scores, rows) in zip((None, seen), whole):
        blocked_scores, blocked_rows = search_unseen(built.index, queries, 50, s)
        assert np.array_equal(blocked_rows, rows) and np.array_equal(blocked_scores, scores)
    # 23,680 // (50 x 8) = 59 queries a block without seen rows; // ((50 + 30) x 8) = 37 with them.
    assert calls == [(59, 50)] * 16 + [(56, 50)] + [(37, 80)] * 27 + [(1, 80)]
