"""Data-free second moments of layer inputs (the statistics behind OBSPA, docs/algorithms.md §3).

Without calibration data, a layer's input Hessian ``H = 2 E[x x^T]`` is synthesized from the
parameters of the normalization in front of it:

* BatchNorm ``y = gamma (x - mean) / sqrt(var + eps) + beta``: assuming the BN input follows its
  running statistics, ``x_c ~ N(mean_c, var_c)``, the output is ``y_c ~ N(beta_c, gamma_c^2 var_c /
  (var_c + eps))`` (`batchnorm_gaussian`; ``~ N(beta, gamma^2)`` unless ``var`` is comparable to
  eps).
* LayerNorm / RMSNorm with affine ``(gamma, beta)``: the normalized value has unit variance, so each
  channel is taken as ``N(beta_c, gamma_c^2)`` (`layernorm_gaussian`).

The Gaussian is then pushed through the activation that follows (`activation_moments`), giving per
channel ``m_c = E[f(y_c)]`` and ``q_c = E[f(y_c)^2]``:

* closed form: identity, ReLU, ReLU6 / Clip (truncated-normal moments), LeakyReLU, and GELU in its
  exact ``x Phi(x)`` form (the mean by Stein's lemma; the second moment through the bivariate normal
  CDF ``Phi_2(h, h; rho) = Phi(h) - 2 T(h, 1/sqrt(1 + 2 s^2))``, Owen's T by 64-point
  Gauss-Legendre);
* quadrature (no closed form exists): SiLU, GELU (tanh form), sigmoid, tanh, HardSwish,
  HardSigmoid and any numpy callable, by composite 8-point Gauss-Legendre over ``z in [-10, 10]``
  of the standard normal, with panel edges at the activation's kinks (`quadrature_moments`; ~1e-12
  relative against the closed forms, far below the Monte-Carlo noise the tests use).

Channels are assumed independent (and, for Conv, so are spatial positions), so

    E[x x^T] = diag(q - m^2) + m m^T                      (`ChannelMoments.second_moment_matrix`)

For a Conv reading those channels through a ``k_1 x ... x k_r`` kernel, the im2col columns
``(c, kernel_pos)`` give ``E = kron(m m^T, 1_{K x K}) + diag(repeat(q - m^2, K))`` (``repeat=K``);
zero padding at the borders is ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ONNX_ACTIVATIONS",
    "Activation",
    "ChannelMoments",
    "activation_moments",
    "batchnorm_gaussian",
    "layernorm_gaussian",
    "quadrature_moments",
]

FloatArray = npt.NDArray[np.float64]

Activation = Literal[
    "identity",
    "relu",
    "relu6",
    "clip",
    "leaky_relu",
    "gelu",
    "gelu_tanh",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
]

#: ONNX op_type -> activation name.
#: SiLU is exported as Mul(x, Sigmoid(x)); match that pattern before looking the op up here.
ONNX_ACTIVATIONS: dict[str, Activation] = {
    "Identity": "identity",
    "Relu": "relu",
    "Clip": "clip",
    "LeakyRelu": "leaky_relu",
    "Gelu": "gelu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSwish": "hardswish",
    "HardSigmoid": "hardsigmoid",
}

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _cdf(z: npt.ArrayLike) -> FloatArray:
    """Standard normal CDF (via math.erfc, accurate in both tails)."""
    zz = np.asarray(z, dtype=np.float64)
    return np.asarray(0.5 * _erfc(-zz / _SQRT2), dtype=np.float64)


def _pdf(z: npt.ArrayLike) -> FloatArray:
    zz = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        return _INV_SQRT_2PI * np.exp(-0.5 * zz * zz)


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelMoments:
    """Per-channel first and second moments of a layer input.

    Attributes:
        mean: ``E[x_c]``, shape ``(C,)``.
        second: ``E[x_c^2]``, shape ``(C,)``.
    """

    mean: FloatArray
    second: FloatArray

    @property
    def var(self) -> FloatArray:
        """``Var[x_c]`` (clipped at 0 against rounding)."""
        return np.clip(self.second - self.mean**2, 0.0, None)

    def second_moment_matrix(self, repeat: int = 1) -> FloatArray:
        """``E[x x^T]`` under channel independence: ``diag(var) + m m^T``.

        Args:
            repeat: Columns per channel (``prod(kernel)`` for im2col columns of a Conv,
                channel-major as in `spa_compiler.criteria.hessian.im2col`); positions are assumed
                independent too.

        Returns:
            ``(C * repeat, C * repeat)`` float64.
        """
        m = np.repeat(self.mean, repeat)
        out = np.outer(m, m)
        out[np.diag_indices_from(out)] += np.repeat(self.var, repeat)
        return out

    def hessian(self, damp: float = 0.01, repeat: int = 1) -> FloatArray:
        """Synthetic per-sample Hessian ``2 E[x x^T] + damp * mean(diag) * I``."""
        h = 2.0 * self.second_moment_matrix(repeat)
        if damp > 0:
            mean_diag = float(np.mean(np.diag(h)))
            h[np.diag_indices_from(h)] += damp * (mean_diag if mean_diag > 0 else 1.0)
        return h


# ------------------------------------------------------------------------------ input Gaussians


def batchnorm_gaussian(
    scale: npt.ArrayLike,
    bias: npt.ArrayLike,
    mean: npt.ArrayLike,
    var: npt.ArrayLike,
    eps: float = 1e-5,
) -> tuple[FloatArray, FloatArray]:
    """``(mu, sigma)`` of a BatchNorm output whose input follows the running statistics.

    Args:
        scale: ``gamma: (C,)``.
        bias: ``beta: (C,)``.
        mean: Running mean ``(C,)`` (does not affect the output distribution, kept for clarity).
        var: Running variance ``(C,)``.
        eps: The BatchNorm's epsilon.

    Returns:
        ``mu = beta``, ``sigma = |gamma| sqrt(var / (var + eps))``.
    """
    del mean
    g = np.asarray(scale, dtype=np.float64)
    v = np.clip(np.asarray(var, dtype=np.float64), 0.0, None)
    mu = np.asarray(bias, dtype=np.float64) * np.ones_like(g)
    return mu, np.abs(g) * np.sqrt(v / (v + eps))


def layernorm_gaussian(
    scale: npt.ArrayLike, bias: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray]:
    """``(mu, sigma) = (beta, |gamma|)`` of a LayerNorm/RMSNorm output (unit variance assumed)."""
    g = np.asarray(scale, dtype=np.float64)
    mu = np.zeros_like(g) if bias is None else np.asarray(bias, dtype=np.float64) * np.ones_like(g)
    return mu, np.abs(g)


# ----------------------------------------------------------------------------- closed forms


def _clip_moments(
    mu: FloatArray, s: FloatArray, lo: float, hi: float
) -> tuple[FloatArray, FloatArray]:
    """Moments of clip(x, lo, hi), x ~ N(mu, s^2), s > 0 (lo may be -inf, hi +inf)."""
    alpha = (lo - mu) / s
    beta = (hi - mu) / s
    p_lo = _cdf(alpha)  # P(x < lo)
    p_hi = _cdf(-beta)  # P(x > hi)
    # P(lo < x < hi) without cancellation in either tail
    mid = np.where(alpha > 0, _cdf(-alpha) - p_hi, _cdf(beta) - p_lo)
    pa = _pdf(alpha) if math.isfinite(lo) else np.zeros_like(mu)
    pb = _pdf(beta) if math.isfinite(hi) else np.zeros_like(mu)
    lo_v = lo if math.isfinite(lo) else 0.0
    hi_v = hi if math.isfinite(hi) else 0.0
    # truncated moments: int_lo^hi x p = mu*mid + s(pa - pb);
    # int_lo^hi x^2 p = (mu^2 + s^2) mid + s((mu + lo) pa - (mu + hi) pb)
    e1 = lo_v * p_lo + mu * mid + s * (pa - pb) + hi_v * p_hi
    e2 = (
        lo_v**2 * p_lo
        + (mu**2 + s**2) * mid
        + s * ((mu + lo_v) * pa - (mu + hi_v) * pb)
        + hi_v**2 * p_hi
    )
    return e1, e2


def _owens_t(h: FloatArray, a: FloatArray) -> FloatArray:
    """Owen's T(h, a) for 0 <= a <= 1, by 64-point Gauss-Legendre on [0, a]."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    t = 0.5 * a[..., None] * (nodes + 1.0)  # (..., 64) in [0, a]
    wts = 0.5 * a[..., None] * weights
    one_t2 = 1.0 + t * t
    f = np.exp(-0.5 * (h[..., None] ** 2) * one_t2) / one_t2
    return np.sum(wts * f, axis=-1) / (2.0 * math.pi)


def _gelu_moments(mu: FloatArray, s: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Exact moments of x Phi(x) for x ~ N(mu, s^2) (s >= 0)."""
    s2 = s * s
    r = np.sqrt(1.0 + s2)
    m = mu / r
    e1 = mu * _cdf(m) + s2 / r * _pdf(m)
    # E[Phi(x)^2] = Phi_2(m, m; rho), rho = s^2 / (1 + s^2)
    e_phi2 = _cdf(m) - 2.0 * _owens_t(m, 1.0 / np.sqrt(1.0 + 2.0 * s2))
    # phi(x) N(x; mu, s^2) = c N(x; mu', s'^2)
    c = _pdf(m) / r
    mu_p = mu / (1.0 + s2)
    s2_p = s2 / (1.0 + s2)
    r_p = np.sqrt(1.0 + s2_p)
    e_phi_pdf = c * _cdf(mu_p / r_p)  # E[Phi(x) phi(x)]
    e_x_phi_pdf = c * (mu_p * _cdf(mu_p / r_p) + s2_p / r_p * _pdf(mu_p / r_p))  # E[x Phi phi]
    # Stein twice: E[x Phi^2] = mu E[Phi^2] + 2 s^2 E[Phi phi];
    # E[x^2 Phi^2] = mu E[x Phi^2] + s^2 (E[Phi^2] + 2 E[x Phi phi])
    e_x_phi2 = mu * e_phi2 + 2.0 * s2 * e_phi_pdf
    e2 = mu * e_x_phi2 + s2 * (e_phi2 + 2.0 * e_x_phi_pdf)
    return e1, e2


# ------------------------------------------------------------------------------- quadrature


def _quadrature_nodes(
    mu: FloatArray,
    s: FloatArray,
    breakpoints: tuple[float, ...],
    panels: int = 128,
    order: int = 8,
    z_max: float = 10.0,
) -> tuple[FloatArray, FloatArray]:
    """Per-channel Gauss-Legendre nodes in z (C, N) and normalized weights, with panel edges at
    the activation's breakpoints so that kinks never fall inside a panel."""
    x, w = np.polynomial.legendre.leggauss(order)
    base = np.broadcast_to(np.linspace(-z_max, z_max, panels + 1), (*mu.shape, panels + 1))
    if breakpoints:
        bp = np.asarray(breakpoints, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            kz = (bp - mu[..., None]) / s[..., None]
        kz = np.clip(np.nan_to_num(kz, nan=-z_max), -z_max, z_max)
        edges = np.sort(np.concatenate([base, kz], axis=-1), axis=-1)
    else:
        edges = base
    half = 0.5 * (edges[..., 1:] - edges[..., :-1])
    mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
    z = (mid[..., None] + half[..., None] * x).reshape(*mu.shape, -1)
    wz = (half[..., None] * w).reshape(*mu.shape, -1) * _pdf(z)
    return z, wz / wz.sum(axis=-1, keepdims=True)


def quadrature_moments(
    f: Callable[[FloatArray], FloatArray],
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    breakpoints: tuple[float, ...] = (0.0,),
) -> tuple[FloatArray, FloatArray]:
    """``(E[f(x)], E[f(x)^2])`` for ``x ~ N(mu, sigma^2)`` per channel, numerically.

    Composite 8-point Gauss-Legendre over ``z in [-10, 10]`` (128 panels plus one per breakpoint).

    Args:
        f: Vectorized elementwise numpy function.
        mu: Means ``(C,)``.
        sigma: Standard deviations ``(C,)``, > 0.
        breakpoints: Points (in x) where f has a kink or a sharp bend; they become panel edges.

    Returns:
        Two ``(C,)`` float64 arrays.
    """
    m = np.asarray(mu, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    m, s = np.broadcast_arrays(m, s)
    if m.size == 0:
        return np.zeros(m.shape), np.zeros(m.shape)
    z, wz = _quadrature_nodes(m, s, tuple(breakpoints))
    x = m[..., None] + s[..., None] * z
    fx = np.asarray(f(x), dtype=np.float64)
    return np.sum(fx * wz, axis=-1), np.sum(fx * fx * wz, axis=-1)


def _sigmoid(x: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_NUMERIC: dict[str, Callable[[FloatArray], FloatArray]] = {
    "silu": lambda x: x * _sigmoid(x),
    "gelu_tanh": lambda x: (
        0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardswish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
}


def activation_moments(
    mu: npt.ArrayLike,
    sigma: npt.ArrayLike,
    activation: Activation | Callable[[FloatArray], FloatArray] = "identity",
    *,
    alpha: float | None = None,
    beta: float = 0.5,
    min_value: float = -math.inf,
    max_value: float = math.inf,
) -> ChannelMoments:
    """Moments of ``f(x)`` for ``x_c ~ N(mu_c, sigma_c^2)``, per channel.

    Args:
        mu: Means ``(C,)`` (or any shape, broadcast with ``sigma``).
        sigma: Standard deviations, >= 0 (0 gives the point mass ``f(mu)``).
        activation: A name (see `Activation`, `ONNX_ACTIVATIONS`) or a numpy callable (quadrature).
        alpha: LeakyReLU slope / HardSigmoid alpha (default: the ONNX defaults 0.01 / 0.2).
        beta: HardSigmoid beta (ONNX default 0.5).
        min_value: Lower bound of ``"clip"``.
        max_value: Upper bound of ``"clip"``.

    Raises:
        ValueError: Unknown activation or negative sigma.
    """
    m, s = np.broadcast_arrays(
        np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    )
    m, s = m.astype(np.float64, copy=True), s.astype(np.float64, copy=True)
    if np.any(s < 0) or not np.all(np.isfinite(s)) or not np.all(np.isfinite(m)):
        raise ValueError("sigma must be finite and >= 0, mu finite")

    fn: Callable[[FloatArray], FloatArray]
    if callable(activation):
        e1, e2 = quadrature_moments(activation, m, s)
        return ChannelMoments(e1, np.maximum(e2, e1**2))
    name = activation
    if name == "identity":
        return ChannelMoments(m, m**2 + s**2)
    if alpha is None:
        alpha = 0.2 if name == "hardsigmoid" else 0.01
    kinks: tuple[float, ...] = (0.0,)
    if name == "hardsigmoid":
        a, b = alpha, beta
        fn = lambda x: np.clip(a * x + b, 0.0, 1.0)  # noqa: E731
        kinks = (-b / a, (1.0 - b) / a) if a != 0 else ()
    elif name in _NUMERIC:
        if name == "hardswish":
            kinks = (-3.0, 0.0, 3.0)
        fn = _NUMERIC[name]
    elif name in ("relu", "relu6", "clip", "leaky_relu", "gelu"):
        fn = _closed_form_point(name, alpha, min_value, max_value)
    else:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_KNOWN)} or a callable")

    pos = s > 0
    e1 = np.empty_like(m)
    e2 = np.empty_like(m)
    point = fn(m[~pos])
    e1[~pos], e2[~pos] = point, point**2
    mp, sp = m[pos], s[pos]
    if name == "relu":
        e1[pos], e2[pos] = _clip_moments(mp, sp, 0.0, math.inf)
    elif name == "relu6":
        e1[pos], e2[pos] = _clip_moments(mp, sp, 0.0, 6.0)
    elif name == "clip":
        if min_value > max_value:
            raise ValueError(f"clip bounds reversed: {min_value} > {max_value}")
        e1[pos], e2[pos] = _clip_moments(mp, sp, min_value, max_value)
    elif name == "leaky_relu":
        p1, p2 = _clip_moments(mp, sp, 0.0, math.inf)
        n1, n2 = _clip_moments(-mp, sp, 0.0, math.inf)  # relu(-x)
        e1[pos], e2[pos] = p1 - alpha * n1, p2 + alpha**2 * n2
    elif name == "gelu":
        e1[pos], e2[pos] = _gelu_moments(mp, sp)
    else:
        e1[pos], e2[pos] = quadrature_moments(fn, mp, sp, kinks)
    return ChannelMoments(e1, np.maximum(e2, e1**2))


_KNOWN = {"identity", "relu", "relu6", "clip", "leaky_relu", "gelu", "hardsigmoid", *_NUMERIC}


def _closed_form_point(
    name: str, alpha: float, lo: float, hi: float
) -> Callable[[FloatArray], FloatArray]:
    """The activation itself, for sigma == 0 channels."""
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    if name == "relu6":
        return lambda x: np.clip(x, 0.0, 6.0)
    if name == "clip":
        return lambda x: np.clip(x, lo, hi)
    if name == "leaky_relu":
        return lambda x: np.where(x >= 0, x, alpha * x)
    return lambda x: x * _cdf(x)  # gelu
