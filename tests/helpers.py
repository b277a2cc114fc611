"""Small tools for tests: a byte-for-byte snapshot of a directory, and a detector of host reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` as {relative path: bytes} (a file: {its name: bytes}), to check byte for
    byte that a command left it alone."""
    root = Path(root)
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class HostReads(TorchDispatchMode):
    """Records the ops whose output shape or values the host must read (on a GPU each is a sync that
    stalls the launch queue and rules out CUDA graphs): nonzero, unique, masked_select, .item(), and
    indexing with a boolean mask (a nonzero inside)."""

    NAMES = ("aten.nonzero.", "aten._unique", "aten.unique", "aten.masked_select", "aten._local_scalar_dense")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name.startswith("aten.index") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for a in args if isinstance(a, (list, tuple))
            for t in a)
        if name.startswith(self.NAMES) or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))
