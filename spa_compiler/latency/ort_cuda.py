"""Timing on ONNX Runtime's CUDA execution provider with io-binding, and fp32 -> fp16 model
conversion.

`measure_ort_cuda` is the "ort-cuda" counterpart of `measure.measure_ort`: inputs are copied to the
GPU once, outputs stay on the GPU, and each timed `run_with_iobinding` is synchronous (ONNX Runtime
synchronizes the provider's stream at the end of a run), so host timers measure GPU time plus the
per-run launch overhead the deployed model also pays. Medians of many runs after warm-up.

`convert_float16` rewrites a float32 model to float16 (weights, activations, Cast/Constant
attributes), keeping float32 graph inputs and outputs behind Cast nodes by default, so the same
feeds work for both precisions. Used by the fp16 timing here and by
`tensorrt.build_engine(fp16=True)` (TensorRT-RTX builds strongly typed networks only: precision
comes from the model's types)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa_compiler.errors import UsageError
from spa_compiler.ir import ModelIR
from spa_compiler.latency.provider import Feeds, SessionCache, Timing, as_proto, interleaved
from spa_compiler.latency.timing import LatencyMeasurement, measure_runner

CUDA_EP = "CUDAExecutionProvider"
GPU_INSTALL_HINT = (
    "install onnxruntime-gpu into an environment without the CPU onnxruntime package "
    "(pip install 'spa-compiler[gpu]'), with the CUDA 12/13 and cuDNN libraries on the loader path"
)

# -- float16 conversion ---------------------------------------------------------------------------

#: (op_type, input index) that must stay float32 whatever the model's precision.
FLOAT32_INPUTS: frozenset[tuple[str, int]] = frozenset({("Resize", 2), ("Upsample", 1)})
#: Ops whose `dtype` attribute names the float type they produce.
_DTYPE_ATTR_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "EyeLike",
        "Bernoulli",
        "Multinomial",
    }
)
_FP16_MAX = float(np.finfo(np.float16).max)


def _to_fp16_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    arr = numpy_helper.to_array(t)
    half = np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, name=t.name)


def _retype(vi: onnx.ValueInfoProto) -> None:
    if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == TensorProto.FLOAT:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Replace `old` by `new` in every node input, subgraphs included (outer-scope references)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_uses(a.g, old, new)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _rename_uses(sub, old, new)


def _convert_node_attrs(node: onnx.NodeProto, keep32: set[str]) -> None:
    for a in node.attribute:
        if node.op_type in ("Cast", "CastLike") and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif node.op_type in _DTYPE_ATTR_OPS and a.name == "dtype" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
            a.t.CopyFrom(_to_fp16_tensor(a.t))
        elif a.type == onnx.AttributeProto.GRAPH:
            _convert_graph(a.g, keep32, io=True)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                _convert_graph(sub, keep32, io=True)
    if node.op_type == "Constant":
        for a in list(node.attribute):
            if a.name in ("value_float", "value_floats"):
                vals = np.asarray(
                    a.f if a.name == "value_float" else list(a.floats), dtype=np.float16
                )
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(vals)))


def _convert_graph(graph: onnx.GraphProto, keep32: set[str], *, io: bool) -> None:
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in keep32:
            graph.initializer[i].CopyFrom(_to_fp16_tensor(t))
    for node in graph.node:
        _convert_node_attrs(node, keep32)
    for vi in graph.value_info:
        _retype(vi)
    if io:
        for vi in list(graph.input) + list(graph.output):
            _retype(vi)
    # Inputs that must stay float32 get a Cast back, unless they are kept-float32 initializers.
    new_nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            if name and (node.op_type, j) in FLOAT32_INPUTS and name not in keep32:
                cast_out = f"{name}__fp32_{k}_{j}"
                new_nodes.append(
                    helper.make_node(
                        "Cast", [name], [cast_out], to=TensorProto.FLOAT, name=f"{cast_out}__cast"
                    )
                )
                node.input[j] = cast_out
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)


def convert_float16(model: onnx.ModelProto, *, keep_io_types: bool = True) -> onnx.ModelProto:
    """A float16 copy of a float32 model (the input is not modified).

    Float initializers, Constant values, Cast(to=float) targets, dtype attributes and value infos
    become float16 (values clipped to the float16 range). Inputs that ONNX requires in float32
    (Resize scales) stay float32. With `keep_io_types`, float32 graph inputs and outputs keep their
    type behind Cast nodes, so feeds and consumers of the outputs do not change.

    Models with external data must be loaded with their data (onnx.load does so by default).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for t in g.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise UsageError(
                f"initializer {t.name!r} has its data outside the model; load it with its data"
            )
    uses: dict[str, set[bool]] = {}
    for node in g.node:
        for j, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, j) in FLOAT32_INPUTS)
    inits = {t.name for t in g.initializer}
    keep32 = {n for n, kinds in uses.items() if kinds == {True} and n in inits}

    float_inputs = [
        vi.name
        for vi in g.input
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT and vi.name not in inits
    ]
    float_outputs = [
        vi.name for vi in g.output if vi.type.tensor_type.elem_type == TensorProto.FLOAT
    ]
    _convert_graph(g, keep32, io=not keep_io_types)
    if not keep_io_types:
        return m
    taken = {o for n in g.node for o in n.output} | {vi.name for vi in g.input} | inits
    head: list[onnx.NodeProto] = []
    for name in float_inputs:
        new = _fresh(f"{name}__fp16", taken)
        _rename_uses(g, name, new)
        head.append(
            helper.make_node("Cast", [name], [new], to=TensorProto.FLOAT16, name=f"{new}__cast")
        )
    tail: list[onnx.NodeProto] = []
    graph_inputs = {vi.name for vi in g.input}
    for name in float_outputs:
        if name in graph_inputs and name in float_inputs:
            continue  # an input passed straight through stays float32
        new = _fresh(f"{name}__fp16", taken)
        for node in g.node:
            for i, o in enumerate(node.output):
                if o == name:
                    node.output[i] = new
        _rename_uses(g, name, new)
        if name in inits:  # an initializer that is also an output: it was converted, rename it
            for t in g.initializer:
                if t.name == name:
                    t.name = new
        tail.append(
            helper.make_node("Cast", [new], [name], to=TensorProto.FLOAT, name=f"{name}__cast")
        )
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    return m


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


# -- CUDA provider -------------------------------------------------------------------------------


def cuda_available() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider (not whether a GPU works)."""
    import onnxruntime as ort

    return CUDA_EP in ort.get_available_providers()


def make_cuda_session(
    model: onnx.ModelProto | str | Any,
    *,
    device_id: int = 0,
    optimize: bool = True,
    provider_options: Mapping[str, Any] | None = None,
) -> Any:
    """An InferenceSession on the CUDA provider; UsageError when ONNX Runtime cannot use CUDA.

    Nodes the CUDA provider lacks fall back to the CPU provider (as in deployment); the session is
    refused only when CUDA itself did not load.
    """
    import onnxruntime as ort

    if not cuda_available():
        raise UsageError(
            f"onnxruntime {ort.__version__} has no CUDA execution provider "
            f"(available: {', '.join(ort.get_available_providers())})",
            hint=GPU_INSTALL_HINT,
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not isinstance(model, (onnx.ModelProto, str)):
        model = model.to_proto()  # ModelIR
    values: list[Any] = []
    if isinstance(model, onnx.ModelProto):
        from spa_compiler.ort import add_initializers, split_weights

        # large weights as external initializers (one host copy shared by the variants timed
        # side by side, `spa_compiler.ort.split_weights`); the provider copies them to the device
        model, arrays = split_weights(model)
        values = add_initializers(so, arrays)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = {"device_id": str(device_id), **{k: str(v) for k, v in (provider_options or {}).items()}}
    sess = ort.InferenceSession(
        src, sess_options=so, providers=[(CUDA_EP, opts), "CPUExecutionProvider"]
    )
    sess._spa_initializers = values  # the session may read them while it lives
    if sess.get_providers()[0] != CUDA_EP:
        raise UsageError(
            "ONNX Runtime could not start the CUDA provider (no GPU, or no CUDA/cuDNN libraries)",
            hint=GPU_INSTALL_HINT,
        )
    return sess


def measure_ort_cuda(
    model: onnx.ModelProto | str | Any,
    feeds: Mapping[str, npt.NDArray[np.generic]],
    *,
    device_id: int = 0,
    fp16: bool = False,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 0.0,
    provider_options: Mapping[str, Any] | None = None,
) -> LatencyMeasurement:
    """Median latency of one inference on the CUDA provider with io-binding.

    Args:
        model: Model, ModelIR or path (float32).
        feeds: Inputs (numpy, float32 for float inputs even with `fp16`).
        device_id: CUDA device.
        fp16: Convert the model with `convert_float16` (float32 I/O kept) before timing.
        warmup: Untimed runs first (cuDNN algorithm search and allocations happen there).
        runs: Timed runs (at least).
        min_seconds: Keep timing until this much time has passed.
        provider_options: Extra CUDA provider options (e.g. {"use_tf32": 0}).
    """
    import onnxruntime as ort

    if fp16:
        model = convert_float16(_as_proto(model))
    sess = make_cuda_session(model, device_id=device_id, provider_options=provider_options)
    return measure_runner(iobound_runner(sess, feeds, device_id=device_id), provider=sess.get_providers()[0],
                          threads=None, runtime=f"onnxruntime {ort.__version__} CUDA {'fp16' if fp16 else 'fp32'}",
                          warmup=warmup, runs=runs, min_seconds=min_seconds)


def _as_proto(model: onnx.ModelProto | str | Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(model) if isinstance(model, str) else model.to_proto()


def iobound_runner(
    sess: Any, feeds: Mapping[str, npt.NDArray[np.generic]], *, device_id: int = 0
) -> Any:
    """A callable running `sess` once on `feeds` copied to the GPU (io-binding), synchronously.

    Inputs are copied once; outputs stay on the device. The callable keeps the device copies alive.
    """
    import onnxruntime as ort

    binding = sess.io_binding()
    held = []  # the device copies must outlive the binding
    for name, arr in feeds.items():
        ov = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", device_id)
        held.append(ov)
        binding.bind_ortvalue_input(name, ov)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", device_id)
    binding.synchronize_inputs()

    def run() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run.held = held  # type: ignore[attr-defined]
    return run


def providers_for(target: str) -> Sequence[str]:
    """Execution providers of an ORT target name ("ort-cpu", "ort-cuda"), CUDA with CPU fallback."""
    if target == "ort-cuda":
        return (CUDA_EP, "CPUExecutionProvider")
    if target == "ort-cpu":
        return ("CPUExecutionProvider",)
    raise UsageError(f"{target!r} is not an ONNX Runtime target", hint="use ort-cpu or ort-cuda")


@dataclasses.dataclass
class OrtCudaProvider:
    """ONNX Runtime CUDA execution provider with io-binding (fp32, or an fp16 copy for timing)."""

    fp16: bool = False
    runs: int = 50
    min_seconds: float = 0.3
    kind: str = "measured"
    #: untimed runs of each model first
    warmup: int = 10
    #: > 0: stop timing once every ratio to the first model is known within +-rel_ci (95%)
    rel_ci: float = 0.0
    sessions: SessionCache = dataclasses.field(default_factory=SessionCache, repr=False, compare=False)

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        def build(m: ModelIR | onnx.ModelProto) -> Any:
            proto = as_proto(m)
            if self.fp16:  # the fp16 conversion, too, is made once per structure
                proto = convert_float16(proto)
            return make_cuda_session(proto)

        runners = []
        for m in models:
            runners.append(iobound_runner(self.sessions.get(m, build), feeds))
        return interleaved(runners, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds,
                           rel_ci=self.rel_ci)

    def provenance(self) -> dict[str, Any]:
        from spa_compiler.ort import import_ort

        device = "CUDA GPU"
        try:  # torch is optional; it only names the device
            import torch

            if torch.cuda.is_available():
                device = torch.cuda.get_device_name(0)
        except ImportError:
            pass
        return {
            "device": device,
            "runtime": "onnxruntime",
            "runtime_version": import_ort().__version__,
            "provider": "CUDAExecutionProvider",
            "threads": None,
            "precision": "fp16" if self.fp16 else "fp32",
        }
