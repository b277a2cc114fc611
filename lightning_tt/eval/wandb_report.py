"""What a test run adds to W&B beyond its scalar metrics: the Recall@k-vs-k curve (exact and ANN), the
run's figures (Recall@k with baselines, ANN speed/recall over nprobe) and a table of sample
recommendations (user, seed track, top items, true item; raw Yambda ids)."""

from __future__ import annotations

import numpy as np

from lightning_tt.eval.metrics import metric_name


def log_test_report(logger, values: dict[str, float], ks: list[int], samples: dict[str, np.ndarray] | None,
                    figures: list | None = None) -> None:
    """Log to a Lightning WandbLogger (nothing is written when W&B is disabled)."""
    import wandb

    rows = [[k, values.get(metric_name("test", "next", "recall", k, exact=True)),
             values.get(metric_name("test", "next", "recall", k))] for k in sorted(ks)]
    curve = wandb.Table(columns=["k", "exact_recall", "ann_recall"], data=rows)
    payload = {"test/next/recall_curve": wandb.plot.line(curve, "k", "exact_recall", title="next-track Recall@k")}
    if samples is not None:
        table = wandb.Table(columns=["uid", "seed_item_id", "top_item_ids", "true_item_id", "hit"])
        for uid, seed, top, true in zip(samples["uid"], samples["seed"], samples["top"], samples["true"]):
            table.add_data(int(uid), int(seed), " ".join(map(str, top)), int(true), bool(true in top))
        payload["test/sample_recommendations"] = table
    for figure in figures or []:  # recall_at_k.png, ann_tradeoff.png
        payload[f"test/figures/{figure.stem}"] = wandb.Image(str(figure))
    logger.experiment.log(payload)
