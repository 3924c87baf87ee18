"""SIGINT / SIGTERM: a run ends with one line, exit 130 / 143, and nothing half-written.

`install()` (called first thing by `cli.main`) makes both signals raise `Interrupted` (a
KeyboardInterrupt, so code that already cleans up on Ctrl-C cleans up on SIGTERM too) in the main
thread. After the first signal, later ones are only counted: the clean-up that the first one
started (temporary files removed, the report written) is not itself interrupted.

`deferred()` blocks both signals around the few statements that must not be split (the renames that
move a finished output into place); a signal that arrives meanwhile is delivered when it ends.

This module imports only the standard library: it is imported before anything slow.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: Exit status of a run ended by a signal: 128 + the signal's number (130 SIGINT, 143 SIGTERM).
EXIT_SIGINT = 128 + int(signal.SIGINT)
EXIT_SIGTERM = 128 + int(signal.SIGTERM)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """SIGINT or SIGTERM."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number."""
        return 128 + self.signum


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Interrupted(signum)
    # a second signal while the first one's clean-up runs: let the clean-up finish


def install() -> None:
    """Make SIGINT and SIGTERM raise `Interrupted` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    for s in _SIGNALS:
        signal.signal(s, _handler)


def received() -> int | None:
    """The first signal received since `install()`, if any."""
    return _received[0] if _received else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration of the block (delivered when it ends).

    Used around renames that move finished outputs into place, so a signal never leaves one
    output of a set moved and the next one not. Without `pthread_sigmask` (not POSIX) or outside
    the main thread, the block runs unprotected.
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = mask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)
