"""`ZooModel`: the description of one tiny model, and the NumPy input makers it uses.

This module does not import torch: listing the zoo, reading its shapes or making sample inputs
works without the `zoo` extra. Only `ZooModel.make_module` imports the torch definition, lazily,
from the string `factory` ("spa_compiler.models_zoo.tiny_resnet:TinyResNet").

Shapes are written with named dims, e.g. `input_ids: (batch, sequence)`; `input_shapes` gives the
default size of every dim (the golden I/O uses them), `dynamic_axes` names the symbolic ones in the
TorchScript exporter's format `{tensor: {axis: dim_name}}`, inputs and outputs alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]


class InputsFn(Protocol):
    """Makes one feed `{input_name: array}` for the given shapes, drawing from `rng` only."""

    def __call__(
        self, rng: np.random.Generator, shapes: Mapping[str, Shape]
    ) -> dict[str, npt.NDArray[np.generic]]: ...


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One tiny model of the zoo: what it is, its I/O, and how to build it.

    Attributes:
        name: Registry key, e.g. "tiny_resnet"; also the cache folder prefix.
        description: One sentence on the architecture.
        coupling: One line naming the channel coupling it exercises (README table).
        input_names: Graph input names, in the order of `forward`'s positional arguments.
        output_names: Graph output names, in the order `forward` returns them.
        input_shapes: Default shape of every input; the golden I/O and shape hints use it.
        dynamic_axes: `{tensor_name: {axis: dim_name}}` for inputs and outputs; empty for a
            model exported with fixed shapes.
        dim_max: Upper bound of a symbolic dim where the model has one (e.g. the position
            table's length bounds "sequence"); the dynamo exporter needs it.
        factory: "module:callable" of the torch constructor, called as `callable()`.
        inputs_fn: NumPy input maker (see `InputsFn`).
        notes: Exporter notes for the README (fixed shapes, known quirks); empty if none.
    """

    name: str
    description: str
    coupling: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: Mapping[str, Shape]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    factory: str
    inputs_fn: InputsFn
    dim_max: Mapping[str, int] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        missing = set(self.input_names) - set(self.input_shapes)
        if missing:
            raise ValueError(f"zoo model {self.name!r}: no default shape for inputs {missing}")
        unknown = set(self.dynamic_axes) - set(self.input_names) - set(self.output_names)
        if unknown:
            raise ValueError(f"zoo model {self.name!r}: dynamic_axes names unknown {unknown}")
        unbounded = set(self.dim_max) - set(self.dim_values())
        if unbounded:
            raise ValueError(f"zoo model {self.name!r}: dim_max names unknown dims {unbounded}")

    def __hash__(self) -> int:
        # The Mapping fields are dicts; names are unique in the registry.
        return hash(self.name)

    @property
    def module_name(self) -> str:
        """Dotted name of the Python module that holds the torch definition."""
        return self.factory.partition(":")[0]

    def dim_values(self) -> dict[str, int]:
        """Default size of each symbolic dim, e.g. `{"batch": 2, "sequence": 16}`."""
        values: dict[str, int] = {}
        for tensor, axes in self.dynamic_axes.items():
            if tensor not in self.input_shapes:
                continue
            for axis, dim in axes.items():
                values.setdefault(dim, self.input_shapes[tensor][axis])
        return values

    def shapes_for(self, dims: Mapping[str, int]) -> dict[str, Shape]:
        """Input shapes with some symbolic dims set, e.g. `shapes_for({"batch": 1})`.

        Dims not named in `dims` keep their default size; naming a dim the model does not
        have raises ValueError (a fixed-shape model has none).
        """
        unknown = set(dims) - set(self.dim_values())
        if unknown:
            raise ValueError(
                f"zoo model {self.name!r} has no symbolic dims {sorted(unknown)}; "
                f"it has {sorted(self.dim_values()) or 'none (fixed shapes)'}"
            )
        shapes = {}
        for name in self.input_names:
            shape = list(self.input_shapes[name])
            for axis, dim in self.dynamic_axes.get(name, {}).items():
                shape[axis] = dims.get(dim, shape[axis])
            shapes[name] = tuple(shape)
        return shapes

    def make_module(self, seed: int = 0) -> torch.nn.Module:
        """Build the torch module with weights drawn from `seed`, in eval mode.

        The global torch RNG is forked, so the caller's random state is left as it was.
        Norm layers get non-trivial affine parameters and running statistics, so that folding
        or pruning them is tested against something other than the identity.
        """
        import torch

        module_name, _, attr = self.factory.partition(":")
        ctor = getattr(importlib.import_module(module_name), attr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = ctor()
            _randomize_norms(module)
        return module.eval()

    def make_inputs(
        self, rng: np.random.Generator, shapes: Mapping[str, Shape] | None = None
    ) -> dict[str, npt.NDArray[np.generic]]:
        """One feed with sensible values; `shapes` overrides `input_shapes` per input."""
        merged = {**self.input_shapes, **(shapes or {})}
        feeds = self.inputs_fn(rng, merged)
        return {name: feeds[name] for name in self.input_names}


def _randomize_norms(module: torch.nn.Module) -> None:
    """Give BatchNorm / LayerNorm / RMSNorm-like `weight` (and `bias`) non-default values.

    weight ~ 1 + 0.1·N(0,1), bias ~ 0.1·N(0,1); BN running_mean ~ 0.1·N(0,1) and
    running_var ~ U(0.5, 1.5). Draws from the (already seeded) global torch RNG.
    """
    import torch

    with torch.no_grad():
        for sub in module.modules():
            is_bn = isinstance(sub, torch.nn.modules.batchnorm._BatchNorm)
            is_norm = (
                is_bn or isinstance(sub, torch.nn.LayerNorm) or getattr(sub, "is_rms_norm", False)
            )
            if not is_norm:
                continue
            weight = getattr(sub, "weight", None)
            if isinstance(weight, torch.Tensor):
                weight.copy_(1.0 + 0.1 * torch.randn_like(weight))
            bias = getattr(sub, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(0.1 * torch.randn_like(bias))
            mean, var = getattr(sub, "running_mean", None), getattr(sub, "running_var", None)
            if is_bn and isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(0.1 * torch.randn_like(mean))
                var.copy_(0.5 + torch.rand_like(var))


def image_inputs(name: str) -> InputsFn:
    """Input maker for one float32 image input drawn from N(0, 1)."""

    def make(
        rng: np.random.Generator, shapes: Mapping[str, Shape]
    ) -> dict[str, npt.NDArray[np.generic]]:
        return {name: rng.standard_normal(shapes[name], dtype=np.float32)}

    return make


def token_inputs(vocab_size: int, *, mask_name: str | None = None) -> InputsFn:
    """Input maker for int64 `input_ids` in [0, vocab_size) and, optionally, an attention mask.

    The mask is int64 ones with `2·(row+1)` zeros at the end of each row (padding), capped at
    half the sequence, so every row keeps at least half of its tokens visible.
    """

    def make(
        rng: np.random.Generator, shapes: Mapping[str, Shape]
    ) -> dict[str, npt.NDArray[np.generic]]:
        batch, seq = shapes["input_ids"]
        feeds: dict[str, npt.NDArray[np.generic]] = {
            "input_ids": rng.integers(0, vocab_size, size=(batch, seq), dtype=np.int64)
        }
        if mask_name is not None:
            mask = np.ones((batch, seq), dtype=np.int64)
            for row in range(batch):
                pad = min(2 * (row + 1), seq // 2)
                if pad:
                    mask[row, seq - pad :] = 0
            feeds[mask_name] = mask
        return feeds

    return make
