"""Compact arrays on disk: raw little-endian binary files described in ``meta.json``.

A prepared directory holds one ``<name>.bin`` file per array and, in ``meta.json["arrays"]``, its
dtype and shape. Files are written by appending (so ``prepare`` never needs to know a final length in
advance, and never holds a whole array in memory) and read back with ``np.memmap``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ArrayWriter:
    """Append-only writer of one 1-d or 2-d array of a fixed dtype (and fixed row width)."""

    def __init__(self, directory: Path, name: str, dtype, width: int | None = None):
        self.name = name
        self.path = Path(directory) / f"{name}.bin"
        self.dtype = np.dtype(dtype)
        self.width = width
        self.rows = 0
        self._file = open(self.path, "wb")

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if self.width is not None and (values.ndim != 2 or values.shape[1] != self.width):
            raise ValueError(f"{self.name}: expected rows of width {self.width}, got {values.shape}")
        values.tofile(self._file)
        self.rows += len(values)

    def close(self) -> dict:
        """Close the file and return its ``meta.json`` entry."""
        self._file.close()
        shape = [self.rows] if self.width is None else [self.rows, self.width]
        return {"file": self.path.name, "dtype": self.dtype.str, "shape": shape}


def write_array(directory: Path, name: str, values: np.ndarray) -> dict:
    """Write a whole (small) array at once; return its ``meta.json`` entry."""
    values = np.asarray(values)
    writer = ArrayWriter(directory, name, values.dtype, values.shape[1] if values.ndim == 2 else None)
    writer.append(values)
    return writer.close()


def array_bytes(entry: dict) -> int:
    """Size in bytes of the file of an array described by a ``meta.json`` entry."""
    return int(np.prod(entry["shape"])) * np.dtype(entry["dtype"]).itemsize


def open_array(directory: str | Path, entry: dict, mode: str = "r") -> np.ndarray:
    """Memory-map an array described by a ``meta.json`` entry (empty arrays come back in memory)."""
    path = Path(directory) / entry["file"]
    dtype = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    expected = array_bytes(entry)
    actual = os.path.getsize(path)
    if actual != expected:
        raise ValueError(f"{path}: {actual} bytes on disk, meta.json says {shape} x {dtype} = {expected}")
    if expected == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode=mode, shape=shape)


def float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 [..., D] -> bfloat16 bit patterns as uint16 [..., D], truncating (the upper 16 bits)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return values.view(np.uint16)[..., 1::2] if np.little_endian else values.view(np.uint16)[..., ::2]


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)
