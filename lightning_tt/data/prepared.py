"""Read-only view of a prepared directory: ``meta.json`` plus memory-mapped arrays.

Reading ``meta.json`` is instant, so sizes (``num_items`` ...) are known before any array is touched;
arrays are memory-mapped on first use (cheap, and safe to share with DataLoader worker processes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lightning_tt.data.arrays import array_bytes, open_array
from lightning_tt.errors import InputError

#: The layout of a prepared directory this code reads (lightning_tt.data.prepare writes it); a directory
#: of another version is refused with a message to prepare it again.
SCHEMA_VERSION = 3
#: Vocabulary indices (items, users, artists, albums): 0 is padding, 1 the unknown id, real ids start at 2.
PAD, UNKNOWN, FIRST_ITEM = 0, 1, 2


class PreparedDataError(InputError):
    """A prepared directory is missing, incomplete, damaged or from another schema version."""


class PreparedData:
    """Arrays of one prepared dataset (see :mod:`lightning_tt.data.prepare` for what each holds).

    Opening checks ``meta.json`` and that every array file it lists is there with the size it states, so
    a damaged directory fails here, naming the file, rather than in the middle of training.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise PreparedDataError(
                f"{meta_path}: not found; is {self.path} a directory written by `lightning-tt data prepare`?"
            )
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PreparedDataError(f"{meta_path}: not readable JSON ({err}); prepare the data again") from err
        version = self.meta.get("schema_version") if isinstance(self.meta, dict) else None
        if version != SCHEMA_VERSION:
            raise PreparedDataError(
                f"{meta_path}: schema_version {version}, this code reads {SCHEMA_VERSION}; prepare it again"
            )
        required = ("fingerprint", "config", "vocab", "boundaries", "counts", "arrays")
        missing = [key for key in required if key not in self.meta]
        if missing:
            raise PreparedDataError(f"{meta_path}: no '{missing[0]}' entry; prepare the data again")
        for name, entry in self.meta["arrays"].items():
            try:
                file, expected = self.path / entry["file"], array_bytes(entry)
            except (KeyError, TypeError, ValueError) as err:
                raise PreparedDataError(f"{meta_path}: malformed entry of array '{name}' ({err!r}); prepare the "
                                        f"data again") from err
            if not file.is_file():
                raise PreparedDataError(f"{file}: not found (listed in {meta_path}); the directory is incomplete: "
                                        f"prepare the data again")
            if file.stat().st_size != expected:
                raise PreparedDataError(f"{file}: {file.stat().st_size} bytes, {meta_path} says {expected}; the "
                                        f"directory is damaged: prepare the data again")
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            entries = self.meta["arrays"]
            if name not in entries:
                raise KeyError(f"{self.path}: no array '{name}' (has {sorted(entries)})")
            self._arrays[name] = open_array(self.path, entries[name])
        return self._arrays[name]

    def __getstate__(self):  # memmaps are reopened in worker processes rather than pickled
        return {"path": self.path, "meta": self.meta, "_arrays": {}}

    @property
    def fingerprint(self) -> str:
        """Identity of the inputs, split options and vocabularies this directory was prepared from
        (lightning_tt.data.prepare.data_fingerprint)."""
        return self.meta["fingerprint"]

    @property
    def vocab(self) -> dict:
        return self.meta["vocab"]

    @property
    def boundaries(self) -> dict:
        return self.meta["boundaries"]

    @property
    def counts(self) -> dict:
        return self.meta["counts"]

    @property
    def default_history(self) -> int:
        return int(self.meta["config"]["history"])

    def num_examples(self, split: str) -> int:
        return int(self.meta["arrays"][f"{split}_pos"]["shape"][0])

    def item_features(self) -> dict[str, np.ndarray]:
        """The item side tables, read into memory, indexed by item index [num_items] (row 0 = padding, with
        no features): ``artist``, ``album`` int64, ``track_length`` float32 (seconds, 0 = unknown),
        ``audio`` [num_items, D] bfloat16 bits as int16 (``torch.from_numpy(a).view(torch.bfloat16)``),
        ``has_audio`` bool. The model's ItemTable holds them as buffers."""
        features = {"artist": np.asarray(self["item_artist"]).astype(np.int64),
                    "album": np.asarray(self["item_album"]).astype(np.int64),
                    "track_length": np.array(self["item_length"], dtype=np.float32),
                    "audio": np.array(self["item_audio"]).view(np.int16),
                    "has_audio": np.array(self["item_has_audio"], dtype=bool)}
        for values in features.values():
            values[:1] = 0  # the padding item
        return features
