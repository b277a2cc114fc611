"""Intervals for retrieval metrics: a user-clustered bootstrap over per-case values, pooled over test
windows and averaged over seeds, for one system and for the paired comparison of two.

Input: case tables (lightning_tt.eval.metrics.case_table), optionally with a ``window`` column (the
rolling-origin window, ``--split.window``) and a ``seed`` column, concatenated. A case is identified by
``(window, protocol, case)``; its value for a system is the mean over that system's seeds. Every
system compared must have the same cases.

With ``x_c`` the value of case c (``recall@k``; ``dcg@k`` for NDCG), ``d_c`` its weight (1; ``idcg@k`` for
NDCG) and ``u(c)`` its user (the raw uid: a user met in several windows is one cluster), the metric is
``m = sum_c x_c / sum_c d_c``. A bootstrap replicate draws the U users with replacement, ``w_u`` times
each (multinomial counts, sum U), and gives ``m* = sum_u w_u X_u / sum_u w_u D_u``, where ``X_u``, ``D_u``
sum the user's cases. Users are the unit that is resampled because one user's cases are not
independent (on small sets one user can hold a quarter of the cases): resampling cases would make the
interval too narrow. Two systems are compared on the same replicates (paired): the difference
``m*_A - m*_B`` and the ratio ``m*_A / m*_B``. Intervals are percentile intervals (2.5% and 97.5% for 95%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import parse_metric_name

#: Bootstrap replicates and the seed of their draw.
SAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point value with its interval ``[low, high]``."""

    value: float
    low: float
    high: float

    def excludes(self, point: float) -> bool:
        """Whether ``point`` lies outside the interval (a difference that excludes 0 is not noise)."""
        return not self.low <= point <= self.high

    def format(self, digits: int = 4) -> str:
        """``0.0808 [0.0712, 0.0905]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def case_columns(metric: str) -> tuple[str, str, str, str]:
    """(split, protocol, value column, weight column or "") of a metric name such as ``test/next/recall@100``
    or ``test/paper/ndcg@10`` (``exact_`` allowed: case tables hold exact values)."""
    parsed = parse_metric_name(metric)
    if parsed is None or (parsed[1], parsed[2]) not in {("next", "recall"), ("paper", "recall"), ("paper", "ndcg")}:
        raise InputError(f"{metric!r}: intervals are computed for {{split}}/next/recall@K, {{split}}/paper/recall@K "
                         f"and {{split}}/paper/ndcg@K")
    split, protocol, name, k, _ = parsed
    return (split, protocol, f"dcg@{k}", f"idcg@{k}") if name == "ndcg" else (split, protocol, f"recall@{k}", "")


@dataclass
class ClusterSums:
    """Per-user sums of one metric for several systems on the same cases: ``values`` [S, U] (``X_u`` per
    system), ``weights`` [U] (``D_u``), ``cases`` the number of cases, ``systems`` their names."""

    systems: list[str]
    values: np.ndarray
    weights: np.ndarray
    cases: int

    def point(self) -> np.ndarray:
        """[S] the metric of every system, ``sum_u X_u / sum_u D_u``."""
        return self.values.sum(axis=1) / self.weights.sum()

    def replicates(self, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
        """[samples, S] the metric of every system on ``samples`` user resamples (the same for all systems)."""
        rng = np.random.default_rng(seed)
        users = len(self.weights)
        out = np.empty((samples, len(self.systems)))
        step = max(1, (1 << 22) // max(users, 1))  # draws held at a time: <= 4M counts
        for start in range(0, samples, step):
            n = min(step, samples - start)
            counts = rng.multinomial(users, np.full(users, 1.0 / users), size=n).astype(np.float64)  # [n, U]
            out[start : start + n] = (counts @ self.values.T) / (counts @ self.weights)[:, None]
        return out


def cluster_sums(cases: pa.Table, metric: str, systems: list[str]) -> ClusterSums:
    """The per-user sums of ``metric`` for ``systems`` from a case table (see the module docstring): each
    case's value averaged over the system's seeds, then summed per uid over windows and cases."""
    split, protocol, value_column, weight_column = case_columns(metric)
    table = cases.filter(pc.and_(pc.equal(cases["split"], split), pc.equal(cases["protocol"], protocol)))
    if value_column not in table.column_names:
        raise InputError(f"{metric}: the case table has no column {value_column!r} (cut-offs: "
                         f"{[c for c in table.column_names if c.startswith('recall@')]})")
    window = (np.asarray(table["window"], dtype=np.int64) if "window" in table.column_names
              else np.zeros(len(table), dtype=np.int64))
    case = np.asarray(table["case"], dtype=np.int64)
    uid = np.asarray(table["uid"], dtype=np.int64)
    names = np.asarray(table["system"].to_pylist(), dtype=object)
    x = np.asarray(table[value_column].to_numpy(zero_copy_only=False), dtype=np.float64)
    d = (np.asarray(table[weight_column].to_numpy(zero_copy_only=False), dtype=np.float64) if weight_column
         else np.ones(len(table)))
    reference_keys = None
    per_system = []
    for system in systems:
        mine = names == system
        if not mine.any():
            raise InputError(f"{metric}: no case of system {system!r} in the case table")
        keys, inverse = np.unique(np.stack([window[mine], case[mine]], axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        seeds = np.bincount(inverse).astype(np.float64)
        mean_x = np.bincount(inverse, weights=x[mine]) / seeds
        mean_d = np.bincount(inverse, weights=d[mine]) / seeds
        key_uid = np.zeros(len(keys), dtype=np.int64)
        key_uid[inverse] = uid[mine]
        if reference_keys is None:
            reference_keys, reference_uid, weights_per_case = keys, key_uid, mean_d
        elif not (len(keys) == len(reference_keys) and (keys == reference_keys).all()
                  and (key_uid == reference_uid).all()):
            raise InputError(f"{metric}: systems {systems[0]!r} and {system!r} were not scored on the same cases "
                             f"({len(reference_keys)} and {len(keys)})")
        per_system.append(mean_x)
    users, user_of_case = np.unique(reference_uid, return_inverse=True)
    values = np.stack([np.bincount(user_of_case, weights=v, minlength=len(users)) for v in per_system])
    weights = np.bincount(user_of_case, weights=weights_per_case, minlength=len(users))
    return ClusterSums(list(systems), values, weights, len(reference_keys))


def _interval(point: float, draws: np.ndarray, level: float) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Estimate(point, float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high))


@dataclass
class Comparison:
    """Every system's metric with its interval, and each one's paired difference and ratio against
    ``reference``: ``value[s]``, ``difference[s] = m_s - m_reference``, ``ratio[s] = m_s / m_reference``."""

    metric: str
    reference: str | None
    value: dict[str, Estimate]
    difference: dict[str, Estimate]
    ratio: dict[str, Estimate]
    users: int
    cases: int


def compare(cases: pa.Table, metric: str, systems: list[str], reference: str | None = None,
            samples: int = SAMPLES, level: float = 0.95, seed: int = SEED) -> Comparison:
    """``metric`` of ``systems`` with user-clustered bootstrap intervals at ``level``; with ``reference``
    (one of them) also the paired differences and ratios. See the module docstring."""
    names = list(dict.fromkeys([*systems, *([reference] if reference else [])]))
    sums = cluster_sums(cases, metric, names)
    point, draws = sums.point(), sums.replicates(samples, seed)
    value = {s: _interval(point[i], draws[:, i], level) for i, s in enumerate(names)}
    difference, ratio = {}, {}
    if reference:
        r = names.index(reference)
        with np.errstate(divide="ignore", invalid="ignore"):
            for i, s in enumerate(names):
                difference[s] = _interval(point[i] - point[r], draws[:, i] - draws[:, r], level)
                ratio[s] = _interval(point[i] / point[r] if point[r] else float("nan"), draws[:, i] / draws[:, r],
                                     level)
    return Comparison(metric, reference, value, difference, ratio, len(sums.weights), sums.cases)
