"""Monarch factorization: exact recovery, rank monotonicity, optimality against brute force, ALS."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from spa_compiler.monarch import factor as F


def _random_monarch(rng, n, k, bi, bo, r):
    s = F.MonarchShape(n, k, bi, bo, r)
    rs, ls = F.factor_shapes(s)
    return rng.standard_normal(rs), rng.standard_normal(ls)


shapes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(shapes, st.integers(0, 2**31 - 1))
def test_a_monarch_matrix_is_recovered_exactly(dims, seed):
    bi, bo, kb, nq, r = dims
    r = min(r, kb, nq)
    rng = np.random.default_rng(seed)
    rf, lf = _random_monarch(rng, nq * bo, kb * bi, bi, bo, r)
    m = F.dense_weight(rf, lf)
    r2, l2 = F.project(m, bi, bo, r)
    np.testing.assert_allclose(F.dense_weight(r2, l2), m, atol=1e-9 * max(1.0, np.abs(m).max()))
    assert F.projection_error(m, bi, bo, r) < 1e-18


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(shapes, st.integers(0, 2**31 - 1))
def test_the_two_stages_compute_x_times_m_transposed(dims, seed):
    bi, bo, kb, nq, r = dims
    r = min(r, kb, nq)
    rng = np.random.default_rng(seed)
    rf, lf = _random_monarch(rng, nq * bo, kb * bi, bi, bo, r)
    x = rng.standard_normal((2, 3, kb * bi))
    np.testing.assert_allclose(F.apply(x, rf, lf), x @ F.dense_weight(rf, lf).T, atol=1e-9)


def test_slices_have_rank_at_most_r_and_entries_follow_the_formula(rng):
    bi, bo, kb, nq, r = 3, 2, 4, 5, 2
    rf, lf = _random_monarch(rng, nq * bo, kb * bi, bi, bo, r)
    m = F.dense_weight(rf, lf)
    for t in range(bo):
        for j in range(bi):
            sl = m[t::bo, j * kb:(j + 1) * kb]  # rows q*bo + t, columns j*kb + s
            assert np.linalg.matrix_rank(sl) <= r
            for q in range(nq):
                for s in range(kb):
                    want = sum(lf[t, q, j * r + p] * rf[j, t * r + p, s] for p in range(r))
                    assert abs(m[q * bo + t, j * kb + s] - want) < 1e-12


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.integers(1, 4), st.integers(1, 4), st.integers(2, 5), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_rank_r_is_never_worse_than_rank_1(bi, bo, kb, nq, seed):
    w = np.random.default_rng(seed).standard_normal((nq * bo, kb * bi))
    errs = [F.projection_error(w, bi, bo, r) for r in range(1, min(kb, nq) + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-20  # full rank per slice: exact
    r2, l2 = F.project(w, bi, bo, 1)
    assert abs(F.output_error(w, F.dense_weight(r2, l2)) - errs[0]) < 1e-9


def test_projection_matches_a_generic_least_squares_fit_of_the_factors(rng):
    """Brute force: fit R and L by gradient descent from many random starts (torch, LBFGS);
    none gets below the SVD projection, and the best reaches it."""
    torch = pytest.importorskip("torch")
    n, k, bi, bo, r = 6, 6, 2, 3, 1
    w = rng.standard_normal((n, k))
    best_svd = F.projection_error(w, bi, bo, r) * float((w**2).sum())
    (rs, ls) = F.factor_shapes(F.MonarchShape(n, k, bi, bo, r))
    wt = torch.tensor(w)
    found = []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        rp = torch.randn(rs, generator=g, dtype=torch.float64, requires_grad=True)
        lp = torch.randn(ls, generator=g, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([rp, lp], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure():
            opt.zero_grad()
            m = torch.einsum("tqjp,jtps->qtjs", lp.reshape(bo, n // bo, bi, r), rp.reshape(bi, bo, r, k // bi))
            loss = ((m.reshape(n, k) - wt) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        found.append(float(closure()))
    assert min(found) >= best_svd - 1e-8
    assert min(found) <= best_svd * (1 + 1e-4) + 1e-10


def test_exhaustive_structure_check_square_monarch(rng):
    """bi = b, bo = n/b, r = 1 is Dao et al.'s square Monarch: R has b blocks of m x m, L has m
    blocks of b x b; the dense matrix has exactly n*(b+m) free entries' worth of structure."""
    b, m_ = 2, 4
    n = b * m_
    rf, lf = _random_monarch(rng, n, n, b, m_, 1)
    assert rf.shape == (b, m_, m_) and lf.shape == (m_, b, b)
    mat = F.dense_weight(rf, lf)
    # M[(q, t), (j, s)] = L_t[q, j] R_j[t, s] (ALGORITHMS.md section 5), with output index q*m + t
    for q in range(b):
        for t in range(m_):
            for j in range(b):
                for s in range(m_):
                    assert abs(mat[q * m_ + t, j * m_ + s] - lf[t, q, j] * rf[j, t, s]) < 1e-12


def test_refinement_never_increases_the_output_error_and_beats_projection_on_skewed_inputs(rng):
    n, k = 32, 24
    w = rng.standard_normal((n, k))
    x = rng.standard_normal((k, 400)) * np.linspace(0.05, 3.0, k)[:, None]
    h = x @ x.T / 400
    rf, lf = F.project(w, 4, 4, 1)
    r2, l2, hist = F.refine(w, h, rf, lf, iters=15, tol=0.0, damp=0.0)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:]))
    assert hist[-1] < 0.95 * hist[0]
    assert abs(F.output_error(w, F.dense_weight(r2, l2), h) - hist[-1]) < 1e-9
    y_err = np.linalg.norm((w - F.dense_weight(r2, l2)) @ x) ** 2 / np.linalg.norm(w @ x) ** 2
    assert abs(y_err - hist[-1]) < 1e-9


def test_refinement_keeps_an_exact_monarch_exact(rng):
    rf, lf = _random_monarch(rng, 12, 8, 2, 3, 2)
    m = F.dense_weight(rf, lf)
    r0, l0 = F.project(m, 2, 3, 2)
    _, _, hist = F.refine(m, np.eye(8), r0, l0, iters=3)  # damping keeps an exact fit exact
    assert hist[-1] < 1e-10


def test_bad_shapes_are_refused_with_a_reason():
    assert "not divisible" in F.shape_error(10, 9, 2, 2, 1)
    assert "rank" in F.shape_error(8, 8, 4, 4, 3)
    with pytest.raises(ValueError, match="divisible"):
        F.project(np.ones((10, 9)), 2, 2, 1)
    assert F.block_choices(7, 13) == []  # primes: no block count >= 2 divides both
    with pytest.raises(ValueError, match="variant name"):
        F.parse_key("b4")
    assert F.parse_key("b4x16r2") == (4, 16, 2) and F.parse_key("b8r1") == (8, 8, 1)


def test_block_choices_respect_the_fraction_and_the_count():
    got = F.block_choices(1536, 384, max_fraction=0.5, count=6)
    assert 0 < len(got) <= 6 and all(s.fraction <= 0.5 for s in got)
    assert all(s.bi == s.bo for s in got)
    fr = [s.fraction for s in got]
    assert fr == sorted(fr)


_REF = pathlib.Path(os.environ.get("SPA_MONARCH_REFERENCE") or pathlib.Path(__file__).resolve().parents[2] / "runtime_ops" / "monarch_matmul" / "reference.py")


@pytest.mark.skipif(not _REF.is_file(), reason="the runtime_ops MonarchMatMul reference is not in this tree")
def test_same_convention_as_the_op_reference(rng):
    """The op's reference.py is the single source of truth: with bi == bo our dense matrix, apply
    and projection equal its dense_weight, monarch_matmul and project."""
    spec = importlib.util.spec_from_file_location("monarch_reference", _REF)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)  # type: ignore[union-attr]
    for b, kb, nq, r in [(2, 3, 4, 1), (4, 4, 4, 2), (3, 5, 2, 2)]:
        rf, lf = _random_monarch(rng, nq * b, kb * b, b, b, r)
        np.testing.assert_allclose(F.dense_weight(rf, lf), ref.dense_weight(rf, lf), atol=1e-12)
        x = rng.standard_normal((3, kb * b))
        np.testing.assert_allclose(F.apply(x, rf, lf), ref.monarch_matmul(x, rf, lf), atol=1e-12)
        w = rng.standard_normal((nq * b, kb * b))
        mine, theirs = F.dense_weight(*F.project(w, b, b, r)), ref.dense_weight(*ref.project(w, b, r))
        np.testing.assert_allclose(mine, theirs, atol=1e-10)
