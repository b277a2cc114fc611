"""The whole pipeline at the Yambda flat/50m shape, stage by stage, with a scaling series: wall time and
peak memory of every command a user runs, on this machine.

    python bench/bench_scale.py                       # the demo twin, then 1/4, 1/2 and the full 50m shape
    python bench/bench_scale.py --fractions 0.25      # one size only (the demo reference always runs)
    python bench/bench_scale.py --stages prepare fit  # some stages only (each needs the ones before it)
    python bench/bench_scale.py --timeout 1800        # stop any stage after 30 min (its row shows "> 30 min")

Shapes: ``FULL`` is Yambda flat/50m's (10,000 users, 934,000 items, 48M events with the real event mix
and 82% audio coverage, common.synthetic_raw); a fraction f scales users, items and rows by f; the
demo twin (``lightning-tt demo``'s data, common.DEMO_TWIN) is the reference row. Every stage is the
``lightning-tt`` command itself, in a fresh process, in this order:

- ``prepare``: ``data prepare`` of the raw twin;
- ``baselines``: ``baselines`` with the defaults (every baseline, test window);
- ``tune``: ``baselines --tune`` with the default grids;
- ``fit``: ``fit`` of configs/demo.yaml for ``--fit_steps`` steps, no validation; examples/s over the
  steps after 3 warm-up ones (bench_train.Timer), and one epoch's time extrapolated from it;
- ``fit_sparse``: the same with ``--model.sparse_embeddings true`` (SparseAdam for the id tables);
- ``validate`` and ``test``: the validation and test epochs alone (index build over the catalogue,
  search, both protocols' metrics) on fit's checkpoint;
- ``validate_sampled``: ``validate`` on the sample of the validation window that configs/yambda-50m.yaml
  takes (``data.val_cases``);
- ``export``: ``export`` with calibration to ``--target_overlap``;
- ``recommend``: ``recommend --batch`` on ``--requests`` random known (user, seed) requests, k 100.

The index is the large configs' (auto-sized fast-scan IVF-PQ with exact re-ranking, calibrated to
``--target_overlap``), the model configs/demo.yaml's (the 2-core CPU config). Peak memory is the
largest sum of the RSS of the command's process tree (DataLoader workers included), sampled every
0.1 s with psutil, and at least the kernel's ``ru_maxrss`` of the largest process. Results go to
docs/benchmarks.md (section bench_scale) and, as JSON, to ``--workdir``/results.json; a stage already
measured there (same shape and options) is not run again unless ``--rerun``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS, DEMO_TWIN, GIB, ROOT, machine, synthetic_raw, write_section  # noqa: E402

#: Yambda flat/50m: 10k users, 934k items, ~48M events (46.5M listens plus likes and dislikes).
FULL = {"rows": 48_000_000, "users": 10_000, "items": 934_000}
STAGES = ("prepare", "baselines", "tune", "fit", "fit_sparse", "validate", "validate_sampled", "test", "export",
          "recommend")
#: The large configs' index (configs/yambda-50m.yaml): options chosen from the catalogue, calibrated.
INDEX = ["--index.kind", "ivfpqfs"]


def shape(fraction: float | None) -> dict[str, int]:
    """The twin's rows, users, items: FULL scaled by ``fraction``, or the demo twin's for None."""
    if fraction is None:
        return dict(DEMO_TWIN)
    return {k: int(round(v * fraction)) for k, v in FULL.items()}


def measure(cmd: list[str], log: Path, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd``; return {"seconds", "peak_gib"} (peak: the largest RSS sum over its process tree,
    sampled every 0.1 s, at least the largest process's ru_maxrss). Its output goes to ``log``; a
    failure raises with the log's last lines. Past ``timeout`` seconds the process tree is killed and
    the figures so far come back with ``"timed_out": True``."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        peak, done, killed = [0], threading.Event(), threading.Event()

        def sample():
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
                    if timeout is not None and time.perf_counter() - start > timeout and not killed.is_set():
                        killed.set()
                        for p in reversed(tree):  # children first: no orphaned DataLoader workers
                            with contextlib.suppress(psutil.Error):
                                p.kill()
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    peak_bytes = max(peak[0], usage.ru_maxrss * 1024)
    if killed.is_set():
        print(f"  stopped after {seconds:.1f} s (--timeout), peak {peak_bytes / GIB:.2f} GiB", flush=True)
        return {"seconds": round(seconds, 2), "peak_gib": round(peak_bytes / GIB, 3), "timed_out": True}
    if status != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd)} failed (status {status}); the end of {log}:\n{tail}")
    print(f"  {seconds:.1f} s, peak {peak_bytes / GIB:.2f} GiB", flush=True)
    return {"seconds": round(seconds, 2), "peak_gib": round(peak_bytes / GIB, 3)}


def large_config_val_cases() -> int:
    """``data.val_cases`` of configs/yambda-50m.yaml: the sample the large configs validate on."""
    import yaml

    return int(yaml.safe_load((ROOT / "configs" / "yambda-50m.yaml").read_text())["data"]["val_cases"])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_tt.cli", *args]


def write_requests(data: Path, path: Path, n: int) -> None:
    """n random (known raw user, known raw seed item) pairs, seed 0, as recommend --batch reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lightning_tt.data.prepared import FIRST_ITEM, PreparedData

    prepared = PreparedData(data)
    rng = np.random.default_rng(0)
    users = np.asarray(prepared["user_ids"], dtype=np.int64)[FIRST_ITEM:]
    items = np.asarray(prepared["item_ids"], dtype=np.int64)[FIRST_ITEM:]
    pq.write_table(pa.table({"user": rng.choice(users, n), "seed_item": rng.choice(items, n)}), path)


def run_stages(name: str, size: dict, work: Path, args, results: dict) -> None:
    """Every stage of ``args.stages`` on the twin of ``size`` in ``work``; results[name][stage] = its figures."""
    from lightning_tt.data.prepared import PreparedData

    raw, _ = synthetic_raw(work, **size)
    data, runs = work / "prepared", work / "runs"
    mine = results.setdefault(name, {"shape": size})
    config = str(ROOT / "configs" / "demo.yaml")
    model = ["--config", config, "--data.data_dir", str(data), "--trainer.enable_progress_bar", "false",
             "--trainer.logger.init_args.save_dir", str(runs),
             *[f"--retrieval.{o[2:]}" if o.startswith("--") else o for o in INDEX],
             "--retrieval.index.nlist", "null", "--retrieval.index.nprobe", "null",
             "--retrieval.index.target_overlap", str(args.target_overlap)]
    ckpt = runs / "fit.ckpt"

    def timer(stage: str) -> list[str]:  # bench_train.Timer's figures of the stage go to work/STAGE_time.json
        return ["--trainer.callbacks+=bench_train.Timer", "--trainer.callbacks.out", str(work / f"{stage}_time.json")]

    commands = {
        "prepare": cli("data", "prepare", "--raw", str(raw), "--out", str(data), "--overwrite", "true"),
        "baselines": cli("baselines", "--data", str(data), "--out", str(work / "baselines" / "metrics.json"),
                         "--overwrite", "true"),
        "tune": cli("baselines", "--data", str(data), "--tune", "true", "--out", str(work / "tune" / "metrics.json"),
                    "--overwrite", "true"),
        "fit": cli("fit", *model, *timer("fit"), "--trainer.max_steps", str(args.fit_steps),
                   "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"),
        "fit_sparse": cli("fit", *model, *timer("fit_sparse"), "--trainer.max_steps", str(args.fit_steps),
                          "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                          "--model.sparse_embeddings", "true", "--trainer.logger.init_args.save_dir",
                          str(work / "runs-sparse")),
        "validate": cli("validate", *model, *timer("validate"), "--ckpt_path", str(ckpt)),
        "validate_sampled": cli("validate", *model, *timer("validate_sampled"), "--ckpt_path", str(ckpt),
                                "--data.val_cases", str(large_config_val_cases())),
        "test": cli("test", *model, *timer("test"), "--ckpt_path", str(ckpt)),
        "export": cli("export", "--ckpt_path", str(ckpt), "--out", str(work / "export"), "--overwrite", "true",
                      *INDEX, "--index.target_overlap", str(args.target_overlap)),
        "recommend": cli("recommend", "--index", str(work / "export"), "--ckpt_path", str(ckpt), "--batch",
                         str(work / "requests.parquet"), "--out", str(work / "top.parquet"), "--k", "100",
                         "--overwrite", "true"),
    }
    for stage in args.stages:
        if stage in mine and not args.rerun:
            continue
        if stage == "recommend":
            write_requests(data, work / "requests.parquet", args.requests)
        env = {"WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "bench")}
        figures = measure(commands[stage], work / "logs" / f"{stage}.log", env, args.timeout)
        if figures.get("timed_out"):  # kept as measured (a lower bound): --rerun runs it again
            mine[stage] = figures
            save(results, args)
            continue
        if stage == "prepare":
            prepared = PreparedData(data)
            mine["vocab"] = {k: int(prepared.vocab[k]) for k in ("num_users", "num_items")}
            mine["examples"] = {split: int(prepared.num_examples(split)) for split in ("train", "val", "test")}
        if stage in ("validate", "validate_sampled", "test"):  # the loop alone, without start and imports
            key = f"{'validate' if stage == 'validate_sampled' else stage}_seconds"  # the Timer's: by loop
            figures["loop_s"] = round(json.loads((work / f"{stage}_time.json").read_text())[key], 2)
        if stage in ("fit", "fit_sparse"):
            speed = json.loads((work / f"{stage}_time.json").read_text())
            figures["examples_per_s"] = round(speed["examples"] / speed["seconds"], 1)
            figures["epoch_s"] = round(mine["examples"]["train"] / figures["examples_per_s"], 1)
        if stage == "fit":
            last = next(runs.rglob("last.ckpt"))
            os.replace(last, ckpt)  # one checkpoint for the later stages, whatever the run's id
        mine[stage] = figures
        save(results, args)


def save(results: dict, args) -> None:
    path = Path(args.workdir) / "results.json"
    path.write_text(json.dumps(results, indent=1))


def human(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def report(results: dict, args) -> str:
    names = [n for n in ("demo", *(f"x{f:g}" for f in args.fractions)) if n in results]
    head = "| stage | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    row("users / items / rows", lambda r: f"{r['shape']['users']:,} / {r['shape']['items']:,} / "
        f"{r['shape']['rows'] / 1e6:g}M")
    row("training examples", lambda r: f"{r['examples']['train']:,}" if "examples" in r else "")
    for stage in STAGES:
        row(f"{stage}: time, peak GiB", lambda r, s=stage: f"{'> ' if r[s].get('timed_out') else ''}"
            f"{human(r[s]['seconds'])}, {r[s]['peak_gib']:.2f}" if s in r else "")
    def figure(r: dict, stage: str, name: str):  # None where the stage was not measured or was stopped
        return r.get(stage, {}).get(name)

    demo = results.get("demo", {})
    for stage in ("fit", "fit_sparse"):
        row(f"{stage}: examples/s", lambda r, s=stage: f"{figure(r, s, 'examples_per_s'):,.0f}"
            if figure(r, s, "examples_per_s") else "")
        row(f"{stage}: one epoch (extrapolated)", lambda r, s=stage: human(figure(r, s, "epoch_s"))
            if figure(r, s, "epoch_s") else "")
        row(f"{stage}: examples/s ÷ the demo's dense fit", lambda r, s=stage:
            f"{figure(r, s, 'examples_per_s') / figure(demo, 'fit', 'examples_per_s'):.2f}"
            if figure(r, s, "examples_per_s") and figure(demo, "fit", "examples_per_s") else "")
    for loop, label in (("validate", "validation loop alone"),
                        ("validate_sampled", f"validation loop, {large_config_val_cases():,} sampled cases")):
        row(label, lambda r, v=loop: human(figure(r, v, "loop_s")) if figure(r, v, "loop_s") else "")
        for stage in ("fit", "fit_sparse"):
            row(f"{label} ÷ one {stage} epoch", lambda r, s=stage, v=loop:
                f"{figure(r, v, 'loop_s') / figure(r, s, 'epoch_s'):.3f}"
                if figure(r, v, "loop_s") and figure(r, s, "epoch_s") else "")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 1.0],
                   help="sizes of the series, as fractions of the 50m shape")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--fit_steps", type=int, default=40)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--target_overlap", type=float, default=0.98)
    p.add_argument("--workdir", default="runs/bench/scale")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop a stage after this many seconds; the table shows '> time' (default: no limit)")
    p.add_argument("--rerun", action="store_true", help="run stages already in --workdir/results.json again")
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, fraction in (("demo", None), *((f"x{f:g}", f) for f in args.fractions)):
        size = shape(fraction)
        if results.get(name, {}).get("shape") not in (None, size):
            results.pop(name)  # another shape under this name: measured again
        run_stages(name, size, work / name, args, results)
    text = f"""## The 50m shape, end to end, with a scaling series (cpu)

Measured {dt.date.today().isoformat()} on {machine()}; `python bench/bench_scale.py` (fit {args.fit_steps} steps,
recommend {args.requests:,} requests, index calibrated to {args.target_overlap}). Columns: the demo twin and
fractions of Yambda flat/50m's shape (x1 = 10,000 users, 934,000 items, 48M events). Every stage is the
`lightning-tt` command in a fresh process (imports included); time is its wall time, peak the
largest RSS of its process tree. A time with `>`: the stage was stopped there (`--timeout`). Blank:
not measured. `fit_sparse` is `fit` with `--model.sparse_embeddings true`. What the figures showed,
what was fixed and the 500m/5b model: [scaling.md](scaling.md).

{report(results, args)}
"""
    write_section(Path(args.out), text, marker="bench_scale")
    print(text)


if __name__ == "__main__":
    main()
