"""HessianAccumulator (streaming == one-shot) and the im2col view of Conv (== torch convNd)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_compiler.criteria.hessian import (
    HessianAccumulator,
    conv_channel_columns,
    conv_group_slice,
    conv_output_shape,
    conv_weight_2d,
    im2col,
)
from spa_compiler.criteria.obs import greedy_prune, group_errors, inverse_hessian, remove_group

# ------------------------------------------------------------------------------ accumulator


def test_one_shot_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    acc = HessianAccumulator(6)
    acc.add_batch(x)
    x64 = x.astype(np.float64)
    assert acc.n_samples == 50
    np.testing.assert_allclose(acc.second_moment(), x64.T @ x64 / 50, rtol=1e-12)
    np.testing.assert_allclose(acc.hessian(damp=0.0), 2.0 * x64.T @ x64 / 50, rtol=1e-12)
    np.testing.assert_allclose(acc.mean(), x64.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(acc.feature_norms(), np.linalg.norm(x64, axis=0), rtol=1e-12)
    h = 2.0 * x64.T @ x64 / 50
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(6)
    np.testing.assert_allclose(acc.hessian(), damped, rtol=1e-12)  # default damp=0.01
    assert acc.hessian().dtype == np.float64


@settings(max_examples=30, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 40), max_size=6),
    n_features=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_equals_one_shot(cuts: list[int], n_features: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, n_features)) * rng.uniform(0.1, 10, n_features) + 3.0
    one = HessianAccumulator(n_features)
    one.add_batch(x)
    many = HessianAccumulator(n_features)
    bounds = [0, *sorted(cuts), 40]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        many.add_batch(x[a:b])  # includes empty batches
    assert many.n_samples == 40
    np.testing.assert_allclose(many.second_moment(), one.second_moment(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(many.hessian(0.01), one.hessian(0.01), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(many.mean(), one.mean(), rtol=1e-12, atol=1e-12)


def test_leading_axes_are_samples_and_merge() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 4))
    acc = HessianAccumulator(4)
    acc.add_batch(x)
    flat = x.reshape(-1, 4)
    assert acc.n_samples == 30
    np.testing.assert_allclose(acc.second_moment(), flat.T @ flat / 30, rtol=1e-12)
    a, b = HessianAccumulator(4), HessianAccumulator(4)
    a.add_batch(flat[:7])
    b.add_batch(flat[7:])
    a.merge(b)
    a.merge(HessianAccumulator(4))  # merging an empty one changes nothing
    np.testing.assert_allclose(a.second_moment(), acc.second_moment(), rtol=1e-12)
    assert a.n_samples == 30


def test_accumulator_errors() -> None:
    acc = HessianAccumulator(3)
    with pytest.raises(ValueError, match="no samples"):
        acc.hessian()
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        acc.add_batch(np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        acc.add_batch(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="positive"):
        HessianAccumulator(0)
    with pytest.raises(ValueError, match="merge"):
        acc.merge(HessianAccumulator(2))
    acc.add_batch(np.zeros((5, 3)))  # all features dead: damping still makes H positive definite
    assert np.all(np.linalg.eigvalsh(acc.hessian(0.01)) > 0)
    with pytest.raises(ValueError, match="damp"):
        acc.hessian(-1.0)


def test_accumulator_hessian_feeds_obs_with_mean_error_units() -> None:
    """With the accumulator's H = 2/n X^T X, OBS errors are the mean squared error per sample."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 8))  # samples x features
    w = rng.standard_normal((3, 8))
    acc = HessianAccumulator(8)
    for chunk in np.array_split(x, 7):
        acc.add_batch(chunk)
    s = np.array([2, 5])
    hinv = inverse_hessian(acc.hessian(damp=0.0))
    w_new, _ = remove_group(w, hinv, s)
    achieved = np.mean(np.sum(((w - w_new) @ x.T) ** 2, axis=0))
    assert group_errors(w, hinv, [s])[0] == pytest.approx(achieved, rel=1e-9)


# ------------------------------------------------------------------------------------ im2col


def _torch_conv(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group) -> np.ndarray:  # type: ignore[no-untyped-def]
    rank = w.ndim - 2
    # F.pad takes (last_begin, last_end, ..., first_begin, first_end)
    tp: list[int] = []
    for i in reversed(range(rank)):
        tp += [pads[i], pads[i + rank]]
    xt = F.pad(torch.from_numpy(x), tp)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return fn(xt, torch.from_numpy(w), stride=strides, dilation=dilations, groups=group).numpy()


def _conv_via_im2col(x, w, strides, pads, dilations, group) -> np.ndarray:  # type: ignore[no-untyped-def]
    n, c = x.shape[:2]
    out_ch, kernel = w.shape[0], w.shape[2:]
    cols = im2col(x, kernel, strides=strides, pads=pads, dilations=dilations)
    out_sp = conv_output_shape(x.shape[2:], kernel, strides=strides, pads=pads, dilations=dilations)
    assert cols.shape == (n * math.prod(out_sp), c * math.prod(kernel))
    w2 = conv_weight_2d(w)
    per = out_ch // group
    ys = []
    for j in range(group):
        sl = conv_group_slice(j, c, kernel, group)
        ys.append(cols[:, sl] @ w2[j * per : (j + 1) * per].T)  # (N*L, out/g)
    y = np.concatenate(ys, axis=1).reshape(n, *out_sp, out_ch)
    return np.moveaxis(y, -1, 1)


CONV_CASES = [
    # (in_ch, out_ch, spatial, kernel, strides, pads, dilations, group)
    (3, 4, (7, 6), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (3, 5, (8, 9), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (4, 6, (9, 7), (3, 2), (2, 1), (1, 0, 2, 1), (1, 1), 1),  # asymmetric pads and kernel
    (2, 3, (10, 10), (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 1),  # dilation
    (4, 6, (6, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),  # grouped
    (6, 6, (5, 7), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6),  # depthwise
    (5, 2, (6, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # pointwise
    (3, 4, (11,), (5,), (3,), (2, 1), (1,), 1),  # 1-D
    (2, 3, (4, 5, 6), (2, 3, 2), (1, 2, 1), (0, 1, 1, 1, 0, 0), (1, 1, 2), 1),  # 3-D
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_matches_torch_conv(case) -> None:  # type: ignore[no-untyped-def]
    c, out_ch, spatial, kernel, strides, pads, dilations, group = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rng.standard_normal((2, c, *spatial)).astype(np.float64)
    w = rng.standard_normal((out_ch, c // group, *kernel)).astype(np.float64)
    expect = _torch_conv(x, w, strides, pads, dilations, group)
    got = _conv_via_im2col(x, w, strides, pads, dilations, group)
    np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-10)


def test_im2col_keeps_dtype_and_validates() -> None:
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    assert im2col(x, (3, 3)).dtype == np.float32
    with pytest.raises(ValueError, match="rank"):
        im2col(np.ones((2, 4, 4)), (3, 3))
    with pytest.raises(ValueError, match="empty"):
        im2col(x, (5, 5))
    with pytest.raises(ValueError, match="pads"):
        im2col(x, (3, 3), pads=(1, 1))
    with pytest.raises(ValueError, match="divisible"):
        conv_group_slice(0, 5, (3, 3), 2)
    with pytest.raises(ValueError, match="range"):
        conv_group_slice(2, 4, (3, 3), 2)


def test_channel_columns_map_input_channels() -> None:
    """Zeroing W[:, c] of the 4-D weight == zeroing conv_channel_columns[c] of the 2-D weight."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 5, 3, 2))
    cols = conv_channel_columns(5, (3, 2))
    assert [g.tolist() for g in cols[:2]] == [list(range(6)), list(range(6, 12))]
    for ch in range(5):
        w4 = w.copy()
        w4[:, ch] = 0.0
        w2 = conv_weight_2d(w).copy()
        w2[:, cols[ch]] = 0.0
        np.testing.assert_array_equal(w2, conv_weight_2d(w4))


def test_conv_input_channel_obs_on_real_conv_output() -> None:
    """OBS over im2col columns: removing input channels predicts the real Conv output error."""
    rng = np.random.default_rng(4)
    c, out_ch, kernel, pads, strides = 4, 6, (3, 3), (1, 1, 1, 1), (1, 1)
    x = rng.standard_normal((3, c, 8, 8))
    w = rng.standard_normal((out_ch, c, *kernel))
    acc = HessianAccumulator(c * 9)
    for xb in x:  # one image at a time, as calibration batches would come
        acc.add_batch(im2col(xb[None], kernel, strides=strides, pads=pads))
    groups = conv_channel_columns(c, kernel)
    path = greedy_prune(conv_weight_2d(w), acc.hessian(damp=0.0), groups, levels=[0, 1, 2])
    y = _torch_conv(x, w, strides, pads, (1, 1), 1)
    n_positions = x.shape[0] * 8 * 8
    for i, level in enumerate(path.levels):
        w_new = path.weight(level).reshape(w.shape)
        y_new = _torch_conv(x, w_new, strides, pads, (1, 1), 1)
        for ch in path.removed_groups(level):
            assert np.all(w_new[:, ch] == 0.0)  # removed input channels are whole zero slices
        mse = np.sum((y - y_new) ** 2) / n_positions  # per-sample mean: the accumulator's units
        assert path.errors[i] == pytest.approx(mse, rel=1e-8, abs=1e-12)
