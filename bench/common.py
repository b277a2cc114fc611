"""What the benchmark scripts share; each script imports it after one line,
``sys.path.insert(0, str(Path(__file__).resolve().parent))`` (they run as ``python bench/NAME.py``).

- ``machine``: the machine a result was measured on, for the sections' "Measured ... on" line;
- ``write_section``: a script's section of docs/benchmarks.md (between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->``), replaced atomically through lightning_tt.outputs.Output;
- the synthetic twins: ``synthetic_raw`` (a raw twin in the Yambda layout; the data benchmarks'
  is ``DATA_TWIN``) and ``prepared_twin`` (a prepared twin, by default of the embedded default's size,
  ``DEMO_TWIN`` from ``lightning_tt.demo.DEMO_SYNTH``), with ``add_twin_arguments`` / ``twin_from`` for
  the scripts that take ``--data``, ``--workdir`` and the twin's size;
- the model presets: ``PRESETS`` / ``preset`` read the model sizes, batch size and precision of a
  config in configs/ (``demo``, ``50m``, ``500m``), ``build_model`` builds a TwoTowerModule on a
  DataModule's sizes, and ``take_batches`` pre-builds training batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from lightning_tt.data.prepare import SplitConfig, prepare
from lightning_tt.data.prepared import PreparedData, PreparedDataError
from lightning_tt.data.synth import size_label, synthesize
from lightning_tt.demo import DEMO_SYNTH
from lightning_tt.lightning_cli import CONFIGS
from lightning_tt.outputs import Output

ROOT = Path(__file__).resolve().parent.parent
#: Where every script writes its section by default (``--out``).
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
GIB = 1 << 30
#: The data benchmarks' twin (bench_data.py, bench_dedupe.py): the size of Yambda flat/50m.
DATA_TWIN = {"rows": 50_000_000, "users": 10_000, "items": 1_000_000}
#: The embedded default's twin (``lightning-tt demo``): the training benchmarks' data.
DEMO_TWIN = {k: DEMO_SYNTH[k] for k in ("rows", "users", "items")}


# -- the machine and docs/benchmarks.md ------------------------------------------------------------------


def machine(gpu: bool = False) -> str:
    """The GPU's name with ``gpu``, else the CPU: model, cores, RAM and the Python version."""
    if gpu:
        import torch

        return torch.cuda.get_device_name()
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024 / GIB
    except OSError:
        mem = float("nan")
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def write_section(path: Path, text: str, marker: str) -> None:
    """Put ``text`` between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` of ``path`` (appended
    when the markers are not there yet), leaving the rest of the file as it was. The file is replaced
    by one rename (lightning_tt.outputs.Output), so a reader never sees it half written."""
    path = Path(path)
    begin, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with Output(path, "file", overwrite=True).writing() as tmp:
        tmp.write_text(new)


# -- synthetic twins -------------------------------------------------------------------------------------


def synthetic_raw(work: Path, rows: int, users: int, items: int) -> tuple[Path, str]:
    """(``work/raw-SIZE``, SIZE): a raw twin in the Yambda layout (seed 0), synthesised once."""
    from lightning_tt.data import schema

    size = size_label(rows)
    raw = Path(work) / f"raw-{size}"
    if not schema.events_path(raw, size).is_file():
        start = time.perf_counter()
        synthesize(raw, rows=rows, users=users, items=items, seed=0, progress=False)
        print(f"synth {rows:,} rows: {time.perf_counter() - start:.1f} s")
    return raw, size


def is_current(data: Path) -> bool:
    """Whether ``data`` is a prepared directory this code reads (not missing, damaged or older)."""
    try:
        PreparedData(data)
    except PreparedDataError:
        return False
    return True


def prepared_twin(data: Path, raw: Path, rows: int = DEMO_TWIN["rows"], users: int = DEMO_TWIN["users"],
                  items: int = DEMO_TWIN["items"], config: SplitConfig = SplitConfig()) -> Path:  # noqa: B008
    """``data``, a prepared synthetic twin (the embedded default's days and seed; its size unless given)
    with the split ``config``; synthesised into ``raw`` and prepared first if missing or prepared by an
    older schema version."""
    if not is_current(data):
        if not any(raw.glob("flat/*/multi_event.parquet")):
            synthesize(raw, rows=rows, users=users, items=items, days=DEMO_SYNTH["days"], seed=DEMO_SYNTH["seed"],
                       progress=False)
        prepare(raw, data, config=config, progress=False, overwrite=True)
    return data


def add_twin_arguments(parser: argparse.ArgumentParser, workdir: str, sizes: dict[str, int] | None = None,
                       data: bool = True) -> None:
    """``--data`` (a prepared directory to use instead of the twin; with ``data``), ``--workdir`` (where
    the twin is made once and kept) and, with ``sizes``, the twin's ``--rows``, ``--users``, ``--items``."""
    if data:
        parser.add_argument("--data", help="a prepared directory (default: synthesise one into --workdir)")
    parser.add_argument("--workdir", default=workdir)
    for name, default in (sizes or {}).items():
        parser.add_argument(f"--{name}", type=int, default=default)


def twin_from(args: argparse.Namespace) -> Path:
    """The prepared directory of add_twin_arguments' options: ``--data``, or the twin in ``--workdir``
    (of ``--rows``, ``--users``, ``--items`` where the script has them, else the embedded default's)."""
    work = Path(args.workdir)
    return prepared_twin(Path(args.data) if args.data else work / "prepared", work / "raw",
                         **{k: getattr(args, k, default) for k, default in DEMO_TWIN.items()})


# -- model presets ---------------------------------------------------------------------------------------

#: name -> config: demo (configs/demo.yaml), 50m and 500m (configs/yambda-50m.yaml, yambda-500m.yaml).
PRESETS = {path.stem.removeprefix("yambda-"): path for path in sorted(CONFIGS.glob("*.yaml"))}
#: What a preset takes from its config's ``model`` section: the sizes. The loss and query options
#: (temperature, mixed negatives, feedback, ...) stay at the module's defaults, so a preset measures the
#: same step whatever design a config ships.
MODEL_SIZES = ("embedding_dim", "hidden_dims", "output_dim", "estimator_buckets")


def preset(name: str) -> dict:
    """``{"model": sizes, "batch_size": data.batch_size, "precision": trainer.precision}`` of a config,
    its ``${...}`` references resolved as LightningCLI's omegaconf mode resolves them."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(PRESETS[name]), resolve=True)
    return {"model": {k: config["model"][k] for k in MODEL_SIZES if k in config["model"]},
            "batch_size": config["data"]["batch_size"],
            "precision": config["trainer"].get("precision") or "32-true"}


def build_model(dm, model: dict, cls=None, **options):
    """A TwoTowerModule (or ``cls``) on the DataModule ``dm``'s sizes with the ``model`` options (a
    preset's ``"model"``) and ``options``, its weights drawn from seed 0."""
    import torch

    from lightning_tt.model.module import TwoTowerModule

    torch.manual_seed(0)
    return (cls or TwoTowerModule)(data_dir=str(dm.data.path), num_users=dm.num_users, num_items=dm.num_items,
                                   num_artists=dm.num_artists, num_albums=dm.num_albums, audio_dim=dm.audio_dim,
                                   **{**model, **options})


def take_batches(dm, n: int) -> list[dict]:
    """The first ``n`` training batches of the DataModule ``dm``, built beforehand."""
    loader = iter(dm.train_dataloader())
    return [next(loader) for _ in range(n)]
