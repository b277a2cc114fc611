"""Profile one training step of the 500m preset on a prepared directory (GPU): where the time goes."""
import sys
import warnings

import torch

sys.path.insert(0, "bench")
from bench_train import PRESETS, build_model  # noqa: E402

from lightning_tt.data.datamodule import YambdaDataModule  # noqa: E402

warnings.filterwarnings("ignore")
dm = YambdaDataModule(sys.argv[1], batch_size=16384, lean=True)
model = build_model(dm, PRESETS["500m"]).cuda().train()
opt = model.configure_optimizers()
loader = iter(dm.train_dataloader())
batches = [{k: v.cuda() for k, v in next(loader).items()} for _ in range(8)]


def step(i, b):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.training_step(b, i)
    loss.backward()
    opt.step()


for i, b in enumerate(batches[:3]):
    step(i, b)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for i, b in enumerate(batches[3:]):
        step(i, b)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=50))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))
