"""Provenance: which prepared directory, checkpoint and export belong together.

- ``data prepare`` writes a ``fingerprint`` of its inputs, split options and vocabularies into
  ``meta.json`` (lightning_tt.data.prepare.data_fingerprint).
- A checkpoint carries the fingerprint of the data it was trained on: the model's ``data_fingerprint``
  hyperparameter, linked from the DataModule by the CLI.
- An export carries that fingerprint and its checkpoint's path in ``export.json`` (lightning_tt.serve).

``test``, ``validate``, ``predict``, ``fit --ckpt_path``, ``export`` and ``recommend`` compare them
before any work and refuse a combination that does not belong together: item indices of one
preparation mean other tracks in another, so the numbers would be silently wrong.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from lightning_tt.errors import InputError, one_line

#: Lightning's special ``ckpt_path`` values; they name a checkpoint of a fit in the same process only.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")


def read_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped, so cheap at any size), checked to be a
    Lightning checkpoint with ``state_dict`` and ``hyper_parameters``; InputError naming ``option``
    otherwise."""
    import torch

    if str(path) in SPECIAL_CKPT_PATHS:
        raise InputError(f"{option} {path}: give the checkpoint's file (RUN/checkpoints/NAME.ckpt); '{path}' only "
                         f"names a checkpoint of a fit earlier in the same process")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path}: not found")
    if not path.is_file():
        raise InputError(f"{option} {path}: is a directory, not a checkpoint file (RUN/checkpoints/NAME.ckpt)")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{option} {path}: not a checkpoint (not an archive written by torch.save)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001  torch raises many types for a file that is not a checkpoint
        raise InputError(f"{option} {path}: not a readable checkpoint ({one_line(err)})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise InputError(f"{option} {path}: not a lightning-tt checkpoint (no state_dict or hyper_parameters)")
    return checkpoint


def check_same_data(trained_on: str | None, data_fingerprint: str, checkpoint: str, data_dir: str) -> None:
    """Refuse a checkpoint trained on other prepared data than ``data_dir`` holds.

    ``trained_on``: the checkpoint's ``data_fingerprint`` (None for checkpoints written before
    fingerprints existed: a warning, since nothing can be checked).
    """
    if trained_on is None:
        warnings.warn(f"{checkpoint}: the checkpoint records no data fingerprint (written by an older version); "
                      f"cannot check that it belongs to {data_dir}", stacklevel=2)
        return
    if trained_on != data_fingerprint:
        raise InputError(f"{checkpoint}: trained on other prepared data (fingerprint {trained_on[:12]}) than "
                         f"{data_dir} holds ({data_fingerprint[:12]}); use the data directory it was trained on, "
                         f"prepared from the same files with the same options")
