"""Cost of dropping exact duplicate events in prepare's events pass, side by side in one process.

    python bench/bench_dedupe.py [--rows 50000000] [--users 10000] [--items 1000000] [--rounds 3]

Prepares the same synthetic twin (bench_data.py's, ``common.synthetic_raw``: synthesised once into
--workdir) alternately with the duplicate check switched off (both halves replaced by no-ops) and on,
``--rounds`` times, and compares the best ``stage_seconds.events`` of each. Also prepares a copy of the
events with every row written twice, to show the cost when there is something to drop. Writes its
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS, DATA_TWIN, add_twin_arguments, machine, synthetic_raw, write_section  # noqa: E402

from lightning_tt.data import prepare as prepare_module  # noqa: E402
from lightning_tt.data import schema  # noqa: E402
from lightning_tt.data.prepared import PreparedData  # noqa: E402


def no_duplicates(*columns) -> np.ndarray:
    return np.zeros(0, dtype=np.intp)


def events_seconds(raw: Path, out: Path, check: bool) -> float:
    real_rows, real_carried = prepare_module._duplicate_rows, prepare_module._EventPass._drop_carried_duplicates
    if not check:
        prepare_module._duplicate_rows = no_duplicates
        prepare_module._EventPass._drop_carried_duplicates = lambda self, g: g
    try:
        meta = prepare_module.prepare(raw, out, overwrite=True, progress=False)
    finally:
        prepare_module._duplicate_rows, prepare_module._EventPass._drop_carried_duplicates = real_rows, real_carried
    return meta["stage_seconds"]["events"]


def doubled_copy(raw: Path, size: str, work: Path) -> Path:
    """``raw`` with every events row written twice (the side files linked), made once."""
    copy = work / f"doubled-{size}"
    events = schema.events_path(copy, size)
    if not events.is_file():
        events.parent.mkdir(parents=True, exist_ok=True)
        for side in schema.side_paths(raw).values():
            (copy / side.name).unlink(missing_ok=True)
            (copy / side.name).symlink_to(side)
        pf = pq.ParquetFile(schema.events_path(raw, size))
        with pq.ParquetWriter(events, pf.schema_arrow) as writer:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                writer.write_table(table.take(np.repeat(np.arange(table.num_rows), 2)))
    return copy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_twin_arguments(p, "runs/bench/data", DATA_TWIN, data=False)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(BENCHMARKS))
    args = p.parse_args()
    work = Path(args.workdir)
    raw, size = synthetic_raw(work, args.rows, args.users, args.items)
    doubled = doubled_copy(raw, size, work)

    best = {"off": float("inf"), "on": float("inf"), "doubled": float("inf")}
    for r in range(args.rounds):
        for name, data, check in (("off", raw, False), ("on", raw, True), ("doubled", doubled, True)):
            start = time.perf_counter()
            seconds = events_seconds(data, work / f"dedupe-{name}", check)
            best[name] = min(best[name], seconds)
            print(f"round {r} {name}: events pass {seconds:.2f} s (whole prepare {time.perf_counter() - start:.1f} s)")
    dropped = {name: PreparedData(work / f"dedupe-{name}").counts["duplicate_events_dropped"] for name in ("on", "doubled")}
    text = f"""## Exact duplicate events: the cost of dropping them in prepare

Measured {dt.date.today().isoformat()} on {machine()}; `python bench/bench_dedupe.py --rows {args.rows}`.
The events pass of `prepare` (`stage_seconds.events`) on the {args.rows:,}-row synthetic twin, best of
{args.rounds} alternating rounds in one process:

| events pass | seconds | ratio to the pass without the check |
|---|---|---|
| duplicate check switched off | {best['off']:.2f} | 1.00 |
| duplicate check on (the default; {dropped['on']:,} duplicates in this file) | {best['on']:.2f} | {best['on'] / best['off']:.2f} |
| every row written twice ({2 * args.rows:,} rows, {dropped['doubled']:,} dropped) | {best['doubled']:.2f} | {best['doubled'] / best['off']:.2f} |

Only rows that share their `(uid, timestamp)` with a neighbour are compared (here mostly a like or
dislike in the second of its listen), with one stable sort of packed 64-bit keys per row group. A file
made only of duplicates costs about twice as much per row: every row is then compared, and the group is
copied without its duplicates.
"""
    write_section(Path(args.out), text, marker="bench_dedupe")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
