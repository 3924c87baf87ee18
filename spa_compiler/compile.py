"""compile_model(): load, measure, run the pipeline, save atomically, measure again, report."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa_compiler._version import __version__
from spa_compiler.checks import (
    check_compute_dtypes,
    check_finite_weights,
    check_interface,
    check_no_empty_inputs,
    check_runs,
    check_shape_hints,
    interface,
)
from spa_compiler.context import CompileContext, ProgressFn, no_progress
from spa_compiler.errors import UsageError
from spa_compiler.ir import ModelIR, file_digest
from spa_compiler.ort import random_feeds
from spa_compiler.outputs import check_outputs
from spa_compiler.pass_manager import PassManager, Validate
from spa_compiler.pipeline import DEFAULT_PRESET, parse, preset
from spa_compiler.report import Report
from spa_compiler.stats import model_stats
from spa_compiler.targets import get_target

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A latency budget: absolute milliseconds, or a fraction of the measured dense latency."""

    ms: float | None = None
    fraction: float | None = None

    def resolve(self, dense_ms: float | None) -> float | None:
        """The budget in milliseconds, given the dense model's measured latency."""
        if self.ms is not None:
            return self.ms
        if self.fraction is not None and dense_ms is not None:
            return self.fraction * dense_ms
        return None

    def describe(self) -> str:
        """As the user wrote it."""
        return f"{self.ms:g} ms" if self.ms is not None else f"{self.fraction:g}x of dense"


def parse_budget(text: str) -> Budget:
    """`12.5`, `12.5ms` -> absolute; `0.6x` -> 0.6 of dense. UsageError otherwise."""
    t = text.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|x)?", t)
    if not m:
        raise UsageError(
            f"cannot read the latency budget {text!r}",
            hint="give milliseconds (12.5 or 12.5ms) or a fraction of dense latency (0.6x)",
        )
    value, unit = float(m.group(1)), m.group(2) or "ms"
    if value <= 0:
        raise UsageError(f"the latency budget must be positive, got {text!r}")
    if unit == "x":
        if value > 1.0:
            raise UsageError(
                f"a budget of {text} is slower than the dense model", hint="give a fraction <= 1, e.g. 0.6x"
            )
        return Budget(fraction=value)
    return Budget(ms=value)


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`name:1x3x224x224` items -> {name: shape}. UsageError on a malformed item."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not re.fullmatch(r"[0-9]+(x[0-9]+)*", dims):
            raise UsageError(
                f"cannot read --input-shape {item!r}", hint="write NAME:DxDxD, e.g. input:1x3x224x224"
            )
        shape = tuple(int(d) for d in dims.split("x"))
        if any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape {item!r}: dimensions must be positive")
        shapes[name] = shape
    return shapes


def _same_file(a: Path, b: Path) -> bool:
    try:
        if b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_paths(model_path: Path, output_path: Path) -> None:
    """Refuse an output that would overwrite the input (or its external-data file)."""
    if _same_file(model_path, output_path):
        raise UsageError(
            f"the output {output_path} is the input file; the input is never modified",
            hint="choose another -o path",
        )
    data = output_path.with_name(output_path.name + ".data")
    if data.exists() and _same_file(data, model_path):
        raise UsageError(f"the output's data file {data} is the input file", hint="choose another -o path")
    if output_path.suffix.lower() != ".onnx":
        raise UsageError(f"output {output_path} should end in .onnx", hint="e.g. -o model.pruned.onnx")


def measure(
    model: ModelIR,
    feeds: Mapping[str, np.ndarray],
    provider: Any,
    *,
    shapes: Mapping[str, Sequence[int]],
    timing: Any = None,
) -> dict[str, Any]:
    """Stats and latency of a model on the target, through a latency provider (`timing`: one
    already measured, e.g. the lowering stage's paired timing of the dense model)."""
    stats = model_stats(model, shapes)
    t = timing if timing is not None else provider.time(model, feeds)
    prov = provider.provenance()
    stats.update(
        latency_ms=t.ms,
        latency_kind=t.kind,
        latency_p10_ms=t.p10_ms,
        latency_p90_ms=t.p90_ms,
        latency_runs=t.runs,
        latency_provider=prov.get("provider") or prov.get("device"),
        latency_device=prov.get("device"),
        runtime=f"{prov.get('runtime')} {prov.get('runtime_version')}".strip(),
        precision=prov.get("precision"),
    )
    return stats


def compile_model(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    pipeline: str | None = None,
    preset_name: str | None = None,
    target: str = "ort-cpu",
    budget: Budget | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration: Any = None,
    report: Report | None = None,
    validate: Validate = "each",
    measure_runs: int = 30,
    threads: int | None = 1,
    precision: str = "fp32",
    latency_table: Any = None,
    max_error: float | None = None,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    measure_latency: bool = True,
    lower: str = "auto",
    budget_relative_to: str = "given",
    fp16_io: bool = False,
) -> Report:
    """Compile one model file; the input file is never modified, the output written atomically.

    Returns the report (also filled in when an error is raised, for `--report`).

    Lowering (`spa_compiler.lowering`): `lower` auto (fusions kept where measured faster), none
    (precision only) or all (every fusion that passes the numerical check). Every candidate the
    search times and the file written are in lowered form. A relative budget multiplies the model
    as given (`budget_relative_to="given"`) or its lowered dense form ("lowered").
    """
    from spa_compiler.lowering.select import MODES
    from spa_compiler.lowering.stage import REFERENCES, LoweringStage, is_lossy

    if lower not in MODES:
        raise UsageError(f"--lower {lower!r}", hint=f"use one of {', '.join(MODES)}")
    if fp16_io and precision != "fp16":
        raise UsageError("--fp16-io needs --precision fp16")
    if budget_relative_to not in REFERENCES:
        raise UsageError(f"--budget-relative-to {budget_relative_to!r}", hint=f"use {' or '.join(REFERENCES)}")
    report = report if report is not None else Report()
    report.tool_version = __version__
    src, dst = Path(model_path), Path(output_path)
    check_paths(src, dst)
    check_outputs([src], {"output": dst, "output's external-data file": dst.with_name(dst.name + ".data")})
    tgt = get_target(target)
    report.target = tgt.name
    spec = pipeline if pipeline is not None else preset(preset_name or DEFAULT_PRESET)
    report.pipeline = spec
    passes = parse(spec) if spec.strip() else []

    report.stage = "load"
    progress("load", 0, 1)
    model = ModelIR.load(src)
    digest = file_digest(src)
    report.input = {"path": str(src), "sha256": digest, "opset": model.opset, "ir_version": model.ir_version}
    tgt.check_opset(model)
    progress("load", 1, 1)

    shapes = dict(input_shapes or {})
    check_shape_hints(model, shapes)
    check_compute_dtypes(model)
    check_finite_weights(model)
    io = interface(model)
    missing = {n: s for n, s in model.symbolic_inputs().items() if n not in shapes}
    if missing:
        name, shape = next(iter(missing.items()))
        example = "x".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in shape)
        raise UsageError(
            f"input {name!r} has symbolic dimensions {list(shape)} and no shape hint",
            hint=f"pass --input-shape {name}:{example} (with N replaced by the size to compile for)",
        )
    check_no_empty_inputs(model, shapes)
    feeds = random_feeds(model, shapes, seed=seed)
    check_runs(model, feeds, shapes)
    provider = None
    if measure_latency:
        provider = tgt.provider(precision=precision, threads=threads, runs=measure_runs, input_shapes=shapes)

    ctx = CompileContext(
        calibration=calibration,
        latency=provider,
        latency_table=latency_table,
        feeds=feeds,
        target=tgt.name,
        input_shapes={k: tuple(v) for k, v in shapes.items()},
        seed=seed,
        report=report,
        progress=progress,
        max_error=max_error,
    )
    if latency_table is not None:
        from spa_compiler.latency.table import structure_fingerprint

        # tables are profiled on the input file; passes before the search may tidy the graph
        ctx.input_fingerprint = structure_fingerprint(model)
    progress("lower", 0, 1)
    stage = LoweringStage.prepare(model.to_proto(), target=tgt.name, precision=precision, fp16_io=fp16_io,
                                  mode=lower, input_shapes=shapes, feeds=feeds, provider=provider, seed=seed)
    report.lowering = stage.decision.to_json()
    progress("lower", 1, 1)
    if provider is not None:
        report.stage = "measure dense"
        ctx.latency = provider = stage.lowered  # every candidate is timed in its lowered form
        progress("measure dense", 0, 1)
        # the paired timing of as-given vs lowered (the model is not timed again)
        report.before = measure(model, feeds, stage.given, shapes=shapes, timing=stage.given_timing)
        report.before["latency_ms"] = stage.given_ms
        report.lowering["dense_ms"] = stage.lowered_ms
        # the search's reference is the lowered dense model: it times candidates lowered
        ctx.dense_ms = stage.lowered_ms
        progress("measure dense", 1, 1)
        if provider.kind == "analytic":
            report.notes.append(
                f"latencies are ANALYTIC estimates ({provider.provenance()['device']}): "
                f"no {tgt.name} device here"
            )
    else:
        report.before = model_stats(model, shapes)
    if budget is not None:
        dense = report.before.get("latency_ms")
        if budget.ms is None and dense is None and latency_table is not None:
            dense = latency_table.dense_ms
        if budget.fraction is not None and provider is not None:
            dense = stage.reference_ms(budget_relative_to)
        budget_ms = budget.resolve(dense)
        if budget_ms is None:
            raise UsageError(
                f"a relative budget ({budget.describe()}) needs the dense latency",
                hint="allow measurement (drop --no-measure), give --latency-table, or give milliseconds",
            )
        report.budget = {"requested": budget.describe(), "ms": budget_ms}
        if budget.fraction is not None:
            report.budget["relative_to"] = "model as given" if budget_relative_to == "given" else "lowered dense model"
        ctx.budget_ms = budget_ms
        if stage.lowered_ms is not None and stage.lowered_ms <= budget_ms and provider.kind == "measured":
            lossy = [p.name for p in passes if is_lossy(p.name)]
            passes = [p for p in passes if not is_lossy(p.name)]
            report.budget["met_by_lowering_alone"] = True
            report.notes.append(
                f"lowering alone meets the budget ({stage.lowered_ms:.4g} ms <= {budget_ms:.4g} ms): "
                f"nothing lossy was done{' (skipped ' + ', '.join(lossy) + ')' if lossy else ''}")

    if passes:
        report.stage = "passes"
        PassManager(passes, validate=validate).run(model, ctx)
    check_interface(io, interface(model))
    ir_version = tgt.output_ir_version(model)
    report.stage = "save"
    progress("save", 0, 1)
    from spa_compiler.ir import load_proto, save_proto
    from spa_compiler.lowering.provider import proto_digest

    written = stage.written_form(model, ir_version, feeds)
    if stage.final_check is not None:
        report.lowering["check_compiled"] = stage.final_check
    report.lowering["notes"] = stage.decision.notes
    save_proto(written, dst)
    progress("save", 1, 1)
    progress("read back", 0, 1)  # digests of both files and the output loaded back: a 1B model's 30 s
    report.output = {"path": str(dst), "ir_version": written.ir_version, "opset": model.opset,
                     "lowering": stage.decision.lowering.describe(), "sha256_lowered": proto_digest(written)}
    del model, written  # the output is read back from its file below: one model's weights at a time
    gc.collect()  # graphs are cyclic: their arrays go only when the collector runs
    if file_digest(src) != digest:  # pragma: no cover - a broken invariant, never expected
        raise RuntimeError(f"the input file {src} changed during compilation")

    out = ModelIR.load(dst, check=stage.decision.lowering.is_identity)  # contrib ops: ORT checks them
    progress("read back", 1, 1)
    if provider is not None:
        report.stage = "measure compiled"
        progress("measure compiled", 0, 1)
        report.after = model_stats(out, shapes)
        # the verdict: as given, lowered dense and the file written (read back, timed as it is)
        # in alternation, so load changes cancel out
        paired = stage.verdict(load_proto(src), load_proto(dst), feeds)
        report.after.update(latency_ms=paired["compiled_ms"], latency_kind=paired["kind"],
                            latency_runs=paired["runs"])
        report.after["paired"] = paired
        report.output["sha256_timed"] = paired["timed_sha256"]
        progress("measure compiled", 1, 1)
    else:
        report.after = model_stats(out, shapes)
    report.stage = "deploy check"
    progress("deploy check", 0, 1)
    report.output["deploy"] = tgt.deploy_check(dst, shapes, timed=provider is not None)
    progress("deploy check", 1, 1)
    if tgt.name == "tensorrt":  # the builder settings the deploy check applied, for deployment
        report.output["deploy"]["builder_settings"] = {
            "precision": f"{precision} (from the file's tensor types: the written model is {precision})",
            "sparse_weights": "built without and with BuilderFlag.SPARSE_WEIGHTS",
            "ir_version": report.output["ir_version"], "opset": report.output["opset"]}
    paired = report.after.get("paired")
    if report.budget.get("ms") is not None and paired:
        # a relative budget is judged on the paired ratio; an absolute one on the paired time
        if budget is not None and budget.fraction is not None:
            ratio = paired["ratio"] if budget_relative_to == "given" else paired["ratio_to_lowered"]
            met = ratio <= budget.fraction
            report.budget["measured_fraction"] = ratio
        else:
            met = paired["compiled_ms"] <= report.budget["ms"]
        report.budget["measured_ms"] = paired["compiled_ms"]
        report.budget["met"] = met
        if not met:
            report.notes.append(
                f"budget {report.budget['requested']} ({report.budget['ms']:.3f} ms) not met: "
                f"{paired['kind']} {paired['compiled_ms']:.3f} ms, {paired['ratio']:.3f}x of dense (paired timing)"
            )
    report.status = "ok"
    report.stage = "done"
    return report
