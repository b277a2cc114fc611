"""download against a stubbed hub: the Hugging Face hub cannot be reached from our machines, so the
stub serves the files of a local directory through huggingface_hub.hf_hub_download's signature."""

import shutil
from pathlib import Path

import huggingface_hub
import pytest

from lightning_tt.cli import main
from lightning_tt.data import schema
from lightning_tt.data.download import REPO_ID, files_for
from lightning_tt.errors import InputError


@pytest.fixture
def stub_hub(hand_raw, monkeypatch):
    """Serve ``hand_raw`` (size 'tiny' renamed to '50m') as the dataset repository; record requests."""
    mirror = hand_raw.parent / "mirror"
    shutil.copytree(hand_raw, mirror)
    (mirror / "flat" / "tiny").rename(mirror / "flat" / "50m")
    requests = []

    def fake_download(repo_id, filename, *, repo_type=None, revision=None, local_dir=None, **kwargs):
        requests.append({"repo_id": repo_id, "filename": filename, "repo_type": repo_type, "revision": revision})
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / filename, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return requests


def test_fetches_only_the_needed_files_and_checks_them(stub_hub, tmp_path, capsys):
    out = tmp_path / "yambda"
    main(["data", "download", "--size", "50m", "--out", str(out)])
    assert [r["filename"] for r in stub_hub] == [
        "flat/50m/multi_event.parquet", "embeddings.parquet", "artist_item_mapping.parquet",
        "album_item_mapping.parquet",
    ]
    assert all(r["repo_id"] == REPO_ID and r["repo_type"] == "dataset" for r in stub_hub)
    assert schema.check_raw_dir(out) == "50m"
    assert "downloaded Yambda 50m" in capsys.readouterr().out
    # The downloaded directory is a valid --raw for prepare.
    main(["data", "prepare", "--raw", str(out), "--out", str(tmp_path / "prepared"), "--audio_dim", "4"])
    assert (tmp_path / "prepared" / "meta.json").is_file()


def test_a_corrupt_download_is_reported(stub_hub, monkeypatch, tmp_path, capsys):
    real = huggingface_hub.hf_hub_download

    def truncating(repo_id, filename, **kwargs):
        path = Path(real(repo_id, filename, **kwargs))
        if filename == schema.ARTIST_FILE:
            path.write_bytes(path.read_bytes()[:20])
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", truncating)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "download", "--size", "50m", "--out", str(tmp_path / "yambda")])
    assert exit_info.value.code == 1
    assert "artist_item_mapping.parquet: not a readable parquet file" in capsys.readouterr().err


def test_sizes():
    assert files_for("5b")[0] == "flat/5b/multi_event.parquet"
    with pytest.raises(InputError, match="--size must be one of"):
        files_for("7m")
