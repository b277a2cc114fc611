"""Sampling-bias-corrected in-batch softmax (Yi et al., RecSys 2019), with optional mixed negatives.

For B queries ``u_i`` and C candidate columns ``v_j`` (the first B columns are the batch's own
positives, row i's positive is column i; columns B..C-1 are extra negatives sampled uniformly)::

    s(i, j) = <u_i, v_j> / tau - log q_j                  (the correction on every column, positive included)
    s(i, j) = -inf   if item(j) == target(i) and j != i   (accidental hits are masked)
    loss    = -(1 / B) * sum_i w_i * log softmax_j s(i, .)[i]

``q_j`` is the probability that item j appears among the columns of a step: the streaming frequency
estimate for in-batch columns, ``M / num_items`` for each of M items drawn uniformly from the catalogue.
Subtracting ``log q`` removes the popularity bias of in-batch negatives: a popular item appears as a
negative more often, so its logit is lowered by more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def corrected_softmax_loss(
    query: torch.Tensor,
    candidates: torch.Tensor,
    target_items: torch.Tensor,
    candidate_items: torch.Tensor,
    log_q: torch.Tensor,
    weight: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The loss above.

    Args:
        query: [B, d] query embeddings ``u``.
        candidates: [C, d] item embeddings ``v``, C >= B; column i < B is row i's positive.
        target_items: [B] item index of each row's positive.
        candidate_items: [C] item index of each column (``candidate_items[:B] == target_items``).
        log_q: [C] log sampling probability of each column (use zeros for no correction).
        weight: [B] example weights ``w``.
        temperature: ``tau`` > 0.

    Returns:
        scalar loss.
    """
    batch = query.shape[0]
    # 1/tau scales the [B, d] queries rather than the [B, C] logits (one fewer pass over B x C).
    logits = (query / temperature) @ candidates.T
    # Dense and of fixed shape, so no host sync (a data-dependent nonzero or unique would stall a GPU
    # and rule out CUDA graphs). Masked in the matmul's dtype (bf16 under autocast), before the cast.
    hits = target_items[:, None] == candidate_items[None, :]
    hits.diagonal().fill_(False)
    logits = logits.masked_fill_(hits, float("-inf")).float().sub_(log_q[None, :].float())
    nll = F.cross_entropy(logits, torch.arange(batch, device=query.device), reduction="none")
    return (weight * nll).sum() / batch
