"""The one stop-signal scheme of run, tune and fair: Ctrl-C and SIGTERM become :class:`Interrupted`.

The parent and each worker of :mod:`harness.pool` install :class:`StopSignals`; the parent passes a
signal on to its workers, and a worker notices a parent killed outright (:func:`watch_parent`). The exit
code after a stop is ``128 + signal``: 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_POLL_SECONDS = 0.5


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; :attr:`exit_code` is the shell's ``128 + signal`` (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Records the first SIGINT/SIGTERM; raises :class:`Interrupted` at once only where that is safe (armed).

    Inside a cell's or a trial's training (and while a parent waits for its workers) the process is
    armed, so a signal stops it at once; elsewhere (Optuna's storage calls, writing outputs) the signal
    waits for the next :meth:`check`, so no storage write is cut in half. Later signals are recorded only:
    the clean-up after the first one runs to its end.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and self._armed:
            self._armed = False
            raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the stop signals for the duration of the block (main thread only), then restore them."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        before = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop signal has arrived."""
        if self.received is not None:
            raise Interrupted(self.received)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """A block a stop signal may interrupt at once (a signal already received raises on entry)."""
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


def watch_parent(signals: StopSignals) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM once its parent is gone (killed with SIGKILL, say)."""
    parent = os.getppid()

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        if signals.received is None:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=poll, name="watch-parent", daemon=True)
    thread.start()
    return thread
