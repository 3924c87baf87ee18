"""MonarchMatMul in NumPy: the oracle every kernel and the decomposition are tested against.

Index convention (the single source of truth; README.md restates it in words):

    X: (..., K)            K = b * kb      input index  i = j * kb + s   (block j in [0, b), s in [0, kb))
    R: (b, b * r, kb)      first factor, b blocks; row c = t * r + rho   (t in [0, b), rho in [0, r))
    L: (b, nq, b * r)      second factor, b blocks; column d = j * r + rho
    Y: (..., N)            N = nq * b      output index o = q * b + t    (q in [0, nq), t in [0, b))

    u[..., j, t, rho] = sum_s   R[j, t*r + rho, s] * X[..., j*kb + s]          (stage 1, per input block j)
    Y[..., q*b + t]   = sum_j,rho L[t, q, j*r + rho] * u[..., j, t, rho]       (stage 2, per output block t)
                      (+ bias[q*b + t])

So Y = X @ M.T (+ bias) with the dense weight M (N, K) given by

    M[q*b + t, j*kb + s] = sum_rho L[t, q, j*r + rho] * R[j, t*r + rho, s]

For K = N = n, r = 1 and b = kb = nq = sqrt(n) this is the Monarch matrix M = P L P R of Dao et al.
(ALGORITHMS.md section 5: M[(q,t),(j,s)] = L_t[q, j] R_j[t, s]); each (t, j) slice
M[(:, t), (j, :)] (nq x kb) has rank at most r, which is what the projection of a dense weight uses.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["dense_weight", "dims", "monarch_matmul", "project"]


def dims(k: int, r_shape: tuple[int, ...], l_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(b, r, kb, nq) from K and the factor shapes; ValueError when they do not fit together."""
    if len(r_shape) != 3 or len(l_shape) != 3:
        raise ValueError(f"R and L must be rank 3, got {r_shape} and {l_shape}")
    b, br, kb = r_shape
    b2, nq, br2 = l_shape
    if b < 1 or b2 != b:
        raise ValueError(f"R and L must have the same number of blocks, got {b} and {b2}")
    if br < b or br % b or br2 != br:
        raise ValueError(
            f"R.shape[1] ({br}) and L.shape[2] ({br2}) must be equal and a multiple of b ({b})"
        )
    if b * kb != k:
        raise ValueError(f"X's last axis ({k}) must equal b * R.shape[2] = {b} * {kb}")
    if nq < 1 or kb < 1:
        raise ValueError(f"empty factor: R {r_shape}, L {l_shape}")
    return b, br // b, kb, nq


def monarch_matmul(
    x: npt.NDArray[np.floating],
    r_factor: npt.NDArray[np.floating],
    l_factor: npt.NDArray[np.floating],
    bias: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.floating]:
    """Y = X @ M.T (+ bias), computed in float64 and returned in X's dtype.

    Args:
        x: (..., K) with K = b * kb.
        r_factor: R, (b, b * r, kb).
        l_factor: L, (b, nq, b * r).
        bias: (N,) with N = nq * b, or None.
    """
    b, r, kb, nq = dims(x.shape[-1], r_factor.shape, l_factor.shape)
    lead = x.shape[:-1]
    xr = x.astype(np.float64).reshape(-1, b, kb)  # (B, j, s)
    rr = r_factor.astype(np.float64).reshape(b, b, r, kb)  # (j, t, rho, s)
    ll = l_factor.astype(np.float64).reshape(b, nq, b, r)  # (t, q, j, rho)
    u = np.einsum("jtps,Bjs->Bjtp", rr, xr)
    y = np.einsum("tqjp,Bjtp->Bqt", ll, u).reshape(-1, nq * b)
    if bias is not None:
        if bias.shape != (nq * b,):
            raise ValueError(f"bias must have shape ({nq * b},), got {bias.shape}")
        y = y + bias.astype(np.float64)
    return y.reshape(*lead, nq * b).astype(x.dtype)


def dense_weight(
    r_factor: npt.NDArray[np.floating], l_factor: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """The dense M (N, K) that the factors stand for (float64)."""
    b, br, kb = r_factor.shape
    r = br // b
    nq = l_factor.shape[1]
    rr = r_factor.astype(np.float64).reshape(b, b, r, kb)  # (j, t, rho, s)
    ll = l_factor.astype(np.float64).reshape(b, nq, b, r)  # (t, q, j, rho)
    m = np.einsum("tqjp,jtps->qtjs", ll, rr)  # (q, t, j, s)
    return m.reshape(nq * b, b * kb)


def project(
    w: npt.NDArray[np.floating], blocks: int, rank: int = 1
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Frobenius-optimal (R, L) for a dense W (N, K): the best rank-`rank` factorisation of each
    (t, j) slice W[q*b + t, j*kb + s] (an nq x kb matrix) by one small SVD each.

    Returns (R, L) in float64 with the shapes of `monarch_matmul`.
    """
    n, k = w.shape
    b = blocks
    if b < 1 or k % b or n % b:
        raise ValueError(f"W {w.shape}: both dimensions must be divisible by blocks={b}")
    kb, nq, r = k // b, n // b, rank
    if r < 1 or r > min(kb, nq):
        raise ValueError(f"rank must be in [1, min(kb, nq)] = [1, {min(kb, nq)}], got {r}")
    w4 = w.astype(np.float64).reshape(nq, b, b, kb)  # (q, t, j, s)
    rr = np.zeros((b, b, r, kb))  # (j, t, rho, s)
    ll = np.zeros((b, nq, b, r))  # (t, q, j, rho)
    for t in range(b):
        for j in range(b):
            u, sv, vt = np.linalg.svd(w4[:, t, j, :], full_matrices=False)
            ll[t, :, j, :] = u[:, :r] * np.sqrt(sv[:r])
            rr[j, t, :, :] = np.sqrt(sv[:r])[:, None] * vt[:r]
    return rr.reshape(b, b * r, kb), ll.reshape(b, nq, b * r)
