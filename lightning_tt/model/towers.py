"""The two towers: the query tower (user, history, seed track, example age) and the item tower (item,
artist, album, track length, audio), each an MLP over concatenated features, L2-normalised.

Numeric inputs are log-scaled to about [0, 1]:
``length = log1p(track_length_seconds) / 6`` (200 s -> 0.88) and
``age = log1p(example_age_seconds / 3600) / 9`` (300 days -> 0.99; 0 at serving).

Shapes: B queries, N history slots, d = ``embedding_dim``, D = audio dim, o = ``output_dim``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_tt.errors import InputError


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
            artist = torch.from_numpy(np.asarray(data["item_artist"]).astype(np.int64))
            album = torch.from_numpy(np.asarray(data["item_album"]).astype(np.int64))
            length = torch.from_numpy(np.array(data["item_length"], dtype=np.float32))
            audio = torch.from_numpy(np.array(data["item_audio"]).view(np.int16)).view(torch.bfloat16)
            has_audio = torch.from_numpy(np.array(data["item_has_audio"], dtype=bool))
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


class ItemTower(nn.Module):
    """items [n] -> [n, o]: MLP(item, artist, album embeddings, log length, audio), L2-normalised."""

    def __init__(self, table: ItemTable, ids: Embeddings, output_dim: int, hidden: list[int], dropout: float,
                 use_item_id: bool, use_artist: bool, use_album: bool, use_length: bool, use_audio: bool):
        super().__init__()
        self.table, self.ids = table, ids
        self.use = {"item": use_item_id, "artist": use_artist, "album": use_album, "length": use_length,
                    "audio": use_audio}
        dim, audio_dim = ids.item.embedding_dim, table.audio.shape[1]
        width = dim * (use_item_id + use_artist + use_album) + use_length + audio_dim * use_audio
        if width == 0:
            raise InputError("the item tower needs at least one feature: turn one of model.use_item_id, use_artist, use_album, use_length, use_audio on")
        self.mlp = mlp(width, hidden, output_dim, dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        t, parts = self.table, []
        if self.use["item"]:
            parts.append(self.ids.item(items))
        if self.use["artist"]:
            parts.append(self.ids.artist(t.artist[items]))
        if self.use["album"]:
            parts.append(self.ids.album(t.album[items]))
        if self.use["length"]:
            parts.append(log_length(t.track_length[items])[:, None])
        if self.use["audio"]:
            parts.append(t.audio_of(items))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class QueryTower(nn.Module):
    """batch -> [B, o]: MLP over the feature groups below, L2-normalised. It reads only ``user``,
    ``history_item``, ``history_mask``, ``seed_item`` and ``example_age`` from the batch; every other
    item feature comes from the item table, exactly as in the item tower.

    user: user embedding [d]. history: masked means of the last N listens' item, artist and album
    embeddings [3d], of their log lengths [1] and of their audio [D]. seed: the previous track's item,
    artist, album embeddings [3d], audio [D] and log length [1]. age: log example age [1].
    """

    def __init__(self, table: ItemTable, ids: Embeddings, num_users: int, output_dim: int, hidden: list[int],
                 dropout: float, use_user: bool, use_history: bool, use_seed: bool, use_age: bool,
                 use_item_id: bool, use_artist: bool, use_album: bool, use_length: bool, use_audio: bool):
        super().__init__()
        self.table, self.ids = table, ids
        dim, audio_dim = ids.item.embedding_dim, table.audio.shape[1]
        self.user = nn.Embedding(num_users, dim, padding_idx=0, sparse=ids.item.sparse) if use_user else None
        if self.user is not None:
            nn.init.normal_(self.user.weight, std=0.05)
        self.use = {"history": use_history, "seed": use_seed, "age": use_age, "item": use_item_id,
                    "artist": use_artist, "album": use_album, "length": use_length, "audio": use_audio}
        per_track = dim * (use_item_id + use_artist + use_album) + use_length + audio_dim * use_audio
        width = dim * use_user + per_track * (use_history + use_seed) + use_age
        if width == 0:
            raise InputError("the query tower needs at least one feature: turn one of model.use_user, use_history, use_seed, use_age (or an item feature) on")
        self.mlp = mlp(width, hidden, output_dim, dropout)

    def _seed(self, items: torch.Tensor) -> list[torch.Tensor]:
        """Seed-track features [B, k] of item indices [B] (artist and album come from the item table)."""
        u, parts = self.use, []
        if u["item"]:
            parts.append(self.ids.item(items))
        if u["artist"]:
            parts.append(self.ids.artist(self.table.artist[items]))
        if u["album"]:
            parts.append(self.ids.album(self.table.album[items]))
        if u["length"]:
            parts.append(log_length(self.table.track_length[items])[..., None])
        if u["audio"]:
            parts.append(self.table.audio_of(items))
        return parts

    def _history(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Masked means over the history window, as bags (no [B, N, d] tensor is materialised)."""
        u, t, items, mask = self.use, self.table, batch["history_item"], batch["history_mask"]
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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.user is not None:
            parts.append(self.user(batch["user"]))
        if self.use["history"]:
            parts.extend(self._history(batch))
        if self.use["seed"]:
            parts.extend(self._seed(batch["seed_item"]))
        if self.use["age"]:
            parts.append(log_age(batch["example_age"])[:, None])
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)
