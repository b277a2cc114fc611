"""Metrics of both protocols against values worked by hand (see lightning_tt/eval/metrics.py)."""

import math

import pytest
import torch

from lightning_tt.eval.metrics import (
    NextTrackRecall,
    PaperMetrics,
    comparison_columns,
    metric_name,
    parse_metric_name,
    score_lists,
)
from lightning_tt.eval.table import print_table

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


def test_next_track_recall():
    metric = NextTrackRecall([1, 2, 3])
    metric.update(torch.tensor([[5, 6, 7], [7, 8, 9]]), torch.tensor([6, 1]))
    metric.update(torch.tensor([[4, 2, 3]]), torch.tensor([4]))
    # case 1: target at rank 2; case 2: never; case 3: rank 1.
    assert {k: v.item() for k, v in metric.compute().items()} == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3})


def test_paper_metrics_by_hand():
    # 10 items (8 training items: 2..9). A: list 5, 6, 7 with targets 6, 6, 9 (repeats kept);
    # B: list 2, 3, 4 with target 4; C: list 8, 9, 5 without targets (left out of Recall and NDCG).
    top = torch.tensor([[5, 6, 7], [2, 3, 4], [8, 9, 5]])
    targets = torch.tensor([[6, 6, 9], [4, 0, 0], [0, 0, 0]])
    count = torch.tensor([3, 1, 0])
    metric = PaperMetrics([2, 3], num_items=10)
    metric.update(top[:2], targets[:2], count[:2])  # in two batches: states add up
    metric.update(top[2:], targets[2:], count[2:])
    out = {name: {k: v.item() for k, v in values.items()} for name, values in metric.compute().items()}
    # Recall@2: A finds 6 twice of 3 targets -> 2/3, B 0 -> 1/3. Recall@3: A 2/3, B 1 -> 5/6.
    assert out["recall"] == pytest.approx({2: 1 / 3, 3: 5 / 6})
    # DCG@2: A 1/log2(3) (rank 2), B 0; IDCG@2: A 1 + 1/log2(3) (min(3, 2) = 2), B 1.
    # DCG@3: A 1/log2(3), B 1/log2(4); IDCG@3: A 1 + 1/log2(3) + 1/log2(4), B 1.
    assert out["ndcg"][2] == pytest.approx((1 / L3) / (1 + 1 / L3 + 1))
    assert out["ndcg"][3] == pytest.approx((1 / L3 + 1 / L4) / (1 + 1 / L3 + 1 / L4 + 1))
    # Coverage: top-2 {5, 6, 2, 3, 8, 9} of 8 items; top-3 adds 7 and 4: all 8.
    assert out["coverage"] == pytest.approx({2: 6 / 8, 3: 1.0})


def test_paper_metrics_chunking_does_not_change_results():
    generator = torch.Generator().manual_seed(0)
    top = torch.stack([torch.randperm(50, generator=generator)[:20] + 2 for _ in range(64)])
    targets = torch.randint(2, 52, (64, 30), generator=generator)
    count = torch.randint(0, 31, (64,), generator=generator)
    whole, chunked = PaperMetrics([5, 20], 52), PaperMetrics([5, 20], 52)
    whole.update(top, targets, count)
    for i in range(0, 64, 7):
        chunked.update(top[i : i + 7], targets[i : i + 7], count[i : i + 7])
    a, b = whole.compute(), chunked.compute()
    assert all(torch.allclose(a[m][k], b[m][k]) for m in a for k in a[m])


def test_metric_names_round_trip():
    assert metric_name("val", "next", "recall", 100, exact=True) == "val/next/exact_recall@100"
    assert metric_name("test", "paper", "ndcg", 10) == "test/paper/ndcg@10"
    assert parse_metric_name("val/next/exact_recall@100") == ("val", "next", "recall", 100, True)
    assert parse_metric_name("test/paper/coverage@50") == ("test", "paper", "coverage", 50, False)
    assert parse_metric_name("val/index/nprobe") is None and parse_metric_name("val/next/recall") is None


def test_score_lists_names_both_protocols():
    # The hand-worked cases above, through the one helper: names carry the stage and exact_.
    values = score_lists("test", [1, 2], 10, next_track=(torch.tensor([[5, 6], [7, 8]]), torch.tensor([6, 1])),
                         paper=(torch.tensor([[5, 6], [2, 3]]), torch.tensor([[6, 6, 9], [4, 0, 0]]),
                                torch.tensor([3, 1])), exact=True)
    assert values["test/next/exact_recall@1"] == 0 and values["test/next/exact_recall@2"] == pytest.approx(1 / 2)
    assert values["test/paper/exact_recall@2"] == pytest.approx(1 / 3)  # A: 2 of 3 targets, B: none
    assert values["test/paper/exact_coverage@2"] == pytest.approx(4 / 8)
    assert {parse_metric_name(name)[2] for name in values} == {"recall", "ndcg", "coverage"}
    only_next = score_lists("val", [1], 10, next_track=(torch.tensor([[6]]), torch.tensor([6])))
    assert only_next == {"val/next/recall@1": 1.0}


def test_comparison_columns_and_table(capsys):
    assert comparison_columns([100, 10]) == [("next", "recall", 10), ("next", "recall", 100), ("paper", "ndcg", 10),
                                             ("paper", "recall", 100)]
    assert comparison_columns([5, 20])[-1] == ("paper", "recall", 20)
    print_table({"Model": {"test/next/exact_recall@5": 0.25, "test/next/recall@5": 0.5},
                 "Baseline": {"test/next/recall@5": 0.125}}, "test", [("next", "recall", 5)], exact_rows=("Model",))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["next/recall@5"]
    assert lines[1].split() == ["Model", "0.2500"] and lines[2].split() == ["Baseline", "0.1250"]


def test_per_case_values_by_hand():
    from lightning_tt.eval.metrics import next_case_hits, paper_case_values

    top = torch.tensor([[5, 6, 7], [7, 5, 6]])
    assert next_case_hits(top, torch.tensor([6, 9]), [1, 2, 3]).tolist() == [[0, 1, 1], [0, 0, 0]]
    # Row 0: targets 6, 6, 9 (6 twice) -> hits@2 = 2 of n = 3; DCG@2 = 1 / log2(3); IDCG@2 = 1 + 1 / log2(3).
    # Row 1: no targets -> zeros.
    recall, dcg, idcg = paper_case_values(top, torch.tensor([[6, 6, 9], [0, 0, 0]]), torch.tensor([3, 0]), [1, 2])
    assert recall.tolist() == [[0.0, pytest.approx(2 / 3)], [0.0, 0.0]]
    assert dcg.tolist() == [[0.0, pytest.approx(1 / math.log2(3))], [0.0, 0.0]]
    assert idcg.tolist() == [[1.0, pytest.approx(1 + 1 / math.log2(3))], [0.0, 0.0]]


def test_case_table_refuses_cutoffs_that_do_not_match_the_kept_values():
    import numpy as np

    from lightning_tt.eval.metrics import case_table

    user_ids = np.array([0, 0, 10, 11])
    # Next-track hits kept at k = 10, 50, 100: the column recall@100 is the third one.
    cases = {"next": (np.array([2, 3]), np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))}
    table = case_table(cases, [10, 50, 100], user_ids, "m", "test")
    assert table["recall@100"].to_pylist() == [1.0, 1.0] and table["recall@50"].to_pylist() == [1.0, 0.0]
    assert table["uid"].to_pylist() == [10, 11]
    with pytest.raises(ValueError, match="next values are \\(3,\\) wide, but ks \\[10, 100\\] need 2"):
        case_table(cases, [10, 100], user_ids, "m", "test")  # would have called the k=50 hits recall@100
    paper = {"paper": (np.array([2]), np.zeros((1, 6)))}  # recall, dcg, idcg at 2 cut-offs
    assert case_table(paper, [10, 100], user_ids, "m", "test").num_rows == 1
    with pytest.raises(ValueError, match="paper values"):
        case_table(paper, [10, 50, 100], user_ids, "m", "test")
