"""Fidelity metrics against the dense model (spa_compiler.fidelity)."""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler import fidelity as F


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_kl_matches_direct_formula(rng: np.random.Generator) -> None:
    p = rng.standard_normal((3, 5, 11))
    q = p + 0.3 * rng.standard_normal(p.shape)
    want = (_softmax(p) * (np.log(_softmax(p)) - np.log(_softmax(q)))).sum(-1).ravel()
    np.testing.assert_allclose(F.kl_rows(p, q), want, rtol=1e-10, atol=1e-12)
    assert F.kl_rows(p, p).max() < 1e-12
    # shift invariance of logits, asymmetry of KL
    np.testing.assert_allclose(F.kl_rows(p + 7.0, q - 3.0), want, rtol=1e-9, atol=1e-12)
    assert not np.allclose(F.kl_rows(q, p), want)


def test_kl_is_stable_for_large_logits_and_chunks(rng: np.random.Generator) -> None:
    p = 1e4 * rng.standard_normal((600, 40))  # more rows than one chunk, exp would overflow
    q = p.copy()
    q[:, 0] += 1.0
    k = F.kl_rows(p, q)
    assert np.isfinite(k).all() and (k >= 0).all() and k.shape == (600,)


def test_cosine_rows_and_mean(rng: np.random.Generator) -> None:
    a = rng.standard_normal((20, 8))
    assert F.mean_cosine(a, a) == pytest.approx(1.0)
    assert F.mean_cosine(a, -a) == pytest.approx(-1.0)
    assert F.mean_cosine(a, 3.0 * a) == pytest.approx(1.0)  # scale-free
    b = a + rng.standard_normal(a.shape)
    cos = F.cosine_rows(a, b)
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cos, want, rtol=1e-12)
    z = np.zeros((2, 4))
    np.testing.assert_array_equal(F.cosine_rows(z, z), [1.0, 1.0])
    np.testing.assert_array_equal(F.cosine_rows(z, np.ones((2, 4))), [0.0, 0.0])


def test_top1_agreement() -> None:
    a = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    b = np.array([[0.0, 1.0, 0.0], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9], [0.9, 0.1, 0.0]])
    assert F.top1_agreement(a, b) == 0.75
    assert F.top1_agreement(a[None], b[None]) == 0.75  # leading dims flatten to rows


def test_relative_error() -> None:
    r = np.array([3.0, 4.0])
    assert F.relative_error(r, r) == 0.0
    assert F.relative_error(r, np.zeros(2)) == pytest.approx(1.0)
    assert F.relative_error(r, 2 * r) == pytest.approx(1.0)
    assert F.relative_error(np.zeros(2), np.zeros(2)) == 0.0
    assert F.relative_error(np.zeros(2), r) == float("inf")


def test_error_kind_and_output_error(rng: np.random.Generator) -> None:
    assert F.error_kind((1, 128, 49152)) == "kl"
    assert F.error_kind((1, 128, 384)) == "cosine"
    assert F.error_kind((4, 1000)) == "cosine"
    assert F.error_kind((4, 1)) == "relative"
    assert F.error_kind((7,)) == "relative"
    d = rng.standard_normal((2, 6, 1200))
    c = d + 0.1 * rng.standard_normal(d.shape)
    assert F.output_error(d, c) == pytest.approx(F.kl_rows(d, c).mean())
    assert F.output_error(d, c, "cosine") == pytest.approx(1 - F.cosine_rows(d, c).mean())
    assert F.output_error(d, d) == pytest.approx(0.0, abs=1e-12)
    worse = d + 1.0 * rng.standard_normal(d.shape)
    for kind in F.ErrorKinds:
        assert F.output_error(d, worse, kind) > F.output_error(d, c, kind)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        F.kl_rows(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown error kind"):
        F.output_error(np.zeros((2, 3)), np.zeros((2, 3)), "l7")
