"""The two towers: the query tower (user, history, seed track, example age) and the item tower (item,
artist, album, track length, audio), each an MLP over concatenated features, L2-normalised.

Numeric inputs are log-scaled to about [0, 1]:
``length = log1p(track_length_seconds) / 6`` (200 s -> 0.88) and
``age = log1p(example_age_seconds / 3600) / 9`` (300 days -> 0.99; 0 at serving).

Shapes: B queries, N history slots, d = ``embedding_dim``, D = audio dim, o = ``output_dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tt.errors import InputError
from lightning_tt.model.history import ENCODERS, HistoryAttention, HistoryEncoder, HistoryPooling


def log_length(seconds: torch.Tensor) -> torch.Tensor:
    return torch.log1p(seconds.float().clamp(min=0)) / 6.0


def log_age(seconds: torch.Tensor) -> torch.Tensor:
    return torch.log1p(seconds.float().clamp(min=0) / 3600.0) / 9.0


def mlp(inputs: int, hidden: list[int], outputs: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(dropout)]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


class ItemTable(nn.Module):
    """Per-item side features as non-persistent buffers (checkpoints stay small; they are reloaded
    from the prepared directory) plus a learned audio vector for items without an embedding.

    artist, album: [V] int64; track_length: [V] float32 seconds; audio: [V, D] bfloat16;
    has_audio: [V] bool.
    """

    def __init__(self, num_items: int, audio_dim: int, data_dir: str | None = None):
        super().__init__()
        if data_dir:
            from lightning_tt.data.prepared import PreparedData

            data = PreparedData(data_dir)
            if data.vocab["num_items"] != num_items or data.vocab["audio_dim"] != audio_dim:
                raise InputError(f"{data_dir}: {data.vocab['num_items']} items of audio dim {data.vocab['audio_dim']}, "
                                 f"the model expects {num_items} and {audio_dim}")
            features = {name: torch.from_numpy(values) for name, values in data.item_features().items()}
            artist, album, length = features["artist"], features["album"], features["track_length"]
            audio, has_audio = features["audio"].view(torch.bfloat16), features["has_audio"]
        else:  # no data: shapes only (e.g. a model built for a unit test)
            artist = torch.ones(num_items, dtype=torch.int64)
            album = torch.ones(num_items, dtype=torch.int64)
            length = torch.zeros(num_items)
            audio = torch.zeros(num_items, audio_dim, dtype=torch.bfloat16)
            has_audio = torch.zeros(num_items, dtype=torch.bool)
        for name, value in (("artist", artist), ("album", album), ("track_length", length), ("audio", audio),
                            ("has_audio", has_audio)):
            value[:1] = 0  # the padding item has no features
            self.register_buffer(name, value, persistent=False)
        self.missing_audio = nn.Parameter(torch.zeros(audio_dim))

    def audio_of(self, items: torch.Tensor) -> torch.Tensor:
        """[...] item indices -> [..., D] float32 audio, the learned vector where an item has none."""
        audio = self.audio[items].float()
        return torch.where(self.has_audio[items][..., None], audio, self.missing_audio)


class Embeddings(nn.Module):
    """Learned id tables (index 0 = padding, a zero row). With ``sparse``, their gradients are sparse
    (only the rows a batch looked up), for an optimizer that updates just those rows."""

    def __init__(self, num_items: int, num_artists: int, num_albums: int, dim: int, sparse: bool = False):
        super().__init__()
        self.item = nn.Embedding(num_items, dim, padding_idx=0, sparse=sparse)
        self.artist = nn.Embedding(num_artists, dim, padding_idx=0, sparse=sparse)
        self.album = nn.Embedding(num_albums, dim, padding_idx=0, sparse=sparse)
        for table in (self.item, self.artist, self.album):
            nn.init.normal_(table.weight, std=0.05)
            table.weight.data[0] = 0


def track_features(table: ItemTable, ids: Embeddings, use: dict[str, bool], items: torch.Tensor) -> torch.Tensor:
    """items [...] -> [..., k]: the concatenated features of each track, as switched on in ``use``:
    item, artist, album embeddings [d each], log length [1], audio [D] (artist and album come from the
    item table). Both towers describe a track this way (the item tower, the seed, history steps)."""
    parts = []
    if use["item"]:
        parts.append(ids.item(items))
    if use["artist"]:
        parts.append(ids.artist(table.artist[items]))
    if use["album"]:
        parts.append(ids.album(table.album[items]))
    if use["length"]:
        parts.append(log_length(table.track_length[items])[..., None])
    if use["audio"]:
        parts.append(table.audio_of(items))
    return torch.cat(parts, dim=-1)


def track_width(ids: Embeddings, audio_dim: int, use: dict[str, bool]) -> int:
    """k, the width of track_features under ``use``."""
    ids_width = ids.item.embedding_dim * (use["item"] + use["artist"] + use["album"])
    return ids_width + use["length"] + audio_dim * use["audio"]


class ItemTower(nn.Module):
    """items [n] -> [n, o]: MLP(item, artist, album embeddings, log length, audio), L2-normalised."""

    def __init__(self, table: ItemTable, ids: Embeddings, output_dim: int, hidden: list[int], dropout: float,
                 use_item_id: bool, use_artist: bool, use_album: bool, use_length: bool, use_audio: bool):
        super().__init__()
        self.table, self.ids = table, ids
        self.use = {"item": use_item_id, "artist": use_artist, "album": use_album, "length": use_length,
                    "audio": use_audio}
        width = track_width(ids, table.audio.shape[1], self.use)
        if width == 0:
            raise InputError("the item tower needs at least one feature: turn one of model.use_item_id, use_artist, "
                             "use_album, use_length, use_audio on")
        self.mlp = mlp(width, hidden, output_dim, dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(track_features(self.table, self.ids, self.use, items)), dim=-1)


class QueryTower(nn.Module):
    """batch -> [B, o]: MLP over the feature groups below, L2-normalised. It reads only ``user``,
    ``history_item``, ``history_mask``, ``history_ratio``, ``liked_item``, ``disliked_item``,
    ``seed_item``, ``seed_organic`` and ``example_age`` from the batch; every other item feature comes
    from the item table, exactly as in the item tower (``track_features``, k wide).

    user: user embedding [d]. history: the history encoder's output (``mean``: masked means of the last
    N listens' track features [k], computed as bags without a [B, N, d] tensor; ``recency`` [k] and
    ``attention`` [d]: see lightning_tt.model.history). feedback (``feedback`` K > 0): the means of the
    track features of the user's recent likes [k] and of their recent dislikes [k]. seed: the previous
    track's features [k]; with ``use_organic`` also whether the user chose it (is_organic) [1]. age: log
    example age [1].
    """

    def __init__(self, table: ItemTable, ids: Embeddings, num_users: int, output_dim: int, hidden: list[int],
                 dropout: float, use_user: bool, use_history: bool, use_seed: bool, use_age: bool,
                 use_item_id: bool, use_artist: bool, use_album: bool, use_length: bool, use_audio: bool,
                 history_encoder: HistoryEncoder = "mean", history: int = 50, attention_blocks: int = 1,
                 attention_heads: int = 2, use_play_ratio: bool = False, feedback: int = 0,
                 use_organic: bool = False):
        super().__init__()
        if history_encoder not in ENCODERS:
            raise InputError(f"model.history_encoder must be one of {', '.join(ENCODERS)}, got {history_encoder!r}")
        self.table, self.ids = table, ids
        dim, audio_dim = ids.item.embedding_dim, table.audio.shape[1]
        self.user = nn.Embedding(num_users, dim, padding_idx=0, sparse=ids.item.sparse) if use_user else None
        if self.user is not None:
            nn.init.normal_(self.user.weight, std=0.05)
        self.use = {"history": use_history, "seed": use_seed, "age": use_age, "item": use_item_id,
                    "artist": use_artist, "album": use_album, "length": use_length, "audio": use_audio,
                    "feedback": feedback > 0, "organic": use_seed and use_organic}
        per_track = track_width(ids, audio_dim, self.use)
        self.encoder: nn.Module | None = None  # None: the mean as bags (the fast path)
        history_width = per_track
        if use_history and history_encoder == "attention":
            self.encoder = HistoryAttention(per_track, dim, history, attention_blocks, attention_heads, dropout,
                                            use_play_ratio)
            history_width = dim
        elif use_history and (history_encoder == "recency" or use_play_ratio):
            self.encoder = HistoryPooling(history_encoder == "recency", history, use_play_ratio)
        width = (dim * use_user + history_width * use_history + per_track * (use_seed + 2 * (feedback > 0))
                 + self.use["organic"] + use_age)
        if width == 0:
            raise InputError("the query tower needs at least one feature: turn one of model.use_user, use_history, "
                             "use_seed, use_age (or an item feature) on")
        self.mlp = mlp(width, hidden, output_dim, dropout)

    def _mean_bags(self, items: torch.Tensor) -> list[torch.Tensor]:
        """Means of the track features of the non-padding entries of ``items`` [B, N] (each [B, ...],
        0 when a row is all padding), as bags: no [B, N, d] tensor is materialised."""
        u, t = self.use, self.table
        mask = items > 0
        count = mask.sum(1, keepdim=True).clamp(min=1)
        parts = []
        for key, table, ids in (("item", self.ids.item, items), ("artist", self.ids.artist, t.artist[items]),
                                ("album", self.ids.album, t.album[items])):
            if u[key]:  # padding (index 0) is left out of the mean
                parts.append(F.embedding_bag(ids, table.weight, mode="mean", padding_idx=0, sparse=table.sparse))
        if u["length"]:
            parts.append((log_length(t.track_length[items]) * mask).sum(1, keepdim=True) / count)
        if u["audio"]:
            audio_sum = F.embedding_bag(items, t.audio, mode="sum", padding_idx=0).float()  # missing rows are 0
            missing = (mask & ~t.has_audio[items]).sum(1, keepdim=True)
            parts.append((audio_sum + missing * t.missing_audio) / count)
        return parts

    def _history(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.encoder is None:
            return self._mean_bags(batch["history_item"])
        x = track_features(self.table, self.ids, self.use, batch["history_item"])  # [B, N, k]
        return [self.encoder(x, batch["history_mask"], batch["history_ratio"])]

    def positions(self, batch: dict[str, torch.Tensor], count: int, hide_seed: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """[B, P, o]: the query at each of the last P = ``count`` positions of every history window, for
        sequence training (TwoTowerModule, ``query_tower="sequence"``). The query at window slot j is
        this tower's query for a case whose history ends at slot j: the attention encoder's ``z_j`` (slots
        0..j only), the seed = the listen at slot j, the user and the example's age; so slot N - 1 gives
        ``forward(batch)`` and no slot sees a later listen. ``hide_seed`` [B, P] bool hides a slot's seed
        features (seed dropout). Needs the attention encoder and no feedback bags (they hold the state at
        the example's time, later than the earlier slots) and no seed_organic (one per window)."""
        if not isinstance(self.encoder, HistoryAttention) or self.use["feedback"] or self.use["organic"]:
            raise InputError("model.query_tower sequence needs model.history_encoder attention, data.feedback 0 and "
                             "model.use_organic false")
        items, mask = batch["history_item"], batch["history_mask"]
        n = items.shape[1]
        count = min(count, n)
        x = track_features(self.table, self.ids, self.use, items)  # [B, N, k]
        z = self.encoder.sequence(x, mask, batch["history_ratio"])[:, n - count:]  # [B, P, width]
        parts = []
        if self.user is not None:
            parts.append(self.user(batch["user"])[:, None].expand(-1, count, -1))
        parts.append(z)
        if self.use["seed"]:
            seed = x[:, n - count:]
            if hide_seed is not None:  # a hidden seed is the padding item, as in the per-example path
                seed = track_features(self.table, self.ids, self.use, items[:, n - count:].masked_fill(hide_seed, 0))
            parts.append(seed)
        if self.use["age"]:
            parts.append(log_age(batch["example_age"])[:, None, None].expand(-1, count, 1))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.user is not None:
            parts.append(self.user(batch["user"]))
        if self.use["history"]:
            parts.extend(self._history(batch))
        if self.use["feedback"]:
            parts.extend(self._mean_bags(batch["liked_item"]))
            parts.extend(self._mean_bags(batch["disliked_item"]))
        if self.use["seed"]:
            parts.append(track_features(self.table, self.ids, self.use, batch["seed_item"]))
        if self.use["organic"]:
            parts.append(batch["seed_organic"].to(parts[-1].dtype)[:, None])
        if self.use["age"]:
            parts.append(log_age(batch["example_age"])[:, None])
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)
