"""`spa-compile demo`: the main job on a bundled default model, no arguments needed.

Builds the zoo's ResNet-style model from its seed (torch export; no download), then compiles it to
0.7x of its measured ONNX Runtime CPU latency with data-free OBSPA and the latency search, and writes
model.onnx, model.compiled.onnx, report.json and report.html (the page to open) to a folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from spa_compiler.compile import compile_model, parse_budget
from spa_compiler.context import ProgressFn, no_progress
from spa_compiler.errors import MissingRequirementError
from spa_compiler.report import Report

DEMO_MODEL = "tiny_resnet"
DEMO_EXPORTER = "torchscript"
DEMO_PIPELINE = "cleanup,prune-ziplm{criterion=obspa},cleanup"
DEMO_BUDGET = "0.7x"


def run_demo(out_dir: Path, *, runs: int = 50, progress: ProgressFn = no_progress) -> Report:
    """Export the demo model, compile it, write the report; returns the report."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingRequirementError(
            "the demo builds its model with torch, which is not installed",
            hint="pip install 'spa-compiler[zoo]' (or: pip install torch onnxscript)",
        ) from e
    from spa_compiler import models_zoo

    from spa_compiler.errors import OutputError
    from spa_compiler.outputs import check_outputs

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out-dir {out_dir}: cannot create it ({e.strerror or e})",
                          hint="choose a writable folder") from e
    check_outputs([], {f"--out-dir {out_dir}: {n}": out_dir / n
                       for n in ("model.onnx", "model.compiled.onnx", "report.json", "report.html")})
    progress("export demo model", 0, 1)
    src = models_zoo.build(DEMO_MODEL, DEMO_EXPORTER)
    progress("export demo model", 1, 1)
    model = out_dir / "model.onnx"
    shutil.copyfile(src, model)
    report = Report()
    compile_model(
        model,
        out_dir / "model.compiled.onnx",
        pipeline=DEMO_PIPELINE,
        target="ort-cpu",
        budget=parse_budget(DEMO_BUDGET),
        input_shapes=models_zoo.default_shapes(DEMO_MODEL),
        report=report,
        measure_runs=runs,
        progress=progress,
    )
    report.write(out_dir / "report.json")
    from spa_compiler.reporting import write_html

    write_html(out_dir / "report.html", report.to_dict())
    return report
