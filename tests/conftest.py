import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "disabled")

from rawdata import event, write_raw  # noqa: E402

from lightning_tt.data.schema import DAY  # noqa: E402

END = 10 * DAY
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


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` as {relative path: bytes} (a file: {its name: bytes}), to check byte for
    byte that a command left it alone."""
    root = Path(root)
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def hand_rows():
    """The hand-worked dataset of test_prepare.py (end = day 10; defaults give
    train_end 687600, val [689400, 775800), test [777600, 864000])."""
    L = lambda i: 100 + i  # noqa: E731  track length of item i
    return [
        event(5, 10, 100, ratio=80, length=L(10)),
        event(5, 10, 100, "like"),
        event(5, 11, 200, ratio=30, length=L(11)),
        event(5, 12, 300, ratio=100, length=L(12)),
        event(5, 13, 687_595, ratio=120, length=L(13)),
        event(5, 14, 688_000, ratio=90, length=L(14)),
        event(5, 15, 700_000, ratio=60, length=L(15)),
        event(5, 16, 776_000, ratio=90, length=L(16)),
        event(5, 99, 800_000, ratio=70, length=L(99)),
        event(5, 10, 800_005, ratio=40, length=L(10)),
        event(5, 12, END, ratio=55, length=L(12)),
        event(7, 10, 690_000, ratio=90, length=L(10)),
        event(7, 11, 800_000, ratio=90, length=L(11)),
        event(9, 11, 50, ratio=50, length=L(11)),
        event(9, 12, 60, "dislike"),
        event(9, 12, 800_000, ratio=50, length=L(12)),
    ]


@pytest.fixture
def hand_raw(tmp_path):
    return write_raw(tmp_path / "raw", hand_rows(), row_group_size=4, second_album=(11,), no_artist=(13,),
                     no_audio=(12,))


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A small synthetic dataset, prepared (20k rows, 100 users, 2k items, 20 days; 2-day windows)."""
    from lightning_tt.data.prepare import SplitConfig, prepare
    from lightning_tt.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", rows=20_000, users=100, items=2_000, days=20, seed=0, progress=False)
    prepare(root / "raw", root / "prepared", config=SplitConfig(test_days=2, val_days=2), progress=False)
    return root / "prepared"
