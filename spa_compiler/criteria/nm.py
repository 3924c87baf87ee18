"""N:M sparsity masks and SparseGPT: keep n of every m consecutive weights along the reduction axis.

Everything here works on a layer seen as ``Y = W2 X`` with ``W2: (rows, cols)`` and its columns in
*group order*: columns ``g*m .. g*m + m-1`` form group ``g`` (the caller permutes columns into that
order, e.g. a Conv's im2col columns ``(channel, kernel position)`` into ``(kernel position,
channel)``, so that a group is m consecutive input channels at one kernel position, the layout
TensorRT's sparse tensor cores read). ``H`` is the layer Hessian over the same columns (any positive
multiple of ``X X^T``; `spa_compiler.criteria.hessian`).

    optimal mask   for per-weight scores s (higher = keep), the n:m mask maximizing the kept score
                   keeps the n largest of each group: groups are independent and the objective is a
                   sum (`nm_mask`); ties go to the lower column.
    magnitude      s = |w|                                                  (no update)
    Wanda          s = |w_ij| * ||x_j||                                     (no update)
    SparseGPT      OBS, columns left to right in blocks of B (a multiple of m). With
                   ``U = chol(H^-1)`` upper (``H^-1 = U^T U``), row i of U restricted to columns >= i
                   is the OBS update direction of column i given that columns < i are frozen.
                   At the first column of every group the mask of the group is chosen from the
                   current (already updated) weights by ``w^2 / U_jj^2``, pruning the m - n smallest;
                   each pruned weight's error ``e = w / U_ii`` is pushed into the later columns of
                   its block (``W[:, i:] -= e U[i, i:]``), and the block's errors into the columns
                   after the block at once (``W[:, i2:] -= E U[i1:i2, i2:]``), so the whole solve
                   costs one pass.

What SparseGPT's update is, exactly: for a fixed mask, processing column i removes the pruned
weights of column i and re-fits *only the columns after i* (earlier columns are frozen) by least
squares. So the result equals the joint least-squares re-fit of all kept weights when every pruned
column precedes every kept one (then nothing is frozen early), and is otherwise this sequence of
least-squares steps (tests/methods/test_nm_math.py checks both against direct solves).

The relative output error of a change ``W -> W'`` is ``tr(dW H dW^T) / tr(W H W^T)``, i.e.
``||(W - W') X||^2 / ||W X||^2`` for ``H = X X^T``; with ``H = I`` (no data) it is the relative
weight energy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spa_compiler.criteria.obs import inverse_hessian, prepare_hessian

__all__ = [
    "check_pattern",
    "magnitude_nm",
    "nm_mask",
    "parse_pattern",
    "relative_error",
    "satisfies_pattern",
    "sparsegpt_nm",
    "wanda_nm",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def parse_pattern(text: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); ValueError unless 0 < n < m."""
    try:
        a, b = (int(p) for p in str(text).strip().split(":"))
    except ValueError as e:
        raise ValueError(f"an N:M pattern is written n:m (e.g. 2:4), got {text!r}") from e
    if not 0 < a < b:
        raise ValueError(f"an N:M pattern needs 0 < n < m, got {text!r}")
    return a, b


def check_pattern(cols: int, n: int, m: int) -> None:
    """ValueError unless 0 < n < m and `cols` is a positive multiple of m."""
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got {n}:{m}")
    if cols <= 0 or cols % m:
        raise ValueError(f"{cols} columns do not split into groups of {m}")


def nm_mask(scores: npt.ArrayLike, n: int, m: int) -> BoolArray:
    """The n:m mask of `scores` (rows, cols): True for the n highest of every m consecutive columns.

    It maximizes the summed score of the kept entries over all masks with exactly n kept per group
    (each group is chosen independently; ties keep the lower column).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, cols), got shape {s.shape}")
    rows, cols = s.shape
    check_pattern(cols, n, m)
    g = s.reshape(rows, cols // m, m)
    order = np.argsort(-g, axis=2, kind="stable")  # descending, stable: lower column first on ties
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return keep.reshape(rows, cols)


def satisfies_pattern(w: npt.ArrayLike, n: int, m: int) -> bool:
    """Whether every group of m consecutive columns of `w` (rows, cols) has at most n non-zeros."""
    a = np.asarray(w)
    if a.ndim != 2 or a.shape[1] % m:
        return False
    return bool(((a.reshape(a.shape[0], -1, m) != 0).sum(axis=2) <= n).all())


def magnitude_nm(w: npt.ArrayLike, n: int, m: int) -> tuple[FloatArray, BoolArray]:
    """(W with all but the n largest |w| of each group zeroed, the mask)."""
    ww = np.asarray(w, dtype=np.float64)
    mask = nm_mask(np.abs(ww), n, m)
    return np.where(mask, ww, 0.0), mask


def wanda_nm(w: npt.ArrayLike, norms: npt.ArrayLike, n: int, m: int) -> tuple[FloatArray, BoolArray]:
    """(W masked by the Wanda score |w_ij| * ||x_j||, the mask); `norms`: (cols,) input norms."""
    ww = np.asarray(w, dtype=np.float64)
    nn = np.asarray(norms, dtype=np.float64).reshape(-1)
    if nn.shape != (ww.shape[1],):
        raise ValueError(f"norms must have {ww.shape[1]} entries, got {nn.shape}")
    mask = nm_mask(np.abs(ww) * nn[None, :], n, m)
    return np.where(mask, ww, 0.0), mask


def _upper_inverse_factor(h: FloatArray) -> FloatArray:
    """U upper triangular with ``U^T U = H^-1`` (the row factor SparseGPT updates with)."""
    hinv = inverse_hessian(h)
    try:
        low = np.linalg.cholesky(hinv)
    except np.linalg.LinAlgError:  # H^-1 numerically not PD: dampen it a little and retry
        bump = 1e-8 * float(np.mean(np.diag(hinv)))
        low = np.linalg.cholesky(hinv + bump * np.eye(hinv.shape[0]))
    return np.ascontiguousarray(low.T)


def sparsegpt_nm(
    w: npt.ArrayLike,
    h: npt.ArrayLike,
    n: int,
    m: int,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    mask: npt.ArrayLike | None = None,
) -> tuple[FloatArray, BoolArray]:
    """SparseGPT at n:m (see the module docstring): (updated W with the pattern, the mask kept).

    Args:
        w: ``W2: (rows, cols)``, columns in group order.
        h: ``H: (cols, cols)`` (undampened is fine; `damp` is applied here).
        n, m: Keep n of every m.
        blocksize: Columns per block (rounded up to a multiple of m).
        damp: Relative damping (SparseGPT's percdamp), through `obs.prepare_hessian`.
        mask: A fixed mask (True = keep) instead of choosing one (for tests and comparisons).
    """
    ww = np.array(w, dtype=np.float64)  # a copy: updated in place
    rows, cols = ww.shape
    check_pattern(cols, n, m)
    hh = prepare_hessian(h, damp=damp)
    if hh.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {hh.shape}")
    u = _upper_inverse_factor(hh)
    fixed = None if mask is None else np.asarray(mask, dtype=bool)
    if fixed is not None and fixed.shape != ww.shape:
        raise ValueError(f"mask must be {ww.shape}, got {fixed.shape}")
    keep = np.ones((rows, cols), dtype=bool)
    bs = max(m, -(-int(blocksize) // m) * m)
    drop = m - n
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = ww[:, i1:i2]  # a view: updated in place
        u1 = u[i1:i2, i1:i2]
        d1 = np.diag(u1)
        err1 = np.zeros((rows, i2 - i1))
        for i in range(i2 - i1):
            col = i1 + i
            if i % m == 0:
                if fixed is not None:
                    keep[:, col:col + m] = fixed[:, col:col + m]
                else:
                    score = w1[:, i:i + m] ** 2 / d1[None, i:i + m] ** 2
                    lowest = np.argsort(score, axis=1, kind="stable")[:, :drop]
                    grp = np.ones((rows, m), dtype=bool)
                    np.put_along_axis(grp, lowest, False, axis=1)
                    keep[:, col:col + m] = grp
            q = np.where(keep[:, col], w1[:, i], 0.0)
            e = (w1[:, i] - q) / d1[i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            w1[:, i] = q  # exactly zero where pruned, whatever the rounding of the update
            err1[:, i] = e
        if i2 < cols:
            ww[:, i2:] -= err1 @ u[i1:i2, i2:]
    ww[~keep] = 0.0
    return ww, keep


def relative_error(w: npt.ArrayLike, w_new: npt.ArrayLike, h: npt.ArrayLike | None = None) -> float:
    """``tr(dW H dW^T) / tr(W H W^T)`` (H None: the identity, relative weight energy); 0 for W = 0."""
    a = np.asarray(w, dtype=np.float64)
    d = a - np.asarray(w_new, dtype=np.float64)
    if h is None:
        den = float(np.sum(a * a))
        num = float(np.sum(d * d))
    else:
        hh = np.asarray(h, dtype=np.float64)
        den = float(np.einsum("ij,jk,ik->", a, hh, a))
        num = float(np.einsum("ij,jk,ik->", d, hh, d))
    return num / den if den > 0 else 0.0
