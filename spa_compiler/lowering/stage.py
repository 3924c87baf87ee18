"""The lowering stage of a compile: three latencies, the budget's reference, the written form.

`LoweringStage.prepare` decides the lowering (select.choose) on the dense model and times, in one
alternation, the model as given (at the compile's precision, no graph rewrite: what a user
deploys without this tool) and its lowered dense form. The search then times every candidate
through `LoweredProvider`, and `finish` writes the lowered form of the compiled model and times
the three of them once more, paired: as given, lowered dense, and the file written (read back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from spa_compiler.lowering.core import Lowering
from spa_compiler.lowering.provider import LoweredProvider, proto_digest
from spa_compiler.lowering.select import Decision, choose

#: Budget references: the model as given, or its lowered dense form.
REFERENCES = ("given", "lowered")

#: Passes that change what the model computes (skipped when lowering alone meets the budget).
LOSSY_PREFIXES = ("prune-", "monarch", "nm-")


def _strip_precision(provider: Any) -> Any:
    """The provider timing models exactly as given (ORT CUDA's fp16 copy is lowering's job)."""
    if dataclasses.is_dataclass(provider) and getattr(provider, "fp16", False):
        return dataclasses.replace(provider, fp16=False)
    return provider


@dataclasses.dataclass
class LoweringStage:
    """One compile's lowering: decision, providers and the paired latencies."""

    decision: Decision
    given: LoweredProvider
    lowered: LoweredProvider
    inner: Any
    given_ms: float | None = None
    lowered_ms: float | None = None
    final_check: dict[str, Any] | None = None
    #: The timing of the model as given (its spread and runs, for the report)
    given_timing: Any = None

    @classmethod
    def prepare(
        cls,
        model: onnx.ModelProto,
        *,
        target: str,
        precision: str,
        fp16_io: bool,
        mode: str,
        input_shapes: Mapping[str, Sequence[int]],
        feeds: Mapping[str, np.ndarray],
        provider: Any,
        seed: int = 0,
    ) -> LoweringStage:
        inner = _strip_precision(provider) if provider is not None else None
        measured = inner is not None and inner.kind == "measured"
        decision = choose(model, target=target, precision=precision, fp16_io=fp16_io, mode=mode,
                          input_shapes=input_shapes, feeds=feeds, provider=inner if measured else None,
                          seed=seed)
        plain = Lowering(precision=precision, fp16_io=fp16_io)
        # analytic estimates read the unlowered graph (they model the runtime, not its fused ops)
        timed = decision.lowering if measured else plain
        stage = cls(decision, LoweredProvider(inner, plain, input_shapes),
                    LoweredProvider(inner, timed, input_shapes), inner)
        if inner is not None:
            if timed == plain:  # no graph rewrite chosen: the two forms are one model, timed once
                (t_given,) = inner.time_many([stage.given.lowered(model)], feeds)
                t_low = t_given
            else:
                t_given, t_low = inner.time_many([stage.given.lowered(model), stage.lowered.lowered(model)], feeds)
            stage.given_ms, stage.lowered_ms = t_given.ms, t_low.ms
            stage.given_timing = t_given
            decision.timings["paired_dense_ms"] = {"as_given": round(t_given.ms, 5),
                                                   "lowered": round(t_low.ms, 5),
                                                   "ratio": round(t_low.ms / t_given.ms, 4), "kind": t_low.kind}
        return stage

    def reference_ms(self, relative_to: str) -> float | None:
        """The dense latency a relative budget multiplies."""
        return self.given_ms if relative_to == "given" else self.lowered_ms

    def written_form(self, model: Any, ir_version: int, feeds: Mapping[str, Any] | None = None) -> onnx.ModelProto:
        """The lowered model as it is written (and as the search timed its candidates).

        The graph rewrites were checked on the dense model; the compiled model is checked again
        (fp32, CPU provider, `feeds`) and written with the precision alone if it fails.
        """
        low = self.decision.lowering
        if low.families and feeds is not None:
            from spa_compiler.lowering.select import check

            plain = model if isinstance(model, onnx.ModelProto) else model.to_proto()
            graph_only = _lower(plain, Lowering(families=low.families), self.lowered.input_shapes)
            ck = check(graph_only, plain, [feeds], precision="fp32", device="cpu")
            self.final_check = ck.to_json()
            del graph_only
            if not ck.ok:
                self.decision.notes.append(
                    f"the compiled model failed the lowering check ({ck.why}, rel. error {ck.error:.3g}): "
                    "written with the precision alone, not as the search timed it")
                low = Lowering(precision=low.precision, fp16_io=low.fp16_io)
        proto = _lower(model, low, self.lowered.input_shapes)
        proto.ir_version = min(proto.ir_version, ir_version)
        return proto

    def verdict(self, source: onnx.ModelProto, written: onnx.ModelProto, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """As given, lowered dense and the written file, timed in one alternation."""
        if self.decision.lowering == self.given.lowering:  # lowered dense is the model as given
            t_given, t_out = self.inner.time_many([self.given.lowered(source), written], feeds)
            t_low = t_given
        else:
            models = [self.given.lowered(source), _lower(source, self.decision.lowering, self.lowered.input_shapes),
                      written]
            t_given, t_low, t_out = self.inner.time_many(models, feeds)
        return {"dense_ms": t_given.ms, "lowered_dense_ms": t_low.ms, "compiled_ms": t_out.ms,
                "ratio": t_out.ms / t_given.ms, "ratio_to_lowered": t_out.ms / t_low.ms,
                "lowering_ratio": t_low.ms / t_given.ms, "runs": t_out.runs, "kind": t_out.kind,
                "timed_sha256": proto_digest(written)}


def _lower(model: Any, lowering: Lowering, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    from spa_compiler.lowering.core import lower

    if lowering.is_identity:
        return model if isinstance(model, onnx.ModelProto) else model.to_proto()
    return lower(model, lowering, shapes).model


def is_lossy(pass_name: str) -> bool:
    """Whether a pass changes what the model computes."""
    return pass_name.startswith(LOSSY_PREFIXES)
