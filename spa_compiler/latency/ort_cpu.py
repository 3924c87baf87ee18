"""ONNX Runtime CPU latency: the CPU execution provider at a fixed thread count."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from typing import Any

import onnx

from spa_compiler.ir import ModelIR
from spa_compiler.latency.provider import Feeds, SessionCache, Timing, interleaved


@dataclasses.dataclass
class OrtCpuProvider:
    """ONNX Runtime CPU execution provider, fixed thread count."""

    threads: int | None = 1
    runs: int = 30
    min_seconds: float = 0.3
    kind: str = "measured"
    #: untimed runs of each model first
    warmup: int = 3
    #: > 0: stop timing once every ratio to the first model is known within +-rel_ci (95%)
    rel_ci: float = 0.0
    sessions: SessionCache = dataclasses.field(default_factory=SessionCache, repr=False, compare=False)

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        from spa_compiler.ort import make_session

        runners = []
        for m in models:
            # a ModelIR goes to ORT with its own arrays (no exported copy of the weights)
            sess = self.sessions.get(m, lambda m: make_session(m, threads=self.threads, optimize=True))
            runners.append(lambda sess=sess: sess.run(None, dict(feeds)))
        return interleaved(runners, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds,
                           rel_ci=self.rel_ci)

    def provenance(self) -> dict[str, Any]:
        from spa_compiler.ort import import_ort

        return {
            "device": f"{platform.processor() or platform.machine()} CPU",
            "runtime": "onnxruntime",
            "runtime_version": import_ort().__version__,
            "provider": "CPUExecutionProvider",
            "threads": self.threads,
            "precision": "fp32",
        }
