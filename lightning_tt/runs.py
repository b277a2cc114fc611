"""Where a run's files go: one directory per run, next to its checkpoints, whatever the logger.

Lightning puts checkpoints in ``<save_dir>/<logger name>/<version>/checkpoints`` (``version_<n>`` for
integer versions, the run id for W&B). ``config.yaml``, ``metrics.json`` and ``predictions.parquet``
go to that same ``<save_dir>/<logger name>/<version>/``, so two runs never write the same file (with
W&B, ``trainer.log_dir`` is the shared save_dir, where a second run would clash).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


def run_directory(trainer: L.Trainer) -> Path:
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    getattr(logger, "experiment", None)  # a W&B run gets its id when its experiment starts
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path`` (parents made), written to a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)
