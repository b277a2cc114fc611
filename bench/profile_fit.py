"""cProfile of the main process during Trainer.fit (500m preset, GPU): what the training loop waits on."""
import cProfile
import pstats
import sys
import warnings

sys.path.insert(0, "bench")
from bench_train import PRESETS, build_model, fit_loop  # noqa: E402

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402

warnings.filterwarnings("ignore")
dm = YambdaDataModule(sys.argv[1], batch_size=16384, num_workers=int(sys.argv[2]), lean=True, pin_memory=True)
model = build_model(dm, PRESETS["500m"])
profile = cProfile.Profile()
profile.enable()
speed = fit_loop(model, dm, "gpu", "bf16-mixed", 10, 60)
profile.disable()
print(f"fit loop {speed:,.0f} examples/s")
pstats.Stats(profile).sort_stats("tottime").print_stats(14)
