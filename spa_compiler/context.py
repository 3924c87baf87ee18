"""CompileContext: everything a pass may need besides the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from spa_compiler.report import Report
from spa_compiler.requirements import Requirement

#: (task, done, total) -> None. The CLI plugs tqdm in here; the library never imports tqdm.
ProgressFn = Callable[[str, int, int], None]


def no_progress(task: str, done: int, total: int) -> None:
    del task, done, total


@dataclasses.dataclass
class CompileContext:
    """Built once by the CLI or by `compile_model()`, handed to every pass.

    Attributes:
        calibration: A calibration source (iterable of input feeds), if the user gave one.
        latency: A latency model of the target, if one is available.
        target: Target runtime name (see `spa_compiler.targets`).
        input_shapes: Shape hints for symbolic input dimensions.
        seed: Seed for every random choice a pass makes.
        report: The report the PassManager fills.
        progress: Progress callback.
        feeds: Fixed inputs used for every latency measurement of this compile.
        latency_table: A loaded `LatencyTable` (from --latency-table), if any.
        budget_ms: The latency budget in milliseconds, if one was given.
        dense_ms: The dense model's latency as measured at the start of this compile (the
            reference a relative budget and a table from another run are scaled to).
        input_fingerprint: `structure_fingerprint` of the input file (latency tables are
            profiled on it; passes before the search may tidy the graph).
        max_error: Bound on the search's summed error above which a budget counts as unreachable.
    """

    calibration: Any = None
    latency: Any = None
    feeds: dict[str, Any] | None = None
    latency_table: Any = None
    budget_ms: float | None = None
    dense_ms: float | None = None
    input_fingerprint: str | None = None
    max_error: float | None = None
    target: str = "ort-cpu"
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    report: Report = dataclasses.field(default_factory=Report)
    progress: ProgressFn = no_progress

    def provides(self, req: Requirement) -> bool:
        """Whether this context satisfies `req` (STATIC_SHAPES is checked on the model)."""
        if req is Requirement.CALIBRATION:
            return self.calibration is not None
        if req is Requirement.LATENCY_MODEL:
            return self.latency is not None or self.latency_table is not None
        if req is Requirement.GPU:
            return self.target in ("ort-cuda", "tensorrt")
        return True
