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
_armed = [False]  # raise on the first signal (else only record it, for `arm()` to raise)
_deferring = [0]  # depth of `deferred()` blocks
_pending = [False]  # a signal arrived inside a deferred block: raise when the block ends


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
    if len(_received) == 1 and _armed[0]:
        if _deferring[0]:
            _pending[0] = True
            return
        raise Interrupted(signum)
    # a second signal while the first one's clean-up runs: let the clean-up finish


def install(*, arm: bool = True) -> None:
    """Make SIGINT and SIGTERM raise `Interrupted` (main thread only; a no-op elsewhere).

    A SIGINT that the process was started ignoring (a shell's background job) stays ignored.
    With `arm=False` a signal is only recorded (used while modules are still being imported, where
    an exception would surface as a traceback): `arm()` raises it later.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if arm:
        _received.clear()
        _pending[0] = False
    _armed[0] = False
    for s in _SIGNALS:
        if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:
            continue  # started with Ctrl-C ignored (a background job of a shell, nohup): keep it so
        signal.signal(s, _handler)
    if arm:
        _armed[0] = True


def installed() -> bool:
    """Whether `install` has put this module's handler on SIGTERM."""
    return signal.getsignal(signal.SIGTERM) is _handler


def armed() -> bool:
    """Whether the installed handler raises (else it only records, see `install(arm=False)`)."""
    return _armed[0]


def arm() -> None:
    """Make the installed handler raise from now on; raise at once for a signal already recorded."""
    _armed[0] = True
    if _received:
        raise Interrupted(_received[0])


def received() -> int | None:
    """The first signal received since `install()`, if any."""
    return _received[0] if _received else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration of the block; a signal received meanwhile is
    raised (as `Interrupted`) when the block ends.

    Used around renames that move finished outputs into place, so a signal never leaves one
    output of a set moved and the next one not. With this module's handler installed the handler
    itself defers (ONNX Runtime's threads may receive a process-directed signal, so a thread's
    signal mask alone would not hold it); otherwise the main thread's signal mask blocks both
    signals where POSIX allows (`pthread_sigmask`).
    """
    mask = getattr(signal, "pthread_sigmask", None)
    main = threading.current_thread() is threading.main_thread()
    old = mask(signal.SIG_BLOCK, _SIGNALS) if mask is not None and main else None
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
        if old is not None and mask is not None:
            mask(signal.SIG_SETMASK, old)
        if not _deferring[0] and _pending[0]:
            _pending[0] = False
            raise Interrupted(_received[0])
