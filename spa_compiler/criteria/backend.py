"""Where the numerical core runs: numpy on the CPU, or torch on a CUDA GPU when there is one.

torch is optional at run time: without it (or without a GPU) everything runs in numpy. With a
CUDA GPU the expensive float64 linear algebra of the criteria runs there: layer Hessians
(`TorchHessianAccumulator`), their inverses, the output energies, and the greedy OBS paths
(`TorchGreedyState`, the same algorithm as `spa_compiler.criteria.obs._GreedyState`, step for
step). Small layers stay on the CPU (a GPU step costs a few kernel launches; numpy is faster
below ``MIN_GPU_COLUMNS`` columns).

``SPA_COMPILER_DEVICE`` chooses: ``auto`` (default: CUDA if torch sees one), ``cpu`` (numpy
only), ``cuda``, or ``torch-cpu`` (the torch code on the CPU: how the tests check it equals the
numpy path on machines without a GPU). Everything stays float64 on the GPU too (the H200's FP64
tensor cores make that cheap), so GPU paths equal CPU paths up to rounding.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

ENV = "SPA_COMPILER_DEVICE"
#: Layers with fewer input columns run their greedy path in numpy even when a GPU is there.
MIN_GPU_COLUMNS = 512

FloatArray = npt.NDArray[np.float64]


@functools.lru_cache(maxsize=None)
def _torch_device(choice: str) -> Any:
    if choice == "cpu":
        return None
    try:
        import torch
    except ImportError:
        if choice in ("cuda", "torch-cpu"):
            logger.warning("%s=%s but torch is not installed: using numpy", ENV, choice)
        return None
    if choice == "torch-cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        logger.info("numerical core on %s", torch.cuda.get_device_name(0))
        return torch.device("cuda")
    if choice == "cuda":
        logger.warning("%s=cuda but torch sees no CUDA GPU: using numpy", ENV)
    return None


def torch_device(n_columns: int | None = None) -> Any:
    """The torch device to use for a layer of `n_columns` inputs, or None (numpy)."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "cpu", "cuda", "torch-cpu"):
        choice = "auto"
    dev = _torch_device(choice)
    if dev is None:
        return None
    if n_columns is not None and n_columns < MIN_GPU_COLUMNS and dev.type == "cuda" and choice == "auto":
        return None
    return dev


def energy(w: FloatArray, h: FloatArray) -> float:
    """``tr(W H W^T)`` (on the GPU for large layers)."""
    dev = torch_device(h.shape[0])
    if dev is None:
        return float(np.sum((w @ h) * w))
    import torch

    tw = torch.as_tensor(w, dtype=torch.float64, device=dev)
    th = torch.as_tensor(h, dtype=torch.float64, device=dev)
    return float(((tw @ th) * tw).sum())


def spd_inverse(h: FloatArray, dev: Any) -> Any:
    """``H^-1`` of an SPD matrix as a torch tensor on `dev`; LinAlgError if not PD."""
    import torch

    th = torch.as_tensor(h, dtype=torch.float64, device=dev)
    low, info = torch.linalg.cholesky_ex(th)
    if int(info) != 0:
        raise np.linalg.LinAlgError(f"cholesky failed (info={int(info)})")
    inv = torch.cholesky_inverse(low)
    return 0.5 * (inv + inv.T)


class TorchHessianAccumulator:
    """`spa_compiler.criteria.hessian.HessianAccumulator` with its sums on a torch device.

    Each batch goes to the device once; ``X^T X`` is added in float64 there (no float32 products:
    the GPU's FP64 is fast). `hessian` returns a numpy array, like the CPU accumulator.
    """

    def __init__(self, n_features: int, dev: Any) -> None:
        import torch

        self.n_features = int(n_features)
        self.dev = dev
        self.n_samples = 0
        self._sxx = torch.zeros((n_features, n_features), dtype=torch.float64, device=dev)
        self._sx = torch.zeros(n_features, dtype=torch.float64, device=dev)

    def add_batch(self, x: npt.ArrayLike) -> None:
        import torch

        arr = np.asarray(x)
        if arr.ndim == 0 or arr.shape[-1] != self.n_features:
            raise ValueError(f"expected activations (..., {self.n_features}), got shape {arr.shape}")
        flat = arr.reshape(-1, self.n_features)
        if flat.shape[0] == 0:
            return
        if not np.all(np.isfinite(flat)):
            raise ValueError("activations contain NaN or inf")
        t = torch.as_tensor(np.ascontiguousarray(flat), device=self.dev).to(torch.float64)
        self._sxx.addmm_(t.T, t)
        self._sx += t.sum(0)
        self.n_samples += flat.shape[0]

    def hessian(self, damp: float = 0.01) -> FloatArray:
        if self.n_samples == 0:
            raise ValueError("no samples accumulated: call add_batch() with calibration data first")
        h = (2.0 / self.n_samples) * self._sxx
        h = 0.5 * (h + h.T)
        if damp > 0:
            mean_diag = float(h.diagonal().mean())
            h.diagonal().add_(damp * (mean_diag if mean_diag > 0 else 1.0))
        out = h.cpu().numpy()
        del h
        return out

    def mean(self) -> FloatArray:
        return (self._sx / max(self.n_samples, 1)).cpu().numpy()


class TorchGreedyState:
    """`spa_compiler.criteria.obs._GreedyState` in torch (same algorithm, same refresh points).

    See that class for the math. Index bookkeeping (which groups are active, which columns are
    kept) stays in numpy; the arrays live on the device. One host synchronisation per step and
    layer (the errors come back to numpy for the argmin over layers).
    """

    def __init__(self, w: FloatArray, hinv: Any, buckets: dict[int, tuple[Any, Any]], dev: Any,
                 refresh_cols: int = 64) -> None:
        import torch

        self.t = torch
        self.dev = dev
        self.n_in = w.shape[1]
        self.w = torch.as_tensor(np.asarray(w, dtype=np.float64), device=dev).clone()
        self.h0 = hinv if isinstance(hinv, torch.Tensor) else torch.as_tensor(hinv, device=dev)
        self.h0 = self.h0.to(device=dev, dtype=torch.float64).clone()
        self.buckets = {s: (ids, torch.as_tensor(idx, device=dev)) for s, (ids, idx) in buckets.items()}
        self.cols = np.arange(self.n_in)
        self.pos = torch.arange(self.n_in, device=dev)
        self.zeroed: list[int] = []
        self.max_size = max(buckets) if buckets else 1
        self.refresh_cols = max(refresh_cols, 4 * self.max_size)
        # U is folded into H0 every `refresh_cols` columns: a fold is one k x k matrix product
        # (compute-bound, fast), while rows of H0 - U U^T cost a memory-bound pass over U per step
        # (benchmarks/cost/results/components.json: never folding was 2x slower on an FFN path)
        self.fold_cols = self.refresh_cols
        self.u = torch.zeros((self.n_in, min(self.n_in, 256) + self.max_size), dtype=torch.float64, device=dev)
        self.r = 0
        self.since_refresh = 0
        self.blocks: dict[int, Any] = {}
        self.grams: dict[int, Any] = {}
        self._refresh_blocks()

    def _refresh_blocks(self) -> None:
        ur = self.u[:, : self.r]
        for size, (_, idx) in self.buckets.items():
            local = self.pos[idx]
            blocks = self.h0[local[:, :, None], local[:, None, :]]
            if self.r:
                ug = ur[local]
                blocks = blocks - ug @ ug.transpose(1, 2)
            self.blocks[size] = blocks.contiguous()
            if size > 1:
                wg = self.w[:, local]  # (out, G, s)
                self.grams[size] = self.t.einsum("ogs,ogt->gst", wg, wg)
        self.since_refresh = 0

    def _fold(self) -> None:
        if self.r:
            ur = self.u[:, : self.r]
            self.h0 -= ur @ ur.T
            self.h0 = 0.5 * (self.h0 + self.h0.T)
            self.u[:, : self.r] = 0.0
            self.r = 0

    def _reserve(self, extra: int) -> None:
        if self.r + extra > self.cols.size:
            self._fold()
        if self.r + extra > self.u.shape[1]:
            grown = self.t.zeros((self.u.shape[0], max(2 * self.u.shape[1], self.r + extra)),
                                 dtype=self.t.float64, device=self.dev)
            grown[:, : self.r] = self.u[:, : self.r]
            self.u = grown

    def _errors_from_gram(self, blocks: Any, gram: Any) -> Any:
        t = self.t
        low, info = t.linalg.cholesky_ex(blocks)
        ok = info == 0
        eye = t.eye(blocks.shape[-1], dtype=t.float64, device=self.dev).expand_as(blocks)
        linv = t.linalg.solve_triangular(t.where(ok[:, None, None], low, eye), eye, upper=False)
        binv = linv.transpose(1, 2) @ linv
        err = 0.5 * (binv * gram).sum(dim=(1, 2))
        return t.where(ok, err, t.full_like(err, float("inf")))

    def errors(self, active: npt.NDArray[np.bool_], out: FloatArray) -> None:
        t = self.t
        sq = None
        for size, (ids, idx) in self.buckets.items():
            keep = active[ids]
            if not keep.any():
                continue
            kt = t.as_tensor(keep, device=self.dev)
            blocks = self.blocks[size][kt]
            if size == 1:
                if sq is None:
                    sq = (self.w * self.w).sum(0)
                local = self.pos[idx[kt, 0]]
                d = blocks[:, 0, 0]
                err = t.where(d > 0, 0.5 * sq[local] / t.where(d > 0, d, t.ones_like(d)),
                              t.full_like(d, float("inf")))
            else:
                err = self._errors_from_gram(blocks, self.grams[size][kt])
            out[ids[keep]] += err.cpu().numpy()

    def _inv_sqrt_factor(self, block: Any) -> Any:
        t = self.t
        low, info = t.linalg.cholesky_ex(block)
        if int(info) == 0:
            eye = t.eye(block.shape[0], dtype=t.float64, device=self.dev)
            return t.linalg.solve_triangular(low, eye, upper=False).T
        logger.warning("(H^-1)_SS of a %d-column group is singular; using its pseudo-inverse", block.shape[0])
        lam, q = t.linalg.eigh(0.5 * (block + block.T))
        keep = lam > 1e-12 * max(float(lam.abs().max()), 1e-300)
        return q[:, keep] / t.sqrt(lam[keep])

    def remove(self, cols: npt.NDArray[np.intp]) -> None:
        t = self.t
        local = self.pos[t.as_tensor(cols, device=self.dev)]
        ur = self.u[:, : self.r]
        h_s = self.h0[local, :] - ur[local] @ ur.T
        if self.zeroed:
            h_s[:, t.as_tensor(self.zeroed, device=self.dev)] = 0.0
        c = self._inv_sqrt_factor(h_s[:, local])
        u_new = h_s.T @ c
        a = self.w[:, local] @ c
        if self.grams:
            wta = self.w.T @ a
            ata = a.T @ a
        self.w.addmm_(a, u_new.T, alpha=-1.0)
        self.w[:, local] = 0.0
        self._reserve(u_new.shape[1])
        self.u[:, self.r : self.r + u_new.shape[1]] = u_new
        self.r += u_new.shape[1]
        for size, (_, idx) in self.buckets.items():
            li = self.pos[idx]
            ug = u_new[li]
            ugt = ug.transpose(1, 2)
            self.blocks[size] -= ug @ ugt
            if size > 1:
                cross = wta[li] @ ugt
                self.grams[size] -= cross + cross.transpose(1, 2) - (ug @ ata) @ ugt
        local_np = local.cpu().numpy()
        self.zeroed.extend(local_np.tolist())
        self.since_refresh += local_np.size
        if self.r >= self.fold_cols:
            self._fold()
        if 4 * len(self.zeroed) > self.cols.size and len(self.zeroed) < self.cols.size:
            keep = np.ones(self.cols.size, dtype=bool)
            keep[self.zeroed] = False
            kt = t.as_tensor(keep, device=self.dev)
            self.w = self.w[:, kt].contiguous()
            self.h0 = self.h0[kt][:, kt].contiguous()
            self.u = self.u[kt].contiguous()
            self.pos[t.as_tensor(self.cols[~keep], device=self.dev)] = 0
            self.cols = self.cols[keep]
            self.pos[t.as_tensor(self.cols, device=self.dev)] = t.arange(self.cols.size, device=self.dev)
            self.zeroed = []
            self._refresh_blocks()
        elif self.since_refresh >= self.refresh_cols:
            self._refresh_blocks()

    def full_weight(self, dtype: npt.DTypeLike) -> npt.NDArray[np.floating]:
        out = np.zeros((self.w.shape[0], self.n_in), dtype=dtype)
        out[:, self.cols] = self.w.cpu().numpy()
        return out
