"""Monarch matrices: the factorization, the Frobenius-optimal projection of a dense weight, and its
data-aware refinement.

The factorization (the index convention of the `MonarchMatMul` op, `runtime_ops/monarch_matmul/
reference.py`, generalized to different block counts for the two factors). A weight M of shape
(N, K) (rows: outputs, columns: inputs; Y = X @ M.T) with `bi` input blocks, `bo` output blocks and
rank r is given by two block-diagonal factors

    R: (bi, bo*r, kb)    K = bi*kb    input index  i = j*kb + s    (j in [0, bi), s in [0, kb))
    L: (bo, nq, bi*r)    N = nq*bo    output index o = q*bo + t    (q in [0, nq), t in [0, bo))

    stage 1, per input block j:   u[j, t, rho] = sum_s R[j, t*r + rho, s] * x[j*kb + s]
    stage 2, per output block t:  y[q*bo + t]  = sum_{j,rho} L[t, q, j*r + rho] * u[j, t, rho]

    M[q*bo + t, j*kb + s] = sum_rho L[t, q, j*r + rho] * R[j, t*r + rho, s]          (1)

so M = P2 L P1 R with R and L block-diagonal and P1, P2 stride permutations. Every (t, j) *slice*
M[(:, t), (j, :)] (nq x kb: the rows q*bo+t, the columns j*kb+s) is a product of an nq x r and an
r x kb matrix, i.e. has rank <= r, and distinct slices share no factor entries. Conversely any M
whose bo*bi slices all have rank <= r is Monarch with these block counts.

* bi == bo == b is exactly the op's convention (R (b, b*r, kb), L (b, nq, b*r)); for K = N = n,
  r = 1, b = sqrt(n) it is the square Monarch matrix of Dao et al.
* bi != bo covers Dao et al.'s general square case (b blocks of m x m in R and m blocks of b x b in
  L is bi = b, bo = m, r = 1) and rectangular weights; the op cannot take it (it needs one block
  count), so such factors are emitted as standard ONNX only.

Cost per input row: r*(bo*K + bi*N) multiply-adds (stage 1 plus stage 2) instead of N*K, and as
many parameters.

Projection. Since the slices are disjoint and each is an arbitrary rank-r matrix, the
Frobenius-optimal Monarch approximation of a dense W is the best rank-r approximation of each slice
(Eckart-Young): one small SVD per (t, j) pair, U_r sqrt(S_r) into L and sqrt(S_r) V_r^T into R.
Consequences the tests check: a Monarch W is recovered exactly; the error never grows with r; it
is the sum over slices of the discarded squared singular values.

Data-aware refinement. What matters is the layer's output on real inputs, ||(W - M) X||_F^2 =
tr((W - M) H (W - M)^T) with H = X X^T (the inputs' second moment, K x K). It is quadratic in L for
fixed R and in R for fixed L, so alternating least squares from the projection never increases it:

* L step (exact): the rows of output block t are M_t = L[t] A_t with A_t (bi*r x K) holding
  R[j, t*r+rho, :] in the columns of block j; L[t] = W_t H A_t^T (A_t H A_t^T)^-1, block by block
  (output rows do not interact).
* R step (block Gauss-Seidel over input blocks j): with the other blocks fixed, the columns of
  block j are B_j R[j] where B_j (N x bo*r) holds L[t, :, j*r+rho] in the rows of output block t;
  R[j] = (B_j^T B_j)^-1 B_j^T (W - M_{-j}) H[:, j] H[j, j]^-1, where M_{-j} is M without block j's
  columns. B_j^T B_j is block-diagonal (one r x r block per t).

A small ridge keeps every solve well posed (H from few samples is singular; a Monarch with a zero
slice makes A_t rank-deficient).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

__all__ = [
    "MonarchShape",
    "apply",
    "block_choices",
    "dense_weight",
    "factor_shapes",
    "output_error",
    "parse_key",
    "project",
    "refine",
    "shape_error",
]


@dataclasses.dataclass(frozen=True, order=True)
class MonarchShape:
    """A Monarch structure for a weight M (n, k): `bi` input blocks, `bo` output blocks, rank r."""

    n: int
    k: int
    bi: int
    bo: int
    r: int

    @property
    def kb(self) -> int:
        """Input block width (K / bi)."""
        return self.k // self.bi

    @property
    def nq(self) -> int:
        """Rows per output block (N / bo)."""
        return self.n // self.bo

    @property
    def key(self) -> str:
        """The variant name: "b4r1" (bi == bo == 4, rank 1) or "b4x16r1" (bi 4, bo 16)."""
        return f"b{self.bi}r{self.r}" if self.bi == self.bo else f"b{self.bi}x{self.bo}r{self.r}"

    @property
    def macs_per_row(self) -> int:
        """Multiply-adds per input row: r*(bo*K + bi*N)."""
        return self.r * (self.bo * self.k + self.bi * self.n)

    @property
    def params(self) -> int:
        """Entries of R and L (equal to macs_per_row)."""
        return self.bi * self.bo * self.r * (self.kb + self.nq)

    @property
    def fraction(self) -> float:
        """MACs (and parameters) relative to the dense weight."""
        return self.macs_per_row / float(self.n * self.k)

    @property
    def op_compatible(self) -> bool:
        """Whether the `MonarchMatMul` op can take it (one block count for both factors)."""
        return self.bi == self.bo


def shape_error(n: int, k: int, bi: int, bo: int, r: int) -> str | None:
    """Why (n, k) cannot take blocks (bi, bo) at rank r; None when it can."""
    if min(n, k) < 1:
        return f"empty weight ({n}, {k})"
    if bi < 1 or bo < 1 or r < 1:
        return f"blocks and rank must be >= 1, got bi={bi}, bo={bo}, r={r}"
    if k % bi:
        return f"input width {k} is not divisible by {bi} blocks"
    if n % bo:
        return f"output width {n} is not divisible by {bo} blocks"
    if r > min(k // bi, n // bo):
        return f"rank {r} exceeds the slice size {n // bo} x {k // bi}"
    return None


def parse_key(key: str) -> tuple[int, int, int]:
    """(bi, bo, r) of a variant name "b<b>r<r>" or "b<bi>x<bo>r<r>"; ValueError otherwise."""
    import re

    m = re.fullmatch(r"b(\d+)(?:x(\d+))?r(\d+)", key)
    if not m:
        raise ValueError(f"not a Monarch variant name: {key!r} (expected e.g. b4r1 or b4x16r2)")
    bi = int(m.group(1))
    bo = int(m.group(2)) if m.group(2) else bi
    return bi, bo, int(m.group(3))


def factor_shapes(s: MonarchShape) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((bi, bo*r, kb), (bo, nq, bi*r)): the shapes of R and L."""
    return (s.bi, s.bo * s.r, s.kb), (s.bo, s.nq, s.bi * s.r)


def _dims(r_factor: npt.NDArray[np.floating], l_factor: npt.NDArray[np.floating]) -> tuple[int, int, int, int, int]:
    if r_factor.ndim != 3 or l_factor.ndim != 3:
        raise ValueError(f"R and L must be rank 3, got {r_factor.shape} and {l_factor.shape}")
    bi, bor, kb = r_factor.shape
    bo, nq, bir = l_factor.shape
    if bor % bo or bir % bi or bor // bo != bir // bi or bor < bo:
        raise ValueError(f"R {r_factor.shape} and L {l_factor.shape} do not fit: R.shape[1] / L.shape[0] "
                         "must equal L.shape[2] / R.shape[0] (the rank)")
    return bi, bo, bor // bo, kb, nq


def dense_weight(r_factor: npt.NDArray[np.floating], l_factor: npt.NDArray[np.floating]) -> Array:
    """The dense M (N, K) of equation (1), in float64."""
    bi, bo, r, kb, nq = _dims(r_factor, l_factor)
    rr = r_factor.astype(np.float64).reshape(bi, bo, r, kb)  # (j, t, rho, s)
    ll = l_factor.astype(np.float64).reshape(bo, nq, bi, r)  # (t, q, j, rho)
    return np.einsum("tqjp,jtps->qtjs", ll, rr).reshape(nq * bo, bi * kb)


def apply(x: npt.NDArray[np.floating], r_factor: npt.NDArray[np.floating], l_factor: npt.NDArray[np.floating],
          bias: npt.NDArray[np.floating] | None = None) -> npt.NDArray[np.floating]:
    """Y = X @ M.T (+ bias) by the two stages, in float64, returned in X's dtype. X: (..., K)."""
    bi, bo, r, kb, nq = _dims(r_factor, l_factor)
    if x.shape[-1] != bi * kb:
        raise ValueError(f"X's last axis ({x.shape[-1]}) must be bi * kb = {bi * kb}")
    lead = x.shape[:-1]
    xr = x.astype(np.float64).reshape(-1, bi, kb)
    u = np.einsum("jtps,Bjs->Bjtp", r_factor.astype(np.float64).reshape(bi, bo, r, kb), xr)
    y = np.einsum("tqjp,Bjtp->Bqt", l_factor.astype(np.float64).reshape(bo, nq, bi, r), u).reshape(-1, nq * bo)
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y.reshape(*lead, nq * bo).astype(x.dtype)


def _slices(w: npt.NDArray[np.floating], bi: int, bo: int) -> Array:
    """W (N, K) as its slices: (bo, bi, nq, kb), slice (t, j) = W[q*bo + t, j*kb + s]."""
    n, k = w.shape
    return w.astype(np.float64).reshape(n // bo, bo, bi, k // bi).transpose(1, 2, 0, 3)


def slice_svd(w: npt.NDArray[np.floating], bi: int, bo: int) -> tuple[Array, Array, Array]:
    """The thin SVD of every (t, j) slice, batched: (U, S, V^T) of shapes (bo, bi, nq, m),
    (bo, bi, m), (bo, bi, m, kb), m = min(nq, kb). One SVD serves every rank."""
    return np.linalg.svd(_slices(w, bi, bo), full_matrices=False)


def project(w: npt.NDArray[np.floating], bi: int, bo: int | None = None, r: int = 1, *,
            svd: tuple[Array, Array, Array] | None = None) -> tuple[Array, Array]:
    """Frobenius-optimal (R, L) for a dense W (N, K): the best rank-r factorization of each slice.

    Args:
        w: The dense weight (N, K) (Y = X @ W.T).
        bi: Input blocks (divides K).
        bo: Output blocks (divides N); default bi.
        r: Rank per slice, at most min(K / bi, N / bo).
        svd: `slice_svd(w, bi, bo)` when already computed (several ranks of one block count).

    Returns:
        (R, L) in float64, shapes (bi, bo*r, kb) and (bo, nq, bi*r).

    Raises:
        ValueError: the shape does not take these blocks (the message says why).
    """
    bo = bi if bo is None else bo
    if w.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {w.shape}")
    n, k = w.shape
    why = shape_error(n, k, bi, bo, r)
    if why:
        raise ValueError(why)
    kb, nq = k // bi, n // bo
    u, sv, vt = svd if svd is not None else slice_svd(w, bi, bo)
    root = np.sqrt(sv[..., :r])  # (bo, bi, r)
    lft = u[..., :r] * root[..., None, :]  # (t, j, q, rho)
    rgt = root[..., :, None] * vt[..., :r, :]  # (t, j, rho, s)
    l_factor = lft.transpose(0, 2, 1, 3).reshape(bo, nq, bi * r)
    r_factor = rgt.transpose(1, 0, 2, 3).reshape(bi, bo * r, kb)
    return r_factor, l_factor


def projection_error(w: npt.NDArray[np.floating], bi: int, bo: int, r: int) -> float:
    """||W - P(W)||_F^2 / ||W||_F^2 of the projection, from the slices' singular values alone."""
    sv = np.linalg.svd(_slices(w, bi, bo), compute_uv=False)
    total = float((sv**2).sum())
    return float((sv[..., r:] ** 2).sum()) / total if total > 0 else 0.0


def output_error(w: npt.NDArray[np.floating], m: npt.NDArray[np.floating], h: npt.NDArray[np.floating] | None = None) -> float:
    """Relative squared output error tr(D H D^T) / tr(W H W^T), D = W - M (H None: the identity,
    i.e. the Frobenius error ||W - M||^2 / ||W||^2)."""
    d = w.astype(np.float64) - m.astype(np.float64)
    w64 = w.astype(np.float64)
    if h is None:
        num, den = float((d * d).sum()), float((w64 * w64).sum())
    else:
        h64 = h.astype(np.float64)
        num, den = _quad(d, h64), _quad(w64, h64)
    return num / den if den > 0 else 0.0


def _quad(d: Array, h: Array) -> float:
    """tr(D H D^T) through one matrix product (einsum's three-index loop is far slower)."""
    return float(((d @ h) * d).sum())


def _ridge(a: Array, scale: float) -> Array:
    return a + np.eye(a.shape[-1]) * scale


def refine(
    w: npt.NDArray[np.floating],
    h: npt.NDArray[np.floating],
    r_factor: npt.NDArray[np.floating],
    l_factor: npt.NDArray[np.floating],
    *,
    iters: int = 8,
    tol: float = 1e-4,
    ridge: float = 1e-6,
    damp: float = 0.01,
) -> tuple[Array, Array, list[float]]:
    """Alternating least squares on tr((W - M) H (W - M)^T) from (R, L) (see the module docstring).

    Args:
        w: The dense weight (N, K).
        h: The inputs' second moment (K, K), symmetric positive semi-definite.
        r_factor, l_factor: The starting factors (e.g. `project`'s).
        iters: Sweeps (one L step and one R sweep each) at most.
        tol: Stop when a sweep lowers the objective by less than this fraction.
        ridge: Relative ridge added to every normal matrix (times its mean diagonal).
        damp: H is damped to H + damp * mean(diag H) * I first (as OBS damps its Hessian): with
            fewer samples than inputs H is singular and the fit would be free in the unseen
            directions; damping keeps it close to the weight there.

    Returns:
        (R, L, history) where history[i] is the relative output error (on the damped H) after
        sweep i (history[0]: the start). The history never increases (each step is an exact or block-exact minimizer).
    """
    bi, bo, r, kb, nq = _dims(r_factor, l_factor)
    n, k = w.shape
    if (n, k) != (nq * bo, bi * kb) or h.shape != (k, k):
        raise ValueError(f"W {w.shape}, H {h.shape} and factors R {r_factor.shape}, L {l_factor.shape} disagree")
    w64 = w.astype(np.float64)
    h64 = 0.5 * (h.astype(np.float64) + h.astype(np.float64).T)
    if damp > 0:
        h64 = h64 + np.eye(k) * damp * float(np.trace(h64)) / k
    rr = r_factor.astype(np.float64).reshape(bi, bo, r, kb).copy()  # (j, t, rho, s)
    ll = l_factor.astype(np.float64).reshape(bo, nq, bi, r).copy()  # (t, q, j, rho)
    w3 = w64.reshape(nq, bo, k)  # (q, t, i)
    energy = _quad(w64, h64) or 1.0

    def objective() -> float:
        d = w64 - np.einsum("tqjp,jtps->qtjs", ll, rr, optimize=True).reshape(n, k)
        return _quad(d, h64) / energy

    history = [objective()]
    for _ in range(iters):
        # L step: per output block t, L[t] = W_t H A_t^T (A_t H A_t^T)^-1
        rh = np.matmul(rr.reshape(bi, bo * r, kb), h64.reshape(bi, kb, k)).reshape(bi, bo, r, k)  # R_j H[j, :]
        rh_t = rh.transpose(1, 0, 2, 3).reshape(bo, bi * r, k)  # H A_t^T, transposed
        rhs = np.matmul(w3.transpose(1, 0, 2), rh_t.transpose(0, 2, 1))  # (t, q, (j, rho))
        gram = np.einsum("jtpJS,JtPS->tjpJP", rh.reshape(bi, bo, r, bi, kb), rr, optimize=True).reshape(bo, bi * r, bi * r)
        gram = 0.5 * (gram + gram.transpose(0, 2, 1))
        scale = ridge * max(float(np.einsum("tii->", gram)) / (bo * bi * r), 1e-300)
        ll = np.linalg.solve(_ridge(gram, scale), rhs.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(bo, nq, bi, r)
        # R step: block Gauss-Seidel over input blocks j
        m = np.einsum("tqjp,jtps->qtjs", ll, rr, optimize=True).reshape(n, k)
        dh = (w64 - m) @ h64  # (W - M) H, kept current as blocks change
        for j in range(bi):
            cols = slice(j * kb, (j + 1) * kb)
            hjj = h64[cols, cols]
            lj = ll[:, :, j, :]  # (t, q, rho)
            btb = np.einsum("tqp,tqP->tpP", lj, lj)  # (t, r, r)
            # B_j^T (W - M_{-j}) H[:, j] = B_j^T (W - M) H[:, j] + B_j^T B_j R_j H_jj
            resid = dh[:, cols].reshape(nq, bo, kb)  # rows (q, t)
            rhs_j = np.einsum("tqp,qts->tps", lj, resid) + np.einsum("tpP,tPs,sS->tpS", btb, rr[j], hjj)
            s1 = ridge * max(float(np.einsum("tii->", btb)) / (bo * r), 1e-300)
            s2 = ridge * max(float(np.trace(hjj)) / kb, 1e-300)
            x = np.linalg.solve(_ridge(btb, s1), rhs_j)  # (t, r, kb): (B^T B)^-1 B^T E H[:, j]
            new = np.linalg.solve(_ridge(hjj, s2), x.reshape(bo * r, kb).T).T.reshape(bo, r, kb)
            delta = new - rr[j]
            rr[j] = new
            dm = np.einsum("tqp,tps->qts", lj, delta).reshape(n, kb)  # change of block j's columns
            dh -= dm @ h64[cols, :]
        history.append(objective())
        if history[-2] - history[-1] < tol * max(history[-2], 1e-300):
            break
    return rr.reshape(bi, bo * r, kb), ll.reshape(bo, nq, bi * r), history


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def block_choices(n: int, k: int, *, blocks: Iterable[int] | None = None, ranks: Sequence[int] = (1, 2, 4, 8, 16, 32),
                  max_fraction: float = 0.6, min_fraction: float = 0.0, asymmetric: bool = False,
                  count: int = 6) -> list[MonarchShape]:
    """Monarch structures a weight (n, k) may take, cheapest-structure first.

    Symmetric block counts b (dividing both n and k, 2 <= b, from `blocks` when given, else 4, 8,
    16 and the divisors nearest sqrt(n) and sqrt(k)), ranks from `ranks`, MAC fraction in
    [min_fraction, max_fraction]. With `asymmetric`, also (bi, bo) pairs with bi*bo = b^2 for those
    b (Dao et al.'s square shape is bi = b, bo = n/b). At most `count`, spread over the fraction
    range (evenly in log scale).
    """
    dk, dn = set(_divisors(k)), set(_divisors(n))
    common = sorted(d for d in dk & dn if d >= 2)
    if blocks is not None:
        bs = [b for b in blocks if b in dk and b in dn and b >= 2]
    else:
        roots = {min(common, key=lambda d: abs(d - math.sqrt(x))) for x in (n, k)} if common else set()
        bs = sorted({b for b in common if b & (b - 1) == 0 and 4 <= b <= 16} | roots)
    pairs = [(b, b) for b in bs]
    if asymmetric:
        for bi in sorted(dk):
            for bo in sorted(dn):
                if bi != bo and bi >= 2 and bo >= 2 and any(bi * bo == b * b for b in bs):
                    pairs.append((bi, bo))
    out = []
    for bi, bo in pairs:
        for r in ranks:
            if shape_error(n, k, bi, bo, r) is None:
                s = MonarchShape(n, k, bi, bo, r)
                if min_fraction <= s.fraction <= max_fraction:
                    out.append(s)
    out.sort(key=lambda s: (s.fraction, s.bi + s.bo, s.r))
    if len(out) > count:
        logf = np.log([s.fraction for s in out])
        targets = np.linspace(logf[0], logf[-1], count)
        picked: list[MonarchShape] = []
        for t in targets:
            best = min((s for s in out if s not in picked), key=lambda s: abs(math.log(s.fraction) - t))
            picked.append(best)
        out = sorted(picked, key=lambda s: (s.fraction, s.bi + s.bo, s.r))
    return out
