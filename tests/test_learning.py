"""It must learn: on the embedded synthetic default the trained two-tower model clearly beats MostPop
and seed-to-next transition counts on next-track Recall@10 and Recall@100 (slow: about a minute)."""

import pytest

from lightning_tt.baselines import evaluate
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.synth import synthesize
from lightning_tt.demo import DEMO_SYNTH
from lightning_tt.lightning_cli import lightning_cli


@pytest.mark.slow
def test_two_tower_beats_popularity_and_transitions(tmp_path):
    synthesize(tmp_path / "raw", **DEMO_SYNTH, progress=False)
    prepare(tmp_path / "raw", tmp_path / "prepared", config=SplitConfig(), progress=False)
    from lightning_tt.lightning_cli import CONFIGS

    args = ["--config", str(CONFIGS / "demo.yaml"), "--data.data_dir", str(tmp_path / "prepared"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false"]
    fit = lightning_cli(["fit", *args])
    test = lightning_cli(["test", *args, "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path])
    model = {k: float(test.trainer.callback_metrics[f"test/next/exact_recall@{k}"]) for k in (10, 100)}
    found = evaluate(str(tmp_path / "prepared"), "test", [10, 100], names=["MostPop", "Transitions"])
    base = {name: {k: found[name][f"test/next/recall@{k}"] for k in (10, 100)} for name in found}
    # Measured (2 epochs): model 0.43 / 0.69, Transitions 0.38 / 0.46, MostPop 0.03 / 0.11.
    assert model[10] > 1.05 * base["Transitions"][10] and model[100] > 1.3 * base["Transitions"][100]
    assert model[10] > 5 * base["MostPop"][10] and model[100] > 3 * base["MostPop"][100]
