"""NMSparseMatMul in NumPy (the oracle), and the 2:4 compressed format's encoder/decoder.

Format (the single source of truth; README.md restates it):

    W (N, K) dense with at most 2 non-zeros in every group of 4 consecutive entries of a row
    (groups g = 0 .. K/4-1 cover columns 4g .. 4g+3; K must be a multiple of 8).

    values (N, K/2):  values[n, 2g] and values[n, 2g+1] are the kept entries of group g, in
                      column order.
    meta   (N, K/8) uint8: one 4-bit code per group, group g in byte g // 2, low nibble for even g:
                      code = i0 | (i1 << 2) with 0 <= i0 < i1 <= 3 the kept columns inside the group
                      (so W[n, 4g + i0] = values[n, 2g], W[n, 4g + i1] = values[n, 2g + 1]).
                      Valid codes: 4, 8, 12, 9, 13, 14; any other code is an error.

    Y (..., N) = X (..., K) @ W.T (+ bias)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["VALID_CODES", "compress", "decompress", "magnitude_24", "nm_sparse_matmul"]

#: The six valid 4-bit codes i0 | i1 << 2, i0 < i1.
VALID_CODES = tuple(i0 | (i1 << 2) for i0 in range(4) for i1 in range(i0 + 1, 4))


def _check(k: int) -> None:
    if k <= 0 or k % 8:
        raise ValueError(
            f"K must be a positive multiple of 8 for 2:4 with packed metadata, got {k}"
        )


def magnitude_24(w: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """W with the two smallest-magnitude entries of every group of 4 (along the last axis) zeroed."""
    n, k = w.shape
    _check(k)
    g = w.reshape(n, k // 4, 4)
    order = np.argsort(-np.abs(g.astype(np.float64)), axis=2, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[:, :, :2], True, axis=2)
    return np.where(keep, g, 0).reshape(n, k).astype(w.dtype)


def compress(
    w: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.uint8]]:
    """(values, meta) of a 2:4-sparse W (N, K); ValueError if a group holds more than 2 non-zeros.

    A group with fewer than 2 non-zeros keeps explicit zeros at the lowest free columns.
    """
    if w.ndim != 2:
        raise ValueError(f"W must be 2-D, got shape {w.shape}")
    n, k = w.shape
    _check(k)
    g = w.reshape(n, k // 4, 4)
    nz = g != 0
    counts = nz.sum(axis=2)
    if (counts > 2).any():
        bad = np.argwhere(counts > 2)[0]
        raise ValueError(
            f"W is not 2:4 sparse: row {bad[0]}, columns {4 * bad[1]}..{4 * bad[1] + 3} "
            f"hold {counts[bad[0], bad[1]]} non-zeros (use magnitude_24 first)"
        )
    # rank columns: non-zeros first (in column order), then zeros (in column order)
    key = np.where(nz, 0, 4) + np.arange(4)
    order = np.argsort(key, axis=2, kind="stable")[:, :, :2]
    order.sort(axis=2)
    values = np.take_along_axis(g, order, axis=2).reshape(n, k // 2).astype(w.dtype)
    codes = (order[:, :, 0] | (order[:, :, 1] << 2)).astype(np.uint8)  # (n, k/4)
    meta = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # (n, k/8)
    return values, meta


def decompress(
    values: npt.NDArray[np.floating], meta: npt.NDArray[np.uint8]
) -> npt.NDArray[np.floating]:
    """The dense W (N, K) of (values, meta); ValueError on inconsistent shapes or invalid codes."""
    if values.ndim != 2 or meta.ndim != 2:
        raise ValueError(f"values and meta must be 2-D, got {values.shape} and {meta.shape}")
    n, half = values.shape
    k = 2 * half
    _check(k)
    if meta.shape != (n, k // 8) or meta.dtype != np.uint8:
        raise ValueError(
            f"meta must be uint8 of shape ({n}, {k // 8}), got {meta.dtype} {meta.shape}"
        )
    codes = np.empty((n, k // 4), np.uint8)
    codes[:, 0::2] = meta & 0xF
    codes[:, 1::2] = meta >> 4
    i0, i1 = codes & 3, codes >> 2
    if not (i0 < i1).all():
        bad = np.argwhere(~(i0 < i1))[0]
        raise ValueError(
            f"invalid 2:4 metadata code {codes[bad[0], bad[1]]} at row {bad[0]}, group {bad[1]}"
        )
    w = np.zeros((n, k // 4, 4), values.dtype)
    v = values.reshape(n, k // 4, 2)
    np.put_along_axis(w, i0[:, :, None].astype(np.int64), v[:, :, :1], axis=2)
    np.put_along_axis(w, i1[:, :, None].astype(np.int64), v[:, :, 1:], axis=2)
    return w.reshape(n, k)


def nm_sparse_matmul(
    x: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
    meta: npt.NDArray[np.uint8],
    bias: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.floating]:
    """Y = X @ W.T (+ bias) in float64, returned in X's dtype (bfloat16 inputs: pass float32)."""
    w = decompress(values, meta).astype(np.float64)
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"X's last axis ({x.shape[-1]}) must equal K = 2 * values.shape[1] = {k}")
    y = x.astype(np.float64) @ w.T
    if bias is not None:
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
        y = y + bias.astype(np.float64)
    return y.astype(x.dtype)
