"""Output safety: every file or directory a command writes goes through :class:`Output`.

Checked when the ``Output`` is made, before any work starts:

- it is not, does not contain, and does not lie inside any of the command's inputs (a raw or prepared
  directory, a checkpoint, a run directory), compared after resolving ``..`` and symbolic links;
- an existing output is replaced only with ``overwrite``, and only by its own kind: a directory by a
  directory, a file by a file; a directory output with ``replaces=MARKER`` replaces only an empty
  directory or one holding that file (what the command itself wrote: ``export.json``), never another
  non-empty directory (a run's logs, a dataset), with ``overwrite`` or without;
- its parent is a directory (or can be made) that this process may write into;
- temporaries that earlier runs of this machine left when they died are cleaned up (see below).

Written by ``with output.writing() as tmp: ...``: the work goes to a temporary sibling
``.NAME.tmp-HOST-PID-XXXXXXXX`` (a directory, or a file path for a file output) and, only when the block
succeeds, is renamed onto the output. A file is replaced by one atomic rename. An existing directory is
first renamed aside to ``.NAME.old-HOST-PID-XXXXXXXX``, the new one renamed in, and only then the old
one removed: the old output is never removed before the new one is complete. A symbolic link in the
output's place is replaced as a link; what it points to is never touched.

Stale temporaries: a temporary (``.NAME.TAG-HOST-PID-XXXXXXXX``, any tag) whose process no longer runs
on this machine is removed by the next ``Output`` of the same path; an ``.old`` directory whose process
died between the two renames is put back when the output is missing (otherwise removed).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from lightning_tt.errors import InputError

Kind = Literal["file", "dir"]
#: OS errors that come from the machine (permissions, a read-only or full disk), not from a bug.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                      errno.EISDIR, errno.ENAMETOOLONG}
_HOST = socket.gethostname().replace("/", "_") or "host"


def _word(kind: Kind) -> str:
    return "directory" if kind == "dir" else "file"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, a link or a directory tree; whatever is already gone stays gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _empty(directory: Path) -> bool:
    """Whether ``directory`` holds nothing (one that cannot be listed counts as not empty)."""
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _relation(output: Path, given: Path) -> str | None:
    """How ``output`` overlaps the input ``given`` (both resolved): 'is', 'contains', 'lies inside' or None."""
    if output == given or (output.exists() and given.exists() and os.path.samefile(output, given)):
        return "is"
    if given.is_relative_to(output):
        return "contains"
    if output.is_relative_to(given):
        return "lies inside"
    return None


class Output:
    """One output path of a command, checked now and written atomically later (see the module doc).

    Args:
        path: the output file or directory.
        kind: ``"file"`` or ``"dir"``.
        option: the option that named it (``--out``), for messages.
        inputs: ``{option: path}`` of the command's inputs (None values are skipped).
        overwrite: whether an existing output may be replaced.
        overwrite_option: the option that allows it, for messages.
        resume: an existing output of the same kind is written into in place (``data download``
            continues an interrupted download); ``writing()`` is then not used.
        replaces: for a directory output, the name of a file the command writes into it (``export.json``):
            an existing non-empty directory without it is not this command's output and is never
            replaced.
    """

    def __init__(self, path: str | os.PathLike, kind: Kind, option: str = "--out",
                 inputs: Mapping[str, str | os.PathLike | None] | None = None, overwrite: bool = False,
                 resume: bool = False, overwrite_option: str = "--overwrite", replaces: str | None = None):
        if kind not in ("file", "dir"):
            raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
        if replaces is not None and kind != "dir":
            raise ValueError("replaces is for directory outputs")
        self.replaces = replaces
        self.name = f"{option} {path}"  # as the user spelled it, for messages
        # Absolute, with '.' and '..' removed (lexically: a symbolic link in the output's own place is
        # replaced as a link, never followed).
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.kind, self.option, self.overwrite, self.overwrite_option = kind, option, overwrite, overwrite_option
        if self.path == self.path.parent:
            raise InputError(f"{self.name}: the root directory cannot be an output; choose another {option}")
        resolved = self.path.resolve()
        for input_option, given in (inputs or {}).items():
            if given is None:
                continue
            relation = _relation(resolved, Path(given).expanduser().resolve())
            if relation:
                raise InputError(f"{self.name}: {relation} the input {given} ({input_option}); an output must not "
                                 f"overlap a command's inputs: choose another {option}")
        self._check_existing(allow=overwrite or resume)
        self._check_parent()
        self.clean_stale()

    # -- checks ---------------------------------------------------------------------------------------

    def _check_existing(self, allow: bool) -> None:
        if not (self.path.exists() or self.path.is_symlink()):
            return
        found: Kind = "dir" if self.path.is_dir() else "file"
        if found != self.kind:
            raise InputError(f"{self.name}: exists and is a {_word(found)}, but this command writes a "
                             f"{_word(self.kind)}; choose another {self.option} (it is never replaced by another kind)")
        if self.replaces and not (self.path / self.replaces).is_file() and not _empty(self.path):
            raise InputError(f"{self.name}: exists and holds no {self.replaces}, so this command did not write it; "
                             f"choose another {self.option} (only an empty directory or an earlier output of this "
                             f"command is replaced)")
        if not allow:
            raise InputError(f"{self.name}: exists; pass {self.overwrite_option} to replace it")

    def _check_parent(self) -> None:
        ancestor = self.path.parent.absolute()
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{self.name}: {ancestor} is a file, not a directory; choose another {self.option}")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{self.name}: cannot write into {ancestor} (permission denied); choose another "
                             f"{self.option}")

    # -- temporaries ----------------------------------------------------------------------------------

    def temporary(self, tag: str = "tmp") -> Path:
        """A fresh sibling path ``.NAME.{tag}-HOST-PID-XXXXXXXX`` (cleaned up after a crash, see clean_stale)."""
        return self.path.parent / f".{self.path.name}.{tag}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def clean_stale(self) -> list[Path]:
        """Remove the temporaries of this output (``.NAME.TAG-HOST-PID-XXXXXXXX``) left by processes of
        this machine that no longer run; put an ``.old`` directory back when the output itself is
        missing. Returns what was handled."""
        parent = self.path.parent
        if not parent.is_dir():
            return []
        handled = []
        prefix = f".{self.path.name}."
        for found in sorted(parent.glob(f"{glob.escape(prefix)}*")):
            owner = _owner(found.name[len(prefix):])
            if owner is None or owner[1] != _HOST or _alive(owner[2]):
                continue
            try:
                if owner[0] == "old" and not (self.path.exists() or self.path.is_symlink()):
                    os.rename(found, self.path)
                else:
                    _remove(found)
            except FileNotFoundError:  # another process cleaned it first
                continue
            handled.append(found)
        return handled

    # -- writing --------------------------------------------------------------------------------------

    def environment_error(self, err: OSError) -> InputError | None:
        """An OSError of the machine (permissions, a read-only or full disk) as an InputError naming the
        output; None for any other OSError (a bug, to be raised as it is)."""
        if err.errno not in ENVIRONMENT_ERRNOS:
            return None
        where = f" at {err.filename}" if err.filename else ""
        return InputError(f"{self.name}: {os.strerror(err.errno)}{where} while writing it; check the permissions and "
                          f"free space there, or choose another {self.option}")

    def raise_environment_error(self, err: OSError):
        """Raise ``err`` as environment_error's InputError, or as it is when it is not one."""
        converted = self.environment_error(err)
        if converted is None:
            raise err
        raise converted from err

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a temporary path to write the output at (a created directory, or a file path); on success
        it replaces the output (see the module doc), on any failure it is removed."""
        tmp = self.temporary()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "dir":
                tmp.mkdir()
        except OSError as err:
            self.raise_environment_error(err)
        try:
            try:
                yield tmp
            except OSError as err:
                self.raise_environment_error(err)
            self._commit(tmp)
        except BaseException:
            _remove(tmp)
            raise

    def _commit(self, tmp: Path) -> None:
        # Checked again: the output may have appeared while the work ran.
        self._check_existing(allow=self.overwrite)
        try:
            if self.kind == "file" or not (self.path.exists() or self.path.is_symlink()):
                os.replace(tmp, self.path)  # a file (or link) is replaced atomically
                return
            old = self.temporary("old")
            os.rename(self.path, old)
            try:
                os.rename(tmp, self.path)
            except BaseException:
                os.rename(old, self.path)
                raise
        except OSError as err:
            self.raise_environment_error(err)
        _remove(old)


def _owner(suffix: str) -> tuple[str, str, int] | None:
    """(tag, host, pid) of a temporary's name after ``.NAME.``: ``TAG-HOST-PID-XXXXXXXX``; None when it
    is not one of ours."""
    tag, _, rest = suffix.partition("-")  # tags have no '-'; host names may
    parts = rest.rsplit("-", 2)
    if not tag or len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) != 8:
        return None
    try:
        int(parts[2], 16)
    except ValueError:
        return None
    return tag, parts[0], int(parts[1])
