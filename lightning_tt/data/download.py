"""Download the files of one Yambda size from the Hugging Face dataset ``yandex/yambda``.

Only what ``prepare`` reads is fetched: ``flat/<size>/multi_event.parquet``, ``embeddings.parquet``
and the two item mappings. ``huggingface_hub.hf_hub_download`` resumes interrupted transfers and skips
files already complete in ``local_dir``; after the transfer every file's schema is checked.
"""

from __future__ import annotations

from pathlib import Path

from lightning_tt.data import schema
from lightning_tt.errors import InputError
from lightning_tt.outputs import Output

REPO_ID = "yandex/yambda"


def files_for(size: str) -> list[str]:
    """Paths inside the dataset repository needed for ``size``."""
    if size not in schema.SIZES:
        raise InputError(f"--size must be one of {list(schema.SIZES)}, got {size!r}")
    return [
        f"flat/{size}/{schema.EVENTS_FILE}",
        schema.EMBEDDINGS_FILE,
        schema.ARTIST_FILE,
        schema.ALBUM_FILE,
    ]


def download(size: str, out: str | Path, revision: str | None = None, progress: bool = True) -> Path:
    """Fetch the files of ``size`` into ``out`` (the Yambda layout; an interrupted download into the same
    ``out`` resumes) and verify their schemas."""
    files = files_for(size)
    try:
        import huggingface_hub
    except ImportError as err:
        raise InputError(
            "downloading needs huggingface_hub: pip install 'lightning-tt[download]'"
        ) from err
    if not progress:
        huggingface_hub.utils.disable_progress_bars()
    # An existing directory is continued (each file is fetched to a temporary name and renamed by the
    # hub client, so an interrupted download never leaves a complete-looking file); a file is refused.
    output = Output(out, "dir", option="--out", resume=True)
    out = output.path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        output.raise_environment_error(err)
    for filename in files:
        huggingface_hub.hf_hub_download(
            repo_id=REPO_ID, repo_type="dataset", filename=filename, revision=revision, local_dir=out
        )
    schema.check_raw_dir(out, size)
    return out
