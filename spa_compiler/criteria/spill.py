"""Bounded memory for what the OBS paths keep for the final re-fit.

Every group's path keeps its consumers' prepared Hessians (float64, in x in) until the plan is
applied, because the exact re-fit (`obs.solve_kept`) needs them at the chosen level, which the
search decides only after every group's path is known. For a 1B LLaMA's 16 FFN down projections
that is 16 x 8192^2 x 8 B = 8.6 GB held at once, twice the fp32 model.

`keep(matrix)` holds a matrix in memory while the matrices held that way stay within
`resident_limit()` bytes (`SPA_COMPILER_HESSIAN_MB`, default 2048 MiB; 0: always on disk), and
otherwise writes it to a temporary file (under `SPA_COMPILER_SPILL_DIR` or the system temporary
folder) and returns a `Spilled` handle whose `load()` reads it back as a fresh array, freed once
the caller drops it. The file is removed when the handle is garbage collected (or at exit). So the
re-fit holds one group's Hessians at a time, whatever the model's depth; small models never touch
the disk. `as_array` accepts either form.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_MB = 2048

_lock = threading.Lock()
_resident = [0]  # bytes of matrices kept in memory through keep()
_peak = [0]  # most bytes resident at once (tests, reports)
_spilled = [0]  # matrices written to disk so far


def resident_limit() -> int:
    """Bytes of kept matrices allowed in memory (SPA_COMPILER_HESSIAN_MB, MiB)."""
    raw = os.environ.get("SPA_COMPILER_HESSIAN_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MB
    except ValueError:
        mb = DEFAULT_MB
    return int(max(0.0, mb) * 2**20)


class Spilled:
    """A matrix on disk (see the module docstring)."""

    def __init__(self, arr: npt.NDArray[Any]) -> None:
        folder = os.environ.get("SPA_COMPILER_SPILL_DIR") or None
        fd, path = tempfile.mkstemp(prefix="spa-hessian-", suffix=".npy", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        except BaseException:
            os.unlink(path)
            raise
        self.path = path
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype
        self.nbytes = int(arr.nbytes)
        self._cleanup = weakref.finalize(self, _unlink, path)

    def load(self) -> npt.NDArray[Any]:
        """The matrix, read back into a fresh array."""
        return np.load(self.path, allow_pickle=False)

    def __repr__(self) -> str:
        return f"Spilled({self.shape}, {self.dtype}, {self.path})"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _release(nbytes: int) -> None:
    with _lock:
        _resident[0] -= nbytes


def keep(arr: npt.NDArray[Any]) -> npt.NDArray[Any] | Spilled:
    """`arr` itself while the kept matrices fit `resident_limit()`, else a `Spilled` copy on disk."""
    nbytes = int(arr.nbytes)
    with _lock:
        fits = _resident[0] + nbytes <= resident_limit()
        if fits:
            _resident[0] += nbytes
            _peak[0] = max(_peak[0], _resident[0])
    if fits:
        held = np.asarray(arr)
        try:
            weakref.finalize(held, _release, nbytes)
        except TypeError:  # not weak-referenceable: count it as spilled instead
            _release(nbytes)
            fits = False
        else:
            return held
    with _lock:
        _spilled[0] += 1
    return Spilled(arr)


def as_array(m: npt.NDArray[Any] | Spilled) -> npt.NDArray[Any]:
    """The matrix of a `keep` result (read from disk when it was spilled)."""
    return m.load() if isinstance(m, Spilled) else m


def reset_peak() -> None:
    """Start a new peak from what is resident now."""
    with _lock:
        _peak[0] = _resident[0]


def stats() -> dict[str, int]:
    """Bytes resident now, the most resident at once, and matrices spilled (this process)."""
    with _lock:
        return {"resident_bytes": _resident[0], "peak_resident_bytes": _peak[0], "spilled": _spilled[0]}
