"""Streaming frequency estimator (Yi et al., RecSys 2019, Algorithms 2 and 3).

``m`` hash functions map an item into ``H`` buckets each. Per hash ``i`` and bucket ``b`` the module
keeps ``A[i, b]``, the last step at which an item of the bucket was seen, and ``B[i, b]``, a moving
average of the number of steps between sightings. At step ``t``, for every *distinct* bucket hit by the
step's items (deduplicated: a second hit at the same ``t`` would pull ``B`` towards 0)::

    B[i, b] <- (1 - alpha) * B[i, b] + alpha * (t - A[i, b])
    A[i, b] <- t

and the estimated probability that item ``y`` appears in a step is ``p(y) = 1 / max_i B[i, h_i(y)]``,
clamped to (0, 1] (the max over hashes undoes collisions, which only shorten gaps). ``B`` starts at
``num_items / items in the first step`` (every item equally likely) on the first update.

``h_i(y) = ((a_i * y + b_i) mod P) mod H`` with ``P = 2^31 - 1``; ``a``, ``b``, ``A`` (int64), ``B``
(float32) and ``t`` are persistent buffers (12 bytes per bucket and hash in a checkpoint), so
checkpoints carry the estimator and resuming continues it. Under several processes the step's items
are all-gathered first, so every rank applies the same update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

PRIME = 2_147_483_647


class StreamingFrequencyEstimator(nn.Module):
    """Per-step appearance probability of items, learned from the stream of training batches."""

    def __init__(self, num_items: int, num_hashes: int = 2, num_buckets: int = 1 << 20, alpha: float = 0.01,
                 seed: int = 0):
        super().__init__()
        if num_hashes < 1 or num_buckets < 1 or not 0 < alpha <= 1:
            raise ValueError(f"need num_hashes >= 1, num_buckets >= 1, 0 < alpha <= 1; got "
                             f"{num_hashes}, {num_buckets}, {alpha}")
        self.num_items, self.num_buckets, self.alpha = num_items, num_buckets, alpha
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("hash_a", torch.randint(1, PRIME, (num_hashes, 1), generator=generator))
        self.register_buffer("hash_b", torch.randint(0, PRIME, (num_hashes, 1), generator=generator))
        self.register_buffer("last_step", torch.zeros(num_hashes, num_buckets, dtype=torch.int64))
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets, dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"num_hashes={self.gap.shape[0]}, num_buckets={self.num_buckets}, alpha={self.alpha}, "
                f"step={int(self.step)}")

    def buckets(self, items: torch.Tensor) -> torch.Tensor:
        """[m, n] bucket of each of ``items`` [n] under each hash."""
        return (self.hash_a * items.long()[None, :] + self.hash_b) % PRIME % self.num_buckets

    @torch.no_grad()
    def update(self, items: torch.Tensor) -> None:
        """One step: the items [n] seen in this training batch (all ranks' items when distributed).

        Every new value is computed from the state before the step, so a bucket hit several times in
        one step is written several times with the same value: it moves once (the deduplication the
        algorithm needs) without a data-dependent ``unique`` (which would stall a GPU).
        """
        items = _gather(items.long())
        self.step += 1
        t = self.step
        # First step: every item equally likely, gap = num_items / items per step (no host sync).
        first = torch.full_like(self.gap, max(self.num_items / max(items.numel(), 1), 1.0))
        self.gap.copy_(torch.where(t == 1, first, self.gap))
        for i, buckets in enumerate(self.buckets(items)):
            steps_since = (t - self.last_step[i, buckets]).float()
            self.gap[i, buckets] = (1 - self.alpha) * self.gap[i, buckets] + self.alpha * steps_since
            self.last_step[i, buckets] = t

    @torch.no_grad()
    def probability(self, items: torch.Tensor) -> torch.Tensor:
        """[n] estimated per-step probability of ``items`` [n], in (0, 1] (float32)."""
        buckets = self.buckets(items)
        gaps = torch.gather(self.gap, 1, buckets).amax(dim=0)
        return 1.0 / gaps.clamp(min=1.0)


def _gather(items: torch.Tensor) -> torch.Tensor:
    """All ranks' items concatenated in rank order (sizes may differ between ranks: torchmetrics'
    gather_all_tensors pads and cuts back); ``items`` itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    return torch.cat(gather_all_tensors(items))
