"""Benchmark of the data layer: prepare against a bare pyarrow scan, peak memory, DataModule speed.

    python bench/bench_data.py [--rows 50000000] [--users 10000] [--items 1000000] [--repeat 2]

1. Synthesises the dataset (once; kept in --workdir, ``common.synthetic_raw``) and a quarter-size twin
   for the memory slope.
2. Side by side, ``--repeat`` times: a bare scan (``ParquetFile.read_row_group`` over every row group,
   nothing else) of the events file, and of all four input files; then ``lightning-tt data prepare`` in
   a fresh process, whose peak RSS comes from ``os.wait4``. The ratio uses the best time of each.
3. YambdaDataModule: training examples/s at batch 4096 and history 50 (batch assembly only).
4. Writes its section of docs/benchmarks.md (between the bench_data markers) with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS, DATA_TWIN, GIB, add_twin_arguments, machine, synthetic_raw, write_section  # noqa: E402

from lightning_tt.data import schema  # noqa: E402
from lightning_tt.data.schema import EVENT_COLUMNS  # noqa: E402
from lightning_tt.data.synth import size_label  # noqa: E402


def scan(path: Path, columns=None) -> int:
    pf = pq.ParquetFile(path)
    return sum(pf.read_row_group(g, columns=columns).num_rows for g in range(pf.num_row_groups))


def bare_scan_seconds(raw: Path, size: str) -> tuple[float, float]:
    """(events file only, all four inputs) seconds for a bare read of the columns prepare reads."""
    start = time.perf_counter()
    scan(schema.events_path(raw, size), EVENT_COLUMNS)
    events = time.perf_counter() - start
    emb = raw / schema.EMBEDDINGS_FILE
    scan(emb, ["item_id", schema.embedding_column(pq.read_schema(emb), emb)])
    scan(raw / schema.ARTIST_FILE)
    scan(raw / schema.ALBUM_FILE)
    return events, time.perf_counter() - start


def prepare_in_child(raw: Path, out: Path) -> tuple[float, float, dict]:
    """Run prepare in a fresh process; return (wall seconds, peak RSS bytes, meta.json)."""
    cmd = [sys.executable, "-m", "lightning_tt.cli", "data", "prepare", "--raw", str(raw), "--out", str(out),
           "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"prepare failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024, json.loads((out / "meta.json").read_text())


def datamodule_speed(prepared: Path, batch_size: int, history: int, batches: int, workers: int) -> float:
    from lightning_tt.data.datamodule import YambdaDataModule

    dm = YambdaDataModule(str(prepared), batch_size=batch_size, history=history, num_workers=workers)
    loader = iter(dm.train_dataloader())
    for _ in range(3):  # warm-up: page cache, worker start
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_twin_arguments(p, "runs/bench/data", DATA_TWIN, data=False)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    work = Path(args.workdir)

    runs = {}
    for rows in (args.rows // 4, args.rows):
        raw, size = synthetic_raw(work, rows, args.users, args.items)
        best = {"scan_events": float("inf"), "scan_all": float("inf"), "prepare": float("inf"), "rss": 0}
        for r in range(args.repeat if rows == args.rows else 1):
            events_s, all_s = bare_scan_seconds(raw, size)
            wall, rss, meta = prepare_in_child(raw, work / f"prepared-{size}")
            print(f"{size} run {r}: scan events {events_s:.2f} s, scan inputs {all_s:.2f} s, prepare {wall:.2f} s "
                  f"(stages {meta['stage_seconds']}), peak RSS {rss / GIB:.2f} GiB")
            if wall < best["prepare"]:
                best["prepare"], best["meta"] = wall, meta  # stage times of the fastest run
            best.update(scan_events=min(best["scan_events"], events_s), scan_all=min(best["scan_all"], all_s),
                        rss=max(best["rss"], rss))
        runs[rows] = best

    big, small = runs[args.rows], runs[args.rows // 4]
    prepared = work / f"prepared-{size_label(args.rows)}"
    speeds = {w: datamodule_speed(prepared, 4096, 50, args.batches, w) for w in (0, 1)}
    for w, s in speeds.items():
        print(f"DataModule, {w} workers: {s:,.0f} examples/s")

    slope = (big["rss"] - small["rss"]) / (args.rows - args.rows // 4)  # bytes per extra input row
    meta = big["meta"]
    v = meta["vocab"]
    events_s = meta["stage_seconds"]["events"]
    audio_here = v["num_items"] * v["audio_dim"] * 2
    audio_500m = 3_000_000 * 128 * 2
    mappings_extra = (9_400_000 - args.items) * 2 * 24  # two mapping files, ~24 bytes per row while joined
    projected = big["rss"] + max(slope, 0) * (480_255_564 - args.rows) + audio_500m - audio_here + mappings_extra
    text = f"""## Data layer: prepare and DataModule

Measured {dt.date.today().isoformat()} on {machine()}; `python bench/bench_data.py --rows {args.rows} --users {args.users} --items {args.items}`.
Synthetic twin of {args.rows:,} rows ({args.users:,} users, {args.items:,} items; {v['num_items']:,} items in the training vocabulary).
Times are the best of {args.repeat} side-by-side runs; the machine is shared, so only the ratios carry over.

| step | seconds | rows/s | ratio to the bare events scan | ratio to the bare scan of all inputs |
|---|---|---|---|---|
| bare scan, events file (the 6 columns prepare reads) | {big['scan_events']:.2f} | {args.rows / big['scan_events'] / 1e6:.1f} M | 1.0 | |
| bare scan, all four input files | {big['scan_all']:.2f} | | {big['scan_all'] / big['scan_events']:.1f} | 1.0 |
| prepare, events pass only (`stage_seconds.events`) | {events_s:.2f} | {args.rows / events_s / 1e6:.1f} M | {events_s / big['scan_events']:.1f} | |
| `lightning-tt data prepare`, whole (fresh process, imports included) | {big['prepare']:.2f} | {args.rows / big['prepare'] / 1e6:.1f} M | {big['prepare'] / big['scan_events']:.1f} | {big['prepare'] / big['scan_all']:.1f} |

Prepare stages (seconds, from meta.json): {meta['stage_seconds']}. The events pass grows with rows; the
items stage (remap of the stream, joins of the artist, album and audio files) grows with the catalogue
and the embeddings file, which is the same 7.7M-row file for every Yambda size.

Peak RSS of prepare: {big['rss'] / GIB:.2f} GiB at {args.rows:,} rows and {small['rss'] / GIB:.2f} GiB at {args.rows // 4:,} rows
(same users and items, highest of the runs): a slope of {slope:.2f} bytes per input row, that is
{(big['rss'] - small['rss']) / 2**20:+.0f} MiB for 4x the rows, within run-to-run noise.
Memory model for `flat/500m` (480M rows, 3M items, 9.4M-row mapping files): the measured peak, plus the
larger item audio table held before it is written (3M x 128 bfloat16 = {audio_500m / GIB:.2f} GiB instead of
{audio_here / GIB:.2f} GiB here), plus the larger mapping files during their join (~{mappings_extra / GIB:.2f} GiB),
plus rows x max(slope, 0): about {projected / GIB:.1f} GiB, far under 24 GiB. The outputs are appended to files
as the pass goes (on disk and in the page cache, not in the process): 10 bytes per listen for the stream
and 4 per example.

DataModule (training batches of 4096 examples, history 50, assembly only, no model):

| DataLoader workers | examples/s |
|---|---|
| 0 (in the training process) | {speeds[0]:,.0f} |
| 1 | {speeds[1]:,.0f} |
"""
    write_section(Path(args.out), text, marker="bench_data")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
