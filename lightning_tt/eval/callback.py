"""FaissRetrieval: at the end of every validation epoch (not the sanity check) and of ``test``, embed the
whole catalogue with the item tower, build a Faiss index (lightning_tt.eval.index), search the top K
for every evaluation query of the epoch (leaving out the items the model's exact lists left out,
``seen_items``), and log the ANN metrics:

    {stage}/next/recall@k, {stage}/paper/{recall,ndcg,coverage}@k         ANN results
    {stage}/index/build_seconds, {stage}/index/queries_per_second, {stage}/index/bytes,
    {stage}/index/nlist (0 without lists), {stage}/index/nprobe, {stage}/index/k_factor (the search
    parameters used: resolved or calibrated)
    {stage}/index/warm_start (1 when the build reused the trained quantizer), {stage}/index/drift (with
    ``warm_start``: the mean cosine of the items' vectors to those the quantizer was trained on)
    test/tradeoff/{nprobe|efSearch}_{value}/{queries_per_second,recall@K}   the speed/recall trade-off, on
        a seeded sample of at most TRADEOFF_QUERIES next-track queries (one search per value: over
        all 80k test queries of the 50m shape the sweep took longer than the epoch's exact metrics)

The queries come forward from the model: each validation and test step returns them with its targets
(TwoTowerModule._evaluate), and on_*_batch_end keeps them. The model logs the exact (brute-force)
values as ``.../exact_*@k``; lightning_tt.eval.report.RunReport divides the two. Under DDP the
queries of all processes are gathered (torchmetrics' gather_all_tensors), rank zero builds the index
and searches, and the values are broadcast back, so every process logs the same numbers.
"""

from __future__ import annotations

import faiss
import lightning as L
import numpy as np
import torch
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_tt.data.prepared import FIRST_ITEM
from lightning_tt.errors import InputError
from lightning_tt.eval.index import IndexConfig, build_index
from lightning_tt.eval.metrics import score_lists

#: What the callback keeps of each protocol's step outputs, in order.
FIELDS = {"next": ("queries", "target_item", "seen_items"),
          "paper": ("queries", "target_items", "target_count", "seen_items")}


class FaissRetrieval(L.Callback):
    """Builds the index and logs the ANN metrics at the end of every validation epoch and of ``test``
    (see the module docstring)."""

    #: Items whose vectors measure the drift from the last index that trained (``warm_start``).
    DRIFT_SAMPLE = 10_000
    #: Next-track queries (a seeded sample) the test trade-off sweep searches at each value.
    TRADEOFF_QUERIES = 10_000

    def __init__(self, index: IndexConfig = IndexConfig(), warm_start: float | None = None):  # noqa: B008
        """
        Args:
            index: the Faiss index (lightning_tt/eval/index.py); options left unset are chosen from the
                catalogue's size and dim. With ``index.target_overlap``, nprobe and k_factor are calibrated
                at each build on a sample of the epoch's next-track queries (paper queries when there are
                none), so the ANN metrics keep that share of the exact top 100 as the embeddings change
            warm_start: a cosine in [-1, 1]: rebuild from the quantizer and codebooks of the last index
                that trained them while the items' vectors keep at least this mean cosine to those it
                was trained on (measured on DRIFT_SAMPLE items); None trains at every build
        """
        if warm_start is not None and not -1 <= warm_start <= 1:
            raise InputError(f"retrieval.warm_start is a cosine in [-1, 1] (or null), got {warm_start}")
        self.config = index
        self.warm_start = warm_start
        self._trained: tuple | None = None  # (BuiltIndex that trained, its sample rows, their vectors)
        self._rows: dict[str, list[tuple[torch.Tensor, ...]]] = {"next": [], "paper": []}  # this epoch's, on the CPU

    def on_validation_epoch_start(self, trainer, module):
        self._rows = {"next": [], "paper": []}

    def on_test_epoch_start(self, trainer, module):
        self._rows = {"next": [], "paper": []}

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._keep(outputs)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep(outputs)

    def _keep(self, outputs: dict[str, torch.Tensor]) -> None:
        protocol = "next" if int(outputs["protocol"]) == 0 else "paper"
        self._rows[protocol].append(tuple(outputs[name].detach().cpu() for name in FIELDS[protocol]))

    def on_validation_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self._evaluate(trainer, module, "val")

    def on_test_epoch_end(self, trainer, module):
        self._evaluate(trainer, module, "test")

    def _evaluate(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        collected, self._rows = self._rows, {"next": [], "paper": []}
        # Every process takes part in each gathering, also one that saw no batch of a protocol.
        gathered = {protocol: _gather_rows(trainer, rows, FIELDS[protocol], module.retrieval_dim)
                    for protocol, rows in collected.items()}
        values = self._ann_values(trainer, module, stage, gathered) if trainer.is_global_zero else None
        # Every process gets the values and logs them (ModelCheckpoint may monitor one on every rank).
        values = trainer.strategy.broadcast(values, src=0)
        for name, value in values.items():  # equal everywhere: the mean over processes changes nothing
            module.log(name, value, add_dataloader_idx=False, sync_dist=True)

    def _ann_values(self, trainer: L.Trainer, module: L.LightningModule, stage: str,
                    gathered: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """Build the index and search every gathered query (rank zero only); the ANN values by name."""
        items = module.catalogue()[FIRST_ITEM:].float().cpu().numpy()  # the exact metrics' embeddings
        asked = gathered["next"] or gathered["paper"]
        built, drift = self._build(items, asked[0].numpy() if asked else None)
        ks = list(module.hparams.recall_k)
        qps = []
        lists = {}
        if gathered["next"]:
            queries, targets, seen = gathered["next"]
            top, speed = self._search(built, queries, max(ks), seen)
            qps.append(speed)
            lists["next_track"] = (top, targets)
        if gathered["paper"]:
            queries, target_items, target_count, seen = gathered["paper"]
            top, speed = self._search(built, queries, max(ks), seen)
            qps.append(speed)
            lists["paper"] = (top, target_items, target_count)
        # The cases of all processes are here already: no synchronisation on compute.
        values = score_lists(stage, ks, module.hparams.num_items, **lists)
        values[f"{stage}/index/build_seconds"] = built.build_seconds
        values[f"{stage}/index/queries_per_second"] = float(np.mean(qps)) if qps else 0.0
        values[f"{stage}/index/bytes"] = float(built.bytes)
        values[f"{stage}/index/warm_start"] = float(built.warm)
        nlist = faiss.extract_index_ivf(built.index).nlist if "IVF" in built.factory else 0
        values[f"{stage}/index/nlist"] = float(nlist)
        values[f"{stage}/index/nprobe"] = float(built.config.nprobe)
        values[f"{stage}/index/k_factor"] = float(built.config.k_factor)
        if drift is not None:
            values[f"{stage}/index/drift"] = drift
        if stage == "test" and gathered["next"] and ("IVF" in built.factory or built.factory.startswith("HNSW")):
            parameter, points = self._tradeoff(built, *gathered["next"], max(ks))
            for value, speed, recall in points:
                values[f"test/tradeoff/{parameter}_{value}/queries_per_second"] = speed
                values[f"test/tradeoff/{parameter}_{value}/recall@{max(ks)}"] = recall
        return values

    def _build(self, items: np.ndarray, queries: np.ndarray | None = None):
        """(the index over ``items`` (calibrated on ``queries`` with target_overlap), the mean cosine to
        the vectors its quantizer was trained on or None): warm from the last trained index while that
        cosine is >= warm_start."""
        if self.warm_start is None:
            return build_index(items, self.config, queries=queries), None
        drift = None
        if self._trained is not None:
            _, rows, vectors = self._trained
            if vectors.shape[1] == items.shape[1] and len(items) > rows.max():
                drift = _mean_cosine(items[rows], vectors)
        warm = self._trained[0] if drift is not None and drift >= self.warm_start else None
        built = build_index(items, self.config, warm_from=warm, queries=queries)
        if not built.warm and built.trained is not None:  # trained now: later builds measure drift from here
            rows = np.random.default_rng(0).choice(len(items), min(len(items), self.DRIFT_SAMPLE), replace=False)
            self._trained = (built, rows, items[rows].copy())
        return built, drift

    def _tradeoff(self, built, queries: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor,
                  k: int) -> tuple[str, list[tuple]]:
        """(parameter, [(value, queries/s, Recall@k)]): the speed/recall trade-off of the search
        parameter, ``nprobe`` (IVF: 1, 2, 4, ... up to the configured value) or ``efSearch`` (HNSW: 16,
        32, ... up to it), on a seeded sample of at most TRADEOFF_QUERIES of the queries; the configured
        value is set again afterwards."""
        if len(queries) > self.TRADEOFF_QUERIES:
            rows = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(queries), self.TRADEOFF_QUERIES,
                                                                            replace=False)))
            queries, targets, seen = queries[rows], targets[rows], seen[rows]
        params, points = faiss.ParameterSpace(), []
        if built.factory.startswith("HNSW"):
            name, configured, first = "efSearch", built.config.ef_search, 16
        else:
            name, configured, first = "nprobe", built.config.nprobe, 1
        tried = sorted({first * 2**i for i in range(12) if first * 2**i < configured} | {configured})
        for value in tried:
            params.set_index_parameter(built.index, name, value)
            top, qps = self._search(built, queries, k, seen)
            points.append((value, qps, float((top == targets[:, None]).any(dim=1).double().mean())))
        params.set_index_parameter(built.index, name, configured)
        return name, points

    @staticmethod
    def _search(built, queries: torch.Tensor, k: int, seen: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Top-k item indices [Q, k] (index rows shifted past padding and unknown; misses -> 0),
        leaving out each query's ``seen`` [Q, S] item indices (0 = padding)."""
        seen_rows = seen.numpy() - FIRST_ITEM if seen.any() else None  # padding -> negative: ignored
        _, rows, qps = built.search(queries.numpy(), k, seen_rows)
        return torch.from_numpy(np.where(rows >= 0, rows + FIRST_ITEM, 0)), qps


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between matching rows of ``a`` and ``b`` [n, d]."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / np.maximum(norms, 1e-12)))


def _cat_padded(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Concatenate along rows, zero-padding 2-d parts to the widest (paper targets differ per batch)."""
    if parts[0].dim() == 2 and parts[0].dtype != torch.float32:
        width = max(p.shape[1] for p in parts)
        parts = tuple(torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts)
    return torch.cat(parts)


def _gather_rows(trainer: L.Trainer, rows: list[tuple[torch.Tensor, ...]], fields: tuple[str, ...], dim: int
                 ) -> list[torch.Tensor]:
    """This epoch's step outputs of one protocol (``rows``: a tuple of ``fields`` per batch), each field
    concatenated over batches and then over all processes in rank order, on the CPU; [] when no process
    has a row. A process without rows contributes empty tensors ([0, dim] queries, [0, 1] others)."""
    mine = [_cat_padded(parts) for parts in zip(*rows)]
    if trainer.world_size == 1:
        return mine
    device = trainer.strategy.root_device
    if not mine:
        def empty(name: str) -> torch.Tensor:
            if name == "queries":
                return torch.zeros(0, dim)
            return torch.zeros((0, 1) if name in ("seen_items", "target_items") else (0,), dtype=torch.int64)

        mine = [empty(name) for name in fields]
    # gather_all_tensors gives each process's part at its own shape: widths are padded again here.
    gathered = [_cat_padded(tuple(part.cpu() for part in gather_all_tensors(t.to(device)))) for t in mine]
    return gathered if len(gathered[0]) else []
