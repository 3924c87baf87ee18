"""Streaming layer Hessians from calibration activations (SparseGPT's ``add_batch``, in numpy).

For a linear map ``Y = W X`` with ``W: (out, in)`` and inputs ``X: (in, n)`` (``n`` samples, one per
column; a token, a pixel position of an im2col'd Conv input, ...), the layer loss of a weight change
``dW`` is ``||dW X||^2``. Its Hessian with respect to each row of ``W`` is ``2 X X^T`` and does not
depend on the row. We accumulate the *per-sample mean* form

    H = (2 / n) * X X^T + damp * mean(diag((2 / n) X X^T)) * I,            H: (in, in)

so that ``1/2 * dw H dw^T`` is the *mean* squared output error per sample (of one row), which keeps
numbers of the same order whatever the amount of calibration data. ``spa_compiler.criteria.obs`` works with
any positive multiple of ``2 X X^T``: the OBS update does not depend on the scale, and its errors
come out in the units of ``1/2 * dw H dw^T`` (with this module's ``H``: mean squared error per
sample, summed over output rows). Damping (``damp`` relative to the mean diagonal, SparseGPT's
``percdamp``) makes ``H`` positive definite even when features are dead or collinear.

Conv layers: a Conv weight ``(out, in/g, *kernel)`` reshaped to ``(out, in/g * prod(kernel))``
acts on the im2col columns of its input (`im2col`); input channel ``c`` (within its group) owns the
``prod(kernel)`` consecutive columns ``c * prod(kernel) + arange(prod(kernel))``
(`conv_channel_columns`). The Hessian of group ``j`` of a grouped Conv is the accumulator fed with
``im2col(x)[:, conv_group_slice(j, ...)]``.

Accumulation is in float64 whatever the input dtype: raw sums of ``X^T X`` (BLAS ``syrk`` into the
upper triangle, in place) divided by ``n`` when read; float64 sums of ``n`` terms lose nothing that
matters at the sizes calibration has (a running mean rescaled at every batch, as in SparseGPT, costs
three passes over the ``in x in`` matrix per batch).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "HessianAccumulator",
    "conv_channel_columns",
    "conv_group_slice",
    "conv_output_shape",
    "conv_weight_2d",
    "im2col",
    "im2col_rows",
]


class HessianAccumulator:
    """Running ``X^T X / n`` (and ``sum x / n``) over batches of feature vectors.

    Example:
        >>> acc = HessianAccumulator(4)
        >>> acc.add_batch(np.ones((2, 3, 4), dtype=np.float32))  # 6 samples of 4 features
        >>> acc.n_samples
        6
        >>> float(acc.hessian(damp=0.0)[0, 0])
        2.0

    Attributes:
        n_features: Size of the feature axis (the layer's ``in``).
        n_samples: Number of feature vectors accumulated so far.
    """

    def __init__(self, n_features: int, dtype: npt.DTypeLike = np.float64, *,
                 product_dtype: npt.DTypeLike | None = None) -> None:
        """Create an empty accumulator.

        Args:
            n_features: Length of the last axis of every batch.
            dtype: Accumulation dtype (float64 unless memory forbids it).
            product_dtype: dtype of each batch's ``X^T X`` before it is added (default: `dtype`);
                float32 halves the cost of the product of float32 activations, the sum across
                batches stays in `dtype`.
        """
        if n_features <= 0:
            raise ValueError(f"n_features must be positive, got {n_features}")
        self.n_features = int(n_features)
        self.dtype = np.dtype(dtype)
        self.product_dtype = np.dtype(product_dtype or dtype)
        self.n_samples = 0
        # raw sums (upper triangle of X^T X, column-major so BLAS syrk adds in place); the means
        # are taken when read
        self._sxx = np.zeros((self.n_features, self.n_features), dtype=self.dtype, order="F")
        self._sx = np.zeros(self.n_features, dtype=self.dtype)

    @property
    def _xtx(self) -> npt.NDArray[np.float64]:
        """Mean ``x x^T`` (full, symmetric)."""
        if self.n_samples == 0:
            return np.zeros((self.n_features, self.n_features), dtype=self.dtype)
        upper = np.triu(self._sxx)
        full = upper + np.triu(upper, 1).T
        return np.ascontiguousarray(full / self.n_samples)

    @property
    def _sum(self) -> npt.NDArray[np.float64]:
        """Mean ``x``."""
        return self._sx / max(self.n_samples, 1)

    def add_batch(self, x: npt.ArrayLike) -> None:
        """Add a batch of activations.

        Args:
            x: ``(..., n_features)``; all leading axes are flattened into samples (batch, tokens,
                positions). A Conv input must go through `im2col` first.

        Raises:
            ValueError: The last axis is not ``n_features``, or the batch has NaN/inf.
        """
        arr = np.asarray(x)
        if arr.ndim == 0 or arr.shape[-1] != self.n_features:
            raise ValueError(
                f"expected activations (..., {self.n_features}), got shape {arr.shape}"
            )
        flat = arr.reshape(-1, self.n_features).astype(self.product_dtype, copy=False)
        m = flat.shape[0]
        if m == 0:
            return
        if not np.all(np.isfinite(flat)):
            raise ValueError("activations contain NaN or inf")
        _syrk_add(self._sxx, flat)
        self._sx += flat.sum(axis=0, dtype=self.dtype)
        self.n_samples += m

    def merge(self, other: HessianAccumulator) -> None:
        """Fold another accumulator of the same size into this one (e.g. from a worker)."""
        if other.n_features != self.n_features:
            raise ValueError(f"cannot merge {other.n_features} features into {self.n_features}")
        self._sxx += np.triu(other._sxx).astype(self.dtype)
        self._sx += other._sx.astype(self.dtype)
        self.n_samples += other.n_samples

    def _require_samples(self) -> None:
        if self.n_samples == 0:
            raise ValueError("no samples accumulated: call add_batch() with calibration data first")

    def second_moment(self) -> npt.NDArray[np.float64]:
        """``E[x x^T] = X X^T / n``, shape ``(n_features, n_features)`` (a copy)."""
        self._require_samples()
        return self._xtx.copy()

    def mean(self) -> npt.NDArray[np.float64]:
        """``E[x]``, shape ``(n_features,)``."""
        self._require_samples()
        return self._sum.copy()

    def feature_norms(self) -> npt.NDArray[np.float64]:
        """``||X_j||_2`` over all samples for each feature ``j`` (Wanda's activation norm)."""
        self._require_samples()
        return np.sqrt(np.clip(np.diag(self._xtx), 0.0, None) * self.n_samples)

    def hessian(self, damp: float = 0.01) -> npt.NDArray[np.float64]:
        """The dampened per-sample Hessian ``2/n X X^T + damp * mean(diag) * I``.

        Args:
            damp: Damping relative to the mean diagonal (SparseGPT's ``percdamp``; 0 for none).
                When the whole diagonal is zero (all features dead), ``damp`` is added absolutely so
                that the result is still positive definite.

        Returns:
            ``H: (n_features, n_features)``, float64 (or the accumulation dtype), symmetric.
        """
        self._require_samples()
        if damp < 0:
            raise ValueError(f"damp must be >= 0, got {damp}")
        h = 2.0 * self._xtx
        h = 0.5 * (h + h.T)
        if damp > 0:
            mean_diag = float(np.mean(np.diag(h)))
            h[np.diag_indices_from(h)] += damp * (mean_diag if mean_diag > 0 else 1.0)
        return h


def _syrk_add(acc: npt.NDArray[np.floating], flat: npt.NDArray[np.floating]) -> None:
    """``acc += flat^T flat`` on the upper triangle of the column-major `acc`, in place.

    BLAS ``syrk`` (half the flops of a full product, no temporary) when SciPy is there and the
    dtypes agree; else the full product added (its lower triangle is ignored by the readers).
    """
    try:
        from scipy.linalg import blas
    except ImportError:  # SciPy is optional
        blas = None
    if blas is not None and flat.dtype in (np.float32, np.float64):
        syrk = blas.dsyrk if flat.dtype == np.float64 else blas.ssyrk
        if acc.dtype == flat.dtype:
            out = syrk(1.0, flat, beta=1.0, c=acc, trans=1, lower=0, overwrite_c=1)
            if out is not acc and not np.shares_memory(out, acc):  # pragma: no cover - BLAS copied
                acc[...] = out
            return
        # float32 products: the upper triangle, column-major like `acc` (a mixed-order add of two
        # in x in arrays would stride through memory)
        acc += syrk(1.0, flat, trans=1, lower=0)
        return
    prod = flat.T @ flat  # symmetric: its transpose is a column-major view, as `acc` is
    acc += prod.T.astype(acc.dtype, copy=False)


# ---------------------------------------------------------------------------------------- Conv


def _spatial(value: Sequence[int] | None, default: int, rank: int, what: str) -> tuple[int, ...]:
    if value is None:
        return (default,) * rank
    out = tuple(int(v) for v in value)
    if len(out) != rank:
        raise ValueError(f"{what} must have {rank} entries, got {out}")
    return out


def conv_output_shape(
    spatial: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Output spatial shape of an ONNX Conv (explicit pads, ONNX order ``begins..., ends...``)."""
    rank = len(kernel_shape)
    s = _spatial(strides, 1, rank, "strides")
    d = _spatial(dilations, 1, rank, "dilations")
    p = tuple(int(v) for v in pads) if pads is not None else (0,) * (2 * rank)
    if len(p) != 2 * rank:
        raise ValueError(f"pads must have {2 * rank} entries, got {p}")
    out = []
    for i in range(rank):
        eff = d[i] * (kernel_shape[i] - 1) + 1
        o = (spatial[i] + p[i] + p[i + rank] - eff) // s[i] + 1
        if o <= 0:
            raise ValueError(f"empty Conv output along spatial axis {i}")
        out.append(o)
    return tuple(out)


def im2col(
    x: npt.ArrayLike,
    kernel_shape: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> npt.NDArray[np.generic]:
    """The im2col matrix of an ONNX Conv input (any number of spatial dims).

    With ``W: (out, C/g, *kernel)`` and ``cols = im2col(x, ...)``, output channel ``o`` of group
    ``j`` is ``cols[:, conv_group_slice(j, C, kernel, g)] @ conv_weight_2d(W)[o]``, reshaped from
    ``(N * prod(out_spatial),)`` to ``(N, *out_spatial)``. For ``group=1`` that is
    ``Y = (cols @ W_2d.T).reshape(N, *out_spatial, out)`` moved to channels-first.

    Args:
        x: ``(N, C, *spatial)``.
        kernel_shape: ``(k_1, ..., k_r)``.
        strides: Per spatial axis (default 1).
        pads: ONNX order ``(begin_1, ..., begin_r, end_1, ..., end_r)`` (default 0). Resolve
            ``auto_pad`` to explicit pads before calling.
        dilations: Per spatial axis (default 1).

    Returns:
        ``cols: (N * prod(out_spatial), C * prod(kernel))``: rows ordered ``(n, *out_pos)``,
        columns ordered ``(c, *kernel_pos)`` (the order of ``W.reshape(out, -1)``); same dtype as x.
    """
    arr = np.asarray(x)
    rank = len(kernel_shape)
    if arr.ndim != rank + 2:
        raise ValueError(f"expected x of rank {rank + 2} for a {rank}-D kernel, got {arr.shape}")
    k = tuple(int(v) for v in kernel_shape)
    s = _spatial(strides, 1, rank, "strides")
    d = _spatial(dilations, 1, rank, "dilations")
    p = tuple(int(v) for v in pads) if pads is not None else (0,) * (2 * rank)
    out_sp = conv_output_shape(arr.shape[2:], k, strides=s, pads=p, dilations=d)
    n, c = arr.shape[:2]
    if any(p):
        width = [(0, 0), (0, 0)] + [(p[i], p[i + rank]) for i in range(rank)]
        arr = np.pad(arr, width)
    # patches: (N, C, *kernel, *out_spatial)
    patches = np.empty((n, c, *k, *out_sp), dtype=arr.dtype)
    for offs in itertools.product(*(range(ki) for ki in k)):
        sl = [
            slice(offs[i] * d[i], offs[i] * d[i] + s[i] * (out_sp[i] - 1) + 1, s[i])
            for i in range(rank)
        ]
        dst: tuple[int | slice, ...] = (slice(None), slice(None), *offs)
        patches[dst] = arr[(slice(None), slice(None), *sl)]
    # -> (N, *out_spatial, C, *kernel)
    order = (0, *range(2 + rank, 2 + 2 * rank), 1, *range(2, 2 + rank))
    return patches.transpose(order).reshape(n * math.prod(out_sp), c * math.prod(k))


def im2col_rows(
    x: npt.ArrayLike,
    kernel_shape: Sequence[int],
    rows: npt.ArrayLike,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> npt.NDArray[np.generic]:
    """``im2col(x, ...)[rows]`` without building the whole im2col matrix.

    Gathers only the patches of the requested output positions (row ``r`` is sample
    ``r // prod(out_spatial)`` at output position ``r % prod(out_spatial)``, as in `im2col`), so
    the cost and memory follow ``len(rows)``, not the batch and image size. Same values and
    order as indexing the full matrix.

    Args:
        x: ``(N, C, *spatial)``.
        kernel_shape: ``(k_1, ..., k_r)``.
        rows: Row indices into `im2col`'s output (any order, repeats allowed).
        strides: As in `im2col`.
        pads: As in `im2col`.
        dilations: As in `im2col`.

    Returns:
        ``(len(rows), C * prod(kernel))``, same dtype as x.
    """
    arr = np.asarray(x)
    rank = len(kernel_shape)
    if arr.ndim != rank + 2:
        raise ValueError(f"expected x of rank {rank + 2} for a {rank}-D kernel, got {arr.shape}")
    k = tuple(int(v) for v in kernel_shape)
    s = _spatial(strides, 1, rank, "strides")
    d = _spatial(dilations, 1, rank, "dilations")
    p = tuple(int(v) for v in pads) if pads is not None else (0,) * (2 * rank)
    out_sp = conv_output_shape(arr.shape[2:], k, strides=s, pads=p, dilations=d)
    n, c = arr.shape[:2]
    r = np.asarray(rows, dtype=np.intp).reshape(-1)
    per = math.prod(out_sp)
    if r.size and (r.min() < 0 or r.max() >= n * per):
        raise ValueError(f"rows must lie in [0, {n * per})")
    if any(p):
        arr = np.pad(arr, [(0, 0), (0, 0)] + [(p[i], p[i + rank]) for i in range(rank)])
    sample = r // per
    pos = np.unravel_index(r % per, out_sp)  # per spatial axis, the output coordinate
    out = np.empty((r.size, c, *k), dtype=arr.dtype)
    for offs in itertools.product(*(range(ki) for ki in k)):
        coords = tuple(pos[i] * s[i] + offs[i] * d[i] for i in range(rank))
        # advanced indices (sample, *coords) around the channel slice -> (R, C)
        out[(slice(None), slice(None), *offs)] = arr[(sample, slice(None), *coords)]
    return out.reshape(r.size, c * math.prod(k))


def conv_weight_2d(w: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """``W: (out, C/g, *kernel)`` -> ``(out, C/g * prod(kernel))`` (a view when contiguous)."""
    return w.reshape(w.shape[0], -1)


def conv_channel_columns(
    n_channels: int, kernel_shape: Sequence[int]
) -> list[npt.NDArray[np.intp]]:
    """Column indices of each input channel in `conv_weight_2d` / `im2col` order.

    Args:
        n_channels: Input channels seen by one weight group (``C / group``).
        kernel_shape: The Conv kernel's spatial shape.

    Returns:
        ``groups[c] = c * prod(kernel) + arange(prod(kernel))``: ready for `spa_compiler.criteria.obs`.
    """
    kk = math.prod(int(v) for v in kernel_shape)
    return [np.arange(ch * kk, (ch + 1) * kk, dtype=np.intp) for ch in range(n_channels)]


def conv_group_slice(
    group_index: int, n_channels: int, kernel_shape: Sequence[int], group: int
) -> slice:
    """The `im2col` columns read by weight group ``group_index`` of a grouped Conv.

    Args:
        group_index: ``0 <= group_index < group``.
        n_channels: Total input channels ``C`` of the Conv.
        kernel_shape: The Conv kernel's spatial shape.
        group: The Conv's ``group`` attribute.
    """
    if group <= 0 or n_channels % group:
        raise ValueError(f"{n_channels} input channels are not divisible into {group} groups")
    if not 0 <= group_index < group:
        raise ValueError(f"group_index {group_index} out of range for group={group}")
    width = n_channels // group * math.prod(int(v) for v in kernel_shape)
    return slice(group_index * width, (group_index + 1) * width)
