"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): an ID-only causal
transformer over the user's listens, the one neural sequential baseline.

Model (``B`` windows, ``L = max_len`` positions, ``d = dim``, ``I`` items incl. padding and unknown)::

    x_t = sqrt(d) E[s_t] + P[t]                 E [I, d] item table (row 0, padding, is zero; N(0, 1/d) at init),
                                                P [L, d] learned positions, s [B, L] right-aligned
    h   = LayerNorm(blocks x pre-norm TransformerEncoderLayer(dropout(x)))          [B, L, d]
    score_t(x) = <h_t, E[x]>                    tied embeddings: h_t is the query for s_{t+1}

Attention is causal and skips padding: position t attends to the real positions j <= t (a padding
position attends only to itself, so no row of the attention is empty). ``encoder_mask`` builds it.

Training windows match what ``rank`` receives: a query's history is the user's listens before it in
the stream (every listen, not only the Listen+ ones), so the inputs are each user's training-window
listens in time order, and the target at position t is the listen at t + 1 when it is a training
positive (a Listen+ listen; other targets are ignored). Each user's sequence is cut into windows of
``L + 1`` listens (L inputs, L targets), the last one ending at the user's last training listen and
the older ones before it, left-padded with 0; every target is in exactly one window.

Loss per target position (``next_item_loss``): full-catalogue softmax cross-entropy when the
catalogue has at most ``full_softmax_items`` items (default 100,000), else a sampled softmax with the
logQ correction (``sampled_softmax_loss``). Padding and unknown are never a class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_tt.baselines.models import Baseline
from lightning_tt.data.prepared import FIRST_ITEM, PAD, PreparedData


def full_softmax_loss(queries: torch.Tensor, targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Mean over P targets of ``-log softmax(queries @ table.T)[target]``: ``queries`` [P, d],
    ``targets`` [P] int64 rows of ``table`` [C, d] (the catalogue)."""
    return F.cross_entropy(queries @ table.T, targets)


def sampled_softmax_loss(queries: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sampled: torch.Tensor,
                         q: torch.Tensor) -> torch.Tensor:
    """Sampled softmax with the logQ correction, mean over P targets::

        loss = -s_t + log(exp(s_t) + sum_{j: x_j != t} exp(s_{x_j} - log(S q_{x_j})))

    ``s_x = <query, table[x]>``; ``queries`` [P, d]; ``targets`` [P] rows of ``table`` [C, d];
    ``sampled`` [S] rows drawn (with replacement, shared by the P targets) from ``q`` [C], the
    sampling distribution. ``sum_j exp(s_{x_j}) / (S q_{x_j})`` estimates the full softmax's sum over
    the other items without bias; a sample equal to the target (an accidental hit) is left out."""
    positive = (queries * table[targets]).sum(dim=1, keepdim=True)  # [P, 1]
    negative = queries @ table[sampled].T - torch.log(len(sampled) * q[sampled])  # [P, S]
    negative = negative.masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def encoder_mask(real: torch.Tensor, heads: int) -> torch.Tensor:
    """[B * heads, L, L] bool, True where attention is blocked: query t may see key j when ``j <= t``
    and j is real (``real`` [B, L] bool), and always itself (so a padding query has one key)."""
    length = real.shape[1]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)  # [L, L] j > t
    blocked = future[None] | ~real[:, None, :]
    blocked &= ~torch.eye(length, dtype=torch.bool)[None]
    return blocked.repeat_interleave(heads, dim=0)


class SASRecEncoder(nn.Module):
    """Item windows [B, L] (right-aligned, 0 = padding) -> h [B, L, d] (see the module docstring)."""

    def __init__(self, num_items: int, dim: int, blocks: int, heads: int, max_len: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.items = nn.Embedding(num_items, dim, padding_idx=PAD)
        with torch.no_grad():  # E ~ N(0, 1/d): inputs sqrt(d) E and scores <h, E_x> start at unit scale
            self.items.weight.normal_(0.0, dim ** -0.5)
            self.items.weight[PAD] = 0.0
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        length = sequence.shape[1]
        x = self.items(sequence) * math.sqrt(self.items.embedding_dim) + self.positions.weight[:length]
        return self.blocks(self.dropout(x), mask=encoder_mask(sequence != PAD, self.heads))

    def catalogue(self) -> torch.Tensor:
        """[I - FIRST_ITEM, d]: the rows of E that can be a target or be recommended."""
        return self.items.weight[FIRST_ITEM:]


def training_windows(data: PreparedData, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [W, max_len] int64: each user's training-window listens cut into windows of
    ``max_len + 1`` (the module docstring); a target is 0 (ignored) where its input is padding (a
    user's first listen is never a target) and where the listen is not a training positive. Windows
    without any target are dropped."""
    stream_ts = np.asarray(data["stream_ts"])
    listens = np.flatnonzero(stream_ts < data.boundaries["train_end"])  # stream order: by user, then time
    if len(listens) == 0:
        return np.zeros((0, max_len), dtype=np.int64), np.zeros((0, max_len), dtype=np.int64)
    user = np.searchsorted(np.asarray(data["user_offsets"]), listens, side="right") - 1
    items = np.asarray(data["stream_item"])[listens].astype(np.int64)
    positive = np.zeros(len(stream_ts), dtype=bool)
    positive[np.asarray(data["train_pos"], dtype=np.int64)] = True
    positive = positive[listens]
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    count = np.diff(np.r_[first, len(user)])
    windows = np.maximum(0, -(-(count - 1) // max_len))  # ceil((n - 1) / L) for n >= 2
    owner = np.repeat(np.arange(len(first)), windows)
    back = np.arange(len(owner)) - np.repeat(np.cumsum(windows) - windows, windows)  # 0 = the newest
    end = first[owner] + count[owner] - back * max_len  # one past the window's last listen
    index = end[:, None] + np.arange(-max_len - 1, 0)  # [W, L + 1]
    real = index >= first[owner][:, None]
    index = np.where(real, index, 0)
    sequence = np.where(real, items[index], PAD)
    targets = np.where(real[:, :-1] & positive[index[:, 1:]], sequence[:, 1:], PAD)  # a real input before it
    keep = (targets != PAD).any(axis=1)
    return sequence[keep, :-1], targets[keep]


class SASRec(Baseline):
    """SASRec (module docstring): ranks the catalogue by ``<h, E[x]>``, h = the encoder's output at the
    history's last known listen (the seed). Trained in fit() with Adam for ``epochs`` passes over the
    windows (at most ``max_steps`` steps), batches of ``batch_size`` windows, seeded by ``seed``.

    The defaults are a CPU budget: a full-softmax step costs about (batch_size * max_len) x catalogue x
    dim multiply-adds three times over, so ``max_steps`` = 40 (about 2.7 epochs of the development set,
    where lr 3e-3 beat 1e-3 on validation next Recall@100, 0.099 against 0.066) bounds a fit at about a
    minute on 2 cores (docs/baselines.md); more steps would help, at proportionally more time."""

    name = "SASRec"
    DENSE = True
    #: Full softmax up to this catalogue size; above it, sampled softmax with ``negatives`` samples.
    FULL_SOFTMAX_ITEMS = 100_000

    def __init__(self, dim: int = 64, blocks: int = 2, heads: int = 1, max_len: int = 50, dropout: float = 0.2,
                 lr: float = 3e-3, epochs: int = 5, max_steps: int = 40, batch_size: int = 128,
                 negatives: int = 1000, full_softmax_items: int = FULL_SOFTMAX_ITEMS, seed: int = 0,
                 exclude_seen: bool = False):
        super().__init__(exclude_seen)
        self.dim, self.blocks, self.heads, self.max_len, self.dropout = dim, blocks, heads, max_len, dropout
        self.lr, self.epochs, self.max_steps, self.batch_size = lr, epochs, max_steps, batch_size
        self.negatives, self.full_softmax_items, self.seed = negatives, full_softmax_items, seed

    @classmethod
    def grid(cls, data):
        """Dropout and the training budget (``max_steps`` 40 and 160: the default is undertrained on the
        development set); dim stays 64. Four fits."""
        return {"dropout": [0.2, 0.5], "max_steps": [40, 160], **super().grid(data)}

    def fit(self, data):
        super().fit(data)
        torch.manual_seed(self.seed)
        self.model = SASRecEncoder(self.num_items, self.dim, self.blocks, self.heads, self.max_len, self.dropout)
        inputs, targets = (torch.from_numpy(a) for a in training_windows(data, self.max_len))
        q = torch.from_numpy(self.popularity[FIRST_ITEM:] / max(self.popularity.sum(), 1.0)).float()
        sampled_loss = self.num_items - FIRST_ITEM > self.full_softmax_items
        optimiser = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.model.train()
        self.steps = 0
        for _ in range(self.epochs if len(inputs) else 0):
            for batch in torch.randperm(len(inputs)).split(self.batch_size):
                if self.steps >= self.max_steps:
                    break
                h = self.model(inputs[batch])
                kept = targets[batch] != PAD
                queries, target = h[kept], targets[batch][kept] - FIRST_ITEM
                table = self.model.catalogue()
                if sampled_loss:
                    loss = sampled_softmax_loss(queries, target, table, torch.multinomial(q, self.negatives, True), q)
                else:
                    loss = full_softmax_loss(queries, target, table)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                self.steps += 1
        self.model.eval()
        return self

    def rank(self, users, seeds, history, k):
        """The known listens of each history row (padding and unknown dropped, order kept), the last
        ``max_len`` of them right-aligned, are encoded and the last position's output scores every
        catalogue item; a row with no known listen gets the popularity ranking. ``recommend`` bounds
        Q * I per call (``DENSE``)."""
        history = np.asarray(history, dtype=np.int64)
        known = history >= FIRST_ITEM
        order = np.argsort(known, axis=1, kind="stable")  # unknown first, known listens in their order
        window = np.where(np.take_along_axis(known, order, 1), np.take_along_axis(history, order, 1), PAD)
        window = np.pad(window, ((0, 0), (max(0, self.max_len - window.shape[1]), 0)))[:, -self.max_len:]
        with torch.no_grad():
            h = self.model(torch.from_numpy(window))[:, -1]  # [Q, d]
            top = torch.topk(h @ self.model.catalogue().T, k, dim=1).indices.numpy() + FIRST_ITEM
        empty = ~known.any(axis=1)
        top[empty] = self.by_popularity[:k]
        return top
