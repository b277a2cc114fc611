"""bench/bench_scale.py's measure(): the figures of a command, and a stage stopped at --timeout with
every process it started."""

import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scale  # noqa: E402

CHILD = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
        "print('started', flush=True); time.sleep(60)"


def test_measure_reports_the_time_and_memory_of_a_command(tmp_path):
    # A process that holds 200 MiB of touched memory: the peak sees at least that.
    figures = bench_scale.measure([sys.executable, "-c", "b = bytearray(200 * 2**20); import time; time.sleep(0.5)"],
                                  tmp_path / "log")
    assert "timed_out" not in figures and figures["seconds"] >= 0.5 and figures["peak_gib"] >= 200 / 1024


def test_measure_stops_the_whole_process_tree_at_the_timeout(tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    figures = bench_scale.measure([sys.executable, "-c", CHILD], tmp_path / "log", timeout=2)
    assert figures["timed_out"] is True and 2 <= figures["seconds"] < 30
    assert "started" in (tmp_path / "log").read_text()
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and "time.sleep(60)" in
            " ".join(p.info["cmdline"] or [])]
    psutil.wait_procs(left, timeout=5)
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_failing_command_raises_with_the_end_of_its_log(tmp_path):
    with pytest.raises(SystemExit, match="status"):
        bench_scale.measure([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log")


def test_the_report_gives_both_validation_loops_against_an_epoch():
    from types import SimpleNamespace

    shape = {"rows": 100, "users": 10, "items": 50}
    results = {"demo": {"shape": shape, "fit": {"seconds": 1, "peak_gib": 1, "examples_per_s": 100.0, "epoch_s": 1000}},
               "x1": {"shape": shape, "fit": {"seconds": 1, "peak_gib": 1, "examples_per_s": 50.0, "epoch_s": 2000},
                      "validate": {"seconds": 9, "peak_gib": 1, "loop_s": 400.0},
                      "validate_sampled": {"seconds": 9, "peak_gib": 1, "loop_s": 100.0}}}
    text = bench_scale.report(results, SimpleNamespace(fractions=[1.0]))
    assert "| validation loop alone ÷ one fit epoch |  | 0.200 |" in text
    sampled = f"validation loop, {bench_scale.large_config_val_cases():,} sampled cases"
    assert f"| {sampled} ÷ one fit epoch |  | 0.050 |" in text
    assert "| fit: examples/s ÷ the demo's dense fit | 1.00 | 0.50 |" in text
