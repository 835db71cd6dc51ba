"""User-facing errors: one clear line, a non-zero exit, no traceback.

Raise :class:`UserError` for every mistake a user can fix (bad config value, missing dataset
file, missing weights). Command-line entry points wrap their ``main`` in :func:`cli_main`, which
prints ``error: <message>`` on one line to stderr and exits with :data:`EXIT_USER_ERROR`.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
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


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the close matches of ``value`` among ``choices``, else the choices."""
    options = list(choices)
    scored = sorted(((difflib.SequenceMatcher(None, value, c).ratio(), c) for c in options), reverse=True)
    close = [c for score, c in scored if score >= 0.6 and score >= scored[0][0] - 0.1][:3]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "; expected one of " + ", ".join(repr(c) for c in options)


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
