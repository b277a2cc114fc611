"""Shared fixtures: the hand-worked raw dataset (fresh per test: some tests damage it) and, prepared once
per session and only read, the hand-worked dataset, a small synthetic one and the development set."""

import os
from pathlib import Path

import pytest

from tests.rawdata import hand_rows, write_raw

os.environ.setdefault("WANDB_MODE", "disabled")

#: The development set (real MovieLens behaviour in the Yambda layout) is never copied into the project:
#: its directory comes from this environment variable or --dev-set, with no default.
DEV_SET_VARIABLE = "LIGHTNING_TT_DEV_SET"


def pytest_addoption(parser):
    parser.addoption("--dev-set", default=os.environ.get(DEV_SET_VARIABLE) or None,
                     help=f"the development set's directory in the Yambda layout (default: ${DEV_SET_VARIABLE}); "
                          f"tests that need it skip when neither is given or it holds none")


@pytest.fixture(scope="session")
def dev_prepared(request, tmp_path_factory):
    """The development set prepared with its README's split (--split.test_days 730 --split.val_days 365); skips the
    test when neither --dev-set nor LIGHTNING_TT_DEV_SET names a directory that holds one."""
    from lightning_tt.data.prepare import SplitConfig, prepare

    given = request.config.getoption("--dev-set")
    if not given:
        pytest.skip(f"no development set: set {DEV_SET_VARIABLE}=DIR or pass --dev-set DIR")
    raw = Path(given)
    if not any(raw.glob("flat/*/multi_event.parquet")):
        pytest.skip(f"no development set at {raw} (no flat/<size>/multi_event.parquet there)")
    out = tmp_path_factory.mktemp("dev") / "prepared"
    prepare(raw, out, config=SplitConfig(test_days=730, val_days=365), progress=False)
    return out


def write_hand_raw(root: Path) -> Path:
    """The hand-worked dataset (tests.rawdata.hand_rows) in the Yambda layout under ``root/raw``: row groups
    of 4 rows, item 11 on a second album, item 13 without an artist, item 12 without audio."""
    return write_raw(root / "raw", hand_rows(), row_group_size=4, second_album=(11,), no_artist=(13,),
                     no_audio=(12,))


@pytest.fixture
def hand_raw(tmp_path):
    return write_hand_raw(tmp_path)


@pytest.fixture(scope="session")
def hand_prepared(tmp_path_factory) -> Path:
    """The hand-worked dataset prepared with the default split and audio dim 4; shared: only read it."""
    from lightning_tt.data.prepare import prepare

    root = tmp_path_factory.mktemp("hand")
    prepare(write_hand_raw(root), root / "prepared", audio_dim=4, progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A small synthetic dataset, prepared (20k rows, 100 users, 2k items, 20 days; 2-day windows)."""
    from lightning_tt.data.prepare import SplitConfig, prepare
    from lightning_tt.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", rows=20_000, users=100, items=2_000, days=20, seed=0, progress=False)
    prepare(root / "raw", root / "prepared", config=SplitConfig(test_days=2, val_days=2), progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def served_export(tiny_prepared, tmp_path_factory):
    """A model of tests/conf/tiny.yaml (with exclude_seen) fitted on tiny_prepared, exported twice: ``flat``
    (exact search, so lists can be checked against brute force) and ``ivf`` (another index of the same
    checkpoint, for reloads). Shared: only read them."""
    from types import SimpleNamespace

    from lightning_tt.cli import main

    root = tmp_path_factory.mktemp("served")
    main(["fit", "--config", str(Path(__file__).parent / "conf" / "tiny.yaml"), "--data.data_dir", str(tiny_prepared),
          "--trainer.logger.init_args.save_dir", str(root / "runs"), "--trainer.enable_progress_bar", "false",
          "--data.exclude_seen", "true"])
    ckpt = next((root / "runs" / "tiny").iterdir()) / "checkpoints" / "last.ckpt"
    main(["export", "--ckpt_path", str(ckpt), "--out", str(root / "flat"), "--index.kind", "flat"])
    main(["export", "--ckpt_path", str(ckpt), "--out", str(root / "ivf"), "--index.kind", "ivfflat",
          "--index.nlist", "16", "--index.nprobe", "4"])
    return SimpleNamespace(ckpt=ckpt, flat=root / "flat", ivf=root / "ivf", data=tiny_prepared)
