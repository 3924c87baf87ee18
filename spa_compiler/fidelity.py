"""Fidelity to the dense model: how closely a compressed model's outputs follow the original's.

A task metric (perplexity, a retrained probe) can hide that a compressed model is a different model:
a probe retrained on new embeddings forgives a rotated embedding space, a perplexity can hold while
the top-1 next token changes. These functions compare outputs with the dense model's on the same
inputs, and are used both by the quality harness (`benchmarks/quality`) and by the budget search
(`spa_compiler.search.output_error`), which scores candidate plans by their measured output error.

    cosine_rows(a, b)          per-row cosine similarity of two [N, d] arrays (embeddings)
    kl_rows(p, q)              per-row KL(softmax(p) || softmax(q)) of logits [..., V] (nats)
    top1_agreement(a, b)       share of rows whose argmax agrees
    relative_error(a, b)       ‖a - b‖ / ‖a‖ (Frobenius)
    output_error(d, c, kind)   one number per output pair: "kl" for next-token logits, "cosine"
                               (1 - mean row cosine), "relative" (relative Frobenius error)
    error_kind(shape)          the default kind for an output shape: "kl" for [batch, seq, vocab]
                               logits with a vocabulary (last dim >= 1000), else "cosine" for 2-D+
                               outputs with rows, "relative" for the rest

KL is computed in float64 from max-shifted logits, in row chunks, so [512, 49152] windows fit in
memory and small differences do not vanish in rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ErrorKinds",
    "cosine_rows",
    "error_kind",
    "kl_rows",
    "log_softmax",
    "mean_cosine",
    "output_error",
    "relative_error",
    "top1_agreement",
]

#: The error kinds `output_error` knows.
ErrorKinds = ("kl", "cosine", "relative")

#: A last dimension at least this large on a >= 3-D output is taken as a vocabulary (next-token logits).
VOCAB_MIN = 1000

_CHUNK_ROWS = 256


def _rows(x: npt.ArrayLike) -> npt.NDArray[Any]:
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError("expected an array with at least one dimension")
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)


def _check_pair(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")


def cosine_rows(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Cosine similarity of each row (last axis) of `a` with the same row of `b`: float64 [rows].

    A zero row against a zero row counts as 1 (identical); against a non-zero row as 0.
    """
    x, y = _rows(a).astype(np.float64), _rows(b).astype(np.float64)
    _check_pair(x, y)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dot = (x * y).sum(axis=1)
    den = nx * ny
    out = np.where(den > 0, dot / np.where(den > 0, den, 1.0), 0.0)
    out = np.where((nx == 0) & (ny == 0), 1.0, out)
    return np.clip(out, -1.0, 1.0)  # type: ignore[no-any-return]


def mean_cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Mean row cosine similarity (e.g. of sentence embeddings [N, d])."""
    return float(cosine_rows(a, b).mean())


def log_softmax(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """log softmax over the last axis, float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


def kl_rows(p_logits: npt.ArrayLike, q_logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """KL(P || Q) in nats per row, P = softmax(p_logits), Q = softmax(q_logits) over the last axis.

    `p_logits` is the reference (the dense model). Rows are processed in chunks (float64).
    """
    p, q = _rows(p_logits), _rows(q_logits)
    _check_pair(p, q)
    out = np.empty(p.shape[0], dtype=np.float64)
    for s in range(0, p.shape[0], _CHUNK_ROWS):
        lp, lq = log_softmax(p[s:s + _CHUNK_ROWS]), log_softmax(q[s:s + _CHUNK_ROWS])
        out[s:s + _CHUNK_ROWS] = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return np.maximum(out, 0.0)  # type: ignore[no-any-return]


def top1_agreement(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Share of rows (last axis = classes) whose argmax is the same in `a` and `b`."""
    x, y = _rows(a), _rows(b)
    _check_pair(x, y)
    return float((x.argmax(axis=1) == y.argmax(axis=1)).mean())


def relative_error(reference: npt.ArrayLike, other: npt.ArrayLike) -> float:
    """‖reference - other‖ / ‖reference‖ (Frobenius; 0 when both are zero, inf when only the
    reference is)."""
    r, o = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    _check_pair(r, o)
    num, den = float(np.linalg.norm(r - o)), float(np.linalg.norm(r))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def error_kind(shape: Sequence[int | None]) -> str:
    """The default error kind for an output of `shape` (see the module docstring)."""
    dims = list(shape)
    if len(dims) >= 3 and isinstance(dims[-1], int) and dims[-1] >= VOCAB_MIN:
        return "kl"
    if len(dims) >= 2 and isinstance(dims[-1], int) and dims[-1] > 1:
        return "cosine"
    return "relative"


def output_error(dense: npt.ArrayLike, candidate: npt.ArrayLike, kind: str | None = None) -> float:
    """One error figure for a candidate output against the dense output (0 = identical).

    kind "kl": mean KL(dense || candidate) of the next-token distributions (nats); "cosine":
    1 - mean row cosine; "relative": relative Frobenius error. None: `error_kind(shape)`.
    """
    d, c = np.asarray(dense), np.asarray(candidate)
    _check_pair(d, c)
    kind = kind or error_kind(d.shape)
    if kind == "kl":
        return float(kl_rows(d, c).mean())
    if kind == "cosine":
        return float(1.0 - cosine_rows(d, c).mean())
    if kind == "relative":
        return relative_error(d, c)
    raise ValueError(f"unknown error kind {kind!r}; use one of {ErrorKinds}")
