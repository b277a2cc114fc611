"""Item popularity from the training positives (Listen+ events of the training window): what MostPop
and DecayPop rank by (lightning_tt.baselines), and the popularity prior the two-tower model's retrieval
can add back (TwoTowerModule, ``popularity_prior="counts"``).

    c_i = sum over the training positives p of item i of  0.5 ** ((t_max - t_p) / h)

with ``t_max`` the last training timestamp (``boundaries["train_max_timestamp"]``) and ``h`` the
half-life in seconds; without a half-life every positive weighs 1 and ``c_i`` is the plain count. A
positive at the training cut weighs 1, one ``h`` older weighs 1/2. Nothing after the training cut is
read, so the counts leak nothing into validation or test.

The positives are read in chunks of ``CHUNK`` stream positions, so memory stays O(items), not
O(positives) (466M at Yambda 500m).
"""

from __future__ import annotations

import numpy as np

from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.schema import DAY

#: Training positives read at a time.
CHUNK = 1 << 24


def item_popularity(data: PreparedData, half_life_days: float | None = None) -> np.ndarray:
    """[num_items] float64 ``c_i`` above (0 for padding, unknown and items without a training positive)."""
    if half_life_days is not None and not half_life_days > 0:
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days}")
    num_items = int(data.vocab["num_items"])
    train_max = float(data.boundaries["train_max_timestamp"])
    positions, items, times = data["train_pos"], data["stream_item"], data["stream_ts"]
    counts = np.zeros(num_items)
    for start in range(0, len(positions), CHUNK):
        pos = np.asarray(positions[start:start + CHUNK], dtype=np.int64)
        weights = None
        if half_life_days is not None:
            age = train_max - np.asarray(times[pos], dtype=np.float64)
            weights = 0.5 ** (age / (half_life_days * DAY))
        counts += np.bincount(np.asarray(items[pos], dtype=np.int64), weights=weights, minlength=num_items)
    return counts


def window_days(data: PreparedData) -> float:
    """Length in days of the prepared data's validation window, or of its test window when it has none."""
    bounds = data.boundaries
    start, end = (("val_start", "val_end") if bounds["val_end"] > bounds["val_start"] else ("test_start", "test_end"))
    return (bounds[end] - bounds[start]) / DAY


def log_prior(data: PreparedData, half_life_windows: float | None = None) -> np.ndarray:
    """[num_items] float32 ``log(c_i + 1)``, ``c_i`` from item_popularity with a half-life of
    ``half_life_windows`` validation windows (window_days; None: plain counts). The + 1 is one positive
    at the training cut: an item without positives gets log 1 = 0, not -inf."""
    days = None if half_life_windows is None else half_life_windows * window_days(data)
    return np.log1p(item_popularity(data, days)).astype(np.float32)
