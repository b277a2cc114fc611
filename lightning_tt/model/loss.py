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
    logits = (query @ candidates.T).float().div_(temperature).sub_(log_q[None, :].float())
    rows, cols = accidental_hits(target_items, candidate_items)
    logits[rows, cols] = float("-inf")
    nll = F.cross_entropy(logits, torch.arange(batch, device=query.device), reduction="none")
    return (weight * nll).sum() / batch


def accidental_hits(target_items: torch.Tensor, candidate_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) where column j's item equals row i's target and j != i.

    Only rows whose target occurs more than once among the columns can have one, so the comparison is
    made among those (D rows x their columns) rather than over the whole [B, C] matrix.
    """
    batch = target_items.shape[0]
    values, inverse, counts = torch.unique(candidate_items, return_inverse=True, return_counts=True)
    column_count = counts[inverse]  # [C] how often each column's item occurs among the columns
    repeated = torch.nonzero(column_count[:batch] > 1).squeeze(1)  # rows whose target repeats
    if repeated.numel() == 0:
        empty = target_items.new_zeros(0)
        return empty, empty
    columns = torch.nonzero(column_count > 1).squeeze(1)
    equal = target_items[repeated][:, None] == candidate_items[columns][None, :]
    i, j = torch.nonzero(equal, as_tuple=True)
    rows, cols = repeated[i], columns[j]
    off_diagonal = rows != cols
    return rows[off_diagonal], cols[off_diagonal]
