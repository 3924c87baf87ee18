"""TensorRT engines from ONNX files: build (also ahead of time, without a GPU) and time.

Two Python modules provide the same builder API and are both supported:

* `tensorrt` (full TensorRT 10+, `pip install tensorrt`): data-centre and RTX GPUs, Hopper (H100,
  H200) included. Building needs a GPU; the engine is built for the GPU present.
* `tensorrt_rtx_bindings` (TensorRT-RTX, `pip install tensorrt-rtx-cu13-libs
  tensorrt-rtx-cu13-bindings`): a smaller TensorRT for RTX GPUs (compute capabilities 7.5, 8.0,
  8.6, 8.9, 12.0, 12.1 in 1.7; NOT 9.0, so not Hopper). It builds ahead of time on a machine
  without a GPU: the builder config takes the target compute capability
  (`config.set_compute_capability(ComputeCapability.SM89, 0)` after
  `config.num_compute_capabilities = 1`); kernels are specialized when the engine first runs.
  Networks are always strongly typed (no BuilderFlag.FP16): for fp16 the ONNX model itself is
  converted (`ort_cuda.convert_float16`). Its parser accepted every IR version (8..14) and
  default-domain opset (13..30) tried, and ops up to opset 25 (Attention, RMSNormalization, Swish);
  it rejects the ops new in opsets 26 and 28 (CumProd, SwiGLU) as unknown plugins.

The code below uses only what both modules share: Builder, OnnxParser, IBuilderConfig.set_flag,
optimization profiles, build_serialized_network, Runtime, IExecutionContext.execute_async_v3.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from spa_compiler.errors import SpaError, UnsupportedModelError, UsageError
from spa_compiler.latency.timing import LatencyMeasurement

#: Import names, in order of preference.
MODULES: tuple[str, ...] = ("tensorrt", "tensorrt_rtx_bindings")
INSTALL_HINT = (
    "pip install tensorrt (full TensorRT, needs a GPU to build; Hopper and data-centre GPUs), or "
    "pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116 "
    "(TensorRT-RTX: builds ahead of time without a GPU, for RTX GPUs only)"
)

Flavor = Literal["tensorrt", "tensorrt-rtx"]
ShapeHint = Sequence[int] | tuple[Sequence[int], Sequence[int], Sequence[int]]


def trt_module(prefer: str | None = None) -> ModuleType:
    """The TensorRT Python module: `tensorrt` if importable, else `tensorrt_rtx_bindings`.

    Args:
        prefer: "tensorrt" or "tensorrt_rtx_bindings" to insist on one; None reads the
            environment variable SPA_TENSORRT_MODULE, and without it takes the first available.

    Raises:
        SpaError naming the pip packages when neither imports.
    """
    prefer = prefer or os.environ.get("SPA_TENSORRT_MODULE") or None
    names = (prefer,) if prefer else MODULES
    if prefer is not None and prefer not in MODULES:
        raise UsageError(
            f"unknown TensorRT module {prefer!r}", hint=f"use one of {', '.join(MODULES)}"
        )
    errors = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as e:  # a broken install (missing .so) is an ImportError too
            errors.append(f"{name}: {e}")
    raise SpaError(
        f"no TensorRT Python module could be imported ({'; '.join(errors)})", hint=INSTALL_HINT
    )


def flavor(trt: ModuleType) -> Flavor:
    """Which TensorRT a module is."""
    return "tensorrt-rtx" if "rtx" in trt.__name__ else "tensorrt"


def describe(trt: ModuleType) -> str:
    """e.g. 'TensorRT-RTX 1.7.1.116' or 'TensorRT 10.13.0'."""
    return f"{'TensorRT-RTX' if flavor(trt) == 'tensorrt-rtx' else 'TensorRT'} {trt.__version__}"


@dataclasses.dataclass(frozen=True)
class EngineBuildResult:
    """The outcome of one engine build.

    Attributes:
        ok: Whether an engine was produced.
        seconds: Wall-clock time of parse + build.
        engine_bytes: Size of the serialized engine (0 when not ok).
        log: Builder and parser messages at warning level and above, one per line.
        engine: The serialized engine (None when not ok).
        runtime: e.g. 'TensorRT-RTX 1.7.1.116'.
        compute_capability: What the engine was built for ("current" when the builder chose the GPU
            present).
        path: Where the engine was written, if `output_path` was given.
    """

    ok: bool
    seconds: float
    engine_bytes: int
    log: str
    engine: bytes | None = dataclasses.field(default=None, repr=False)
    runtime: str = ""
    compute_capability: str = "current"
    path: Path | None = None


def _make_logger(trt: ModuleType, lines: list[str], min_severity: Any) -> Any:

    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: Any, msg: str) -> None:
            if int(sev) <= int(min_severity):
                lines.append(f"[{str(sev).rsplit('.', 1)[-1]}] {msg}")

    return _Logger()


def _cc_enum(trt: ModuleType, cc: str) -> Any:
    """'8.9' / '89' / 'sm89' -> ComputeCapability.SM89; 'current' -> CURRENT."""
    cc_t = trt.ComputeCapability
    text = cc.strip().lower().replace("sm_", "").replace("sm", "")
    if text in ("current", "native"):
        return cc_t.CURRENT
    digits = text.replace(".", "")
    member = getattr(cc_t, f"SM{digits}", None)
    if member is None:
        values = sorted(
            int(m.value) for name, m in cc_t.__members__.items() if name.startswith("SM")
        )
        supported = [f"{v // 10}.{v % 10}" for v in values]
        raise UsageError(
            f"{describe(trt)} cannot build for compute capability {cc}; "
            f"it supports {', '.join(supported)}",
            hint="for Hopper (9.0) and data-centre GPUs use full TensorRT (pip install tensorrt)",
        )
    return member


def _parse_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = ""
        if e.node() >= 0:
            where = f"node {e.node()}"
            if e.node_name():
                where += f" {e.node_name()!r}"
            if e.node_operator():
                where += f" ({e.node_operator()})"
            where += ": "
        out.append(f"{where}{e.desc()}")
    return out


def _profile_shapes(
    name: str, dims: Sequence[int], hint: ShapeHint | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) for one input from its network dims (-1 = dynamic) and a user hint."""
    if hint is None:
        example = "x".join(str(d) if d >= 0 else "N" for d in dims)
        raise UsageError(
            f"input {name!r} has dynamic dimensions {list(dims)} and no shape hint",
            hint=f"pass shapes={{'{name}': ...}} (CLI: --input-shape {name}:{example})",
        )
    if len(hint) == 3 and all(isinstance(h, (list, tuple)) for h in hint):
        lo, opt, hi = (tuple(int(d) for d in h) for h in hint)  # type: ignore[union-attr]
    else:
        lo = opt = hi = tuple(int(d) for d in hint)  # type: ignore[arg-type]
    for shape in (lo, opt, hi):
        if len(shape) != len(dims) or any(
            d >= 0 and s != d for s, d in zip(shape, dims, strict=True)
        ):
            raise UsageError(
                f"shape hint {list(shape)} for input {name!r} does not fit its dims {list(dims)}"
            )
        if any(s <= 0 for s in shape):
            raise UsageError(f"shape hint {list(shape)} for input {name!r} must be positive")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise UsageError(
            f"shape hint for input {name!r} must have min <= opt <= max, got {lo}, {opt}, {hi}"
        )
    return lo, opt, hi


def build_engine(
    onnx_path: str | os.PathLike[str],
    *,
    compute_capability: str | None = "8.9",
    sparse_weights: bool = False,
    fp16: bool = False,
    shapes: Mapping[str, ShapeHint] | None = None,
    workspace_mb: int | None = None,
    output_path: str | os.PathLike[str] | None = None,
    module: ModuleType | None = None,
    verbose: bool | str = False,
) -> EngineBuildResult:
    """Parse an ONNX file and build a serialized TensorRT engine.

    Args:
        onnx_path: The model (external data files next to it are found by the parser).
        compute_capability: Target GPU, e.g. "8.9", for TensorRT-RTX's ahead-of-time builds; None or
            "current" builds for the GPU present. Full TensorRT always builds for the GPU present
            (a value other than None/"current" is then recorded in the log and ignored).
        sparse_weights: Let the builder pick 2:4 structured-sparse tactics for weights that have the
            pattern (BuilderFlag.SPARSE_WEIGHTS).
        fp16: Build in float16: the model is converted to float16 first (float32 I/O kept).
        shapes: Shape hints for inputs with dynamic dimensions: {name: shape} (min = opt = max) or
            {name: (min, opt, max)}. Hints for static inputs are checked against the model.
        workspace_mb: Workspace memory pool limit.
        output_path: Also write the engine there.
        module: The TensorRT module to use (default: `trt_module()`).
        verbose: Keep info-level messages in the log too ("verbose": verbose-level ones as well).

    Returns:
        An EngineBuildResult; `ok` is False when the builder failed (its reasons are in `log`).

    Raises:
        UnsupportedModelError: the parser rejected the model (one line, with the parser's messages).
        UsageError: missing or inconsistent shape hints, or an unsupported compute capability.
    """
    trt = module or trt_module()
    lines: list[str] = []
    severity = (trt.ILogger.Severity.VERBOSE if verbose == "verbose" else
                trt.ILogger.Severity.INFO if verbose else trt.ILogger.Severity.WARNING)
    logger = _make_logger(trt, lines, severity)
    path = Path(onnx_path)
    if not path.is_file():
        raise UsageError(f"no ONNX file at {path}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spa-trt-") as tmp:
        parse_path = path
        if fp16:
            import onnx

            from spa_compiler.latency.ort_cuda import convert_float16

            parse_path = Path(tmp) / (path.stem + ".fp16.onnx")
            half = convert_float16(onnx.load(str(path)))
            onnx.save(half, str(parse_path), save_as_external_data=half.ByteSize() > (1 << 30))
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(parse_path)):
            msgs = _parse_errors(parser) or [ln for ln in lines if "ERROR" in ln] or ["no message"]
            raise UnsupportedModelError(
                f"{describe(trt)} cannot parse {path.name}: "
                + "; ".join(" ".join(m.split()) for m in msgs),
                hint="check the op and opset against the TensorRT ONNX operator support list",
            )
    config = builder.create_builder_config()
    cc_used = "current"
    if compute_capability not in (None, "current"):
        if hasattr(config, "set_compute_capability") and hasattr(trt, "ComputeCapability"):
            member = _cc_enum(trt, compute_capability)
            config.num_compute_capabilities = 1
            if not config.set_compute_capability(member, 0):
                raise UsageError(f"{describe(trt)} refused compute capability {compute_capability}")
            cc_used = compute_capability
        else:
            lines.append(
                f"[NOTE] {describe(trt)} builds for the GPU present; "
                f"compute_capability={compute_capability} ignored"
            )
    if sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    hints = dict(shapes or {})
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    unknown = sorted(set(hints) - {t.name for t in inputs})
    if unknown:
        raise UsageError(
            f"shape hints name {unknown}, which are not network inputs",
            hint=f"inputs are {[t.name for t in inputs]}",
        )
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic or hints:
        profile = builder.create_optimization_profile()
        for t in inputs:
            dims = tuple(t.shape)
            if t.name not in hints and all(d >= 0 for d in dims):
                continue
            lo, opt, hi = _profile_shapes(t.name, dims, hints.get(t.name))
            profile.set_shape(t.name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    rt = describe(trt)
    if plan is None:
        return EngineBuildResult(
            False, seconds, 0, "\n".join(lines) or "[ERROR] build failed", None, rt, cc_used
        )
    engine = bytes(plan)
    out: Path | None = None
    if output_path is not None:
        out = Path(output_path)
        _write_bytes_atomic(out, engine)
    return EngineBuildResult(True, seconds, len(engine), "\n".join(lines), engine, rt, cc_used, out)


_ELIGIBLE = re.compile(r"Layers eligible for sparse math:\s*(.*)")
_PICKED = re.compile(r"picked sparse implementation for layers:\s*(.*)")


def sparse_eligibility(log: str) -> dict[str, list[str]] | None:
    """What a sparse-weights build's log says about 2:4 layers, or None when it says nothing.

    Full TensorRT (8.x-10.x) logs, at info level, "(Sparsity) Layers eligible for sparse math: a, b"
    and "TRT inference plan picked sparse implementation for layers: a". TensorRT-RTX 1.7 logs
    neither, even at verbose level (checked here: its builds fuse the layers into Myelin nodes and
    choose kernels when the engine first runs), so there the answer is None.
    """
    eligible: list[str] = []
    picked: list[str] = []
    found = False
    for line in log.splitlines():
        for rx, out in ((_ELIGIBLE, eligible), (_PICKED, picked)):
            m = rx.search(line)
            if m:
                found = True
                out.extend(x.strip() for x in m.group(1).split(",") if x.strip())
    return {"eligible": eligible, "picked_sparse": picked} if found else None


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    from spa_compiler.outputs import write_bytes_atomic

    write_bytes_atomic(path, data)


def time_engine(
    engine: bytes | str | os.PathLike[str],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 0.0,
    module: ModuleType | None = None,
) -> LatencyMeasurement:
    """Median latency of one engine execution on the current CUDA device (CUDA events).

    UNTESTED: no GPU that either TensorRT flavor supports was available while writing this (the
    project's lent H200 is Hopper, which TensorRT-RTX does not support, and has no full TensorRT).
    Needs torch with CUDA for device buffers and events.

    Args:
        engine: Serialized engine or its path.
        shapes: Input shapes for engines with dynamic inputs.
        warmup: Untimed executions (TensorRT-RTX compiles its kernels on the first ones).
        runs: Timed executions (at least).
        min_seconds: Keep timing until this much time has passed.
        module: The TensorRT module (default: `trt_module()`).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - GPU machines only
        raise SpaError(
            "timing a TensorRT engine needs torch with CUDA", hint="pip install torch"
        ) from e
    if not torch.cuda.is_available():
        raise SpaError("timing a TensorRT engine needs a CUDA GPU; none is visible")
    trt = module or trt_module()  # pragma: no cover - GPU machines only (below)
    lines: list[str] = []
    logger = _make_logger(trt, lines, trt.ILogger.Severity.WARNING)
    data = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
    runtime = trt.Runtime(logger)
    eng = runtime.deserialize_cuda_engine(data)
    if eng is None:
        raise SpaError(
            f"{describe(trt)} could not load the engine: " + " ".join(lines[-3:]),
            hint="engines only load on the TensorRT version and GPU family they were built for",
        )
    ctx = eng.create_execution_context()
    dtypes = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BF16: torch.bfloat16,
    }
    buffers = {}
    names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
    for name in names:
        if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            dims = tuple(eng.get_tensor_shape(name))
            if any(d < 0 for d in dims):
                if not shapes or name not in shapes:
                    raise UsageError(
                        f"engine input {name!r} is dynamic {list(dims)}; give its shape in `shapes`"
                    )
                dims = tuple(shapes[name])
            ctx.set_input_shape(name, dims)
            t = torch.zeros(dims, dtype=dtypes[eng.get_tensor_dtype(name)], device="cuda")
            if t.is_floating_point():
                t.normal_()
            buffers[name] = t
    for name in names:
        if eng.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dims = tuple(ctx.get_tensor_shape(name))
            buffers[name] = torch.empty(
                dims, dtype=dtypes[eng.get_tensor_dtype(name)], device="cuda"
            )
    for name, t in buffers.items():
        ctx.set_tensor_address(name, t.data_ptr())
    stream = torch.cuda.Stream()
    for _ in range(warmup):
        ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(stream)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise SpaError(f"{describe(trt)} execution failed: " + " ".join(lines[-3:]))
        b.record(stream)
        b.synchronize()
        times.append(a.elapsed_time(b))
        if len(times) >= 100 * max(runs, 1):
            break
    qs = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return LatencyMeasurement(
        median_ms=statistics.median(times),
        p10_ms=qs[0],
        p90_ms=qs[-1],
        runs=len(times),
        provider=torch.cuda.get_device_name(),
        threads=None,
        runtime=describe(trt),
    )


def timing_available() -> bool:
    """Whether engines can be timed here: a TensorRT module and a CUDA GPU visible to torch."""
    try:
        trt_module()
        import torch
    except (SpaError, ImportError):
        return False
    return bool(torch.cuda.is_available())


@dataclasses.dataclass
class TensorRtProvider:
    """TensorRT: each model is written to a temporary file, built into an engine for the GPU
    present, and timed with CUDA events (`time_engine`). Untested on hardware here (see
    `time_engine`); the analytic model stands in where `timing_available()` is False."""

    fp16: bool = False
    runs: int = 50
    kind: str = "measured"

    def _engine(self, model: Any) -> bytes:
        import tempfile

        from spa_compiler.ir import ModelIR

        with tempfile.TemporaryDirectory(prefix="spa-trt-") as tmp:
            path = Path(tmp) / "model.onnx"
            ir = model if isinstance(model, ModelIR) else ModelIR.from_proto(model)
            ir.save(path, ir_version=min(ir.ir_version, 10))
            res = build_engine(path, compute_capability=None, fp16=self.fp16)
            if not res.ok or res.engine is None:
                raise SpaError("TensorRT could not build an engine to time: " + res.log[-500:])
            return res.engine

    def time(self, model: Any, feeds: Mapping[str, Any]) -> Any:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[Any], feeds: Mapping[str, Any]) -> list[Any]:
        from spa_compiler.latency.provider import Timing

        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        out = []
        for m in models:  # engines are timed one after another: each build takes seconds anyway
            meas = time_engine(self._engine(m), shapes=shapes, runs=self.runs)
            out.append(Timing(meas.median_ms, "measured", meas.runs, meas.p10_ms, meas.p90_ms))
        return out

    def provenance(self) -> dict[str, Any]:
        trt = trt_module()
        try:
            import torch

            device = torch.cuda.get_device_name(0)
        except Exception:  # pragma: no cover - only where timing_available() was True
            device = "CUDA GPU"
        return {"device": device, "runtime": "tensorrt", "runtime_version": str(trt.__version__),
                "provider": describe(trt), "threads": None, "precision": "fp16" if self.fp16 else "fp32"}
