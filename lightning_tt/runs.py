"""Where a run's files go: one directory per run, whatever the logger.

Lightning puts checkpoints in ``<save_dir>/<logger name>/<version>/checkpoints`` (``version_<n>`` for
integer versions, the run id for W&B). ``config.yaml``, ``metrics.json`` and ``predictions.parquet``
go to that same ``<save_dir>/<logger name>/<version>/``, so two runs never write the same file (with
W&B, ``trainer.log_dir`` is the shared save_dir, where a second run would clash).

Without a logger (``--trainer.logger false``) each command gets ``<default_root_dir>/version_<n>``, the
first unused ``n``, for its config and metrics (Lightning keeps its checkpoints in
``<default_root_dir>/checkpoints``), so a ``test`` after a ``fit`` in the same place never clashes.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import lightning as L

from lightning_tt.outputs import Output

#: The directory chosen for each logger-less trainer (chosen once, used by every writer of the run).
_WITHOUT_LOGGER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_directory(trainer: L.Trainer) -> Path:
    logger = trainer.logger
    if logger is None:
        if trainer not in _WITHOUT_LOGGER:
            _WITHOUT_LOGGER[trainer] = _new_version(Path(trainer.default_root_dir), reserve=trainer.is_global_zero)
        return _WITHOUT_LOGGER[trainer]
    getattr(logger, "experiment", None)  # a W&B run gets its id when its experiment starts
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def _new_version(root: Path, reserve: bool) -> Path:
    """``root/version_<n>`` for the first unused n; created when ``reserve`` (so two commands started
    together cannot take the same one)."""
    n = 0
    while True:
        path = root / f"version_{n}"
        if not reserve:
            if not path.exists():
                return path
        else:
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                pass
        n += 1


def write_json(output: Output, obj) -> None:
    """``obj`` as indented JSON at ``output`` (a file :class:`~lightning_tt.outputs.Output`), atomically."""
    with output.writing() as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
