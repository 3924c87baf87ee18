"""Data-free moment synthesis (spa_compiler.criteria.moments) against Monte Carlo and quadrature.

Monte-Carlo tolerance: with N = 1e6 samples the sample mean of f(x)^k has standard error
SE = std(f(x)^k) / sqrt(N); we accept |analytic - MC| <= 5 SE + 5e-6 (1 + |MC|). Under the CLT a
correct formula fails the 5 SE bound with probability < 6e-7 per comparison, and with a fixed seed
the test is deterministic. The small absolute slack covers events rarer than ~1/N, which the
sample cannot see at all (e.g. a clip bound 5 sigma away: SE is 0 while the exact mean differs by
~1e-8). A wrong formula (a missed term, a sigma for a variance) is off by many SE. The closed
forms are also checked against the deterministic quadrature to 1e-9 relative, which Monte Carlo
cannot resolve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spa_compiler.criteria.hessian import HessianAccumulator, im2col
from spa_compiler.criteria.moments import (
    ONNX_ACTIVATIONS,
    ChannelMoments,
    activation_moments,
    batchnorm_gaussian,
    layernorm_gaussian,
    quadrature_moments,
)

N_MC = 1_000_000
MU = np.array([-2.0, -0.3, 0.0, 0.7, 3.0, 1.5, 5.0])
SIGMA = np.array([0.2, 1.0, 2.5, 8.0, 1.0, 0.05, 2.0])


def _t(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: fn(torch.from_numpy(np.ascontiguousarray(x))).numpy()


# Reference activations from torch (an implementation independent of ours).
TORCH_REF: dict[str, tuple[Callable[[np.ndarray], np.ndarray], dict[str, float]]] = {
    "identity": (lambda x: x, {}),
    "relu": (_t(torch.relu), {}),
    "relu6": (_t(F.relu6), {}),
    "clip": (_t(lambda x: torch.clamp(x, -1.0, 2.5)), {"min_value": -1.0, "max_value": 2.5}),
    "leaky_relu": (_t(lambda x: F.leaky_relu(x, 0.1)), {"alpha": 0.1}),
    "gelu": (_t(F.gelu), {}),
    "gelu_tanh": (_t(lambda x: F.gelu(x, approximate="tanh")), {}),
    "silu": (_t(F.silu), {}),
    "sigmoid": (_t(torch.sigmoid), {}),
    "tanh": (_t(torch.tanh), {}),
    "hardswish": (_t(F.hardswish), {}),
    "hardsigmoid": (_t(F.hardsigmoid), {"alpha": 1.0 / 6.0, "beta": 0.5}),
}


def _assert_mc(value: float, samples: np.ndarray, what: str) -> None:
    se = float(samples.std()) / math.sqrt(samples.size)
    mc = float(samples.mean())
    assert abs(value - mc) <= 5.0 * se + 5e-6 * (1.0 + abs(mc)), (
        f"{what}: analytic {value} vs MC {mc} (SE {se})"
    )


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return np.random.default_rng(1234).standard_normal(N_MC)


@pytest.mark.parametrize("name", sorted(TORCH_REF))
def test_activation_moments_match_monte_carlo(name: str, z: np.ndarray) -> None:
    fn, kwargs = TORCH_REF[name]
    mom = activation_moments(MU, SIGMA, name, **kwargs)  # type: ignore[arg-type]
    assert mom.mean.shape == mom.second.shape == MU.shape
    for c in range(MU.size):
        y = fn(MU[c] + SIGMA[c] * z)
        _assert_mc(mom.mean[c], y, f"{name} E[f] mu={MU[c]} sigma={SIGMA[c]}")
        _assert_mc(mom.second[c], y * y, f"{name} E[f^2] mu={MU[c]} sigma={SIGMA[c]}")
    np.testing.assert_allclose(mom.var, mom.second - mom.mean**2, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "relu6", "clip", "leaky_relu", "gelu"])
def test_closed_forms_match_quadrature(name: str) -> None:
    fn, kwargs = TORCH_REF[name]
    mu = np.linspace(-4.0, 4.0, 17)
    sigma = np.geomspace(0.01, 20.0, 17)
    mom = activation_moments(mu, sigma, name, **kwargs)  # type: ignore[arg-type]
    bps = {"relu6": (0.0, 6.0), "clip": (-1.0, 2.5)}.get(name, (0.0,))
    e1, e2 = quadrature_moments(fn, mu, sigma, bps)
    np.testing.assert_allclose(mom.mean, e1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mom.second, e2, rtol=1e-9, atol=1e-12)


def test_extreme_tails_stay_finite_and_accurate() -> None:
    mu = np.array([-40.0, 40.0, -8.0, 8.0])
    sigma = np.array([1.0, 1.0, 0.5, 0.5])
    relu = activation_moments(mu, sigma, "relu")
    np.testing.assert_allclose(relu.mean, [0.0, 40.0, 0.0, 8.0], atol=1e-12)
    np.testing.assert_allclose(relu.second, [0.0, 1601.0, 0.0, 64.25], rtol=1e-12, atol=1e-12)
    gelu = activation_moments(mu, sigma, "gelu")
    assert np.all(np.isfinite(gelu.mean)) and np.all(np.isfinite(gelu.second))
    np.testing.assert_allclose(gelu.mean[[1, 3]], relu.mean[[1, 3]], rtol=1e-9)


def test_zero_sigma_is_a_point_mass() -> None:
    mu = np.array([-1.0, 0.5, 7.0])
    for name, (fn, kwargs) in TORCH_REF.items():
        mom = activation_moments(mu, np.zeros(3), name, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_allclose(mom.mean, fn(mu), rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(mom.second, fn(mu) ** 2, rtol=1e-12, atol=1e-12, err_msg=name)


def test_callable_activation_uses_quadrature() -> None:
    mom = activation_moments(MU, SIGMA, lambda x: x**2)
    np.testing.assert_allclose(mom.mean, MU**2 + SIGMA**2, rtol=1e-10)
    np.testing.assert_allclose(mom.second, MU**4 + 6 * MU**2 * SIGMA**2 + 3 * SIGMA**4, rtol=1e-9)


def test_onnx_activation_names_are_supported() -> None:
    for op, name in ONNX_ACTIVATIONS.items():
        mom = activation_moments(MU, SIGMA, name)
        assert np.all(np.isfinite(mom.second)), op


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        activation_moments(MU, SIGMA, "swish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma"):
        activation_moments(MU, -SIGMA, "relu")
    with pytest.raises(ValueError, match="reversed"):
        activation_moments(MU, SIGMA, "clip", min_value=3.0, max_value=1.0)


# ------------------------------------------------------------------------- norm Gaussians


def test_batchnorm_gaussian_and_second_moment_matrix_match_monte_carlo() -> None:
    """relu(BN(x)) for x ~ N(running stats): E[y], E[y y^T] = diag(var) + m m^T vs samples."""
    rng = np.random.default_rng(5)
    c = 4
    bn = torch.nn.BatchNorm2d(c, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 2.0]))
        bn.bias.copy_(torch.tensor([0.2, -0.5, 1.0, 0.0]))
        bn.running_mean.copy_(torch.tensor([3.0, -1.0, 0.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.01, 1.0, 0.002]))  # two comparable to eps
    mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
    n = 250_000
    x = mean[None, :, None, None] + np.sqrt(var)[None, :, None, None] * rng.standard_normal(
        (n, c, 1, 1)
    )
    with torch.no_grad():
        pre = bn(torch.from_numpy(x)).numpy().reshape(n, c)
    y = np.maximum(pre, 0.0)

    mu, sigma = batchnorm_gaussian(
        bn.weight.detach().numpy(), bn.bias.detach().numpy(), mean, var, eps=1e-3
    )
    for ch in range(c):
        _assert_mc(mu[ch], pre[:, ch], f"BN mean ch{ch}")
        _assert_mc(sigma[ch] ** 2 + mu[ch] ** 2, pre[:, ch] ** 2, f"BN E[y^2] ch{ch}")
    mom = activation_moments(mu, sigma, "relu")
    m2 = mom.second_moment_matrix()
    for i in range(c):
        for j in range(c):
            _assert_mc(m2[i, j], y[:, i] * y[:, j], f"E[y{i} y{j}]")
    h = mom.hessian(damp=0.0)
    np.testing.assert_allclose(h, 2 * m2)
    hd = mom.hessian(damp=0.1)
    np.testing.assert_allclose(hd - h, 0.1 * np.mean(np.diag(h)) * np.eye(c), atol=1e-12)


def test_layernorm_gaussian() -> None:
    """LayerNorm over many iid channels gives each channel ~ N(beta, gamma^2) (up to O(1/D))."""
    rng = np.random.default_rng(6)
    d, n = 256, 20_000
    gamma = rng.uniform(0.5, 2.0, d)
    beta = rng.normal(0.0, 1.0, d)
    x = rng.normal(0.3, 2.0, (n, d))
    y = F.layer_norm(
        torch.from_numpy(x), (d,), torch.from_numpy(gamma), torch.from_numpy(beta)
    ).numpy()
    mu, sigma = layernorm_gaussian(gamma, beta)
    np.testing.assert_array_equal(mu, beta)
    np.testing.assert_array_equal(sigma, gamma)
    # per-channel sample stats: SE of mean ~ gamma/sqrt(n) = 0.014 max, of std ~ gamma/sqrt(2n)
    assert np.max(np.abs(y.mean(axis=0) - mu) / sigma) < 5.0 / math.sqrt(n) + 1e-3
    assert np.max(np.abs(y.std(axis=0) / sigma - 1.0)) < 5.0 / math.sqrt(2 * n) + 2.0 / d
    m0, s0 = layernorm_gaussian(gamma)  # RMSNorm: no bias
    np.testing.assert_array_equal(m0, np.zeros(d))


def test_conv_repeat_matches_im2col_of_independent_pixels() -> None:
    """repeat=K gives E[cols^T cols / n] of im2col over spatially independent channel values."""
    rng = np.random.default_rng(7)
    mu, sigma = np.array([0.5, -0.2, 1.0]), np.array([1.0, 0.6, 0.3])
    mom = activation_moments(mu, sigma, "relu6")
    expect = mom.second_moment_matrix(repeat=4)
    assert expect.shape == (12, 12)
    # structure: kron(m m^T, ones) + diag(repeat(var))
    np.testing.assert_allclose(
        expect,
        np.kron(np.outer(mom.mean, mom.mean), np.ones((4, 4))) + np.diag(np.repeat(mom.var, 4)),
    )
    x = np.clip(
        mu[None, :, None, None]
        + sigma[None, :, None, None] * rng.standard_normal((200, 3, 40, 40)),
        0.0,
        6.0,
    )
    acc = HessianAccumulator(12)
    for xb in np.array_split(x, 10):
        acc.add_batch(im2col(xb, (2, 2)))
    got = acc.second_moment()
    assert np.max(np.abs(got - expect)) < 6e-3  # ~300k positions; SE of each entry <= 1e-3


def test_channel_moments_var_is_clipped() -> None:
    mom = ChannelMoments(np.array([1.0]), np.array([1.0 - 1e-17]))
    assert mom.var[0] == 0.0
