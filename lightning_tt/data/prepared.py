"""Read-only view of a prepared directory: ``meta.json`` plus memory-mapped arrays.

Reading ``meta.json`` is instant, so sizes (``num_items`` ...) are known before any array is touched;
arrays are memory-mapped on first use (cheap, and safe to share with DataLoader worker processes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lightning_tt.data.arrays import open_array
from lightning_tt.data.prepare import SCHEMA_VERSION


class PreparedDataError(ValueError):
    """A prepared directory is missing, incomplete or from another schema version."""


class PreparedData:
    """Arrays of one prepared dataset (see :mod:`lightning_tt.data.prepare` for what each holds)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise PreparedDataError(
                f"{meta_path}: not found; is {self.path} a directory written by `lightning-tt data prepare`?"
            )
        with open(meta_path) as f:
            self.meta = json.load(f)
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PreparedDataError(
                f"{meta_path}: schema_version {version}, this code reads {SCHEMA_VERSION}; prepare it again"
            )
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

    def num_paper_lists(self, split: str) -> int:
        return int(self.meta["arrays"][f"paper_{split}_user"]["shape"][0])
