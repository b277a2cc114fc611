"""PNG figures of a test run: Recall@k against k (model and baselines) and the ANN speed/recall
trade-off over nprobe. Written with matplotlib's Agg backend to a temporary name, then renamed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_tt.outputs import Output  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (a figure of this run's own directory: replaced if present)."""
    with Output(path, "file", option=path.name, overwrite=True).writing() as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def recall_curves(curves: dict[str, dict[int, float]], path: Path, title: str = "next-track Recall@k") -> Path:
    """One line per model or baseline: ``curves[name][k] = Recall@k``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ks = sorted(values)
        ax.plot(ks, [values[k] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: no line hidden
    return _save(fig, path)


def ann_tradeoff(points: list[tuple[int, float, float]], path: Path, factory: str, parameter: str = "nprobe") -> Path:
    """``points`` = (value of ``parameter`` (nprobe or efSearch), queries per second, ANN/exact Recall@k ratio)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    qps, ratio = [p[1] for p in points], [p[2] for p in points]
    ax.plot(ratio, qps, marker="o")
    for value, q, r in points:
        ax.annotate(f"{parameter} {value}", (r, q), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_yscale("log")
    ax.set_xlabel("ANN / exact Recall@k")
    ax.set_ylabel("queries per second")
    ax.set_title(f"{factory}: speed against recall")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)
