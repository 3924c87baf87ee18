"""Where a consumer layer's input second moments come from when there is no data (OBSPA).

OBSPA (docs/algorithms.md §3) needs, for every consumer of a group, ``H = 2 E[x x^T]`` over the
consumer's input columns. Without calibration data there are two sources:

* ``batchnorm`` (closed form, `batchnorm_moments`): the consumer's input is produced by a
  BatchNormalization, optionally followed by one elementwise activation::

      BatchNormalization ──▶ [Relu | Clip | LeakyRelu | Sigmoid | Tanh | HardSigmoid | HardSwish |
                              Gelu | Mul(y, Sigmoid(y)) (SiLU) | nothing] ──▶ consumer

  On the data the network was trained on, BN's output channel ``c`` has mean ``beta_c`` and
  standard deviation ``|gamma_c|`` (more exactly ``|gamma_c| sqrt(var_c / (var_c + eps))``, see
  `spa_compiler.criteria.moments.batchnorm_gaussian`); it is modelled as ``N(beta_c, sigma_c^2)`` and pushed
  through the activation with `spa_compiler.criteria.moments.activation_moments` (closed form for ReLU,
  Clip/ReLU6, LeakyReLU, exact GELU; quadrature otherwise). Channels are taken as independent:
  ``E[x x^T] = m m^T + diag(v)``.
* ``random-input response``: the model is run on random inputs and the consumer's input is
  captured (`spa_compiler.criteria.collect_hessians`); used where no BN chain is found.

Conv consumers see im2col columns ``(c, kernel_pos)`` (`spa_compiler.criteria.hessian.im2col`). Every
kernel position of channel ``c`` gets the channel's moments: the same mean, ``E[x_c^2]`` on the
diagonal, ``m_c m_c'`` between positions of different or equal channels. Two approximations
follow: the covariance between different positions of one channel is taken as 0 (neighbouring
pixels are correlated in real feature maps), and the zeros that padding puts at the borders are
ignored (a share ~ (k-1)/size of the positions of a padded map).

Declining is not failing: `batchnorm_moments` returns ``(None, reason)`` when the chain is not one
it can model exactly (a non-constant BN parameter, an activation it does not know, a MatMul whose
columns are not BN's channel axis, a channel count that does not match the columns), and the
caller falls back to the random-input response.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.criteria.moments import ChannelMoments, activation_moments, batchnorm_gaussian
from spa_compiler.ir import constant_array

__all__ = [
    "BATCHNORM",
    "CALIBRATION",
    "RESPONSE",
    "SourcedMoments",
    "batchnorm_moments",
]

#: Moment source names, as the report writes them.
BATCHNORM = "batchnorm"
RESPONSE = "random-input response"
CALIBRATION = "calibration"

#: Unary ONNX activations modelled after a BN: op -> `activation_moments` name.
_UNARY = {
    "Identity": "identity",
    "Relu": "relu",
    "Clip": "clip",
    "LeakyRelu": "leaky_relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish",
    "Gelu": "gelu",
}


@dataclasses.dataclass(frozen=True, eq=False)
class SourcedMoments:
    """Closed-form per-channel moments of one tensor and where they came from.

    Attributes:
        moments: Per channel ``E[x_c]`` and ``E[x_c^2]``, shape ``(C,)``.
        source: `BATCHNORM`.
        nodes: The producing chain, BN first (node names).
        activation: The activation modelled (``identity`` when BN feeds the consumer directly).
    """

    moments: ChannelMoments
    source: str
    nodes: tuple[str, ...]
    activation: str

    def hessian(self, n_columns: int, damp: float = 0.01) -> npt.NDArray[np.float64]:
        """The dampened Hessian ``2 E[x x^T] + damp * mean(diag) * I`` over `n_columns` columns.

        `n_columns` is ``C`` (MatMul/Gemm) or ``C * prod(kernel)`` (Conv im2col, channel-major);
        see the module docstring for the per-position approximation.

        Raises:
            ValueError: `n_columns` is not a multiple of the channel count.
        """
        c = self.moments.mean.size
        if n_columns % c:
            raise ValueError(f"{n_columns} columns do not split into {c} channels")
        return self.moments.hessian(damp=damp, repeat=n_columns // c)


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _batchnorm_of(t: gs.Tensor) -> gs.Node | None:
    node = _producer(t)
    if node is None or node.op != "BatchNormalization" or node.outputs[0] is not t:
        return None
    return node


def _scalar(node: gs.Node, index: int) -> tuple[float | None, bool]:
    """(value, ok) of an optional scalar constant input; (None, True) when absent."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None, True
    arr = constant_array(node.inputs[index])
    if arr is None or arr.size != 1:
        return None, False
    return float(arr.reshape(())), True


def _activation(node: gs.Node) -> tuple[str, dict[str, Any], gs.Tensor] | str:
    """(activation name, kwargs, pre-activation tensor) of an elementwise node, or a reason."""
    if node.op == "Mul" and len(node.inputs) == 2:  # SiLU: y * Sigmoid(y)
        a, b = node.inputs
        for y, s in ((a, b), (b, a)):
            sig = _producer(s)
            if sig is not None and sig.op == "Sigmoid" and sig.inputs[0] is y:
                return "silu", {}, y
        return "mul-not-silu"
    name = _UNARY.get(node.op)
    if name is None:
        return f"activation:{node.op}"
    kwargs: dict[str, Any] = {}
    if node.op == "Clip":
        lo, ok_lo = _scalar(node, 1)
        hi, ok_hi = _scalar(node, 2)
        if not (ok_lo and ok_hi):
            return "clip-bounds-not-constant"
        lo = node.attrs.get("min", -math.inf) if lo is None else lo  # opset < 11: attributes
        hi = node.attrs.get("max", math.inf) if hi is None else hi
        kwargs = {"min_value": float(lo), "max_value": float(hi)}
        if kwargs == {"min_value": 0.0, "max_value": 6.0}:
            name, kwargs = "relu6", {}
    elif node.op == "LeakyRelu":
        kwargs = {"alpha": float(node.attrs.get("alpha", 0.01))}
    elif node.op == "HardSigmoid":
        kwargs = {"alpha": float(node.attrs.get("alpha", 0.2)), "beta": float(node.attrs.get("beta", 0.5))}
    elif node.op == "Gelu" and node.attrs.get("approximate", "none") in ("tanh", b"tanh"):
        name = "gelu_tanh"
    return name, kwargs, node.inputs[0]


def _rank(*tensors: gs.Tensor) -> int | None:
    for t in tensors:
        if t.shape is not None:
            return len(t.shape)
    return None


def batchnorm_moments(
    tensor: gs.Tensor, n_columns: int, *, conv: bool
) -> tuple[SourcedMoments | None, str | None]:
    """Closed-form channel moments of `tensor` if a BatchNormalization (+ activation) produces it.

    Args:
        tensor: A consumer's input activation (the chain is followed through its producers).
        n_columns: The consumer's input columns: ``C`` for MatMul/Gemm, ``C * prod(kernel)`` for
            a Conv (``group=1``).
        conv: Whether the consumer is a Conv (channels on axis 1, read through im2col). For MatMul
            and Gemm the columns are the last axis, which is BN's channel axis only for rank 2.

    Returns:
        ``(SourcedMoments, None)``, or ``(None, reason)`` when there is no BN chain it can model.
    """
    chain: list[str] = []
    activation, kwargs, pre = "identity", {}, tensor
    bn = _batchnorm_of(tensor)
    if bn is None:
        node = _producer(tensor)
        if node is None:
            return None, "no-producer"
        found = _activation(node)
        if isinstance(found, str):
            return None, found
        activation, kwargs, pre = found
        bn = _batchnorm_of(pre)
        if bn is None:
            return None, "no-batchnorm"
        chain.append(node.name)
    if not conv and _rank(tensor, pre, bn.inputs[0]) != 2:
        return None, "batchnorm-axis-not-columns"
    params = [constant_array(bn.inputs[i]) if i < len(bn.inputs) else None for i in range(1, 5)]
    if any(p is None for p in params):
        return None, "batchnorm-params-not-constant"
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
    if not scale.size == bias.size == mean.size == var.size:
        return None, "batchnorm-params-sizes"
    if n_columns % scale.size if conv else n_columns != scale.size:
        return None, "channels-do-not-match-columns"
    mu, sigma = batchnorm_gaussian(scale, bias, mean, var, eps=float(bn.attrs.get("epsilon", 1e-5)))
    if int(bn.attrs.get("training_mode", 0)):
        sigma = np.abs(scale)  # normalized by the batch's own statistics: unit variance exactly
    try:
        mom = activation_moments(mu, sigma, activation, **kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        return None, f"moments:{e}"
    return SourcedMoments(mom, BATCHNORM, (bn.name, *chain), activation), None
