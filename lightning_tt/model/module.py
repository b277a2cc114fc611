"""TwoTowerModule: both towers, the corrected in-batch softmax and the frequency estimator.

training_step:  u = query_tower(batch) [B, o], v = item_tower(target_item) [B, o] (+ M uniform
                negatives), log q from the estimator (updated with the batch first), loss.py's loss.
                With ``query_tower="sequence"`` u is [Q, o], a query at each kept slot of the last P of every
                history window, and v the next positive listen of each (sequence_queries), Q <= B * P.
validation/test: exact metrics of both protocols by brute force: the whole catalogue is embedded once
                per epoch (retrieval_items, [V, o']), every query (retrieval_query, [B, o']) scores all
                items (padding and unknown excluded, and the user's training positives when the batch
                carries ``seen_items``) and its top k goes to lightning_tt.eval.metrics. Dataloader 0
                holds next-track cases, dataloader 1 paper-protocol lists. Logged as
                ``{stage}/next/exact_recall@{k}`` and ``{stage}/paper/exact_{recall,ndcg,coverage}@{k}``.
                Each step returns its queries, lists and targets (_evaluate), which the callbacks take in
                on_*_batch_end: FaissRetrieval searches the queries with an index, RunReport writes
                metrics.json and the figures. The module writes no files.
predict_step:   top-k item indices and scores per case.

Retrieval ranks items by ``s(u, i) = u . v_i + beta * tau * (log q(i) - mean_j log q(j))``, the same
order as ``(u . v_i) / tau + beta * log q(i)``. ``beta = popularity_weight``; a query without a seed
track (the paper protocol's, with paper_seed false) takes ``seedless_popularity_weight`` when it is set.
``q`` is the popularity prior (``popularity_prior``): the frequency estimator's probability
(``estimator``), or ``q(i) ~ c_i + 1`` with ``c_i`` the item's training positives, each weighted
``0.5 ** (age / h)`` (``counts``, lightning_tt.data.popularity; ``h = popularity_half_life`` validation
windows, none: plain counts; the + 1 is one positive at the training cut, so an unseen item is not at
-inf). The term is one more column of both vectors (retrieval_items, retrieval_query), so exact search,
the Faiss index and serving all rank by it. Why each option exists and how the shipped values were
chosen: docs/design.md §10 and docs/ablations.md.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import lightning as L
import torch

from lightning_tt.data.popularity import log_prior
from lightning_tt.data.prepared import FIRST_ITEM, PreparedData
from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import PROTOCOLS, RetrievalMetrics, metric_name
from lightning_tt.model.estimator import StreamingFrequencyEstimator
from lightning_tt.model.history import HistoryEncoder
from lightning_tt.model.loss import corrected_softmax_loss
from lightning_tt.model.towers import Embeddings, ItemTable, ItemTower, QueryTower
from lightning_tt.provenance import check_same_data

QueryTraining = Literal["example", "sequence"]
PopularityPrior = Literal["estimator", "counts"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]  # torch.compile's
COMPILE_MODES = get_args(CompileMode)


class TwoTowerModule(L.LightningModule):
    """The two-tower retrieval model: towers, corrected loss, frequency estimator and exact evaluation.

    Every argument is a primitive, so configs and sweeps can set it and checkpoints reload with
    ``weights_only=True`` (see the module docstring)."""

    #: Items embedded per forward when the whole catalogue is embedded (retrieval_items).
    ITEM_CHUNK = 65536
    #: (query, item) scores held at once by the exact search (_top_k): 256 MiB of float32.
    SCORE_ENTRIES = 1 << 26

    def __init__(
        self,
        data_dir: str | None = None,
        data_fingerprint: str | None = None,
        num_users: int = 2,
        num_items: int = 3,
        num_artists: int = 2,
        num_albums: int = 2,
        audio_dim: int = 128,
        embedding_dim: int = 64,
        hidden_dims: list[int] = [256],  # noqa: B006 (jsonargparse needs the literal default)
        output_dim: int = 64,
        dropout: float = 0.0,
        temperature: float = 0.05,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        share_tables: bool = True,
        use_user: bool = True,
        use_history: bool = True,
        use_seed: bool = True,
        use_age: bool = True,
        use_item_id: bool = True,
        use_artist: bool = True,
        use_album: bool = True,
        use_length: bool = True,
        use_audio: bool = True,
        logq_correction: bool = True,
        estimator_hashes: int = 2,
        estimator_buckets: int = 1 << 20,
        estimator_alpha: float = 0.01,
        mixed_negatives: int = 0,
        recall_k: list[int] = [10, 50, 100, 200],  # noqa: B006
        compile: bool = False,
        compile_mode: CompileMode = "default",
        sparse_embeddings: bool = False,
        history_encoder: HistoryEncoder = "mean",
        history: int = 50,
        attention_blocks: int = 1,
        attention_heads: int = 2,
        use_play_ratio: bool = False,
        feedback: int = 0,
        seed_dropout: float = 0.0,
        paper_seed: bool = True,
        use_organic: bool = False,
        popularity_weight: float = 0.0,
        seedless_popularity_weight: float | None = None,
        popularity_prior: PopularityPrior = "estimator",
        popularity_half_life: float | None = None,
        exclude_seen: bool = False,
        query_tower: QueryTraining = "example",
        sequence_positions: int = 8,
    ):
        """
        Args:
            data_dir: the prepared directory (linked from data.data_dir); the item side tables are read from it
            data_fingerprint: the prepared data's fingerprint (linked); a checkpoint of other data is refused
            num_users: users in the vocabulary, padding included (linked from the data)
            num_items: items in the vocabulary, padding and unknown included (linked from the data)
            num_artists: artists in the vocabulary (linked from the data)
            num_albums: albums in the vocabulary (linked from the data)
            audio_dim: width D of the audio embeddings (linked from the data)
            embedding_dim: width d of the user, item, artist and album embeddings
            hidden_dims: widths of both towers' hidden MLP layers
            output_dim: width o of both towers' L2-normalised outputs
            dropout: dropout after each hidden layer (and in attention)
            temperature: tau of the logits <u, v> / tau
            learning_rate: Adam's learning rate
            weight_decay: Adam's weight decay (0 with sparse_embeddings)
            share_tables: the query tower uses the item tower's item, artist and album tables
            use_user: the query sees the user's embedding
            use_history: the query sees the history window
            use_seed: the query sees the seed track (the previous listen)
            use_age: the query sees the example's age (0 at serving)
            use_item_id: tracks are described by their item embedding
            use_artist: tracks are described by their artist embedding
            use_album: tracks are described by their album embedding
            use_length: tracks are described by their log track length
            use_audio: tracks are described by their audio embedding (a learned vector where one is missing)
            logq_correction: subtract log q of the streaming estimator from each logit (Yi et al. 2019)
            estimator_hashes: hash functions m of the frequency estimator
            estimator_buckets: buckets H per hash function
            estimator_alpha: the estimator's moving-average rate alpha in (0, 1]
            mixed_negatives: M catalogue items drawn uniformly per batch as extra negative columns
            recall_k: the cut-offs k of every Recall@k, NDCG@k and Coverage@k
            compile: run the towers and the loss through torch.compile
            compile_mode: torch.compile's mode (reduce-overhead also captures CUDA graphs)
            sparse_embeddings: sparse gradients and SparseAdam for the id tables, Adam for the rest
            history_encoder: how the history window is pooled: mean, recency (learned position weights) or
                attention (causal Transformer layers)
            history: history window length N (linked from data.history)
            attention_blocks: Transformer layers of the attention encoder
            attention_heads: heads per layer of the attention encoder
            use_play_ratio: feed each history listen's play ratio in (an input of attention, a pooling weight
                otherwise)
            feedback: K, the user's recent likes and dislikes the query sees as two bags (linked from
                data.feedback; 0 = none)
            seed_dropout: share of training examples whose seed track is hidden
            paper_seed: ask the paper protocol's queries with the seed track (false: without it)
            use_organic: the query sees whether the seed listen was the user's own choice (1 at serving)
            popularity_weight: beta, how much of log q retrieval puts back (0: rank by u.v; 1: by the
                logits before the logQ correction)
            seedless_popularity_weight: beta for queries without a seed track (the paper protocol's with
                paper_seed false: the next day's list rather than the next track); None: popularity_weight
            popularity_prior: what retrieval's popularity term reads: ``estimator`` (the streaming frequency
                estimator's q) or ``counts`` (the training positives' counts, decayed by popularity_half_life)
            popularity_half_life: the counts prior's half-life, in validation windows of the prepared data
                (its test window when it has none), so one value serves data of any time scale; None: no decay
            exclude_seen: leave what the user listened to before out of the lists (linked from data.exclude_seen)
            query_tower: how the query tower is trained: ``example`` (one query per training example) or
                ``sequence`` (a query at each of the last ``sequence_positions`` slots of every example's
                history window, each predicting the next listen; needs history_encoder attention)
            sequence_positions: P, the window slots that give a training query with query_tower sequence
        """
        super().__init__()
        self.save_hyperparameters()
        if not temperature > 0:
            raise InputError(f"model.temperature must be > 0, got {temperature}")
        if num_items <= FIRST_ITEM:
            raise InputError(f"model.num_items must be > {FIRST_ITEM} (padding and unknown come first), "
                             f"got {num_items}")
        if compile_mode not in COMPILE_MODES:
            raise InputError(f"model.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        if sparse_embeddings and weight_decay > 0:  # (fp16's GradScaler is refused in on_fit_start)
            raise InputError("model.weight_decay must be 0 with model.sparse_embeddings "
                             "(SparseAdam has no weight decay)")
        if not recall_k or min(recall_k) < 1:
            raise InputError(f"model.recall_k must be cut-offs >= 1, got {recall_k}")
        for name, value in (("embedding_dim", embedding_dim), ("output_dim", output_dim),
                            ("estimator_hashes", estimator_hashes), ("estimator_buckets", estimator_buckets)):
            if value < 1:
                raise InputError(f"model.{name} must be >= 1, got {value}")
        if not 0 <= seed_dropout <= 1:
            raise InputError(f"model.seed_dropout must be in [0, 1], got {seed_dropout}")
        for name, value in (("history", history), ("attention_blocks", attention_blocks),
                            ("attention_heads", attention_heads)):
            if value < 1:
                raise InputError(f"model.{name} must be >= 1, got {value}")
        if mixed_negatives < 0 or not 0 <= dropout < 1 or not learning_rate > 0 or not 0 < estimator_alpha <= 1:
            raise InputError(f"need model.mixed_negatives >= 0, 0 <= model.dropout < 1, model.learning_rate > 0 and "
                             f"0 < model.estimator_alpha <= 1; got {mixed_negatives}, {dropout}, {learning_rate}, "
                             f"{estimator_alpha}")
        if popularity_prior not in get_args(PopularityPrior):
            raise InputError(f"model.popularity_prior must be one of {', '.join(get_args(PopularityPrior))}, "
                             f"got {popularity_prior!r}")
        if popularity_half_life is not None and not popularity_half_life > 0:
            raise InputError(f"model.popularity_half_life must be > 0 (validation windows) or null, "
                             f"got {popularity_half_life}")
        if query_tower not in ("example", "sequence"):
            raise InputError(f"model.query_tower must be example or sequence, got {query_tower!r}")
        if query_tower == "sequence" and (history_encoder != "attention" or not use_history or feedback
                                          or use_organic or sequence_positions < 1):
            raise InputError("model.query_tower sequence needs model.history_encoder attention, model.use_history "
                             "true, data.feedback 0, model.use_organic false and model.sequence_positions >= 1")
        self.automatic_optimization = not sparse_embeddings
        self.table = ItemTable(num_items, audio_dim, data_dir)
        # A listen is a positive (a training target) at played_ratio_pct >= min_played_pct: as a play weight,
        # min(pct, 100) / 100 >= this (sequence training's targets inside the history window).
        data = PreparedData(data_dir) if data_dir else None
        self._positive_weight = 0.5
        if data is not None:
            self._positive_weight = min(data.meta["config"]["min_played_pct"], 100) / 100
        item_ids = Embeddings(num_items, num_artists, num_albums, embedding_dim, sparse_embeddings)
        query_ids = item_ids if share_tables else Embeddings(num_items, num_artists, num_albums, embedding_dim,
                                                               sparse_embeddings)
        features = dict(use_item_id=use_item_id, use_artist=use_artist, use_album=use_album, use_length=use_length,
                        use_audio=use_audio)
        self.item_tower = ItemTower(self.table, item_ids, output_dim, hidden_dims, dropout, **features)
        self.query_tower = QueryTower(self.table, query_ids, num_users, output_dim, hidden_dims, dropout,
                                      use_user, use_history, use_seed, use_age, **features,
                                      history_encoder=history_encoder, history=history,
                                      attention_blocks=attention_blocks, attention_heads=attention_heads,
                                      use_play_ratio=use_play_ratio, feedback=feedback, use_organic=use_organic)
        self.estimator = StreamingFrequencyEstimator(num_items, estimator_hashes, estimator_buckets, estimator_alpha)
        if popularity_prior == "counts":  # [V] log(c_i + 1); like the item table, reloaded from data_dir
            prior = torch.zeros(num_items)  # no data attached (a bare model), or no popularity term: every item alike
            if data is not None and self._column_weight:
                prior = torch.from_numpy(log_prior(data, popularity_half_life))
            self.register_buffer("log_popularity", prior, persistent=False)
        # Every case's values are kept, per stage, for intervals: ``cases[stage]`` after each evaluation
        # epoch (RetrievalMetrics.cases); RunReport writes the test window's, sweeps the validation's.
        self.metrics = torch.nn.ModuleDict({stage: RetrievalMetrics(stage, recall_k, num_items, exact=True,
                                                                    keep_cases=True)
                                            for stage in ("val", "test")})
        self.cases: dict[str, dict] = {}
        self.loss_function = corrected_softmax_loss  # compiled in configure_model with ``compile``
        self._catalogue: torch.Tensor | None = None
        # This epoch's [sum of loss * batch size, examples], kept on the device.
        self.register_buffer("_train_loss", torch.zeros(2), persistent=False)
        # DDP would broadcast every buffer from rank zero before each forward: the item table (constant, and
        # [V, D] audio wide), the estimator (identical on every rank: it gathers all ranks' items)
        # and the loss sum above (per rank). None needs it.
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]

    def configure_model(self) -> None:
        """With ``compile``, both towers and the loss go through torch.compile (fewer, fused kernels;
        meant for GPUs, where the step is otherwise bound by kernel launches; the loss's passes over the
        [B, C] logits fuse into its softmax). Parameter names do not change."""
        if not self.hparams.compile:
            return
        mode = self.hparams.compile_mode
        self.loss_function = torch.compile(corrected_softmax_loss, mode=mode)
        compiled = ((self.query_tower.mlp, self.item_tower.mlp) if self.hparams.sparse_embeddings
                    else (self.query_tower, self.item_tower))
        for module in compiled:
            module.compile(mode=mode)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Retrieval queries [B, o'] (retrieval_query)."""
        return self.retrieval_query(batch)

    @property
    def _column_weight(self) -> float:
        """beta_c, the weight the items' popularity column carries: popularity_weight, or
        seedless_popularity_weight when only that one is set; 0: no column."""
        hp = self.hparams
        return hp.popularity_weight or (hp.seedless_popularity_weight or 0.0)

    @property
    def retrieval_dim(self) -> int:
        """o' = output_dim, and one more with a popularity weight (the log q column)."""
        return self.hparams.output_dim + (self._column_weight != 0)

    def retrieval_query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, o'] the query tower's [B, o], with the column beta_q / beta_c when a popularity weight is
        set: beta_q = popularity_weight, or seedless_popularity_weight for a query without a seed track
        (``seed_item`` = padding: the paper protocol's queries with paper_seed false), so that the score's
        popularity term is beta_q * tau * (log q(i) - mean log q) (retrieval_items)."""
        hp, column = self.hparams, self._column_weight
        query = self.query_tower(batch)
        if column == 0:
            return query
        weight = query.new_full((len(query), 1), hp.popularity_weight / column)
        if hp.seedless_popularity_weight is not None:
            seedless = (batch["seed_item"] == 0)[:, None]
            weight = weight.masked_fill(seedless, hp.seedless_popularity_weight / column)
        return torch.cat([query, weight], dim=1)

    def sequence_queries(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequence training's (queries [Q, o], targets [Q], weights [Q]) of a next-track batch.

        The last P slots j = N - P .. N - 1 of every history window each give a query
        (QueryTower.positions: it sees slots 0..j only). Slot N - 1 (the seed) predicts the example's
        target with its weight; an earlier slot j predicts the listen at slot j + 1 with weight
        play_weight(j + 1), when both slots are real and that listen is a positive (play weight >= the
        prepared data's min_played_pct / 100). Q counts the kept (slot, window) pairs; all of them are
        listens before the example's target, in the training window."""
        hp = self.hparams
        items, mask, ratio = batch["history_item"], batch["history_mask"], batch["history_ratio"]
        n = items.shape[1]
        p = min(hp.sequence_positions, n)
        hidden = None
        if hp.seed_dropout > 0:
            hidden = torch.rand(len(items), p, device=items.device) < hp.seed_dropout
        queries = self.query_tower.positions(batch, p, hidden)  # [B, P, o]
        # next[:, i] is what slot n - p + i predicts: the following history slot, or the target for the last.
        following = torch.cat([items[:, n - p + 1:], batch["target_item"][:, None]], dim=1)  # [B, P]
        weight = torch.cat([ratio[:, n - p + 1:], batch["weight"][:, None]], dim=1)
        keep = torch.cat([mask[:, n - p:n - 1] & mask[:, n - p + 1:] & (ratio[:, n - p + 1:] >= self._positive_weight),
                          torch.ones_like(mask[:, :1])], dim=1)
        return queries[keep], following[keep], weight[keep]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if hp.query_tower == "sequence":
            query, targets, weight = self.sequence_queries(batch)
        else:
            targets, weight = batch["target_item"], batch["weight"]
            if hp.seed_dropout > 0:  # on the device: a draw per example, no host read
                hidden = torch.rand(targets.shape, device=targets.device) < hp.seed_dropout
                batch = {**batch, "seed_item": batch["seed_item"].masked_fill(hidden, 0),
                         "seed_organic": batch["seed_organic"].masked_fill(hidden, 0)}
            query = self.query_tower(batch)
        candidates, columns = self.item_tower(targets), targets
        if hp.mixed_negatives > 0:
            negatives = torch.randint(FIRST_ITEM, hp.num_items, (hp.mixed_negatives,), device=targets.device)
            candidates = torch.cat([candidates, self.item_tower(negatives)])
            columns = torch.cat([targets, negatives])
        if hp.logq_correction or (self._column_weight and hp.popularity_prior == "estimator"):
            self.estimator.update(targets)  # retrieval's popularity term may read it too
        if hp.logq_correction:
            log_q = torch.log(self.estimator.probability(targets))
            if hp.mixed_negatives > 0:
                uniform = math.log(hp.mixed_negatives / (hp.num_items - FIRST_ITEM))
                log_q = torch.cat([log_q, log_q.new_full((hp.mixed_negatives,), uniform)])
        else:
            log_q = candidates.new_zeros(len(columns))
        loss = self.loss_function(query, candidates, targets, columns, log_q, weight, hp.temperature)
        # Summed on the device (two small kernels, no sync); the epoch mean is logged at its end. A
        # self.log per step costs host time (docs/benchmarks.md, bench_fit_overhead).
        self._train_loss[0].add_(loss.detach(), alpha=len(targets))
        self._train_loss[1].add_(len(targets))
        if not self.automatic_optimization:  # sparse_embeddings: SparseAdam for the tables, Adam for the rest
            tables, rest = self.optimizers()
            tables.zero_grad(set_to_none=True)
            rest.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            # Lightning counts a global step per wrapped optimizer step: the tables' optimizer steps
            # unwrapped, so global_step (max_steps, checkpoints, logging) still counts batches.
            tables.optimizer.step()
            rest.step()
        return loss

    @torch.no_grad()
    def retrieval_items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[n, o'] the vectors of item indices ``items`` [n] (default: the whole catalogue) that
        retrieval searches: the item tower's [n, o], with the column ``beta_c * tau * (log q(i) - mean_j
        log q(j))`` (j over the catalogue) when ``beta_c`` (_column_weight) != 0, q the popularity prior
        (see the module docstring)."""
        hp = self.hparams
        if items is None:
            return self.retrieval_items(torch.arange(hp.num_items, device=self.device))
        vectors = torch.cat([self.item_tower(chunk) for chunk in items.split(self.ITEM_CHUNK)])
        if self._column_weight == 0:
            return vectors
        catalogue = torch.arange(FIRST_ITEM, hp.num_items, device=self.device)
        centre = self.log_q(catalogue).mean()
        prior = self._column_weight * hp.temperature * (self.log_q(items) - centre)
        return torch.cat([vectors, prior[:, None].to(vectors.dtype)], dim=1)

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """[n] log q(i) of item indices [n] under ``popularity_prior``, up to a constant (see the module docstring)."""
        if self.hparams.popularity_prior == "counts":
            return self.log_popularity[items]
        return torch.log(self.estimator.probability(items))

    def catalogue(self) -> torch.Tensor:
        """retrieval_items(), computed once per evaluation or predict epoch (the towers do not change
        within one) and shared by the exact metrics and FaissRetrieval."""
        if self._catalogue is None:
            self._catalogue = self.retrieval_items()
        return self._catalogue

    def _top_k(self, queries: torch.Tensor, k: int, seen: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k (scores, item indices) [B, k] of retrieval queries [B, o'] over the catalogue;
        ``seen`` [B, S] (0-padded item indices) are left out of each row's list. Rows are scored in
        chunks of at most SCORE_ENTRIES (query, item) scores: one [4096, 934k] block alone would be
        15 GB at the Yambda 50m catalogue."""
        catalogue = self.catalogue()
        rows = max(1, self.SCORE_ENTRIES // len(catalogue))
        chunks = [self._top_k_chunk(queries[i:i + rows], catalogue, k, None if seen is None else seen[i:i + rows])
                  for i in range(0, len(queries), rows)]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])

    @staticmethod
    def _top_k_chunk(queries: torch.Tensor, catalogue: torch.Tensor, k: int, seen: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = queries @ catalogue.T
        scores[:, :FIRST_ITEM] = float("-inf")
        if seen is not None:
            scores.scatter_(1, seen, float("-inf"))
        return scores.topk(min(k, scores.shape[1] - FIRST_ITEM), dim=1)

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Update the stage's exact metrics with one batch of cases; return what the callbacks take from it
        (on_*_batch_end), all [B, ...] on the batch's device:

            protocol    0 (next track: dataloader 0) or 1 (paper: dataloader 1), a 0-d tensor
            queries     [B, o'] retrieval queries (FaissRetrieval searches them)
            top         [B, K] exact top-K item indices, K = max(recall_k)
            seen_items  [B, S] item indices left out of the lists (0 = padding; [B, 1] of 0 without exclude_seen)
            user, seed_item, target_item              next track: [B] each
            target_items [B, T] (0-padded), target_count [B]   paper
        """
        if dataloader_idx == 1 and not self.hparams.paper_seed:
            batch = {**batch, "seed_item": torch.zeros_like(batch["seed_item"]),
                     "seed_organic": torch.zeros_like(batch["seed_organic"])}
        queries, seen = self.retrieval_query(batch), batch.get("seen_items")
        _, top = self._top_k(queries, max(self.hparams.recall_k), seen)
        if seen is None:
            seen = torch.zeros(len(queries), 1, dtype=torch.int64, device=queries.device)
        out = {"protocol": torch.tensor(dataloader_idx), "queries": queries.float(), "top": top, "seen_items": seen}
        if dataloader_idx == 0:
            self.metrics[stage].update("next", top, batch["target_item"], user=batch["user"])
            return {**out, "user": batch["user"], "seed_item": batch["seed_item"], "target_item": batch["target_item"]}
        self.metrics[stage].update("paper", top, batch["target_items"], batch["target_count"], user=batch["user"])
        return {**out, "target_items": batch["target_items"], "target_count": batch["target_count"]}

    def _log_metrics(self, stage: str) -> dict[str, float]:
        """Compute (synchronised across processes), log and reset the stage's exact metrics."""
        self._catalogue = None
        metrics = self.metrics[stage]
        protocols = self._updated_anywhere(metrics)
        values = metrics.compute(protocols)
        shown = metric_name(stage, "next", "recall", 100, exact=True)
        for name, value in values.items():  # already synchronised: the mean over processes changes nothing
            self.log(name, value, add_dataloader_idx=False, prog_bar=name == shown, sync_dist=True)
        self.cases[stage] = metrics.cases(protocols)
        metrics.reset()
        return values

    def _updated_anywhere(self, metrics: RetrievalMetrics) -> tuple[str, ...]:
        """The protocols any process updated (compute synchronises, so all must agree on what to compute;
        under DDP a process may have had no batch of a protocol)."""
        mine = metrics.updated()
        if self.trainer.world_size == 1:
            return mine
        counts = torch.tensor([float(p in mine) for p in PROTOCOLS], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        return tuple(p for p, n in zip(PROTOCOLS, counts.tolist()) if n > 0)

    def on_validation_epoch_start(self) -> None:
        self._catalogue = None  # the towers changed since the last epoch

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
                        ) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val", dataloader_idx)

    def on_train_epoch_start(self) -> None:
        self._train_loss.zero_()

    def _epoch_train_loss(self) -> float | None:
        """Mean training loss of this epoch so far, over all processes (weighted by examples); None
        before any training step."""
        if self.trainer.state.fn != "fit":
            return None
        total = self._train_loss
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total.clone(), reduce_op="sum")
        return float(total[0] / total[1]) if total[1] > 0 else None

    def on_train_epoch_end(self) -> None:
        loss = self._epoch_train_loss()
        if loss is not None:  # the same value on every process: the mean over them changes nothing
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = self._log_metrics("val")
        if not self.trainer.sanity_checking:
            loss = self._epoch_train_loss()  # validation runs before on_train_epoch_end
            shown = [metric_name("val", "next", "recall", k, exact=True) for k in (10, 100)]
            summary = ", ".join(f"{name} {values[name]:.4f}" for name in shown if name in values)
            self.print(f"epoch {self.current_epoch}: train/loss {loss:.4f}, {summary}" if loss is not None
                       else f"epoch {self.current_epoch}: {summary}")

    def on_test_epoch_start(self) -> None:
        self._catalogue = None

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
                  ) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def on_predict_epoch_start(self) -> None:
        self._catalogue = None

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        scores, items = self._top_k(self.retrieval_query(batch), max(self.hparams.recall_k), batch.get("seen_items"))
        return {"items": items, "scores": scores, "target_item": batch["target_item"], "user": batch["user"]}

    def setup(self, stage: str) -> None:
        """Checks of options against the data, before any loop starts."""
        catalogue = self.hparams.num_items - FIRST_ITEM
        if max(self.hparams.recall_k) > catalogue:
            raise InputError(f"model.recall_k {max(self.hparams.recall_k)} is larger than the catalogue of "
                             f"{catalogue:,} items; choose cut-offs of at most {catalogue:,}")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained on other prepared data than this run's (lightning_tt.provenance).
        Called before the weights are loaded, so a checkpoint of other sizes fails here, clearly."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        current = getattr(datamodule, "fingerprint", None) or self.hparams.data_fingerprint
        if current is None:  # a bare model (no data attached): nothing to compare with
            return
        trained_on = checkpoint.get("hyper_parameters", {}).get("data_fingerprint")
        where = getattr(trainer, "ckpt_path", None) or "the checkpoint"
        data = getattr(datamodule, "data", None)
        check_same_data(trained_on, current, str(where), str(data.path if data is not None else self.hparams.data_dir))

    def on_fit_start(self) -> None:
        if not self.hparams.sparse_embeddings:
            return
        if str(self.trainer.precision).startswith("16"):
            raise InputError("model.sparse_embeddings needs trainer.precision 32-true, bf16-mixed or bf16-true "
                             f"(fp16's gradient scaler would not see the tables' optimizer), "
                             f"got {self.trainer.precision}")
        dist = torch.distributed
        if self.trainer.world_size > 1 and dist.is_initialized() and dist.get_backend() == "nccl":
            raise InputError("model.sparse_embeddings does not work with several GPUs, on one machine or several: "
                             "NCCL cannot all-reduce sparse gradients (gloo can); train on one GPU or without "
                             "sparse_embeddings")

    def configure_optimizers(self):
        # The fused kernel updates all parameters at once on a GPU (several times faster than a loop).
        hp, fused = self.hparams, self.device.type == "cuda"
        if not hp.sparse_embeddings:
            return torch.optim.Adam(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay, fused=fused)
        tables = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        sparse = [p for p in self.parameters() if id(p) in tables]
        dense = [p for p in self.parameters() if id(p) not in tables]
        return [torch.optim.SparseAdam(sparse, lr=hp.learning_rate), torch.optim.Adam(dense, lr=hp.learning_rate,
                                                                                      fused=fused)]
