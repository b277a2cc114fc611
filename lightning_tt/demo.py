"""``lightning-tt demo``: the whole pipeline on the embedded default, a synthetic twin small enough for 2
CPU cores (DEMO_SYNTH), from raw parquet to the test table.

    synthesise -> prepare -> fit (configs/demo.yaml) -> baselines -> test the best checkpoint -> table
    -> export the best checkpoint (``workdir/export``, what ``lightning-tt serve --export`` serves)

Each step prints the command that does it alone. What an earlier demo made in the same ``workdir`` is
reused, and a directory the demo did not make is never replaced.
"""

from __future__ import annotations

from pathlib import Path

from lightning_tt.baselines import ALL, evaluate
from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import PreparedData, PreparedDataError
from lightning_tt.data.schema import RawDataError, find_size
from lightning_tt.data.summary import summarize
from lightning_tt.data.synth import synthesize
from lightning_tt.errors import InputError
from lightning_tt.eval.metrics import comparison_columns
from lightning_tt.eval.table import print_table
from lightning_tt.lightning_cli import CONFIGS, lightning_cli
from lightning_tt.outputs import Output
from lightning_tt.runs import run_directory, write_json
from lightning_tt.serve import export

#: The embedded default: a synthetic dataset small enough for 2 CPU cores.
DEMO_SYNTH = {"rows": 300_000, "users": 2_000, "items": 20_000, "days": 30.0, "seed": 0}
#: The baselines the demo runs with their defaults: all but SASRec, a neural model whose training would
#: double the demo's time (``lightning-tt baselines`` and ``--tune`` run it).
DEMO_BASELINES = [cls.name for cls in ALL if cls.name != "SASRec"]


def run_demo(workdir: str | Path, epochs: int | None = None) -> None:
    """Synthesise and prepare the embedded default under ``workdir`` (each only if missing), train it
    with configs/demo.yaml, evaluate the baselines, test the best checkpoint, and print the table."""
    workdir = Path(workdir)
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    raw, prepared = workdir / "raw", workdir / "prepared"
    # The demo reuses what an earlier demo made, and never replaces a directory it did not make.
    try:
        find_size(raw, None)
        print(f"[demo] using the synthetic dataset in {raw}")
    except RawDataError as err:
        if raw.exists():
            raise InputError(f"--workdir {workdir}: {raw} exists but is not a dataset in the Yambda layout ({err}); "
                             f"remove it or choose another --workdir") from err
        print(f"[demo] synthesising {DEMO_SYNTH['rows']:,} events into {raw}")
        synthesize(raw, **DEMO_SYNTH)
    if (prepared / "meta.json").is_file():
        try:
            PreparedData(prepared)
            print(f"[demo] using the prepared arrays in {prepared}")
        except PreparedDataError as err:  # made by an older demo (another schema version) or damaged
            print(f"[demo] {err}: preparing {raw} -> {prepared} again")
            prepare(raw, prepared, config=SplitConfig(), overwrite=True)
    elif prepared.exists():
        raise InputError(f"--workdir {workdir}: {prepared} exists but holds no meta.json; remove it or choose another "
                         f"--workdir")
    else:
        print(f"[demo] preparing {raw} -> {prepared}")
        prepare(raw, prepared, config=SplitConfig())
    print(summarize(str(prepared)))

    config = CONFIGS / "demo.yaml"  # package data: there also outside a checkout
    overrides = ["--data.data_dir", str(prepared), "--trainer.logger.init_args.save_dir", str(workdir / "logs")]
    if epochs is not None:
        overrides += ["--trainer.max_epochs", str(epochs)]
    print(f"[demo] training: lightning-tt fit --config {config} {' '.join(overrides)}")
    fit = lightning_cli(["fit", "--config", str(config), *overrides])
    best = fit.trainer.checkpoint_callback.best_model_path
    run_dir = run_directory(fit.trainer)
    run_config = run_dir / "config.yaml"
    ks = sorted(fit.model.hparams.recall_k)
    baselines_file = workdir / "baselines" / "metrics.json"
    print(f"[demo] baselines: lightning-tt baselines --data {prepared} --k [{','.join(map(str, ks))}] "
          f"--only [{','.join(DEMO_BASELINES)}] --out {baselines_file}")
    baselines = evaluate(str(prepared), "test", ks, DEMO_BASELINES)
    # The demo's own file, made again at every demo run.
    write_json(Output(baselines_file, "file", inputs={"--data": prepared}, overwrite=True), baselines)
    print(f"[demo] testing: lightning-tt test --config {run_config} --ckpt_path {best} "
          f"--report.baselines_file {baselines_file}")
    test = lightning_cli(["test", "--config", str(run_config), "--ckpt_path", best,
                          "--report.baselines_file", str(baselines_file)])
    model = {name: float(value) for name, value in test.trainer.callback_metrics.items()}
    print("[demo] the test split, exact rankings (the model's ANN values are in its metrics.json):")
    print_table({"TwoTower": model, **baselines}, "test", comparison_columns(ks), exact_rows=("TwoTower",))
    export_dir = workdir / "export"
    print(f"[demo] exporting: lightning-tt export --ckpt_path {best} --out {export_dir} --overwrite")
    export(best, export_dir, overwrite=True)  # replaces only an earlier export (export.json), never a run
    print(f"[demo] checkpoint: {best}")
    print(f"[demo] run directory (config, checkpoints, W&B offline run under {workdir / 'logs' / 'wandb'}): {run_dir}")
    print(f"[demo] serve it, with a page to browse listeners: lightning-tt serve --export {export_dir} --open_page")
