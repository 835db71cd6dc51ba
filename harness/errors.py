"""User-facing errors: one clear line, a non-zero exit, no traceback.

Raise :class:`UserError` for every mistake a user can fix (bad config value, missing dataset
file, missing weights). Command-line entry points wrap their ``main`` in :func:`cli_main`, which
prints ``error: <message>`` on one line to stderr and exits with :data:`EXIT_USER_ERROR`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

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


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with :data:`EXIT_USER_ERROR`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def cli_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a command-line ``main``; turn :class:`UserError` into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        raise SystemExit(0) from None
    raise SystemExit(code or 0)
