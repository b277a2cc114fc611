"""lightning_tt.outputs.Output: no overlap with inputs, --overwrite, like for like, atomic replacement,
and the cleanup of temporaries left by processes that were killed (real SIGKILLs in child processes)."""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from lightning_tt.errors import InputError
from lightning_tt.outputs import Output
from tests.helpers import tree


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "data" / "raw"
    (raw / "flat" / "50m").mkdir(parents=True)
    (raw / "flat" / "50m" / "multi_event.parquet").write_bytes(b"events")
    (raw / "embeddings.parquet").write_bytes(b"audio")
    return raw


@pytest.mark.parametrize("out, relation", [
    ("data/raw", "is"),
    ("data/raw/flat/..", "is"),            # the same directory, spelled differently
    ("data/raw/flat/50m/../..", "is"),
    ("data/raw/prepared", "lies inside"),
    ("data/raw/flat/50m/multi_event.parquet", "lies inside"),
    ("data", "contains"),
    (".", "contains"),
])
def test_an_output_never_overlaps_an_input(raw, tmp_path, monkeypatch, out, relation):
    monkeypatch.chdir(tmp_path)
    before = tree(raw)
    with pytest.raises(InputError, match=f"--out {out}: {relation} the input data/raw \\(--raw\\)"):
        Output(out, "dir", inputs={"--raw": "data/raw"}, overwrite=True)
    assert tree(raw) == before


def test_an_input_reached_through_a_symbolic_link_is_still_an_input(raw, tmp_path):
    (tmp_path / "alias").symlink_to(raw)
    with pytest.raises(InputError, match="is the input"):
        Output(tmp_path / "alias", "dir", inputs={"--raw": raw}, overwrite=True)
    with pytest.raises(InputError, match="lies inside the input"):
        Output(tmp_path / "alias" / "out", "dir", inputs={"--raw": raw})
    Output(tmp_path / "elsewhere", "dir", inputs={"--raw": raw, "--ckpt_path": None})  # None inputs are skipped


def test_an_existing_output_needs_overwrite_and_its_own_kind(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("keep")
    with pytest.raises(InputError, match="--out .*/d: exists; pass --overwrite to replace it"):
        Output(tmp_path / "d", "dir")
    with pytest.raises(InputError, match="exists and is a file, but this command writes a directory"):
        Output(tmp_path / "f", "dir", overwrite=True)
    with pytest.raises(InputError, match="exists and is a directory, but this command writes a file"):
        Output(tmp_path / "d", "file", overwrite=True)
    assert (tmp_path / "f").read_text() == "keep"
    Output(tmp_path / "d", "dir", overwrite=True)
    Output(tmp_path / "f", "file", overwrite=True)


def test_a_directory_output_replaces_only_what_the_command_wrote(tmp_path):
    """replaces=MARKER: an empty directory or one holding MARKER is replaced (with overwrite); any
    other directory never, with overwrite or without, also when it appears during the work."""
    theirs, empty, ours = tmp_path / "theirs", tmp_path / "empty", tmp_path / "ours"
    for path in (theirs, empty, ours):
        path.mkdir()
    (theirs / "checkpoints").mkdir()
    (theirs / "checkpoints" / "last.ckpt").write_text("keep")
    (ours / "export.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"^--out .*/theirs: exists and holds no export.json, so this command "
                                             r"did not write it; choose another --out"):
            Output(theirs, "dir", overwrite=overwrite, replaces="export.json")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        Output(ours, "dir", replaces="export.json")
    for path in (empty, ours):
        with Output(path, "dir", overwrite=True, replaces="export.json").writing() as tmp:
            (tmp / "export.json").write_text("new")
        assert tree(path) == {"export.json": b"new"}
    late = tmp_path / "late"
    output = Output(late, "dir", overwrite=True, replaces="export.json")
    with pytest.raises(InputError, match="holds no export.json"), output.writing() as tmp:
        (tmp / "export.json").write_text("mine")
        late.mkdir()
        (late / "theirs").write_text("2")
    assert tree(theirs) == {"checkpoints/last.ckpt": b"keep"} and tree(late) == {"theirs": b"2"}
    assert siblings(late) == [] and siblings(theirs) == []


def test_a_failed_write_keeps_the_old_directory_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    output = Output(out, "dir", overwrite=True)
    with pytest.raises(KeyError), output.writing() as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyError("the work failed")
    assert tree(out) == {"old.txt": b"old"} and siblings(out) == []
    with output.writing() as tmp:
        (tmp / "new.txt").write_text("new")
        assert tree(out) == {"old.txt": b"old"}  # untouched until the new one is complete
    assert tree(out) == {"new.txt": b"new"} and siblings(out) == []


def test_a_file_is_replaced_atomically(tmp_path):
    out = tmp_path / "sub" / "metrics.json"
    with Output(out, "file").writing() as tmp:
        assert tmp.parent == out.parent and not tmp.exists()
        tmp.write_text("1")
    with Output(out, "file", overwrite=True).writing() as tmp:
        tmp.write_text("2")
        assert out.read_text() == "1"
    assert out.read_text() == "2" and siblings(out) == []


def test_a_symbolic_link_is_replaced_as_a_link_and_its_target_kept(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with Output(link, "dir", overwrite=True).writing() as tmp:
        (tmp / "new").write_text("y")
    assert not link.is_symlink() and tree(link) == {"new": b"y"}
    assert tree(target) == {"precious": b"x"}


def test_an_output_that_appears_during_the_work_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    output = Output(out, "dir")
    with pytest.raises(InputError, match="exists; pass --overwrite"), output.writing() as tmp:
        (tmp / "mine").write_text("1")
        out.mkdir()
        (out / "theirs").write_text("2")
    assert tree(out) == {"theirs": b"2"} and siblings(out) == []


def test_an_unwritable_place_is_one_line_naming_the_output(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .*/file/out: .*/file is a file, not a directory"):
        Output(tmp_path / "file" / "out", "dir")
    # A read-only file system (or a full disk) while writing. Simulated: as root every directory is
    # writable; the read-only directory itself is checked below when not root.
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    output = Output(tmp_path / "new" / "out", "dir")
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(InputError, match=r"--out .*/new/out: Read-only file system at .*/new while writing it"):
        with output.writing():
            pass
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_read_only_directory_is_refused_before_any_work():
    """Run as an unprivileged user (root may write anywhere: then the check runs as user nobody)."""
    locked = Path(tempfile.mkdtemp(prefix="lightning-tt-")) / "locked"
    locked.mkdir(mode=0o555)
    locked.parent.chmod(0o755)
    try:
        if os.geteuid() != 0:
            with pytest.raises(InputError, match="cannot write into .*locked \\(permission denied\\)"):
                Output(locked / "out", "dir")
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        code = ("from lightning_tt.outputs import Output\n"
                f"Output({str(locked / 'out')!r}, 'dir')")
        child = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                                code], cwd="/", capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        if "InputError" not in child.stderr:
            pytest.skip(f"user nobody cannot run this checkout: {child.stderr.strip().splitlines()[-1:]}")
        assert f"--out {locked / 'out'}: cannot write into {locked} (permission denied)" in child.stderr
        assert not (locked / "out").exists()
    finally:
        shutil.rmtree(locked.parent)


def run_child(code: str, cwd: Path) -> int:
    """Run ``code`` in a fresh Python process (it kills itself with SIGKILL at some point)."""
    script = "import os, signal, sys\nfrom pathlib import Path\nfrom lightning_tt.outputs import Output\n"
    return subprocess.run([sys.executable, "-c", script + textwrap.dedent(code)], cwd=cwd).returncode


def test_temporaries_of_a_killed_process_are_removed_by_the_next_run(tmp_path):
    code = """
        with Output(Path("out"), "dir").writing() as tmp:
            (tmp / "half-written").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
    """
    assert run_child(code, tmp_path) == -9
    left = siblings(tmp_path / "out")
    assert len(left) == 1 and left[0].startswith(".out.tmp-")
    mine = Output(tmp_path / "out", "dir").temporary()  # a live process's temporary is left alone
    mine.mkdir()
    Output(tmp_path / "out", "dir")
    assert siblings(tmp_path / "out") == [mine.name]
    (tmp_path / ".out.tmp-not-one-of-ours").mkdir()  # names that are not ours are never touched
    Output(tmp_path / "out", "dir")
    assert (tmp_path / ".out.tmp-not-one-of-ours").is_dir()


def test_a_process_killed_between_the_two_renames_gets_its_old_directory_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code = """
        real = os.rename
        def rename_then_die(src, dst):
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)  # after moving the old output aside
        os.rename = rename_then_die
        with Output(Path("out"), "dir", overwrite=True).writing() as tmp:
            (tmp / "new.txt").write_text("new")
    """
    assert run_child(code, tmp_path) == -9
    assert not out.exists() and len(siblings(out)) == 2  # .out.old-* and .out.tmp-*
    Output(out, "dir", overwrite=True)
    assert tree(out) == {"old.txt": b"old"} and siblings(out) == []


def test_prepare_protects_raw_files_that_are_links_to_elsewhere(hand_raw, tmp_path, capsys):
    """raw/embeddings.parquet may live elsewhere (a link): that place is an input too."""
    from lightning_tt.cli import main

    elsewhere = tmp_path / "shared"
    elsewhere.mkdir()
    embeddings = hand_raw / "embeddings.parquet"
    embeddings.rename(elsewhere / "embeddings.parquet")
    embeddings.symlink_to(elsewhere / "embeddings.parquet")
    before = tree(elsewhere)
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--raw", str(hand_raw), "--out", str(elsewhere), "--overwrite", "--audio_dim", "4"])
    assert "contains the input" in capsys.readouterr().err
    assert tree(elsewhere) == before
