"""Retrieval metrics of both evaluation protocols (docs/design.md §4), as torchmetrics metrics: their state
is summed (or max-reduced) across processes, so they are exact under DDP.

next-track (one case per Listen+ event)::

    Recall@k = (1 / #cases) * sum_cases [target in top k]

paper (one list per user, targets = the user's Listen+ items in the window, repeats kept, n = #targets)::

    Recall@k   = (1 / #users) * sum_u hits_u@k / n_u,  hits_u@k = #targets (with repeats) in the top k
    NDCG@k     = mean_u DCG_u@k / mean_u IDCG_u@k       (a ratio of means)
                 DCG_u@k  = sum_{r <= k} [item at rank r is a target] / log2(r + 1)   (binary gains)
                 IDCG_u@k = sum_{r <= min(n_u, k)} 1 / log2(r + 1)
    Coverage@k = #distinct items in any top k / #training items

Users without targets are left out of Recall and NDCG (their lists still count for Coverage).

Every value is named ``{stage}/{protocol}/{metric}@{k}`` (``metric_name``): ``val/next/recall@100``,
``test/paper/ndcg@10``. The model's brute-force (exact) values carry ``exact_`` before the metric
(``val/next/exact_recall@100``); without it a value comes from the Faiss index or from a baseline.
``RetrievalMetrics`` scores both protocols and names the values; the model, the index callback, the
baselines, the report, the demo and the commands all read and write values through it.

Per case (``keep_cases``, ``case_table``): every next-track case's hit@k and every paper user's
recall_u@k, DCG_u@k and IDCG_u@k, so that a value can be given an interval by resampling users
(lightning_tt.eval.intervals) and two systems compared on the same cases.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import torch
from torchmetrics import Metric

from lightning_tt.data.prepared import FIRST_ITEM

#: The two protocols: next-track cases and paper-protocol (day-ahead) lists.
PROTOCOLS = ("next", "paper")


def metric_name(stage: str, protocol: str, metric: str, k: int, exact: bool = False) -> str:
    """``{stage}/{protocol}/{exact_}{metric}@{k}``, e.g. ``metric_name("val", "next", "recall", 100, exact=True)``
    = ``val/next/exact_recall@100``."""
    return f"{stage}/{protocol}/{'exact_' if exact else ''}{metric}@{k}"


_NAME = re.compile(r"(?P<stage>\w+)/(?P<protocol>next|paper)/(?P<exact>exact_)?(?P<metric>[a-z_]+)@(?P<k>\d+)")


def parse_metric_name(name: str) -> tuple[str, str, str, int, bool] | None:
    """(stage, protocol, metric, k, exact) of a metric_name; None when ``name`` is not one."""
    found = _NAME.fullmatch(name)
    if found is None:
        return None
    return found["stage"], found["protocol"], found["metric"], int(found["k"]), found["exact"] is not None


def next_case_hits(top_items: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """[B, len(ks)] float64: 1 where case b's target is in its top ``ks[i]`` (top_items [B, K], K >= max k;
    targets [B]). The next-track Recall@k of a set of cases is the mean of column k."""
    found = (top_items == targets[:, None]).cumsum(dim=1) > 0  # [B, K]: target within the first r + 1
    return torch.stack([found[:, k - 1] for k in ks], dim=1).double()


def paper_chunks(top_items: torch.Tensor, target_items: torch.Tensor) -> list[slice]:
    """Row slices of a paper batch with at most ~16M (target, rank) pairs each (the [b, T, K] comparison)."""
    step = max(1, (1 << 24) // max(target_items.shape[1] * top_items.shape[1], 1))
    return [slice(start, start + step) for start in range(0, len(top_items), step)] or [slice(0, 0)]


def paper_case_values(top_items: torch.Tensor, target_items: torch.Tensor, target_count: torch.Tensor,
                      ks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(recall, dcg, idcg), each [B, len(ks)] float64, of paper lists: ``recall = hits_u@k / n_u``,
    ``DCG_u@k`` and ``IDCG_u@k`` of the module docstring (0 for a row without targets). top_items [B, K]
    ranked item indices; target_items [B, T] (0-padded, repeats kept); target_count [B]. Recall@k is the
    mean of recall over users with targets, NDCG@k = sum dcg / sum idcg over them."""
    width = top_items.shape[1]
    real = torch.arange(target_items.shape[1], device=target_items.device)[None, :] < target_count[:, None]
    # in_top[b, t, r]: target t of row b is the item at rank r.
    in_top = (target_items[:, :, None] == top_items[:, None, :]) & real[:, :, None]
    discount = 1.0 / torch.log2(torch.arange(2, width + 2, device=top_items.device, dtype=torch.float64))
    relevant = in_top.any(dim=1).double()  # [B, K] binary gain of each rank
    first_rank = torch.where(in_top.any(dim=2), in_top.double().argmax(dim=2), width)  # [B, T]
    has_targets = (target_count > 0).double()
    n = target_count.clamp(min=1).double()
    ideal = discount.cumsum(0)
    recall, dcg, idcg = [], [], []
    for k in ks:
        hits = ((first_rank < k) & real).sum(dim=1).double()  # targets with repeats found in the top k
        recall.append(hits / n)
        dcg.append((relevant[:, :k] * discount[:k]).sum(dim=1))
        idcg.append(ideal[(target_count.clamp(max=k) - 1).clamp(min=0)] * has_targets)
    return torch.stack(recall, dim=1), torch.stack(dcg, dim=1), torch.stack(idcg, dim=1)


class NextTrackRecall(Metric):
    """Recall@k for each k of ``ks`` over next-track cases."""

    full_state_update = False

    def __init__(self, ks: list[int], **kwargs):
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for one process's cases
        self.ks = sorted(ks)
        self.add_state("hits", torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("cases", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, top_items: torch.Tensor, targets: torch.Tensor, cases: list | None = None) -> None:
        """top_items [B, K] ranked item indices (K >= max k), targets [B]. ``cases``, when given, receives
        the per-case hits [B, len(ks)] (next_case_hits), computed once for both."""
        hits = next_case_hits(top_items, targets, self.ks)
        self.hits += hits.sum(dim=0)
        self.cases += len(targets)
        if cases is not None:
            cases.append(hits)

    def compute(self) -> dict[int, torch.Tensor]:
        return {k: self.hits[i] / self.cases.clamp(min=1) for i, k in enumerate(self.ks)}


class PaperMetrics(Metric):
    """Recall@k, NDCG@k and Coverage@k of the paper protocol for each k of ``ks``."""

    full_state_update = False

    def __init__(self, ks: list[int], num_items: int, first_item: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.first_item = sorted(ks), first_item
        self.num_train_items = num_items - first_item
        zeros = torch.zeros(len(self.ks), dtype=torch.float64)
        self.add_state("recall_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("dcg_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("idcg_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("users", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("recommended", torch.zeros(len(self.ks), num_items, dtype=torch.uint8), dist_reduce_fx="max")

    def update(self, top_items: torch.Tensor, target_items: torch.Tensor, target_count: torch.Tensor,
               cases: list | None = None) -> None:
        """top_items [B, K] ranked item indices; target_items [B, T] (0-padded, repeats kept);
        target_count [B] number of real targets per row. Rows go in chunks of at most ~16M
        (target, rank) pairs. ``cases``, when given, receives each chunk's per-case values
        [b, 3 len(ks)] (recall, dcg, idcg: paper_case_values), computed once for both."""
        for rows in paper_chunks(top_items, target_items):
            recall, dcg, idcg = paper_case_values(top_items[rows], target_items[rows], target_count[rows], self.ks)
            self._add(top_items[rows], target_count[rows], recall, dcg, idcg)
            if cases is not None:
                cases.append(torch.cat([recall, dcg, idcg], dim=1))

    def _add(self, top_items: torch.Tensor, target_count: torch.Tensor, recall: torch.Tensor, dcg: torch.Tensor,
             idcg: torch.Tensor) -> None:
        has_targets = target_count > 0
        self.recall_sum += recall[has_targets].sum(dim=0)
        self.dcg_sum += dcg[has_targets].sum(dim=0)
        self.idcg_sum += idcg[has_targets].sum(dim=0)
        for i, k in enumerate(self.ks):
            self.recommended[i, top_items[:, :k].reshape(-1)] = 1
        self.users += has_targets.sum()

    def compute(self) -> dict[str, dict[int, torch.Tensor]]:
        users = self.users.clamp(min=1)
        coverage = self.recommended[:, self.first_item :].double().sum(dim=1) / max(self.num_train_items, 1)
        return {
            "recall": {k: self.recall_sum[i] / users for i, k in enumerate(self.ks)},
            "ndcg": {k: self.dcg_sum[i] / self.idcg_sum[i].clamp(min=1e-12) for i, k in enumerate(self.ks)},
            "coverage": {k: coverage[i] for i, k in enumerate(self.ks)},
        }


class CaseValues(Metric):
    """The per-case values of one protocol, kept in update order (concatenated across processes):
    ``user`` [N] user indices and ``values`` [N, width]. Both are kept flat (1-d), so that a process
    without a case contributes an empty tensor to the gather."""

    full_state_update = False

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.add_state("user", [], dist_reduce_fx="cat")
        self.add_state("values", [], dist_reduce_fx="cat")

    def update(self, user: torch.Tensor, values: torch.Tensor) -> None:
        self.user.append(user.reshape(-1).double())  # user indices < 2^53 are exact as float64
        self.values.append(values.double().reshape(-1))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        def cat(state):
            if isinstance(state, list):  # not synchronised: this process's parts
                return torch.cat(state) if state else torch.zeros(0, dtype=torch.float64)
            return state

        return cat(self.user).long(), cat(self.values).double().reshape(-1, self.width)


class RetrievalMetrics(torch.nn.Module):
    """Both protocols' metrics of one stage (a module, so they follow the model's device), named by
    ``metric_name``: next-track ``recall``, paper ``recall``, ``ndcg`` and ``coverage``, at every k of
    ``ks``, with ``exact_`` for the model's brute-force lists. ``metric_options`` go to torchmetrics
    (``sync_on_compute=False`` when every case is in this process). With ``keep_cases`` the values of
    every case are kept too (``cases``; an update must then give the cases' ``user``)."""

    def __init__(self, stage: str, ks: list[int], num_items: int, exact: bool = False, keep_cases: bool = False,
                 **metric_options):
        super().__init__()
        self.stage, self.exact, self.ks, self.keep_cases = stage, exact, sorted(ks), keep_cases
        self.next = NextTrackRecall(ks, **metric_options)
        self.paper = PaperMetrics(ks, num_items, FIRST_ITEM, **metric_options)
        self.next_cases = CaseValues(len(self.ks), **metric_options)
        self.paper_cases = CaseValues(len(CASE_VALUES) * len(self.ks), **metric_options)

    def update(self, protocol: str, top_items: torch.Tensor, *targets: torch.Tensor,
               user: torch.Tensor | None = None) -> None:
        """top_items [B, K] ranked item indices; targets: ``target_item`` [B] (next) or ``target_items``
        [B, T], ``target_count`` [B] (paper); ``user`` [B] the cases' user indices (for ``keep_cases``)."""
        if self.keep_cases and user is None:
            raise ValueError("RetrievalMetrics(keep_cases=True).update needs the cases' user")
        parts: list | None = [] if self.keep_cases else None
        getattr(self, protocol).update(top_items, *targets, cases=parts)
        if self.keep_cases:
            getattr(self, f"{protocol}_cases").update(user, torch.cat(parts))

    def cases(self, protocols: tuple[str, ...] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{protocol: (user [N], values [N, M])} of the kept cases of ``protocols`` (default: the updated
        ones; under DDP every process must call it with the same protocols, and the order is the
        processes' order, not the window's). Next: M = len(ks) hits; paper: recall, then dcg, then idcg,
        len(ks) each."""
        out = {}
        for protocol in self.updated() if protocols is None else protocols:
            user, values = getattr(self, f"{protocol}_cases").compute()
            out[protocol] = (user.cpu().numpy(), values.cpu().numpy())
        return out

    def updated(self) -> tuple[str, ...]:
        """The protocols this process has updated since the last reset."""
        return tuple(p for p in PROTOCOLS if getattr(self, p).update_count > 0)

    def compute(self, protocols: tuple[str, ...] | None = None) -> dict[str, float]:
        """{metric_name: value} of ``protocols`` (default: the updated ones; under DDP every process must
        compute the same protocols, since compute synchronises)."""
        values = {}
        for protocol in self.updated() if protocols is None else protocols:
            found = getattr(self, protocol).compute()
            per_metric = {"recall": found} if protocol == "next" else found
            for metric, per_k in per_metric.items():
                for k, value in per_k.items():
                    values[metric_name(self.stage, protocol, metric, k, self.exact)] = float(value)
        return values

    def reset(self) -> None:
        for metric in (self.next, self.paper, self.next_cases, self.paper_cases):
            metric.reset()


def score_lists(stage: str, ks: list[int], num_items: int, next_track: tuple[torch.Tensor, ...] | None = None,
                paper: tuple[torch.Tensor, ...] | None = None, exact: bool = False) -> dict[str, float]:
    """{metric_name: value} of ranked lists held whole in this process (no synchronisation):
    ``next_track`` = (top_items [B, K], target_item [B]), ``paper`` = (top_items [U, K], target_items
    [U, T], target_count [U]); a protocol given as None is left out."""
    metrics = RetrievalMetrics(stage, ks, num_items, exact, sync_on_compute=False)
    for protocol, lists in (("next", next_track), ("paper", paper)):
        if lists is not None:
            metrics.update(protocol, *lists)
    return metrics.compute()


#: The per-case values a case table holds, per k: ``{name}@{k}``.
CASE_VALUES = ("recall", "dcg", "idcg")


def case_table(cases: dict[str, tuple[np.ndarray, np.ndarray]], ks: list[int], user_ids: np.ndarray,
               system: str, split: str) -> pa.Table:
    """One row per case of ``cases`` (RetrievalMetrics.cases, or the same from baselines): columns
    ``system``, ``split``, ``protocol`` ("next" or "paper"), ``case`` (its index within the protocol, in
    the split's case order), ``uid`` (the raw user id: ``user_ids[user]``), and per k ``recall@k`` (the
    next-track hit, or the paper user's hits_u@k / n_u), ``dcg@k`` and ``idcg@k`` (paper only; null for
    next-track cases). Recall@k = the mean of ``recall@k`` over a protocol's rows, paper NDCG@k = the sum of
    ``dcg@k`` / the sum of ``idcg@k``."""
    ks, parts = sorted(ks), []
    for protocol, (user, values) in cases.items():
        n = len(user)
        if n == 0:
            continue
        width = len(ks) * (len(CASE_VALUES) if protocol == "paper" else 1)
        if values.ndim != 2 or values.shape[1] != width:  # else a column would silently hold another k's values
            raise ValueError(f"case_table: {protocol} values are {values.shape[1:]} wide, but ks {ks} need "
                             f"{width} columns; pass the cut-offs the cases were kept with")
        columns = {"system": pa.array([system] * n, pa.string()), "split": pa.array([split] * n, pa.string()),
                   "protocol": pa.array([protocol] * n, pa.string()), "case": pa.array(np.arange(n), pa.int64()),
                   "uid": pa.array(np.asarray(user_ids)[user].astype(np.int64), pa.int64())}
        for j, name in enumerate(CASE_VALUES):
            for i, k in enumerate(ks):
                column = values[:, j * len(ks) + i] if protocol == "paper" or j == 0 else None
                columns[f"{name}@{k}"] = pa.array(column, pa.float64()) if column is not None else pa.nulls(
                    n, pa.float64())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts) if parts else pa.table({})


def write_case_table(output, table: pa.Table) -> None:
    """Write a case table to parquet through ``output`` (lightning_tt.outputs.Output: temporary file,
    then rename)."""
    import pyarrow.parquet as pq

    with output.writing() as tmp:
        pq.write_table(table, tmp)


def comparison_columns(ks: list[int]) -> list[tuple[str, str, int]]:
    """The (protocol, metric, k) columns of a comparison table: next-track Recall at every k, then the
    paper protocol's NDCG at the smallest k and Recall at 100 (the largest k when 100 is not one)."""
    ks = sorted(ks)
    return [("next", "recall", k) for k in ks] + [("paper", "ndcg", ks[0]),
                                                   ("paper", "recall", 100 if 100 in ks else ks[-1])]
