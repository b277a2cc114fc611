"""The package as pip installs it: the wheel carries the configs, and ``lightning-tt demo`` runs from an
installed wheel outside a checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the checkout's files (what git tracks or would track), as a clean
    clone has them: no build/ or egg-info/ of earlier builds to hide a file missing from the package data."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).exists() or (ROOT / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    (found,) = out.glob("lightning_tt-*.whl")
    return found


def test_the_wheel_carries_every_shipped_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "lightning_tt" / "configs").glob("*.yaml"))
    assert shipped and {f"lightning_tt/configs/{name}" for name in shipped} <= names
    assert (ROOT / "configs").resolve() == (ROOT / "lightning_tt" / "configs").resolve()  # the checkout's link


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel_outside_a_checkout(wheel, tmp_path):
    # A fresh venv with only the wheel installed; its dependencies are borrowed from this environment's
    # site-packages through a .pth file (appended after the venv's own, so the wheel's package wins).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = subprocess.run([str(python), "-c", "import lightning_tt; print(lightning_tt.__file__)"], cwd=elsewhere,
                           env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), where  # the installed wheel, not this checkout
    run = subprocess.run([str(venv / "bin" / "lightning-tt"), "demo", "--workdir", "demo", "--epochs", "1"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"--config {site}/lightning_tt/configs/demo.yaml" in run.stdout
    assert "TwoTower" in run.stdout and (elsewhere / "demo" / "baselines" / "metrics.json").is_file()
