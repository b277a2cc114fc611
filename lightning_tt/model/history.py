"""History encoders: the last N listens' per-step features -> one vector of the query.

Inputs (right-aligned windows, the most recent listen last): ``x`` [B, N, k] per-step track features
(item, artist, album embeddings, log length, audio; see towers.track_features), ``mask`` [B, N] bool
(True on real listens), ``ratio`` [B, N] float32 play weights in [0, 1] (0 on padding). ``P`` is the
number of learned positions (the configured history length); a window of N <= P listens uses the last
N of them, so position ``P - 1`` is always the most recent listen.

- ``mean``: ``h = sum_j m_j x_j / sum_j m_j``; with ``use_play_ratio`` the weights are ``m_j r_j``
  (a skipped listen counts little, a finished one fully; 0 when all weights are 0).
- ``recency``: ``h = sum_j a_j x_j`` with ``a = softmax_j(w_{P-N+j} + beta r_j)`` over the real listens:
  a learned logit per position (initialised to 0, i.e. the plain mean) and, with ``use_play_ratio``, a
  learned weight ``beta`` on the play ratio. 0 when the history is empty.
- ``attention``: SASRec-style. ``z_j = W [x_j ; r_j] + p_{P-N+j}``, then ``blocks`` pre-norm
  Transformer layers with causal attention over the real listens (a padded slot attends to itself
  only, so no row is empty), a final LayerNorm, and ``h = z_{N-1}`` [B, d_model] (0 when empty).
  ``sequence`` gives every position's ``z_j`` [B, N, d_model] (0 on padded slots): ``z_j`` sees listens
  ``0..j`` only, so a sequence-trained query tower reads a query at every position of one window.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from lightning_tt.errors import InputError

HistoryEncoder = Literal["mean", "recency", "attention"]
ENCODERS = get_args(HistoryEncoder)


def _positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """The last ``length`` rows of a [P, ...] position table."""
    if length > len(table):
        raise InputError(f"a history of {length} listens is longer than the model's {len(table)} learned positions "
                         f"(model.history); use at most {len(table)}")
    return table[len(table) - length :]


class HistoryPooling(nn.Module):
    """``mean`` and ``recency`` pooling: [B, N, k] -> [B, k]."""

    def __init__(self, recency: bool, positions: int, use_play_ratio: bool):
        super().__init__()
        self.use_play_ratio = use_play_ratio
        self.position_logit = nn.Parameter(torch.zeros(positions)) if recency else None
        self.ratio_weight = nn.Parameter(torch.zeros(())) if recency and use_play_ratio else None

    def weights(self, mask: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """[B, N] pooling weights, summing to 1 over real listens (all 0 when there are none)."""
        if self.position_logit is None:
            w = mask * ratio if self.use_play_ratio else mask.float()
            return w / w.sum(1, keepdim=True).clamp(min=1e-6)
        logit = _positions(self.position_logit, mask.shape[1]).expand_as(ratio)
        if self.ratio_weight is not None:
            logit = logit + self.ratio_weight * ratio
        return torch.softmax(logit.masked_fill(~mask, -1e4), dim=1) * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bn,bnk->bk", self.weights(mask, ratio).to(x.dtype), x)


class HistoryAttention(nn.Module):
    """``attention``: [B, N, k] -> [B, width]: causal self-attention, read at the last position."""

    def __init__(self, features: int, width: int, positions: int, blocks: int, heads: int, dropout: float,
                 use_play_ratio: bool):
        super().__init__()
        if width % heads:
            raise InputError(f"model.attention_heads {heads} must divide the attention width {width} "
                             "(model.embedding_dim)")
        self.use_play_ratio, self.heads = use_play_ratio, heads
        self.project = nn.Linear(features + use_play_ratio, width)
        self.position = nn.Parameter(torch.randn(positions, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, norm=nn.LayerNorm(width), enable_nested_tensor=False)

    def sequence(self, x: torch.Tensor, mask: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """[B, N, width]: ``z_j`` at every position (0 on padded slots); ``z_j`` depends on slots 0..j only."""
        b, n = mask.shape
        if self.use_play_ratio:
            x = torch.cat([x, ratio[..., None].to(x.dtype)], dim=-1)
        z = self.project(x) + _positions(self.position, n)
        # True = may not attend: later slots, and padded keys except a slot's own (no empty rows).
        later = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
        self_ = torch.eye(n, dtype=torch.bool, device=mask.device)
        blocked = later | (~mask[:, None, :] & ~self_)  # [B, N, N]
        blocked = blocked.repeat_interleave(self.heads, dim=0)  # [B * heads, N, N]
        z = self.blocks(z, mask=blocked, is_causal=False)
        return z * mask[..., None].to(z.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return self.sequence(x, mask, ratio)[:, -1]
