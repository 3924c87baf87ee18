"""Progress a person can follow in a log: a `ProgressFn` that prints plain lines.

`ctx.progress(task, done, total)` is called by the compile and its passes (``total == 0``: the
total is not known, e.g. calibration batches from a generator). On a terminal the CLI draws tqdm
bars; in a log (stderr piped or redirected) bars are unreadable, so `LogProgress` prints one line
when a stage starts, one when it ends, and at most one every `every` seconds in between, with the
count, the elapsed time of the stage and of the whole run, and an estimate of what is left
(linear in ``done / total``)::

    [   0.4s] load: started
    [   1.2s] load: done in 0.8s
    [  12.0s] obspa paths: 9/37 (24%), 8.1s in stage, about 25s left

Times are wall-clock (`time.monotonic`), so the first line appears as soon as the first stage
starts. Input errors must stay a one-line message, so lines are held back while the setup stages
run (`hold`: by default the first stage; the CLI holds "load", "lower" and "measure dense", after which the
passes check their options), for at most `quiet` seconds (8 by default): they start when another
stage begins (the setup stages' last line is written then) or when the quiet period ends. A
daemon heartbeat thread (``heartbeat=True``) writes the stage in progress when lines start and
whenever a stage has gone `every` seconds without a line (a stage with no inner callbacks, e.g.
timing the dense model, still shows it is alive), so a long run's first line comes when its
second stage starts, and at the latest `quiet` seconds after its first.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Collection
from typing import TextIO

__all__ = ["LogProgress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``'42s'``, ``'3m05s'``, ``'1h02m'``."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class LogProgress:
    """A `ProgressFn` writing rate-limited progress lines (see the module docstring).

    Args:
        stream: Where lines go (default: ``sys.stderr``, looked up at each write).
        every: Seconds between two lines of the same stage (its first and last line always print).
        prefix: Put before every line (e.g. ``"spa-compile "``).
        quiet: Longest time lines are held back while the setup stages run.
        hold: The setup stages (default: whichever stage comes first).
        clock: Time source (tests pass a fake one).
    """

    def __init__(self, stream: TextIO | None = None, *, every: float = 5.0, prefix: str = "",
                 quiet: float = 8.0, clock: object = None, heartbeat: bool = False,
                 hold: Collection[str] | None = None) -> None:
        self._stream = stream
        self.every = every
        self.quiet = quiet
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.prefix = prefix
        self._clock = clock if callable(clock) else time.monotonic
        self.t0 = self._clock()
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.finished: set[str] = set()
        self.written: set[str] = set()  # stages that have had a line
        self.current: tuple[str, int, int] | None = None
        self.hold = set(hold) if hold is not None else None
        self.first: str | None = None  # the last setup stage seen
        self.finish_time = self.t0
        self.armed = False  # lines are written (a second stage began, or the quiet period ended)
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="spa-progress", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        """Write the running stage when lines start and when it has been silent for `every` s."""
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                if not self._is_armed():
                    continue
                now = self._clock()
                cur = self.current
                if cur is not None and cur[0] in self.finished and not self.written:
                    # armed between stages (the last one done, the next not begun): say so, so a
                    # log never stays empty past the quiet period
                    task = cur[0]
                    self._write(f"{task}: done in {format_seconds(self.finish_time - self.started.get(task, now))}")
                elif cur is not None and cur[0] not in self.finished:
                    task, done, total = cur
                    if now - self.last_line.get(task, self.t0) >= self.every or task not in self.written:
                        self.last_line[task] = now
                        self.written.add(task)
                        elapsed = format_seconds(now - self.started.get(task, now))
                        count = f" ({done}/{total})" if total > 1 else f" ({done} so far)" if total == 0 and done else ""
                        self._write(f"{task}: running{count}, {elapsed} in stage")

    def _is_armed(self) -> bool:
        if not self.armed and self._clock() - self.t0 >= self.quiet:
            self.armed = True
        return self.armed

    def _write(self, text: str) -> None:
        if not self._is_armed():
            return
        stream = self._stream or sys.stderr
        try:
            self.written.add(text.split(":", 1)[0])
            stream.write(f"{self.prefix}[{self._clock() - self.t0:7.1f}s] {text}\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken log must not break the compile
            pass

    def __call__(self, task: str, done: int, total: int) -> None:
        with self._lock:
            self.current = (task, done, total)
            self._call(task, done, total)

    def _call(self, task: str, done: int, total: int) -> None:
        now = self._clock()
        if self.first is None or (self.hold is not None and task in self.hold and not self.armed):
            self.first = task
        elif task != self.first and not self.armed:
            self.armed = True  # past the input checks: write from now on, the first stage first
            if self.first in self.finished:
                self._write(f"{self.first}: done in {format_seconds(self.finish_time - self.started[self.first])}")
        if task not in self.started or task in self.finished and done < max(total, 1):
            # a new stage, or one that starts again (a second search round re-profiles)
            self.started[task] = now
            self.finished.discard(task)
            self.last_line[task] = now
            if total > 0 and done >= total:  # a one-shot stage reported as done at once
                self.finished.add(task)
                self.finish_time = now
                self._write(f"{task}: done")
                return
            self._write(f"{task}: started" + (f" (0/{total})" if total > 1 and done == 0 else
                                              f" ({done}/{total})" if total > 1 else ""))
            return
        if task in self.finished:
            return
        elapsed = now - self.started[task]
        if task not in self.written and self.armed:
            self.last_line[task] = now - self.every  # its lines were held back: write one now
        if total > 0 and done >= total:
            self.finished.add(task)
            self.finish_time = now
            self._write(f"{task}: done ({total}/{total}) in {format_seconds(elapsed)}" if total > 1
                        else f"{task}: done in {format_seconds(elapsed)}")
            return
        if now - self.last_line[task] < self.every:
            return
        self.last_line[task] = now
        if total > 0:
            frac = done / total
            eta = f", about {format_seconds(elapsed * (1 - frac) / frac)} left" if done > 0 else ""
            self._write(f"{task}: {done}/{total} ({100 * frac:.0f}%), {format_seconds(elapsed)} in stage{eta}")
        else:
            self._write(f"{task}: {done} so far, {format_seconds(elapsed)} in stage")

    def close(self) -> None:
        """Stop the heartbeat (the interface of the CLI's tqdm progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
