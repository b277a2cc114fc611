"""StreamingFrequencyEstimator: convergence on a Zipf stream, shift tracking, deduplication,
checkpoint round trip, and identical state on two gloo ranks."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_tt.model.estimator import StreamingFrequencyEstimator

ITEMS, BATCH = 1000, 256


def zipf_stream(steps, seed=0, permutation=None):
    """Batches of BATCH items drawn i.i.d. from q_k ~ 1 / (k + 1); returns (batches, true per-step p)."""
    q = 1.0 / np.arange(1, ITEMS + 1)
    q /= q.sum()
    if permutation is not None:
        q = q[permutation]
    rng = np.random.default_rng(seed)
    batches = [torch.from_numpy(rng.choice(ITEMS, BATCH, p=q)) for _ in range(steps)]
    return batches, 1 - (1 - q) ** BATCH  # probability that item k appears in a step


def test_converges_on_a_zipf_stream():
    est = StreamingFrequencyEstimator(ITEMS, num_hashes=2, num_buckets=1 << 14, alpha=0.01)
    batches, p = zipf_stream(3000)
    for b in batches:
        est.update(b)
    got = est.probability(torch.arange(ITEMS)).numpy()
    frequent = p > 0.2  # the ~50 items that appear at least every fifth step
    assert frequent.sum() > 30
    # Tolerance: within 15% relative error for every frequent item, 5% on average.
    rel = np.abs(got[frequent] - p[frequent]) / p[frequent]
    assert rel.max() < 0.15 and rel.mean() < 0.05
    # Rarer items are ranked right: the estimate falls with the true probability.
    assert np.corrcoef(np.log(got[p > 0.02]), np.log(p[p > 0.02]))[0, 1] > 0.9


def test_follows_a_distribution_shift():
    est = StreamingFrequencyEstimator(ITEMS, num_buckets=1 << 14, alpha=0.02)
    before, p_before = zipf_stream(1500)
    flipped = np.arange(ITEMS)[::-1].copy()  # the most popular item becomes the least, and back
    after, p_after = zipf_stream(1500, seed=1, permutation=flipped)
    for b in before:
        est.update(b)
    top, bottom = torch.tensor([0]), torch.tensor([ITEMS - 1])
    assert est.probability(top).item() == pytest.approx(p_before[0], rel=0.15)
    for b in after:
        est.update(b)
    assert est.probability(bottom).item() == pytest.approx(p_after[ITEMS - 1], rel=0.15)
    assert est.probability(top).item() < 0.25 * p_before[0]  # no longer frequent


def test_duplicates_within_a_step_count_once():
    a = StreamingFrequencyEstimator(ITEMS, num_buckets=64)
    b = StreamingFrequencyEstimator(ITEMS, num_buckets=64)
    a.update(torch.tensor([1, 2, 3]))  # the same first step (it also sets the initial gap)
    b.update(torch.tensor([1, 2, 3]))
    for _ in range(4):
        a.update(torch.tensor([1, 2, 3]))
        b.update(torch.tensor([1, 1, 2, 3, 3, 3]))
    assert torch.equal(a.gap, b.gap) and torch.equal(a.last_step, b.last_step)
    # Hand check for one hash: gap starts at 1000 / 3; item 1 is seen every step (gap 1 each time).
    alpha, g = 0.01, ITEMS / 3
    for t in range(1, 6):
        g = (1 - alpha) * g + alpha * (t - (t - 1 if t > 1 else 0))
    assert a.probability(torch.tensor([1])).item() == pytest.approx(1 / g, rel=1e-6)


def test_probabilities_are_clamped_to_one():
    est = StreamingFrequencyEstimator(10, num_buckets=16, alpha=1.0)
    for _ in range(3):
        est.update(torch.arange(10))  # with alpha = 1 the gap is exactly 1 step
    assert torch.all(est.probability(torch.arange(10)) == 1.0)


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    est = StreamingFrequencyEstimator(ITEMS, num_buckets=1 << 12)
    batches, _ = zipf_stream(200)
    for b in batches[:100]:
        est.update(b)
    torch.save({"state_dict": est.state_dict()}, tmp_path / "ckpt.pt")
    assert set(est.state_dict()) == {"hash_a", "hash_b", "last_step", "gap", "step"}
    restored = StreamingFrequencyEstimator(ITEMS, num_buckets=1 << 12, seed=99)  # other hashes until loaded
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["state_dict"])
    for b in batches[100:]:
        est.update(b)
        restored.update(b)
    assert int(restored.step) == 200
    assert torch.equal(est.gap, restored.gap) and torch.equal(est.last_step, restored.last_step)


def _rank_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    est = StreamingFrequencyEstimator(ITEMS, num_buckets=1 << 10)
    rng = np.random.default_rng(rank)
    for _ in range(20):  # different items, and different counts, on each rank
        est.update(torch.from_numpy(rng.integers(0, ITEMS, 30 + 7 * rank)))
    torch.save(est.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_hold_identical_state(tmp_path):
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    # ... and equal to one process fed both ranks' items per step.
    single = StreamingFrequencyEstimator(ITEMS, num_buckets=1 << 10)
    rngs = [np.random.default_rng(r) for r in range(2)]
    for _ in range(20):
        single.update(torch.cat([torch.from_numpy(rngs[r].integers(0, ITEMS, 30 + 7 * r)) for r in range(2)]))
    assert torch.equal(single.gap, s0["gap"])
