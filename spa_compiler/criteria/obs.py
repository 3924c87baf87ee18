"""Structured Optimal Brain Surgeon for one linear layer (ZipLM; docs/algorithms.md §2), in numpy.

Setting. ``Y = W X`` with ``W: (out, in)`` and calibration inputs ``X: (in, n)``. A *group* ``S``
is a set of input columns removed together (an FFN neuron = 1 column of the down projection, an
attention head = ``head_dim`` columns of the output projection, a Conv input channel =
``prod(kernel)`` im2col columns, see `spa_compiler.criteria.hessian.conv_channel_columns`). Removing ``S``
and re-fitting the other columns minimizes the layer loss ``L(dW) = 1/2 * sum_rows dw H dw^T``
subject to ``W'[:, S] = 0``.

Conventions (read these before comparing numbers with a paper):

* ``H`` is the Hessian of the loss, i.e. any positive multiple ``c * 2 X X^T`` (damped). With
  ``H = 2 X X^T`` the loss ``1/2 dw H dw^T`` is exactly ``||dW X||^2``; with
  `HessianAccumulator.hessian` (``c = 1/n``) it is the mean squared error per sample.
* Errors carry the factor 1/2 of the quadratic form::

      E_S = 1/2 * sum_rows W[:, S] ((H^-1)_SS)^-1 W[:, S]^T

  so that, for ``H = 2 X X^T`` and no damping, ``E_S == ||W X - W' X||_F^2`` for the compensated W'
  (some write the same formula without the 1/2, i.e. twice the loss; the ranking is the
  same).
* Update and inverse downdate (independent of the scale of H)::

      W    <- W    - W[:, S] ((H^-1)_SS)^-1 (H^-1)_S,:          then W[:, S] = 0
      H^-1 <- H^-1 - (H^-1)_:,S ((H^-1)_SS)^-1 (H^-1)_S,:       then rows/cols S = 0

  Shapes never change: removed columns stay as zeros so that group indices stay valid.
* Sequential OBS removals equal the exact least-squares re-fit of the cumulative kept set
  (`solve_kept`), and the step errors add up to the total loss (Pythagoras in the H-norm), which is
  what the tests check against ``np.linalg.lstsq``.

Singular H. `prepare_hessian` symmetrizes, applies relative damping, and decouples *dead* features
(zero diagonal: the input is always 0, so its column does not affect the loss) by giving them a tiny
diagonal, which makes their removal cost ~0. If Cholesky still fails, damping is raised tenfold up
to four times (with a warning), then `PreconditionError`. A group whose ``(H^-1)_SS`` block is not
positive definite (only possible through rounding) gets error ``inf``; if it must be removed anyway,
`remove_group` uses the pseudo-inverse of the block.

Weights are processed in float64. Importances of the baseline criterion (
`wanda_scores`) are "higher = keep"; OBS errors are costs, "lower = remove first".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from spa_compiler.errors import PreconditionError

logger = logging.getLogger(__name__)

__all__ = [
    "ObsPath",
    "greedy_prune",
    "group_errors",
    "inverse_hessian",
    "joint_greedy_order",
    "prepare_hessian",
    "remove_group",
    "solve_kept",
    "uniform_levels",
    "wanda_scores",
]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

#: Diagonal given to dead features, relative to the mean live diagonal.
DEAD_FEATURE_DIAG = 1e-12


# ------------------------------------------------------------------------------------- helpers


def _as_matrix(w: npt.ArrayLike, what: str) -> FloatArray:
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {arr.shape}")
    return arr


def _as_groups(groups: Sequence[npt.ArrayLike], n_cols: int, *, disjoint: bool) -> list[IndexArray]:
    """Validate groups: non-empty, in range, no repeated column (anywhere, if `disjoint`).

    One vectorized check over all groups (a per-group ``np.unique`` made this the hot spot of
    joint paths); the slow per-group loop runs only to name the offending group.
    """
    out = [np.asarray(g, dtype=np.intp).reshape(-1) for g in groups]
    if not out:
        return out
    sizes = np.fromiter((g.size for g in out), dtype=np.intp, count=len(out))
    if (sizes == 0).any():
        raise ValueError(f"group {int(np.flatnonzero(sizes == 0)[0])} is empty")
    flat = np.concatenate(out)
    if flat.min() < 0 or flat.max() >= n_cols:
        bad = next(i for i, g in enumerate(out) if g.min() < 0 or g.max() >= n_cols)
        raise ValueError(f"group {bad} has columns outside [0, {n_cols})")
    owner = np.repeat(np.arange(len(out), dtype=np.intp), sizes)
    key = owner * n_cols + flat
    if np.unique(key).size != key.size:
        bad = next(i for i, g in enumerate(out) if np.unique(g).size != g.size)
        raise ValueError(f"group {bad} repeats a column")
    if disjoint and np.unique(flat).size != flat.size:
        seen = np.zeros(n_cols, dtype=bool)
        for i, g in enumerate(out):
            if seen[g].any():
                raise ValueError(f"group {i} overlaps an earlier group; groups must be disjoint")
            seen[g] = True
    return out


def _check_square(h: FloatArray, n: int, what: str) -> None:
    if h.shape != (n, n):
        raise ValueError(f"{what} must be ({n}, {n}) to match W's columns, got {h.shape}")


def uniform_levels(n_groups: int, n_levels: int = 16, *, max_fraction: float = 1.0) -> list[int]:
    """Levels ``0, k_1, ..., k_m`` (groups removed) at uniform fractions up to ``max_fraction``.

    Args:
        n_groups: Number of groups of the layer.
        n_levels: Number of non-zero steps (16 = every 1/16 of the groups, as in ZipLM).
        max_fraction: Largest fraction of groups removed.

    Returns:
        Sorted, de-duplicated ints starting at 0.
    """
    top = int(round(n_groups * max_fraction))
    return sorted({int(round(top * i / n_levels)) for i in range(n_levels + 1)})


# --------------------------------------------------------------------------------- Hessians


def prepare_hessian(h: npt.ArrayLike, damp: float = 0.0) -> FloatArray:
    """A float64, symmetric, dampened copy of H with dead features decoupled.

    Args:
        h: ``(in, in)`` Hessian (any positive multiple of ``2 X X^T``).
        damp: Added as ``damp * mean(diag(H)) * I`` (0: none; use 0 only for well-conditioned H).

    Returns:
        ``H'``: rows/columns of dead features (diagonal <= 0 after damping) are zeroed and their
        diagonal set to ``DEAD_FEATURE_DIAG * mean(live diagonal)``.
    """
    hh = _as_matrix(h, "H")
    if hh.shape[0] != hh.shape[1]:
        raise ValueError(f"H must be square, got {hh.shape}")
    if not np.all(np.isfinite(hh)):
        raise PreconditionError("layer Hessian contains NaN or inf", hint="check calibration data")
    hh = 0.5 * (hh + hh.T)
    diag = np.diag(hh).copy()
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if damp > 0:
        mean_diag = float(diag.mean())
        hh[np.diag_indices_from(hh)] += damp * (mean_diag if mean_diag > 0 else 1.0)
        diag = np.diag(hh).copy()
    dead = diag <= 0
    if dead.any():
        live = diag[~dead]
        tiny = DEAD_FEATURE_DIAG * (float(live.mean()) if live.size else 1.0)
        hh[dead, :] = 0.0
        hh[:, dead] = 0.0
        hh[dead, dead] = tiny
        logger.debug("%d of %d features are dead (zero activation)", int(dead.sum()), dead.size)
    return hh


def _spd_inverse(h: FloatArray) -> FloatArray:
    """Inverse of a symmetric positive definite matrix; LinAlgError if it is not PD.

    Uses LAPACK potrf/potri through SciPy when it is installed (about 1 n^3 flops), else a numpy
    Cholesky (the PD check) followed by ``np.linalg.inv`` (about 2 n^3).
    """
    try:
        from scipy.linalg import lapack
    except ImportError:  # SciPy is optional
        np.linalg.cholesky(h)
        hinv = np.linalg.inv(h)
    else:
        factor, info = lapack.dpotrf(h, lower=True, clean=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"potrf failed (info={info})")
        low, info = lapack.dpotri(factor, lower=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"potri failed (info={info})")
        hinv = np.tril(low)
        hinv += hinv.T  # mirrored (the diagonal doubled, then halved: exact)
        hinv[np.diag_indices_from(hinv)] *= 0.5
        return np.asarray(hinv, dtype=np.float64)
    return np.asarray(0.5 * (hinv + hinv.T), dtype=np.float64)


def inverse_hessian(h: FloatArray, *, max_retries: int = 4) -> FloatArray:
    """``H^-1`` through Cholesky, raising damping tenfold on failure (a warning each time).

    Args:
        h: A prepared H (`prepare_hessian`).
        max_retries: Damping escalations (1e-6, 1e-5, ... times the mean diagonal) before giving up.

    Raises:
        PreconditionError: H is not positive definite even after the escalations.
    """
    mean_diag = float(np.mean(np.diag(h))) or 1.0
    extra = 0.0
    for attempt in range(max_retries + 1):
        hh = h if extra == 0.0 else h + extra * mean_diag * np.eye(h.shape[0])
        try:
            return _spd_inverse(hh)
        except np.linalg.LinAlgError:
            if attempt == max_retries:
                break
            extra = 1e-6 * 10.0**attempt
            logger.warning(
                "layer Hessian (%d x %d) is not positive definite; adding damping %.1e",
                h.shape[0],
                h.shape[0],
                extra,
            )
    raise PreconditionError(
        f"layer Hessian ({h.shape[0]} x {h.shape[0]}) is not positive definite even with "
        f"damping {extra:.0e}",
        hint="raise the damping or provide more varied calibration data",
    )


# ------------------------------------------------------------------------------- OBS kernels


def _bucket(groups: Sequence[IndexArray]) -> dict[int, tuple[IndexArray, IndexArray]]:
    """size -> (group ids, stacked column indices (G_s, size))."""
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_size.setdefault(g.size, []).append(i)
    return {
        s: (np.asarray(ids, dtype=np.intp), np.stack([groups[i] for i in ids]))
        for s, ids in by_size.items()
    }


def _errors_bucket(w: FloatArray, hinv: FloatArray, idx: IndexArray) -> FloatArray:
    """Errors of equally sized groups ``idx: (G, s)``; inf where the block is not PD."""
    size = idx.shape[1]
    if size == 1:
        cols = idx[:, 0]
        d = hinv[cols, cols]
        sq = np.einsum("ij,ij->j", w[:, cols], w[:, cols])
        with np.errstate(divide="ignore", invalid="ignore"):
            err = 0.5 * sq / d
        err[~(d > 0)] = np.inf
        return err
    blocks = hinv[idx[:, :, None], idx[:, None, :]]  # (G, s, s)
    rhs = np.transpose(w[:, idx], (1, 2, 0))  # (G, s, out)
    return _errors_blocks(blocks, rhs)


def _errors_blocks(blocks: FloatArray, rhs: FloatArray) -> FloatArray:
    """``1/2 tr(rhs^T blocks^-1 rhs)`` per group; inf where a block is not PD."""
    try:
        lower = np.linalg.cholesky(blocks)
        z = np.linalg.solve(lower, rhs)
        return 0.5 * np.einsum("gso,gso->g", z, z)
    except np.linalg.LinAlgError:
        err = np.empty(blocks.shape[0])
        for g in range(blocks.shape[0]):
            try:
                z = np.linalg.solve(np.linalg.cholesky(blocks[g]), rhs[g])
                err[g] = 0.5 * float(np.sum(z * z))
            except np.linalg.LinAlgError:
                err[g] = np.inf
        return err


def _errors(
    w: FloatArray,
    hinv: FloatArray,
    buckets: dict[int, tuple[IndexArray, IndexArray]],
    n_groups: int,
    active: npt.NDArray[np.bool_] | None = None,
) -> FloatArray:
    out = np.full(n_groups, np.inf)
    for ids, idx in buckets.values():
        if active is not None:
            keep = active[ids]
            ids, idx = ids[keep], idx[keep]
            if ids.size == 0:
                continue
        out[ids] = _errors_bucket(w, hinv, idx)
    return out


def group_errors(
    w: npt.ArrayLike, hinv: npt.ArrayLike, groups: Sequence[npt.ArrayLike]
) -> FloatArray:
    """OBS cost of removing each group on its own (with optimal compensation).

    Args:
        w: ``W: (out, in)``.
        hinv: ``H^-1: (in, in)`` (`inverse_hessian` of a prepared H, or a downdated one).
        groups: Column-index arrays; may overlap (each is evaluated independently).

    Returns:
        ``E: (n_groups,)``, ``E_S = 1/2 sum_rows W[:, S] ((H^-1)_SS)^-1 W[:, S]^T`` (module doc
        for the 1/2); ``inf`` where ``(H^-1)_SS`` is not positive definite.
    """
    ww = _as_matrix(w, "W")
    hi = _as_matrix(hinv, "H^-1")
    _check_square(hi, ww.shape[1], "H^-1")
    gs = _as_groups(groups, ww.shape[1], disjoint=False)
    return _errors(ww, hi, _bucket(gs), len(gs))


def _block_inverse(block: FloatArray) -> FloatArray:
    try:
        lower = np.linalg.cholesky(block)
        linv = np.linalg.inv(lower)
        return linv.T @ linv
    except np.linalg.LinAlgError:
        logger.warning(
            "(H^-1)_SS of a %d-column group is singular; using its pseudo-inverse", block.shape[0]
        )
        return np.asarray(np.linalg.pinv(block, hermitian=True), dtype=np.float64)


def _remove_inplace(w: FloatArray, hinv: FloatArray, cols: IndexArray) -> None:
    ainv = _block_inverse(hinv[np.ix_(cols, cols)])
    rows = hinv[cols, :]  # (s, in), a copy
    w -= (w[:, cols] @ ainv) @ rows
    hinv -= rows.T @ (ainv @ rows)
    w[:, cols] = 0.0
    hinv[cols, :] = 0.0
    hinv[:, cols] = 0.0


def remove_group(
    w: npt.ArrayLike, hinv: npt.ArrayLike, cols: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """One OBS step: remove columns ``cols`` and compensate the others.

    Args:
        w: ``W: (out, in)``.
        hinv: ``H^-1: (in, in)`` of the currently kept columns (removed ones are zero rows/cols).
        cols: The group's column indices ``S``.

    Returns:
        ``(W_new, Hinv_new)`` as new float64 arrays of the same shapes; ``W_new[:, S] == 0`` and
        ``Hinv_new`` is the inverse of H restricted to the kept columns (zero elsewhere).
    """
    ww = _as_matrix(w, "W").copy()
    hi = _as_matrix(hinv, "H^-1").copy()
    _check_square(hi, ww.shape[1], "H^-1")
    (idx,) = _as_groups([cols], ww.shape[1], disjoint=True)
    _remove_inplace(ww, hi, idx)
    return ww, hi


def solve_kept(
    w: npt.ArrayLike, h: npt.ArrayLike, keep_cols: npt.ArrayLike, *, damp: float = 0.0
) -> FloatArray:
    """Exact least-squares re-fit of W on a fixed set of kept columns (the oracle).

    Minimizes ``sum_rows (W' - W) H (W' - W)^T`` over W' with ``W'[:, R] = 0`` (R = removed).
    Setting the gradient over the kept columns K to zero: ``(W'_K - W_K) H_KK - W_R H_RK = 0``, i.e.
    ``W'_K = (W H_:,K) H_KK^-1``. With ``H = 2 X X^T`` this is ``argmin ||W X - W' X||``.

    Args:
        w: ``W: (out, in)``.
        h: ``H: (in, in)``, passed through `prepare_hessian` with ``damp``.
        keep_cols: Indices of kept columns (any order, no repeats).
        damp: Relative damping (as in `prepare_hessian`).

    Returns:
        ``W': (out, in)`` float64, zero on the removed columns. A singular ``H_KK`` falls back to
        ``lstsq`` (minimum-norm solution).
    """
    ww = _as_matrix(w, "W")
    hh = prepare_hessian(h, damp)
    _check_square(hh, ww.shape[1], "H")
    keep = np.asarray(keep_cols, dtype=np.intp).reshape(-1)
    out = np.zeros_like(ww)
    if keep.size == 0:
        return out
    if np.unique(keep).size != keep.size or keep.min() < 0 or keep.max() >= ww.shape[1]:
        raise ValueError("keep_cols must be distinct column indices of W")
    from spa_compiler.criteria.backend import torch_device

    dev = torch_device(keep.size)
    if dev is not None:
        sol_t = _solve_kept_torch(ww, hh, keep, dev)
        if sol_t is not None:
            out[:, keep] = sol_t.T
            return out
    h_kk = hh[np.ix_(keep, keep)]
    rhs = hh[keep, :] @ ww.T  # (K, out) = (W H_:,K)^T
    try:
        np.linalg.cholesky(h_kk)  # PD check; solve's LU on the same matrix is as fast as two triangular solves
        sol = np.linalg.solve(h_kk, rhs)
    except np.linalg.LinAlgError:
        logger.warning("H restricted to %d kept columns is singular; using lstsq", keep.size)
        sol = np.linalg.lstsq(h_kk, rhs, rcond=None)[0]
    out[:, keep] = sol.T
    return out


def _solve_kept_torch(ww: FloatArray, hh: FloatArray, keep: npt.NDArray[np.intp], dev: Any) -> FloatArray | None:
    """`solve_kept`'s PD solve in float64 on a torch (CUDA) device: one Cholesky factor and its two
    triangular solves; None when H_KK is not PD there (the caller falls back to numpy's lstsq)."""
    import torch

    th = torch.as_tensor(hh, dtype=torch.float64, device=dev)
    idx = torch.as_tensor(keep, device=dev)
    h_kk = th.index_select(0, idx).index_select(1, idx)
    rhs = th.index_select(0, idx) @ torch.as_tensor(ww, dtype=torch.float64, device=dev).T
    del th
    low, info = torch.linalg.cholesky_ex(h_kk)
    if int(info) != 0:
        return None
    sol = torch.cholesky_solve(rhs, low)
    return np.asarray(sol.cpu().numpy(), dtype=np.float64)


# ----------------------------------------------------------------------------------- greedy


def _inv_sqrt_factor(block: FloatArray) -> FloatArray:
    """``C`` with ``C C^T = block^-1`` (Cholesky), or ``= pinv(block)`` when block is not PD."""
    try:
        lower = np.linalg.cholesky(block)
        return np.asarray(np.linalg.inv(lower).T, dtype=np.float64)
    except np.linalg.LinAlgError:
        logger.warning(
            "(H^-1)_SS of a %d-column group is singular; using its pseudo-inverse", block.shape[0]
        )
        lam, q = np.linalg.eigh(0.5 * (block + block.T))
        keep = lam > 1e-12 * max(float(np.abs(lam).max()), 1e-300)
        return np.asarray(q[:, keep] / np.sqrt(lam[keep]), dtype=np.float64)


def _errors_from_gram(blocks: FloatArray, gram: FloatArray) -> FloatArray:
    """``1/2 tr(blocks^-1 gram)`` per group (``gram = W_S^T W_S``); inf where a block is not PD."""
    try:
        lower = np.linalg.cholesky(blocks)
    except np.linalg.LinAlgError:
        err = np.empty(blocks.shape[0])
        for g in range(blocks.shape[0]):
            try:
                low = np.linalg.cholesky(blocks[g])
            except np.linalg.LinAlgError:
                err[g] = np.inf
                continue
            linv = np.linalg.inv(low)
            err[g] = 0.5 * float(np.sum((linv.T @ linv) * gram[g]))
        return err
    linv = np.linalg.inv(lower)  # (G, s, s), batched
    binv = np.transpose(linv, (0, 2, 1)) @ linv
    return 0.5 * np.einsum("gab,gab->g", binv, gram)


def _blas_gemm() -> Callable[..., Any] | None:
    try:
        from scipy.linalg import blas
    except ImportError:  # SciPy is optional
        return None
    return blas.dgemm


#: Layers with at least this many input columns fold U into H0 less often (`_GreedyState`).
WIDE_COLS = 1024


class _GreedyState:
    """W and a lazily downdated ``H^-1`` for the greedy loop, on the columns still kept.

    ``H^-1`` is kept as ``H0 - U U^T``: a removal appends ``u = (H^-1)_:,S C`` (with
    ``C C^T = ((H^-1)_SS)^-1``) to ``U`` instead of rewriting the ``k x k`` matrix, and ``U`` is
    folded into ``H0`` by one matrix product every ``refresh_cols`` columns (SparseGPT's lazy batch
    idea: the flops equal a full downdate's, but as a compute-bound product instead of a
    memory-bound rewrite per step; rows ``S`` of ``H0 - U U^T`` cost one pass over ``U``, so ``U``
    is kept narrow). The diagonal blocks ``(H^-1)_SS`` of all groups, which the errors need, are downdated
    directly, and so are the Gram matrices ``W_S^T W_S`` of groups of more than one column (``W``
    changes by the rank-``s`` term ``A u^T``, ``A = W_:,S C``, so ``W_S^T W_S`` changes by
    ``-P u_S^T - u_S P^T + u_S (A^T A) u_S^T`` with ``P = W_S^T A``): a step never copies ``W`` per
    group. Blocks and Grams are recomputed exactly (from ``H0 - U U^T`` and ``W``) every
    ``refresh_cols`` removed columns, so rounding never accumulates for long. W is stored
    column-major and updated in place by BLAS (``dgemm`` with ``beta = 1``) when SciPy is there.
    Removed columns are physically dropped from W, H0 and U once they are a quarter of them.
    """

    def __init__(
        self,
        w: FloatArray,
        hinv: FloatArray,
        buckets: dict[int, tuple[IndexArray, IndexArray]],
        refresh_cols: int = 64,
    ) -> None:
        self.n_in = w.shape[1]
        self.w = np.array(w, dtype=np.float64, order="F", copy=True)
        self.h0 = hinv
        self.buckets = buckets
        self.cols = np.arange(self.n_in)  # local index -> original column
        self.pos = np.arange(self.n_in)  # original column -> local index (0 once dropped)
        self.zeroed: list[int] = []  # local indices removed since the last compaction
        self.max_size = max(buckets) if buckets else 1
        self.refresh_cols = max(refresh_cols, 4 * self.max_size)
        # U is folded into H0 every `refresh_cols` columns: a fold is one k x k matrix product
        # (compute-bound, fast), while rows of H0 - U U^T cost a memory-bound pass over U per step
        # (benchmarks/cost/results/components.json: never folding was 2x slower on an FFN path).
        # Layers of WIDE_COLS inputs or more fold every 4 x refresh_cols: a fold's symmetrization
        # is a memory-bound pass over k^2 that then costs as much as its product, while the
        # pending rows cost s x k x r per step (small next to W's update at that width)
        self.fold_cols = self.refresh_cols * (4 if self.n_in >= WIDE_COLS else 1)
        self.u = np.zeros((self.n_in, min(self.n_in, max(256, self.fold_cols)) + self.max_size))
        # Wide layers keep W lazily too, W = W0 - A U^T with the same pending U as H^-1: a step then
        # reads W0 once (W^T a) instead of reading it for the column norms and rewriting it (a
        # memory-bound rank-s update of out x k per step); the column norms are updated from
        # W^T a, and recomputed exactly at every refresh
        self.lazy = self.n_in >= WIDE_COLS
        self.a = np.zeros((self.w.shape[0], self.u.shape[1])) if self.lazy else None
        self.sq = np.einsum("ij,ij->j", self.w, self.w) if self.lazy else None
        self.r = 0
        self.since_refresh = 0
        self.gemm = _blas_gemm()
        self.blocks: dict[int, FloatArray] = {}
        self.grams: dict[int, FloatArray] = {}
        self._refresh_blocks()

    def _current_w(self) -> FloatArray:
        """W as it stands (the lazy form materialized: W0 - A U^T)."""
        if not self.lazy or not self.r:
            return self.w
        return self.w - self.a[:, : self.r] @ self.u[:, : self.r].T

    def _refresh_blocks(self) -> None:
        """Diagonal blocks of ``H^-1 = H0 - U U^T`` and Grams of W for every group, exactly."""
        ur = self.u[:, : self.r]
        w_now = self._current_w() if self.lazy and (self.max_size > 1 or self.r) else self.w
        if self.lazy:
            self.sq = np.einsum("ij,ij->j", w_now, w_now)
        for size, (_, idx) in self.buckets.items():
            local = self.pos[idx]
            blocks = self.h0[local[:, :, None], local[:, None, :]]
            if self.r:
                ug = ur[local]  # (G, s, r)
                blocks = blocks - ug @ np.transpose(ug, (0, 2, 1))
            self.blocks[size] = np.ascontiguousarray(blocks)
            if size > 1:
                wg = w_now[:, local]  # (out, G, s)
                self.grams[size] = np.einsum("ogs,ogt->gst", wg, wg)
        self.since_refresh = 0

    def _fold(self) -> None:
        if self.r:
            ur = self.u[:, : self.r]
            self.h0 -= ur @ ur.T
            self.h0 = 0.5 * (self.h0 + self.h0.T)
            if self.lazy:
                ar = self.a[:, : self.r]
                if self.gemm is not None:  # W0 -= A U^T in place (column-major)
                    self.w = self.gemm(-1.0, ar, ur, beta=1.0, c=self.w, trans_b=True, overwrite_c=True)
                else:
                    self.w -= ar @ ur.T
                self.a[:, : self.r] = 0.0
            self.u[:, : self.r] = 0.0
            self.r = 0

    def _reserve(self, extra: int) -> None:
        """Room for ``extra`` more pending columns in U (grown by doubling, folded at r >= k)."""
        if self.r + extra > self.cols.size:
            self._fold()
        if self.r + extra > self.u.shape[1]:
            width = max(2 * self.u.shape[1], self.r + extra)
            grown = np.zeros((self.u.shape[0], width))
            grown[:, : self.r] = self.u[:, : self.r]
            self.u = grown
            if self.lazy:
                grown_a = np.zeros((self.a.shape[0], width))
                grown_a[:, : self.r] = self.a[:, : self.r]
                self.a = grown_a

    def errors(self, active: npt.NDArray[np.bool_], out: FloatArray) -> None:
        """Add each active group's OBS error to ``out`` (inactive entries are left alone)."""
        for size, (ids, idx) in self.buckets.items():
            keep = active[ids]
            if not keep.any():
                continue
            blocks = self.blocks[size][keep]
            if size == 1:  # column norms of the whole matrix, no fancy-indexed copy of W
                local = self.pos[idx[keep, 0]]
                sq = self.sq[local] if self.lazy else np.einsum("ij,ij->j", self.w, self.w)[local]
                d = blocks[:, 0, 0]
                with np.errstate(divide="ignore", invalid="ignore"):
                    err = 0.5 * sq / d
                err[~(d > 0)] = np.inf
            else:
                err = _errors_from_gram(blocks, self.grams[size][keep])
            out[ids[keep]] += err

    def remove(self, cols: IndexArray) -> None:
        local = self.pos[cols]
        ur = self.u[:, : self.r]
        h_s = self.h0[local, :] - ur[local] @ ur.T  # (s, k): rows S of the current H^-1
        if self.zeroed:
            h_s[:, self.zeroed] = 0.0
        c = _inv_sqrt_factor(h_s[:, local])
        u_new = h_s.T @ c  # (k, s')
        if self.lazy:
            ar = self.a[:, : self.r]
            w_s = self.w[:, local] - ar @ ur[local].T  # columns S of W0 - A U^T
            a = w_s @ c  # (out, s')
            wta = self.w.T @ a - ur @ (ar.T @ a)  # (k, s'): W^T A before the update
            ata = a.T @ a
            # column norms after W -= A u^T: |w_j|^2 - 2 u_j.(W^T A)_j + u_j (A^T A) u_j^T
            self.sq -= 2.0 * np.einsum("js,js->j", u_new, wta) - np.einsum("js,st,jt->j", u_new, ata, u_new)
            self._reserve(u_new.shape[1])
            self.u[:, self.r : self.r + u_new.shape[1]] = u_new
            self.a[:, self.r : self.r + u_new.shape[1]] = a
            self.r += u_new.shape[1]
            # the removed columns are zero from now on: in W0 and in every pending term
            self.w[:, local] = 0.0
            self.u[local, : self.r] = 0.0
            self.sq[local] = 0.0
        else:
            a = self.w[:, local] @ c  # (out, s')
            if self.grams:
                wta = self.w.T @ a  # (k, s'): W^T A before the update
                ata = a.T @ a
            if self.gemm is not None:  # W -= A u^T in place (W is column-major)
                self.w = self.gemm(-1.0, a, u_new, beta=1.0, c=self.w, trans_b=True, overwrite_c=True)
            else:
                self.w -= a @ u_new.T
            self.w[:, local] = 0.0
            self._reserve(u_new.shape[1])
            self.u[:, self.r : self.r + u_new.shape[1]] = u_new
            self.r += u_new.shape[1]
        for size, (_, idx) in self.buckets.items():
            li = self.pos[idx]
            ug = u_new[li]  # (G, size, s')
            ugt = np.transpose(ug, (0, 2, 1))
            self.blocks[size] -= ug @ ugt
            if size > 1:
                pg = wta[li]  # (G, size, s')
                cross = pg @ ugt
                self.grams[size] -= cross + np.transpose(cross, (0, 2, 1)) - (ug @ ata) @ ugt
        self.zeroed.extend(local.tolist())
        self.since_refresh += local.size
        if self.r >= self.fold_cols:
            self._fold()
        if 4 * len(self.zeroed) > self.cols.size and len(self.zeroed) < self.cols.size:
            keep = np.ones(self.cols.size, dtype=bool)
            keep[self.zeroed] = False
            self.w = np.asfortranarray(self.w[:, keep])
            self.h0 = np.ascontiguousarray(self.h0[np.ix_(keep, keep)])
            self.u = np.ascontiguousarray(self.u[keep])
            if self.lazy:
                self.sq = self.sq[keep]
            self.pos[self.cols[~keep]] = 0  # removed columns: any valid index (never read as data)
            self.cols = self.cols[keep]
            self.pos[self.cols] = np.arange(self.cols.size)
            self.zeroed = []
            self._refresh_blocks()
        elif self.since_refresh >= self.refresh_cols:
            self._refresh_blocks()

    def full_weight(self, dtype: npt.DTypeLike) -> npt.NDArray[np.floating]:
        out = np.zeros((self.w.shape[0], self.n_in), dtype=dtype)
        out[:, self.cols] = self._current_w()
        return out


def _make_state(w0: FloatArray, hh: FloatArray, buckets: dict[int, tuple[IndexArray, IndexArray]]) -> Any:
    """The greedy state of one layer: on a CUDA GPU for large layers (`criteria.backend`), else numpy."""
    from spa_compiler.criteria.backend import TorchGreedyState, spd_inverse, torch_device

    dev = torch_device(w0.shape[1])
    if dev is None:
        return _GreedyState(w0, inverse_hessian(hh), buckets)
    try:
        hinv = spd_inverse(hh, dev)
    except np.linalg.LinAlgError:  # the CPU path escalates the damping (with its warnings)
        hinv = inverse_hessian(hh)
    return TorchGreedyState(w0, hinv, buckets, dev)


def _greedy_loop(
    states: Sequence[Any],
    groups: Sequence[Sequence[IndexArray]],
    n_groups: int,
    total: int,
    on_step: Callable[[int], None] | None = None,
) -> tuple[IndexArray, FloatArray]:
    """Remove ``total`` groups greedily by their OBS error summed over every state (layer).

    ``groups[v][g]`` are group ``g``'s columns in layer ``v``. Ties go to the lower group id;
    when every remaining group has error inf, the first remaining one is removed.
    """
    active = np.ones(n_groups, dtype=bool)
    order = np.zeros(total, dtype=np.intp)
    step_err = np.zeros(total)
    errs = np.empty(n_groups)
    for step in range(total):
        errs.fill(0.0)
        for st in states:
            st.errors(active, errs)
        errs[~active] = np.inf
        j = int(np.argmin(errs))
        if not np.isfinite(errs[j]):
            j = int(np.flatnonzero(active)[0])
        order[step] = j
        step_err[step] = errs[j]
        active[j] = False
        for st, gs_v in zip(states, groups):
            st.remove(gs_v[j])
        if on_step is not None:
            on_step(step)
    return order, step_err


def joint_greedy_order(
    weights: Sequence[npt.ArrayLike],
    hessians: Sequence[npt.ArrayLike],
    groups: Sequence[Sequence[npt.ArrayLike]],
    n_remove: int,
    *,
    damp: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[IndexArray, FloatArray]:
    """Greedy structured OBS over several layers that lose the same groups (ZipLM, jointly).

    Each step removes the group with the least OBS error summed over every layer and compensates
    every layer (a residual stream's channels feed several consumers). Equal, up to rounding, to
    the reference loop of `group_errors` + `remove_group` per layer and step, at the cost of
    `greedy_prune`'s lazy downdates.

    Args:
        weights: Per layer ``W_v: (out_v, in_v)``.
        hessians: Per layer ``H_v: (in_v, in_v)``.
        groups: Per layer, the columns of every group (same number of groups in every layer;
            disjoint within a layer).
        n_remove: Groups to remove, in ``[0, n_groups]``.
        damp: Extra relative damping (`prepare_hessian`).
        progress: Called as ``progress(step, n_remove)`` after each removal.

    Returns:
        ``(order, step_errors)``: group ids in removal order and the summed error of each step.
    """
    if not (len(weights) == len(hessians) == len(groups)) or not weights:
        raise ValueError("weights, hessians and groups must be non-empty lists of equal length")
    n_groups = len(groups[0])
    if any(len(g) != n_groups for g in groups):
        raise ValueError("every layer must have the same number of groups")
    if not 0 <= n_remove <= n_groups:
        raise ValueError(f"n_remove must lie in [0, {n_groups}], got {n_remove}")
    states, gsv = [], []
    for w, h, g in zip(weights, hessians, groups):
        w0 = _as_matrix(w, "W")
        hh = prepare_hessian(h, damp)
        _check_square(hh, w0.shape[1], "H")
        gs_v = _as_groups(g, w0.shape[1], disjoint=True)
        states.append(_make_state(w0, hh, _bucket(gs_v)))
        gsv.append(gs_v)
    tick = None if progress is None else (lambda step: progress(step + 1, n_remove))
    return _greedy_loop(states, gsv, n_groups, n_remove, tick)


@dataclasses.dataclass(frozen=True, eq=False)
class ObsPath:
    """The result of `greedy_prune`: one removal order and the layer at each requested level.

    Memory: ``snapshots`` holds one ``(out, in)`` array per level (in ``snapshot_dtype``), e.g.
    16 levels of a 1536x576 float32 weight = 57 MB. With ``snapshots=False`` only the order is kept
    and `weight` re-solves each level exactly with `solve_kept` (same result up to rounding). The
    path also holds float64 copies of W and of the prepared H (``8 * in^2`` bytes) for re-solves.

    Attributes:
        levels: Requested levels (number of groups removed), sorted, starting where asked.
        errors: ``(len(levels),)`` cumulative predicted loss at each level (sum of step errors);
            with ``H = 2 X X^T`` undamped, equal to ``||W X - W_level X||^2``.
        order: Group ids in removal order, length ``max(levels)``.
        step_errors: OBS error of each removal step (relative to the already compensated W).
        groups: The groups (column-index arrays) the ids refer to.
        snapshots: level -> compensated W (zero columns for removed groups), or None.
        weight_in: The original W (float64), used for lazy re-solves.
        hessian: The prepared H used (damped, dead features decoupled).
    """

    levels: tuple[int, ...]
    errors: FloatArray
    order: IndexArray
    step_errors: FloatArray
    groups: tuple[IndexArray, ...]
    snapshots: dict[int, npt.NDArray[np.floating]] | None
    weight_in: FloatArray
    hessian: FloatArray

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= len(self.order):
            raise ValueError(f"level {level} outside [0, {len(self.order)}] of this path")

    def error(self, level: int) -> float:
        """Cumulative predicted loss after removing ``level`` groups."""
        self._check_level(level)
        return float(np.sum(self.step_errors[:level]))

    def removed_groups(self, level: int) -> IndexArray:
        """Ids of the groups removed at ``level``, in removal order."""
        self._check_level(level)
        return self.order[:level].copy()

    def kept_groups(self, level: int) -> IndexArray:
        """Ids of the groups kept at ``level``, ascending."""
        removed = set(self.removed_groups(level).tolist())
        return np.asarray([g for g in range(len(self.groups)) if g not in removed], dtype=np.intp)

    def removed_columns(self, level: int) -> IndexArray:
        """Sorted column indices removed at ``level``."""
        ids = self.removed_groups(level)
        if ids.size == 0:
            return np.zeros(0, dtype=np.intp)
        return np.sort(np.concatenate([self.groups[i] for i in ids]))

    def kept_columns(self, level: int) -> IndexArray:
        """Sorted column indices kept at ``level`` (columns in no group are always kept)."""
        mask = np.ones(self.weight_in.shape[1], dtype=bool)
        mask[self.removed_columns(level)] = False
        return np.flatnonzero(mask)

    def weight(self, level: int, *, resolve: bool = False) -> npt.NDArray[np.floating]:
        """Compensated W at ``level`` (full shape, removed columns zero).

        Args:
            level: Number of groups removed; any level up to ``max(levels)`` when re-solving.
            resolve: Re-fit with `solve_kept` even when a snapshot exists.
        """
        self._check_level(level)
        if not resolve and self.snapshots is not None and level in self.snapshots:
            return self.snapshots[level]
        return solve_kept(self.weight_in, self.hessian, self.kept_columns(level))


def greedy_prune(
    w: npt.ArrayLike,
    h: npt.ArrayLike,
    groups: Sequence[npt.ArrayLike],
    *,
    levels: Sequence[int],
    damp: float = 0.0,
    snapshots: bool = True,
    snapshot_dtype: npt.DTypeLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ObsPath:
    """Greedy structured OBS: repeatedly remove the cheapest group and compensate (ZipLM).

    Cost per step, for ``k`` kept columns: re-scoring the remaining groups and updating W,
    ``O(out * k * s)``; the ``H^-1`` downdate is lazy (`_GreedyState`), ``O(k * 64 * s)`` amortized.
    Removed columns are dropped from the working arrays as the path proceeds.

    Args:
        w: ``W: (out, in)`` (any float dtype).
        h: ``H: (in, in)``, e.g. ``HessianAccumulator.hessian(damp)``.
        groups: Disjoint column-index arrays (columns in no group are never removed).
        levels: Numbers of removed groups at which to record error and weight, e.g.
            `uniform_levels`; each in ``[0, len(groups)]``.
        damp: Extra relative damping applied by `prepare_hessian` (0 if ``h`` is already damped).
        snapshots: Keep a copy of W at every level (see `ObsPath` for memory).
        snapshot_dtype: dtype of the snapshots (default: W's dtype if floating, else float64).
        progress: Called as ``progress(step, total_steps)`` after each removal.

    Returns:
        The `ObsPath`. Ties are broken by the lower group id; when every remaining group has error
        ``inf`` the removal still happens (pseudo-inverse) and the cumulative error becomes inf.
    """
    w_in = np.asarray(w)
    w0 = _as_matrix(w_in, "W")
    n_out, n_in = w0.shape
    hh = prepare_hessian(h, damp)
    _check_square(hh, n_in, "H")
    gs = _as_groups(groups, n_in, disjoint=True)
    lv = sorted({int(x) for x in levels})
    if not lv:
        raise ValueError("levels must not be empty")
    if lv[0] < 0 or lv[-1] > len(gs):
        raise ValueError(f"levels must lie in [0, {len(gs)}], got {lv}")
    if snapshot_dtype is None:
        snapshot_dtype = w_in.dtype if np.issubdtype(w_in.dtype, np.floating) else np.float64
    total = lv[-1]

    state = _make_state(w0, hh, _bucket(gs))
    snaps: dict[int, npt.NDArray[np.floating]] | None = {} if snapshots else None
    want = set(lv)
    if snaps is not None and 0 in want:
        snaps[0] = w0.astype(snapshot_dtype, copy=True)

    def on_step(step: int) -> None:
        if snaps is not None and step + 1 in want:
            snaps[step + 1] = state.full_weight(snapshot_dtype)
        if progress is not None:
            progress(step + 1, total)

    order, step_err = _greedy_loop([state], [gs], len(gs), total, on_step)
    cum = np.concatenate([[0.0], np.cumsum(step_err)])
    logger.debug(
        "greedy OBS on W %dx%d: %d of %d groups removed, error %.4g",
        n_out,
        n_in,
        total,
        len(gs),
        cum[-1],
    )
    return ObsPath(
        levels=tuple(lv),
        errors=cum[lv],
        order=order,
        step_errors=step_err,
        groups=tuple(gs),
        snapshots=snaps,
        weight_in=w0,
        hessian=hh,
    )


# ------------------------------------------------------------------------ baseline criteria


def wanda_scores(
    w: npt.ArrayLike, stats: npt.ArrayLike, groups: Sequence[npt.ArrayLike]
) -> FloatArray:
    """Group Wanda importance ``sum_{i, j in S} |W_ij| * ||X_j||`` (higher = keep).

    Args:
        w: ``W: (out, in)``.
        stats: Either per-feature activation norms ``(in,)`` (e.g.
            `HessianAccumulator.feature_norms`) or a Hessian / second moment ``(in, in)``, of which
            ``sqrt(diag)`` is used (proportional to the norms, so the ranking is the same).
        groups: Column-index arrays.
    """
    ww = _as_matrix(w, "W")
    st = np.asarray(stats, dtype=np.float64)
    if st.ndim == 2:
        _check_square(st, ww.shape[1], "stats")
        norms = np.sqrt(np.clip(np.diag(st), 0.0, None))
    elif st.shape == (ww.shape[1],):
        norms = st
    else:
        raise ValueError(f"stats must be ({ww.shape[1]},) or square, got {st.shape}")
    per_col = np.abs(ww).sum(axis=0) * norms
    gs = _as_groups(groups, ww.shape[1], disjoint=False)
    return np.asarray([per_col[g].sum() for g in gs])
