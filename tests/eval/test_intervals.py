"""The user-clustered bootstrap (lightning_tt.eval.intervals) on case tables worked by hand."""

import numpy as np
import pyarrow as pa
import pytest

from lightning_tt.errors import InputError
from lightning_tt.eval.intervals import Estimate, cluster_sums, compare


def table(rows):
    """rows: (system, protocol, case, uid, recall@10[, dcg@10, idcg@10][, window][, seed])."""
    columns = {"system": [], "split": [], "protocol": [], "case": [], "uid": [], "recall@10": [], "dcg@10": [],
               "idcg@10": [], "window": [], "seed": []}
    for row in rows:
        system, protocol, case, uid, recall, dcg, idcg, window, seed = (*row, None, None, 0, 0)[:9] if len(
            row) == 5 else row
        for name, value in zip(columns, (system, "test", protocol, case, uid, recall, dcg, idcg, window, seed)):
            columns[name].append(value)
    return pa.table({name: pa.array(values, pa.float64() if "@" in name else None)
                     for name, values in columns.items()})


def test_the_point_value_is_the_plain_mean_and_ndcg_a_ratio_of_sums():
    cases = table([("A", "next", 0, 5, 1.0), ("A", "next", 1, 5, 0.0), ("A", "next", 2, 7, 1.0),
                   ("A", "paper", 0, 5, 0.5, 0.6, 1.0, 0, 0), ("A", "paper", 1, 7, 1.0, 1.0, 3.0, 0, 0)])
    assert compare(cases, "test/next/recall@10", ["A"]).value["A"].value == pytest.approx(2 / 3)
    assert compare(cases, "test/paper/recall@10", ["A"]).value["A"].value == pytest.approx(0.75)
    # NDCG = (0.6 + 1.0) / (1.0 + 3.0), not the mean of 0.6 and 1/3
    ndcg = compare(cases, "test/paper/exact_ndcg@10", ["A"])
    assert ndcg.value["A"].value == pytest.approx(0.4) and ndcg.users == 2 and ndcg.cases == 2


def test_a_users_cases_are_resampled_together():
    """User 5 holds two hits, user 7 one miss: a replicate draws {5, 5}, {5, 7} or {7, 7}, so Recall is
    1, 2/3 or 0, never the 1/3 that resampling single cases could give; {5, 7} comes half the time."""
    cases = table([("A", "next", 0, 5, 1.0), ("A", "next", 1, 5, 1.0), ("A", "next", 2, 7, 0.0)])
    draws = cluster_sums(cases, "test/next/recall@10", ["A"]).replicates(4000)[:, 0]
    assert set(np.round(draws, 6)) == {0.0, round(2 / 3, 6), 1.0}
    assert np.mean(np.isclose(draws, 2 / 3)) == pytest.approx(0.5, abs=0.03)


def test_seeds_are_averaged_per_case_and_a_user_is_one_cluster_over_windows():
    rows = [("A", "next", 0, 5, 1.0, None, None, 0, 0), ("A", "next", 0, 5, 0.0, None, None, 0, 1),  # seeds: 0.5
            ("A", "next", 0, 5, 1.0, None, None, 1, 0), ("A", "next", 0, 5, 1.0, None, None, 1, 1),  # window 1: 1
            ("A", "next", 1, 9, 0.0, None, None, 1, 0), ("A", "next", 1, 9, 0.0, None, None, 1, 1)]
    sums = cluster_sums(table(rows), "test/next/recall@10", ["A"])
    assert sums.cases == 3 and sums.point()[0] == pytest.approx(1.5 / 3)
    assert sums.values.tolist() == [[1.5, 0.0]] and sums.weights.tolist() == [2.0, 1.0]  # users 5 and 9


def test_paired_differences_and_ratios():
    rng = np.random.default_rng(1)
    hits = rng.random(200) < 0.3
    better = hits | (rng.random(200) < 0.3)  # hits every case A hits, and more
    rows = [(s, "next", c, c // 4, float(v)) for s, values in (("A", hits), ("B", better), ("A2", hits))
            for c, v in enumerate(values)]
    result = compare(table(rows), "test/next/recall@10", ["B", "A2"], reference="A")
    assert result.difference["A2"] == Estimate(0.0, 0.0, 0.0) and result.ratio["A2"].value == 1.0
    assert result.difference["B"].excludes(0) and result.difference["B"].low > 0
    assert result.ratio["B"].low > 1 and result.ratio["B"].value == pytest.approx(better.mean() / hits.mean())
    assert result.value["A"].low < hits.mean() < result.value["A"].high and result.users == 50
    assert result.value["A"].format(3).count("[") == 1


def test_systems_on_other_cases_or_an_unknown_metric_are_refused():
    cases = table([("A", "next", 0, 5, 1.0), ("A", "next", 1, 5, 0.0), ("B", "next", 0, 5, 1.0)])
    with pytest.raises(InputError, match="not scored on the same cases"):
        compare(cases, "test/next/recall@10", ["A", "B"])
    with pytest.raises(InputError, match="no case of system 'C'"):
        compare(cases, "test/next/recall@10", ["C"])
    with pytest.raises(InputError, match="intervals are computed for"):
        compare(cases, "test/paper/coverage@10", ["A"])
    with pytest.raises(InputError, match="no column 'recall@100'"):
        compare(cases, "test/next/recall@100", ["A"])
