"""User-facing errors: one clear line, a non-zero exit, no traceback.

Raise :class:`UserError` for every mistake a user can fix (bad config value, missing dataset
file, missing weights). Command-line entry points wrap their ``main`` in :func:`cli_main`, which
prints ``error: <message>`` on one line to stderr and exits with :data:`EXIT_USER_ERROR`. It does the
same for the filesystem faults a user fixes (:data:`USER_FIXABLE_ERRNOS`: no permission, read-only
or full disk, a file where a folder should be), naming the path; any other OSError stays a traceback,
since it may be a bug.
"""

from __future__ import annotations

import difflib
import errno
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn

from harness.stopping import Interrupted

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; its message is one line saying what, where and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(message: object) -> str:
    """The message on one line; a DataLoader worker's re-raised traceback shrinks to its original message."""
    text = str(message)
    if "Original Traceback" in text:  # torch re-raises worker errors with the worker's traceback as message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and not last.startswith(" ") else last
    return " ".join(text.split())


class DataError(UserError):
    """A dataset (or pretrained weights) file is missing, unreadable or does not match the official layout."""


class DamagedFileError(UserError):
    """A file the harness wrote earlier (JSON results, caches) cannot be read back; the message says what to do."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the close matches of ``value`` among ``choices``, else the choices."""
    options = list(choices)
    scored = sorted(((difflib.SequenceMatcher(None, value, c).ratio(), c) for c in options), reverse=True)
    close = [c for score, c in scored if score >= 0.6 and score >= scored[0][0] - 0.1][:3]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "; expected one of " + ", ".join(repr(c) for c in options)


_CHECK_PERMISSIONS = (
    "check its permissions (and its folder's), or write the results elsewhere (--results DIR)"
)
_FREE_SPACE = "free some space (or choose another --results folder); finished cells are kept, re-run to go on"
_IN_THE_WAY = "a file or folder is in the way of one the harness writes; move it, or choose another path"
USER_FIXABLE_ERRNOS: dict[int, str] = {
    errno.EACCES: _CHECK_PERMISSIONS,
    errno.EPERM: _CHECK_PERMISSIONS,
    errno.EROFS: "the file system is read-only; write the results elsewhere (--results DIR)",
    errno.ENOSPC: _FREE_SPACE,
    errno.EDQUOT: _FREE_SPACE,
    errno.ENOTDIR: _IN_THE_WAY,
    errno.EISDIR: _IN_THE_WAY,
    errno.EEXIST: _IN_THE_WAY,
}
"""The OSError numbers that are the user's environment, not a bug, with what to do about each."""


def filesystem_message(err: OSError) -> str | None:
    """One line for an OSError a user can fix (path, errno name, what to do); None for any other."""
    todo = USER_FIXABLE_ERRNOS.get(err.errno or 0)
    if todo is None:
        return None
    where = f"{err.filename}: " if err.filename else ""
    also = f" (and {err.filename2})" if err.filename2 else ""
    reason = err.strerror or type(err).__name__
    return f"{where}{reason} ({errno.errorcode.get(err.errno or 0, err.errno)}){also}; {todo}"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with :data:`EXIT_USER_ERROR`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def cli_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a command-line ``main``; a :class:`UserError` or user-fixable OSError is one line on stderr, exit code 2."""
    try:
        code = main(argv)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt as err:  # Ctrl-C, or a stop signal (harness.stopping): exit 128 + signal
        print("interrupted", file=sys.stderr)
        raise SystemExit(err.exit_code if isinstance(err, Interrupted) else 130) from None
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        raise SystemExit(0) from None
    except OSError as err:
        message = filesystem_message(err)
        if message is None:
            raise
        fail(message)
    raise SystemExit(code or 0)
