"""Scoring the baselines on a prepared split with the model's metric code and names
(``evaluate``), and choosing their hyperparameters on the validation window (``tune``)."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from tqdm.auto import tqdm

from lightning_tt.baselines.models import Baseline
from lightning_tt.baselines.registry import ALL
from lightning_tt.data.batches import NextTrackDataset, PaperListDataset, case_sample
from lightning_tt.data.prepared import FIRST_ITEM, PreparedData
from lightning_tt.data.seen import SeenItems, seen_items
from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import PROTOCOLS, RetrievalMetrics, metric_name, parse_metric_name

DEFAULT_TUNE_METRIC = metric_name("val", "next", "recall", 100)


#: ``tune`` selects on at most this many validation cases per protocol (a seeded sample of them).
TUNE_CASES = 5_000


#: Queries whose seen items (lightning_tt.data.seen) are gathered at a time, for exclude_seen.
SEEN_ROWS = 4096


class _Cases:
    """The next-track cases and paper lists of one split, gathered once for every baseline; with
    ``limit``, a seeded sample of at most that many of each, in their order. What each query has seen
    (``exclude_seen``) is gathered by blocks of SEEN_ROWS queries when a baseline asks for it, from the
    same table as the model's (lightning_tt.data.seen)."""

    def __init__(self, data: PreparedData, split: str, history: int, limit: int | None = None):
        self.data, self.split = data, split
        nxt = NextTrackDataset(data, split, history)
        index = case_sample(len(nxt), limit)
        self.next = {**nxt.arrays(index), "pos": np.asarray(nxt.pos[index], dtype=np.int64)}
        paper = PaperListDataset(data, split, history)
        index = case_sample(len(paper), limit)
        self.paper = {**paper.arrays(index), "pos": np.asarray(data[f"paper_{split}_pos"][index], dtype=np.int64)}
        self.num_items = data.vocab["num_items"]

    @functools.cached_property
    def seen(self) -> SeenItems:
        return seen_items(self.data, self.split)

    def lists(self, baseline: Baseline, queries: dict[str, np.ndarray], k: int) -> np.ndarray:
        """[Q, k] of ``baseline`` for ``queries`` (``self.next`` or ``self.paper``)."""
        user, seed, history = queries["user"], queries["seed_item"], queries["history_item"]
        if not baseline.exclude_seen:
            return baseline.recommend(user, seed, history, k)
        blocks = [baseline.recommend(user[at], seed[at], history[at], k, self.seen.padded(user[at], queries["pos"][at]))
                  for at in (slice(start, start + SEEN_ROWS) for start in range(0, len(user), SEEN_ROWS))]
        return np.concatenate(blocks) if blocks else np.zeros((0, k), dtype=np.int64)

    def score(self, baseline: Baseline, ks: list[int], protocols: tuple[str, ...] = PROTOCOLS,
              cases: dict | None = None) -> dict[str, float]:
        """{metric_name: value} of a fitted baseline's lists (lightning_tt.eval.metrics), on the protocols
        asked. All cases are in this process (also when called from rank zero of a DDP test). ``cases``,
        when given, receives {protocol: (user [N], per-case values)} (RetrievalMetrics.cases)."""
        k = max(ks)
        metrics = RetrievalMetrics(self.split, ks, self.num_items, keep_cases=cases is not None,
                                   sync_on_compute=False)
        if "next" in protocols:
            nxt = self.next
            metrics.update("next", torch.from_numpy(self.lists(baseline, nxt, k)),
                           torch.from_numpy(nxt["target_item"]), user=torch.from_numpy(nxt["user"]))
        if "paper" in protocols:
            paper = self.paper
            metrics.update("paper", torch.from_numpy(self.lists(baseline, paper, k)),
                           torch.from_numpy(paper["target_items"]), torch.from_numpy(paper["target_count"]),
                           user=torch.from_numpy(paper["user"]))
        if cases is not None:
            cases.update(metrics.cases())
        return metrics.compute(protocols)


def _checked(data_dir: str, split: str, ks: list[int], names: list[str] | None) -> PreparedData:
    known = [cls.name for cls in ALL]
    unknown = [name for name in names or [] if name not in known]
    if unknown or names == []:
        raise InputError(f"--only: unknown baseline(s) {unknown}; choose from {', '.join(known)}")
    data = PreparedData(data_dir)
    catalogue = data.vocab["num_items"] - FIRST_ITEM
    if not ks or min(ks) < 1 or max(ks) > catalogue:
        raise InputError(f"--k: cut-offs must lie in 1..{catalogue:,} (the catalogue), got {list(ks)}")
    if split not in ("val", "test"):
        raise InputError(f"--split must be val or test, got {split!r}")
    if data.num_examples(split) == 0:
        raise InputError(f"{data.path}: the {split} window has no cases (prepared with --split.val_days 0?); "
                         f"nothing to "
                         f"evaluate")
    return data


def evaluate(data_dir: str, split: str = "test", ks: list[int] = [10, 100], names: list[str] | None = None,  # noqa: B006
             history: int | None = None, params: dict[str, dict] | None = None,
             cases: dict | None = None, progress: bool = True) -> dict[str, dict]:
    """{baseline name: {metric name: value, ..., "params": {hyperparameter: value}}} on ``split``'s
    next-track cases and paper lists, each baseline with its defaults updated by ``params[name]``;
    ``cases``, when given, receives {baseline name: its per-case values} (_Cases.score).

    Refused before any work (InputError): an unknown baseline name, a cut-off k below 1 or above the
    catalogue, a split with no case."""
    data = _checked(data_dir, split, ks, names)
    split_cases = _Cases(data, split, history or data.default_history)
    results = {}
    chosen = [cls for cls in ALL if not names or cls.name in names]
    bar = tqdm(chosen, desc="baselines", disable=not progress, leave=False)
    for cls in bar:
        bar.set_postfix_str(cls.name)
        baseline = cls(**(params or {}).get(cls.name, {})).fit(data)
        kept = {} if cases is not None else None
        results[cls.name] = {**split_cases.score(baseline, ks, cases=kept), "params": baseline.params()}
        if cases is not None:
            cases[cls.name] = kept
    return results


def _parse_metric(metric: str, catalogue: int) -> tuple[str, str, int]:
    """``val/next/recall@100`` -> ("next", "recall", 100); InputError naming --tune_metric otherwise."""
    choices = "val/next/recall@K or val/paper/{recall,ndcg,coverage}@K"
    parsed = parse_metric_name(metric)
    if parsed is None:
        raise InputError(f"--tune_metric: {metric!r} is not a metric name; use {choices}")
    stage, protocol, name, k, exact = parsed
    if stage != "val" or exact or (protocol, name) not in {("next", "recall"), ("paper", "recall"),
                                                           ("paper", "ndcg"), ("paper", "coverage")}:
        raise InputError(f"--tune_metric: {metric!r} is not a validation metric; use {choices}")
    if not 1 <= k <= catalogue:
        raise InputError(f"--tune_metric: k must lie in 1..{catalogue:,} (the catalogue), got {k}")
    return protocol, name, k


def tune(data_dir: str, ks: list[int] = [10, 100], names: list[str] | None = None,  # noqa: B006
         metric: str = DEFAULT_TUNE_METRIC, history: int | None = None, progress: bool = True,
         cases: dict | None = None) -> dict[str, dict]:
    """Each baseline's hyperparameters chosen on the validation window, then the test window.

    For every point of ``cls.grid(data)`` the baseline is fitted on the training positives (once per
    combination of the parameters outside ``RANK_PARAMS``) and ``metric`` is measured on the
    validation cases (at most TUNE_CASES of each protocol, a seeded sample); the best point (the first
    of equals, in grid order) is fitted again, on the same training positives, and scored on the test
    cases. Returns, per baseline, the test metrics, the chosen ``params`` and ``tuning``: {"metric",
    "value" (its validation value), "points"}. ``cases``, when given, receives {baseline name: its
    per-case test values} (_Cases.score)."""
    data = _checked(data_dir, "test", ks, names)
    if data.num_examples("val") == 0:
        raise InputError(f"{data.path}: no validation window to tune on (prepared with --split.val_days 0); prepare it "
                         f"with --split.val_days > 0 or run baselines without --tune")
    protocol, _, k = _parse_metric(metric, data.vocab["num_items"] - FIRST_ITEM)
    history = history or data.default_history
    val, test = _Cases(data, "val", history, limit=TUNE_CASES), _Cases(data, "test", history)
    results = {}
    for cls in ALL:
        if names and cls.name not in names:
            continue
        grid = cls.grid(data)
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
        best, best_value = points[0], -np.inf
        bar = tqdm(total=len(points), desc=f"tune {cls.name}", disable=not progress, leave=False)
        fitted_key, baseline = None, None  # one fitted model held at a time
        for point in points:
            fit_key = tuple((name, value) for name, value in point.items() if name not in cls.RANK_PARAMS)
            if fit_key != fitted_key:
                fitted_key, baseline = fit_key, cls(**dict(fit_key)).fit(data)
            for name, value in point.items():
                setattr(baseline, name, value)
            value = val.score(baseline, [k], (protocol,))[metric]
            if value > best_value:
                best, best_value = point, value
            bar.update()
        bar.close()
        baseline = cls(**best).fit(data)
        kept = {} if cases is not None else None
        results[cls.name] = {**test.score(baseline, ks, cases=kept), "params": baseline.params(),
                             "tuning": {"metric": metric, "value": best_value, "points": len(points)}}
        if cases is not None:
            cases[cls.name] = kept
    return results
