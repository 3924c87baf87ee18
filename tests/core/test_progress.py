"""LogProgress: plain progress lines for logs (spa_compiler.progress)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spa_compiler.progress import LogProgress, format_seconds


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_stage_lines_rate_limited_with_estimate() -> None:
    clock, buf = _Clock(), io.StringIO()
    p = LogProgress(buf, every=5.0, quiet=0.0, clock=clock)
    p("load", 0, 1)
    clock.t += 0.5
    p("load", 1, 1)
    for i in range(1, 101):  # 100 steps, 0.2 s each: one line every 5 s
        clock.t += 0.2
        p("obspa paths", i, 100)
    lines = _lines(buf)
    assert lines[0].endswith("load: started") and "load: done in 0.5s" in lines[1]
    assert "obspa paths: started (1/100)" in lines[2]
    mids = [ln for ln in lines if "obspa paths: " in ln and "%" in ln]
    assert 3 <= len(mids) <= 4  # 20 s of work, a line every 5 s
    assert "about" in mids[0] and "left" in mids[0]
    assert lines[-1].endswith("obspa paths: done (100/100) in 20s")


def test_unknown_total_and_restart() -> None:
    clock, buf = _Clock(), io.StringIO()
    p = LogProgress(buf, every=1.0, quiet=0.0, clock=clock)
    p("calibration statistics", 0, 0)
    clock.t += 2
    p("calibration statistics", 3, 0)
    p("calibration statistics", 3, 3)
    p("latency table", 0, 4)
    p("latency table", 4, 4)
    p("latency table", 0, 2)  # a second table: starts again
    text = buf.getvalue()
    assert "calibration statistics: 3 so far" in text
    assert "calibration statistics: done (3/3)" in text
    assert text.count("latency table: started") == 2


def test_lines_held_back_during_the_first_stage() -> None:
    """Input errors come during the first stage (load): they must stay the only line."""
    clock, buf = _Clock(), io.StringIO()
    p = LogProgress(buf, every=5.0, quiet=8.0, clock=clock)
    p("load", 0, 1)
    clock.t += 3.0
    p("load", 1, 1)
    assert buf.getvalue() == ""  # a command failing now prints its error alone
    p("paths", 0, 10)  # a second stage: past the input checks, lines start
    lines = _lines(buf)
    assert lines[0].endswith("load: done in 3.0s") and lines[1].endswith("paths: started (0/10)")


def test_a_long_first_stage_is_reported_after_the_quiet_period() -> None:
    clock, buf = _Clock(), io.StringIO()
    p = LogProgress(buf, every=5.0, quiet=8.0, clock=clock)
    p("load", 0, 2)
    clock.t += 9.0
    p("load", 1, 2)
    assert "load: 1/2 (50%)" in buf.getvalue()


def test_format_seconds() -> None:
    assert format_seconds(3.21) == "3.2s"
    assert format_seconds(42.4) == "42s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(3725) == "1h02m"


def test_cli_piped_log_gets_progress_lines_within_seconds(tmp_path: Path) -> None:
    """The CLI on a pipe (not a TTY): progress lines, the first a few seconds after the start."""
    from spa_compiler import models_zoo

    src = models_zoo.build("tiny_resnet", "torchscript")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spa_compiler", str(src), "-o", str(tmp_path / "o.onnx"),
         "--latency-budget", "0.7x", "--runs", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    first_at = time.monotonic() - started
    rest = proc.stderr.read()
    proc.wait(timeout=600)
    assert proc.returncode == 0, first + rest
    assert first.startswith("spa-compile [") and "s] " in first, first
    assert "latency table" in first + rest
    # the steps after the save (digests, the output read back, the deploy check) have lines too
    assert "read back: done" in rest and "deploy check: done" in rest, rest
    import os

    if first_at >= 10.0 and os.getloadavg()[0] > 2 * (os.cpu_count() or 1):
        pytest.skip(f"machine overloaded (load {os.getloadavg()[0]:.0f}): first line after {first_at:.1f} s")
    assert first_at < 10.0


def test_heartbeat_reports_a_stage_without_inner_callbacks() -> None:
    buf = io.StringIO()
    p = LogProgress(buf, every=0.3, quiet=0.2, heartbeat=True)
    p("measure dense", 0, 1)  # then nothing for a while, as a long timing does
    time.sleep(1.0)
    p("measure dense", 1, 1)
    p.close()
    text = buf.getvalue()
    assert "measure dense: running" in text
    assert "measure dense: done" in text
    after = len(buf.getvalue())
    time.sleep(0.5)
    assert len(buf.getvalue()) == after  # closed: the heartbeat stopped


def test_setup_stages_held_until_the_passes_run() -> None:
    """The CLI holds load and the dense timing: a pass's option error after them stays one line."""
    clock, buf = _Clock(), io.StringIO()
    p = LogProgress(buf, every=5.0, quiet=8.0, clock=clock, hold=("load", "measure dense"))
    p("load", 0, 1)
    p("load", 1, 1)
    p("measure dense", 0, 1)
    clock.t += 2.0
    p("measure dense", 1, 1)
    assert buf.getvalue() == ""
    p("channel groups", 0, 1)
    lines = _lines(buf)
    assert lines[0].endswith("measure dense: done in 2.0s") and lines[1].endswith("channel groups: started")


def test_a_line_appears_when_the_quiet_period_ends_between_stages() -> None:
    """A setup stage done, then seconds of work outside any stage (a large model's fingerprint):
    the held-back line is written when the quiet period ends, not only when the next stage starts."""
    buf = io.StringIO()
    p = LogProgress(buf, every=5.0, quiet=0.3, heartbeat=True, hold=("load",))
    p("load", 0, 1)
    p("load", 1, 1)
    time.sleep(1.5)
    text = buf.getvalue()
    p.close()
    assert "load: done in" in text
