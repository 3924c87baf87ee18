"""Analytic latency model: a roofline per node from MACs and bytes moved, plus a per-node overhead.

    node time = max(macs / macs_per_s, bytes / bytes_per_s) + op_overhead

This is a fallback for when the target cannot be measured (CI, no GPU). Its numbers are labelled
"analytic" wherever they go (reports, latency tables). It knows nothing of kernel selection, fusion
or tile quantization, so it cannot tell which widths a GPU likes: measurements on the H200 showed
uniform pruning turning between -11% and 62% of a MAC reduction into latency on the H200, where
a roofline predicts close to 100% for compute-bound layers. Use it to test the search plumbing and
to rank options roughly, never to claim a speed-up.

Presets (all constants are achieved rates, not datasheet peaks, and rough):

* `cpu-generic`: fp32 on one x86 core with AVX2/FMA under ONNX Runtime CPU (40 GMAC/s, 20 GB/s,
  2 us per node); on this project's CI machine, single-threaded, analytic/measured was 0.78 to 1.6
  on 7 of the 8 zoo models and 2.6 on tiny_shufflenet (many small reshapes and shuffles). Calibrate
  (`calibrate`) with one dense measurement on the machine at hand.
* `h200-fp16`: dense fp16 GEMM at about 600 TFLOP/s (measured at 521 to 695 on the H200 on
  large shapes) = 3e14 MAC/s; HBM3e at 4.0 TB/s achieved (4.8 nominal); 8 us per executed node
  (ONNX Runtime CUDA launch and dispatch).
* `h200-fp32`: fp32 through ONNX Runtime CUDA, 1e14 MAC/s (TF32 tensor-core paths where cuBLAS
  uses them), same bandwidth, 4-byte floats.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from spa_compiler.errors import UsageError
from spa_compiler.ir import ModelIR
from spa_compiler.latency.provider import Feeds, Timing
from spa_compiler.stats import custom_cost, node_macs

#: Nodes that do no work at run time (or are folded away by every runtime we target).
FREE_OPS = frozenset({"Constant", "Identity", "Shape", "Size", "Dropout"})


@dataclasses.dataclass(frozen=True)
class AnalyticDevice:
    """Roofline constants of one device and precision.

    Attributes:
        name: Preset name (appears in tables as the device).
        precision: "fp32" or "fp16": floating-point tensors count this many bytes per element.
        macs_per_s: Achieved multiply-accumulates per second on large dense GEMM/conv.
        bytes_per_s: Achieved memory bandwidth, bytes per second.
        op_overhead_ms: Fixed cost per executed node (launch, dispatch), milliseconds.
        source: Where the constants come from (one line).
    """

    name: str
    precision: str
    macs_per_s: float
    bytes_per_s: float
    op_overhead_ms: float
    source: str = ""

    @property
    def float_bytes(self) -> int:
        return 2 if self.precision in ("fp16", "bf16") else 4

    def estimate_ms(self, macs: float, bytes_moved: float, *, ops: int = 0) -> float:
        """Roofline time of `macs` MACs moving `bytes_moved` bytes, plus `ops` node overheads."""
        if macs < 0 or bytes_moved < 0 or ops < 0:
            raise ValueError(f"negative work: macs={macs}, bytes={bytes_moved}, ops={ops}")
        return (
            max(macs / self.macs_per_s, bytes_moved / self.bytes_per_s) * 1e3
            + ops * self.op_overhead_ms
        )


PRESETS: dict[str, AnalyticDevice] = {
    "cpu-generic": AnalyticDevice(
        "cpu-generic",
        "fp32",
        macs_per_s=4.0e10,
        bytes_per_s=2.0e10,
        op_overhead_ms=0.002,
        source="one x86 core with AVX2/FMA, fp32, ORT CPU; calibrate with one dense measurement",
    ),
    "h200-fp16": AnalyticDevice(
        "h200-fp16",
        "fp16",
        macs_per_s=3.0e14,
        bytes_per_s=4.0e12,
        op_overhead_ms=0.008,
        source="measured on the H200 (docs/algorithms.md §7): dense fp16 GEMM 521-695 TFLOP/s; HBM3e 4.0 TB/s",
    ),
    "h200-fp32": AnalyticDevice(
        "h200-fp32",
        "fp32",
        macs_per_s=1.0e14,
        bytes_per_s=4.0e12,
        op_overhead_ms=0.008,
        source="H200 fp32 via ONNX Runtime CUDA (TF32 GEMM paths), rough",
    ),
}


def get_device(name: str) -> AnalyticDevice:
    """A preset by name; UsageError listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown analytic device {name!r}", hint=f"use one of {', '.join(PRESETS)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """One node's analytic cost; `macs`/`bytes_moved` are None for unknown shapes (counted as 0)."""

    name: str
    op_type: str
    macs: int | None
    bytes_moved: int | None
    ms: float


@dataclasses.dataclass(frozen=True)
class AnalyticEstimate:
    """A whole model's analytic latency (kind "analytic")."""

    total_ms: float
    nodes: tuple[NodeCost, ...]
    unknown_nodes: int
    device: AnalyticDevice
    kind: str = "analytic"

    @property
    def macs(self) -> int:
        return sum(n.macs or 0 for n in self.nodes)

    @property
    def bytes_moved(self) -> int:
        return sum(n.bytes_moved or 0 for n in self.nodes)

    @property
    def executed_nodes(self) -> int:
        return sum(1 for n in self.nodes if n.ms > 0)


def _load(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model), load_external_data=False)
    return model.to_proto(weights=False)  # ModelIR (the estimate reads dims, not values)


def _tensor_info(proto: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    """name -> (shape, elem_type) for every tensor shape inference could type."""
    g = proto.graph
    out: dict[str, tuple[list[int | None], int]] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = (
                [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
                t.elem_type,
            )
    for init in g.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _infer(
    proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
) -> onnx.ModelProto:
    from spa_compiler.protos import stripped_large_tensors

    proto = onnx.ModelProto.FromString(proto.SerializeToString()) if input_shapes else proto
    if input_shapes:
        names = {vi.name for vi in proto.graph.input}
        unknown = sorted(set(input_shapes) - names)
        if unknown:
            raise UsageError(f"input shapes name {unknown}, which are not model inputs")
        for vi in proto.graph.input:
            if vi.name in input_shapes:
                dims = vi.type.tensor_type.shape.dim
                del dims[:]
                for v in input_shapes[vi.name]:
                    dims.add().dim_value = int(v)
    with stripped_large_tensors(proto) as small:
        try:
            return onnx.shape_inference.infer_shapes(small, data_prop=True)
        except Exception:  # best effort: unknown shapes are counted, not fatal
            return small


def _elem_bytes(elem_type: int, float_bytes: int) -> int:
    if elem_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    ):
        return float_bytes
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 4


def node_bytes(
    node: onnx.NodeProto, info: Mapping[str, tuple[list[int | None], int]], float_bytes: int
) -> int | None:
    """Bytes a node reads and writes (every input and output once); None if a shape is unknown."""
    custom = custom_cost(node)
    if custom is not None:
        return custom[1](node, {k: v[0] for k, v in info.items()}, float_bytes)  # type: ignore[no-any-return]
    total = 0
    for name in list(node.input) + list(node.output):
        if not name:
            continue
        if name not in info:
            return None
        shape, et = info[name]
        if any(d is None or d < 0 for d in shape):
            return None
        total += math.prod(d for d in shape if d is not None) * _elem_bytes(et, float_bytes)
    return total


def estimate_model(
    model: Any,
    device: AnalyticDevice | str,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> AnalyticEstimate:
    """Analytic latency of a whole model (ModelProto, ModelIR or path) on `device`.

    Nodes in FREE_OPS, and nodes whose inputs are all constant (folded by the runtime), cost
    nothing. Every other node costs its roofline time plus the device's per-node overhead. Nodes
    with unknown shapes cost the overhead only and are counted in `unknown_nodes`.
    """
    dev = get_device(device) if isinstance(device, str) else device
    proto = _infer(_load(model), input_shapes)
    info = _tensor_info(proto)
    shapes = {k: v[0] for k, v in info.items()}
    constant = {t.name for t in proto.graph.initializer}
    nodes: list[NodeCost] = []
    unknown = 0
    for node in proto.graph.node:
        ins = [i for i in node.input if i]
        folded = bool(ins) and all(i in constant for i in ins)
        static_shape = (
            node.op_type in ("Shape", "Size")
            and ins[0] in info
            and all(d is not None for d in info[ins[0]][0])
        )
        if folded or static_shape:
            constant.update(node.output)
        if folded or node.op_type in FREE_OPS:
            nodes.append(NodeCost(node.name, node.op_type, 0, 0, 0.0))
            continue
        macs = (
            node_macs(node, shapes)
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            else 0
        )
        nbytes = node_bytes(node, info, dev.float_bytes)
        if macs is None or nbytes is None:
            unknown += 1
        ms = dev.estimate_ms(macs or 0, nbytes or 0, ops=1)
        nodes.append(NodeCost(node.name, node.op_type, macs, nbytes, ms))
    return AnalyticEstimate(math.fsum(n.ms for n in nodes), tuple(nodes), unknown, dev)


def calibrate(estimate: AnalyticEstimate, measured_ms: float) -> AnalyticDevice:
    """A copy of the estimate's device whose rates reproduce `measured_ms` for that model.

    The roofline part is scaled (both rates by the same factor) so that roofline + overheads equals
    the measurement; if the overheads alone exceed it, the overhead is scaled instead.
    """
    if not (math.isfinite(measured_ms) and measured_ms > 0):
        raise ValueError(f"measured_ms must be positive, got {measured_ms}")
    dev = estimate.device
    overhead = estimate.executed_nodes * dev.op_overhead_ms
    roof = estimate.total_ms - overhead
    if roof > 0 and measured_ms > overhead:
        s = (measured_ms - overhead) / roof
        return dataclasses.replace(
            dev,
            name=f"{dev.name} (calibrated)",
            macs_per_s=dev.macs_per_s / s,
            bytes_per_s=dev.bytes_per_s / s,
            source=f"{dev.source}; calibrated",
        )
    s = measured_ms / estimate.total_ms
    return dataclasses.replace(
        dev,
        name=f"{dev.name} (calibrated)",
        macs_per_s=dev.macs_per_s / s,
        bytes_per_s=dev.bytes_per_s / s,
        op_overhead_ms=dev.op_overhead_ms * s,
        source=f"{dev.source}; calibrated",
    )


@dataclasses.dataclass(frozen=True)
class GroupCost:
    """The work of one prunable group when dense: MACs and bytes that shrink linearly with kept
    units.

    Attributes:
        group_id: The group's id.
        n_units: Units when dense.
        unit_size: Channels per unit.
        macs: MACs the group's units account for (dense).
        bytes_moved: Bytes those units move (weights and activations, dense).
        levels: Kept-unit counts to tabulate (the dense level is always added).
    """

    group_id: str
    n_units: int
    unit_size: int
    macs: float
    bytes_moved: float
    levels: Sequence[int] = ()


def analytic_table(
    device: AnalyticDevice | str,
    groups: Iterable[GroupCost],
    *,
    total_ms: float,
    model_fingerprint: str,
    input_shapes: Mapping[str, Sequence[int]],
    model_name: str = "",
) -> Any:
    """A LatencyTable of kind "analytic": each level's time is the roofline of its share of the
    work.

    `total_ms` is the model's analytic (or measured) dense latency; the base is what the groups'
    dense contributions leave of it (at least 0).
    """
    from spa_compiler._version import __version__
    from spa_compiler.latency.table import GroupLatency, LatencyTable, LevelLatency, Provenance

    dev = get_device(device) if isinstance(device, str) else device
    table_groups = {}
    for g in groups:
        kept = sorted(set(int(k) for k in g.levels) | {g.n_units})
        if kept[0] < 0:
            raise ValueError(f"group {g.group_id}: negative kept units")
        table_groups[str(g.group_id)] = GroupLatency(
            g.n_units,
            g.unit_size,
            tuple(
                LevelLatency(
                    k,
                    k * g.unit_size,
                    dev.estimate_ms(g.macs * k / g.n_units, g.bytes_moved * k / g.n_units),
                )
                for k in kept
            ),
        )
    base = max(0.0, total_ms - math.fsum(g.dense_ms for g in table_groups.values()))
    prov = Provenance(
        device=dev.name,
        runtime="analytic",
        runtime_version=__version__,
        precision=dev.precision,
        input_shapes={k: tuple(int(d) for d in v) for k, v in input_shapes.items()},
        model_fingerprint=model_fingerprint,
        tool_version=__version__,
        model_name=model_name,
        notes=f"roofline model: {dev.source}",
    )
    return LatencyTable(
        kind="analytic", provenance=prov, dense_ms=total_ms, base_ms=base, groups=table_groups
    )


def _tool_version() -> str:
    from spa_compiler._version import __version__

    return __version__


@dataclasses.dataclass
class AnalyticProvider:
    """The roofline model of `spa_compiler.latency.analytic` (labelled analytic everywhere)."""

    device: str = "cpu-generic"
    input_shapes: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)
    kind: str = "analytic"

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        shapes = dict(self.input_shapes) or {k: tuple(v.shape) for k, v in feeds.items()}
        # the estimate reads dims, not weight values
        proto = model.to_proto(weights=False) if isinstance(model, ModelIR) else model
        est = estimate_model(proto, self.device, input_shapes=shapes)
        return Timing(float(est.total_ms), "analytic", 0)

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        return [self.time(m, feeds) for m in models]

    def provenance(self) -> dict[str, Any]:
        return {
            "device": f"analytic:{self.device}",
            "runtime": "analytic",
            # the model's version is the tool's: a table profiled with it names a real version
            "runtime_version": _tool_version(),
            "provider": None,
            "threads": None,
            "precision": "fp16" if "fp16" in self.device else "fp32",
        }
