"""The project's one error type for mistakes in what a user gave us.

``InputError`` means: a file, column or option the user controls is wrong (missing, mistyped, out of
range, from another dataset...). Its message is one line that names that file, column or option and
says what to do. ``lightning-tt`` catches it at the top level, prints the line and exits with status 1.
Anything else is a bug in this project and keeps its traceback, so it can be reported.

The more specific kinds (``RawDataError`` for raw parquet, ``PreparedDataError`` for a prepared
directory, ``ServingError`` for export and recommend) are subclasses. It is a ``ValueError``, so code
that validates values reads naturally.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class InputError(ValueError):
    """A user's input is wrong; the message names the file, column or option."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's error message as one short line (pyarrow, torch and faiss messages span lines), to
    quote as the cause inside an InputError."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def usage_error(command: str, message: str) -> NoReturn:
    """A mistyped option or value of ``command`` (``lightning-tt fit``): one line on stderr,
    ``{command}: error: {message} (see {command} --help)``, and exit status 2 (argparse's)."""
    print(f"{command}: error: {' '.join(message.split())} (see {command} --help)", file=sys.stderr)
    raise SystemExit(2)
