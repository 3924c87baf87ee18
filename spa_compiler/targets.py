"""The targets registry: everything the compiler knows about a runtime it emits for.

A `Target` says which IR versions and opsets the runtime loads, the channel multiple it runs fastest
at, the precisions it runs, how to time a model on it here (`provider`: a measured provider when the
device is present, the labelled analytic model otherwise), how to check that a written model deploys
(`deploy_check`), and what it can do (`capabilities`: fused attention, 2:4 sparse tensor cores,
custom-op kernels). Code that needs to know something about a target asks it here; nothing else
branches on target names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spa_compiler.errors import MissingRequirementError, UnsupportedModelError, UsageError
from spa_compiler.ir import ModelIR

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """A runtime we emit for.

    Attributes:
        name: CLI name.
        description: One line.
        max_ir_version: Highest IR version the oldest runtime release we support loads.
        max_opset: Highest default-domain opset it implements.
        providers: ONNX Runtime execution providers (empty for TensorRT).
        precisions: Precisions it runs (`--precision`).
        capabilities: What it can do beyond plain ONNX: "fused-attention" (ORT's contrib ops),
            "sparse-2:4" (sparse tensor cores through the builder), "custom-ops" (our runtime_ops
            libraries can be registered).
        analytic_device: The analytic model's device when the target cannot be timed here.
    """

    name: str
    description: str
    max_ir_version: int
    max_opset: int
    providers: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    capabilities: frozenset[str] = frozenset()
    analytic_device: str = "cpu-generic"

    # ------------------------------------------------------------------ emitting
    def output_ir_version(self, model: ModelIR) -> int:
        """The IR version to write: the input's, capped by what the target loads."""
        return min(model.ir_version, self.max_ir_version)

    def check_opset(self, model: ModelIR) -> None:
        """UnsupportedModelError if the model's opset is beyond what the target implements."""
        if model.opset > self.max_opset:
            raise UnsupportedModelError(
                f"the model uses opset {model.opset}; target {self.name} supports at most {self.max_opset}",
                hint=f"re-export with opset_version<={self.max_opset}",
            )

    def check_precision(self, precision: str) -> None:
        """UsageError if the target does not run `precision`."""
        if precision not in self.precisions:
            raise UsageError(f"target {self.name} runs {', '.join(self.precisions)}, not {precision!r}")

    def width_multiple(self) -> int:
        """The channel multiple the target runs fastest at; pruned widths are rounded to it by default.

        ONNX Runtime CPU lays convolutions out in blocks of 8 channels (AVX2) or 16 (AVX-512) and
        falls back to slower kernels, with layout reorders around them, when a width is not a
        multiple: EfficientNet-Lite0 on this machine measured 0.36x of dense with every group at
        exactly half its channels and 0.93x with a slightly different share that gave odd widths.
        GPU tensor cores (CUDA, TensorRT) take fp16 operands in multiples of 8.
        """
        if self.name == "ort-cpu":
            return 16 if _cpu_has_avx512() else 8
        return 8

    # ------------------------------------------------------------------ timing
    def measurable(self) -> tuple[bool, str]:
        """(whether this machine can time the target, why not)."""
        if self.name == "ort-cpu":
            return True, ""
        if self.name == "ort-cuda":
            from spa_compiler.latency.ort_cuda import cuda_available

            if cuda_available():
                return True, ""
            return False, "target ort-cuda needs onnxruntime-gpu and a CUDA GPU, which this machine lacks"
        from spa_compiler.latency.tensorrt import timing_available

        if timing_available():
            return True, ""
        return False, "timing TensorRT engines needs full TensorRT and a supported GPU"

    def provider(
        self,
        *,
        precision: str = "fp32",
        threads: int | None = 1,
        runs: int = 30,
        allow_analytic: bool = True,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Any:
        """The latency provider that times this target here, or the labelled analytic stand-in.

        Raises:
            MissingRequirementError: the device is missing and `allow_analytic` is False.
        """
        ok, why = self.measurable()
        if ok:
            if self.name == "ort-cpu":
                from spa_compiler.latency.ort_cpu import OrtCpuProvider

                return OrtCpuProvider(threads=threads, runs=runs)
            if self.name == "ort-cuda":
                from spa_compiler.latency.ort_cuda import OrtCudaProvider

                return OrtCudaProvider(fp16=precision == "fp16", runs=runs)
            from spa_compiler.latency.tensorrt import TensorRtProvider

            return TensorRtProvider(fp16=precision == "fp16", runs=runs)
        if not allow_analytic:
            raise MissingRequirementError(why, hint="run on the target machine, or pass --latency-table TABLE.json")
        from spa_compiler.latency.analytic import AnalyticProvider

        device = self.analytic_device.replace("{precision}", precision)
        logger.warning("%s: using the analytic latency model (%s) instead of measurements", why, device)
        return AnalyticProvider(device=device, input_shapes=dict(input_shapes or {}))

    # ------------------------------------------------------------------ deploying
    def deploy_check(self, path: Path, shapes: Mapping[str, Sequence[int]], *, timed: bool = True) -> dict[str, Any]:
        """Check the written model deploys on the target's toolchain as far as this machine allows.

        tensorrt: parse and build an engine (ahead of time for SM 8.9 with TensorRT-RTX on a machine
        without a GPU), dense and with the sparse-weights flag. ort-*: the session already loaded
        when the output was timed (`timed`; without it nothing ran the output, and the check says so).
        """
        if self.name != "tensorrt":
            if not timed:
                return {"checked": False, "why": "not measured (--no-measure): no onnxruntime session ran the output"}
            return {"checked": "onnxruntime session created and run on the output"}
        from spa_compiler.errors import SpaError
        from spa_compiler.latency.tensorrt import build_engine, describe, trt_module

        try:
            trt = trt_module()
        except SpaError as e:
            return {"checked": False, "why": e.one_line()}
        out: dict[str, Any] = {"runtime": describe(trt)}
        from spa_compiler.latency.tensorrt import sparse_eligibility

        for label, sparse in (("dense", False), ("sparse_weights", True)):
            # the sparse build logs at verbose level: full TensorRT names the 2:4-eligible layers there
            res = build_engine(path, shapes={k: tuple(v) for k, v in shapes.items()}, sparse_weights=sparse,
                               module=trt, verbose="verbose" if sparse else False)
            out[label] = {"ok": res.ok, "seconds": round(res.seconds, 3), "engine_bytes": res.engine_bytes,
                          "compute_capability": res.compute_capability}
            if sparse and res.ok:
                found = sparse_eligibility(res.log)
                out[label]["sparse_layers"] = found if found is not None else (
                    f"not reported: the {describe(trt)} builder log names no sparse-eligible layers, "
                    "even at verbose level")
            if not res.ok:
                out[label]["log"] = res.log[-2000:]
        out["checked"] = True
        return out


# onnxruntime 1.31 loads IR <= 13 (onnx 1.23 writes 14 by default); TensorRT 10's ONNX parser
# is built on onnx 1.16 (IR 10, opset 21 at most... ops beyond 20 are rare in exported models).
TARGETS: dict[str, Target] = {
    "ort-cpu": Target("ort-cpu", "ONNX Runtime, CPU execution provider", 13, 23, ("CPUExecutionProvider",),
                      precisions=("fp32",), capabilities=frozenset({"fused-attention", "custom-ops"}),
                      analytic_device="cpu-generic"),
    "ort-cuda": Target(
        "ort-cuda",
        "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)",
        13,
        23,
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        precisions=("fp32", "fp16"),
        capabilities=frozenset({"fused-attention", "custom-ops"}),
        analytic_device="h200-{precision}",
    ),
    # TensorRT 10's parser takes opsets up to 20-22 depending on the release; TensorRT-RTX 1.7 parses
    # IR 8..14 and opsets 13..25 (measured here). We emit IR 10 for both.
    "tensorrt": Target("tensorrt", "TensorRT engine built from the ONNX file", 10, 21,
                       precisions=("fp32", "fp16"), capabilities=frozenset({"sparse-2:4", "custom-ops"}),
                       analytic_device="h200-{precision}"),
}


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx512f" in line for line in fh)
    except OSError:
        return False


def get_target(name: str) -> Target:
    """Look a target up by name; UsageError listing the valid ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError as e:
        raise UsageError(f"unknown target {name!r}", hint=f"use one of {', '.join(TARGETS)}") from e


def make_provider(
    target: str,
    *,
    precision: str = "fp32",
    threads: int | None = 1,
    runs: int = 30,
    allow_analytic: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """`get_target(target).provider(...)`: the provider that times `target` here."""
    return get_target(target).provider(precision=precision, threads=threads, runs=runs,
                                       allow_analytic=allow_analytic, input_shapes=input_shapes)


def width_multiple(name: str) -> int:
    """`get_target(name).width_multiple()`."""
    return get_target(name).width_multiple()


def output_ir_version(model: ModelIR, target: Target) -> int:
    """`target.output_ir_version(model)`."""
    return target.output_ir_version(model)


def check_opset(model: ModelIR, target: Target) -> None:
    """`target.check_opset(model)`."""
    target.check_opset(model)
