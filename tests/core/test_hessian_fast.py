"""The fast Hessian accumulation (raw sums by BLAS syrk, float32 products) against the reference:
float64 running means of X^T X, as SparseGPT and the code before issue 12 computed them."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from spa_compiler.criteria.hessian import HessianAccumulator
from spa_compiler.criteria.obs import greedy_prune


def _reference(batches: list[np.ndarray]) -> np.ndarray:
    n, xtx = 0, None
    for b in batches:
        f = b.reshape(-1, b.shape[-1]).astype(np.float64)
        total = n + f.shape[0]
        xtx = (f.T @ f) / total if xtx is None else xtx * (n / total) + (f.T @ f) / total
        n = total
    assert xtx is not None
    return 2.0 * xtx


def _batches(rng: np.random.Generator, k: int = 40) -> list[np.ndarray]:
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    # ReLU activations with a mean and correlated channels, as a Conv's im2col input has
    return [np.maximum(rng.standard_normal((m, k)) @ mix + 0.3, 0).astype(np.float32) for m in (300, 77, 1024, 5)]


@pytest.mark.parametrize("with_scipy", [True, False])
def test_float64_sums_equal_running_means(rng: np.random.Generator, with_scipy: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not with_scipy:
        monkeypatch.setitem(sys.modules, "scipy.linalg", None)
    batches = _batches(rng)
    acc = HessianAccumulator(40)
    for b in batches:
        acc.add_batch(b)
    np.testing.assert_allclose(acc.hessian(damp=0.0), _reference(batches), rtol=1e-12, atol=1e-14)
    h = acc.hessian(damp=0.0)
    np.testing.assert_array_equal(h, h.T)
    assert acc.n_samples == sum(b.shape[0] for b in batches)


def test_float32_products_close_and_same_greedy_path(rng: np.random.Generator) -> None:
    batches = _batches(rng)
    a64, a32 = HessianAccumulator(40), HessianAccumulator(40, product_dtype=np.float32)
    for b in batches:
        a64.add_batch(b)
        a32.add_batch(b)
    h64, h32 = a64.hessian(0.01), a32.hessian(0.01)
    assert h32.dtype == np.float64
    assert np.abs(h32 - h64).max() <= 1e-6 * np.abs(h64).max()
    w = rng.standard_normal((24, 40))
    groups = [np.arange(i, i + 2) for i in range(0, 40, 2)]
    p64 = greedy_prune(w, h64, groups, levels=range(19))
    p32 = greedy_prune(w, h32, groups, levels=range(19))
    assert p32.order.tolist() == p64.order.tolist()
    np.testing.assert_allclose(p32.errors, p64.errors, rtol=1e-4)


def test_merge_of_sums(rng: np.random.Generator) -> None:
    batches = _batches(rng)
    a, b, whole = HessianAccumulator(40), HessianAccumulator(40), HessianAccumulator(40)
    for i, x in enumerate(batches):
        (a if i % 2 else b).add_batch(x)
        whole.add_batch(x)
    a.merge(b)
    np.testing.assert_allclose(a.hessian(0.0), whole.hessian(0.0), rtol=1e-12)
    np.testing.assert_allclose(a.mean(), whole.mean(), rtol=1e-12)
