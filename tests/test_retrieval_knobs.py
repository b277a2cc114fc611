"""bench/retrieval_knobs.py's choice: every dataset weighs the same (values ÷ the shipped knobs'), the
next-track metrics are read by (h, beta) and the paper one by (h, seedless weight), worked by hand."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import retrieval_knobs as knobs  # noqa: E402

H0, B0, S0 = knobs.SHIPPED_KNOBS


def row(dataset, h, b, s, r10, r100, paper, window=0):
    return {"dataset": dataset, "window": window, "seed": 0, "half_life": h, "weight": b, "seedless": s,
            knobs.NEXT[0]: r10, knobs.NEXT[1]: r100, knobs.PAPER: paper}


def grid(dataset, scale, better=None):
    """Every paired (h, beta_j, s_j) run of one dataset at ``scale``; ``better``: {(h, beta or s): factor}."""
    better = better or {}
    rows = []
    for h in knobs.HALF_LIVES:
        for b, s in zip(knobs.WEIGHTS, knobs.SEEDLESS):
            nb, ps = better.get(("next", h, b), 1.0), better.get(("paper", h, s), 1.0)
            rows.append(row(dataset, h, b, s, 0.1 * scale * nb, 0.5 * scale * nb, 0.2 * scale * ps))
    return rows


def test_the_shipped_knobs_win_when_nothing_is_better():
    best, lines = knobs.choose(grid("a", 1.0) + grid("b", 10.0))
    # Every objective ties at 1.0: a tie keeps what ships.
    assert best == knobs.SHIPPED_KNOBS
    assert "| 4 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in lines


def test_each_dataset_weighs_the_same_and_the_weights_are_read_apart():
    # Dataset a (values 10x smaller) gains 30% at (h 8, beta 1); dataset b loses 10% there.
    # Next ratio at (8, 1): mean(1.3, 1.3, 0.9, 0.9) = 1.1, above any other (1.0).
    # Paper: (h 8, seedless 3) gains 20% on b only: mean(1.0, 1.2) = 1.1; at h 8 the other seedless weights give 1.0.
    a = grid("a", 1.0, {("next", 8.0, 1.0): 1.3})
    b = grid("b", 10.0, {("next", 8.0, 1.0): 0.9, ("paper", 8.0, 3.0): 1.2})
    best, lines = knobs.choose(a + b)
    assert best == (8.0, 1.0, 3.0)
    # (2 * 1.1 + 1.1) / 3 = 1.1
    assert lines[-1].endswith("(objective 1.100; the shipped knobs' is 1.000).")
    assert "| 8 | 1.000 | 1.000 | 1.000 | 1.100 | 1.000 | 1.000 |" in lines


def test_means_pool_windows_before_the_ratio():
    # Two windows of one dataset: the shipped knobs' next R@100 is 0.4 and 0.6 (mean 0.5), the candidate's
    # 0.6 and 0.6 (mean 0.6): ratio 1.2 at R@100; R@10 unchanged: next ratio (1 + 1.2) / 2 = 1.1.
    rows = []
    for window, (shipped, other) in enumerate([(0.4, 0.6), (0.6, 0.6)]):
        for h in knobs.HALF_LIVES:
            for b, s in zip(knobs.WEIGHTS, knobs.SEEDLESS):
                r100 = other if (h, b) == (2.0, 1.5) else shipped
                rows.append(row("a", h, b, s, 0.1, r100, 0.2, window=window))
    best, lines = knobs.choose(rows)
    assert best[:2] == (2.0, 1.5)
    assert "| 2 | 1.000 | 1.000 | 1.000 | 1.000 | 1.100 | 1.000 |" in lines
