"""The Python API: `compile`, `inspect`, `profile`, mirroring the `spa-compile` verbs.

The CLI calls these same functions, so both take the same inputs, write the same files and raise
the same errors: every error a user can cause is a `SpaError` subclass (`UsageError`,
`InvalidModelError`, ...) whose `one_line()` is exactly what `spa-compile` prints after
`spa-compile: error: `, and whose `exit_code` is the CLI's exit status.

    import spa_compiler
    result = spa_compiler.compile("model.onnx", budget="0.6x", output="small.onnx")
    result.verdict, result.output, result.report.after["paired"]["ratio"]

Several budgets (`budget="0.8x,0.6x"` or a list) compile one model per budget, named
`<output stem>.<budget>.onnx` (`small.0.8x.onnx`, `small.0.6x.onnx`, `small.12.5ms.onnx`), and one
report comparing them (`report=`, `report_html=`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spa_compiler.errors import SpaError, UsageError
from spa_compiler.report import Report

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
BudgetLike = str | float | int
ProgressCallback = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class Run:
    """One compiled model: its budget as written (None without one), the file, the report."""

    budget: str | None
    output: Path
    report: Report

    @property
    def met(self) -> bool | None:
        """Whether the paired measurement met the budget (None: no budget, or not measured)."""
        return self.report.budget.get("met") if self.report.budget else None

    @property
    def verdict(self) -> str:
        """`met`, `NOT met`, `not checked` (budget, no measurement), `no budget` or `failed`."""
        from spa_compiler.reporting.html import verdict

        return verdict(self.report.to_dict())[0]


@dataclasses.dataclass(frozen=True)
class Result:
    """What `compile` did: one `Run` per budget, and the report files written (None if not asked).

    With one budget (or none), `output`, `report`, `verdict` and `met` are that run's.
    """

    runs: tuple[Run, ...]
    report_path: Path | None = None
    report_html_path: Path | None = None

    def _single(self, what: str) -> Run:
        if len(self.runs) != 1:
            raise AttributeError(
                f"this compile wrote {len(self.runs)} models (one per budget): "
                f"use result.runs[i].{what}"
            )
        return self.runs[0]

    @property
    def output(self) -> Path:
        """The model written (one budget)."""
        return self._single("output").output

    @property
    def report(self) -> Report:
        """The report (one budget)."""
        return self._single("report").report

    @property
    def verdict(self) -> str:
        """The verdict (one budget); see `Run.verdict`."""
        return self._single("verdict").verdict

    @property
    def met(self) -> bool | None:
        """Whether the budget was met (one budget)."""
        return self._single("met").met

    @property
    def written(self) -> tuple[Path, ...]:
        """Every file written: the models, then the reports."""
        extra = tuple(p for p in (self.report_path, self.report_html_path) if p is not None)
        return tuple(r.output for r in self.runs) + extra

    def summary(self) -> str:
        """What the CLI prints: each run's summary and the files written."""
        if len(self.runs) == 1:
            r = self.runs[0]
            lines = [r.report.summary(), f"wrote {r.output}"]
        else:
            lines = []
            for r in self.runs:
                lines += [
                    f"== budget {r.budget}: {r.verdict}",
                    r.report.summary(),
                    f"wrote {r.output}",
                    "",
                ]
            lines.append(comparison_table(self.runs))
        lines += [f"wrote {p}" for p in (self.report_path, self.report_html_path) if p is not None]
        return "\n".join(lines)


def comparison_table(runs: Sequence[Run]) -> str:
    """Budgets side by side, as text: budget, paired latency, ratio, verdict, mean error, file."""
    from spa_compiler.reporting.html import latencies, quality

    head = f"{'budget':>10}  {'compiled ms':>11}  {'of dense':>8}  {'verdict':<11}  {'mean error':>10}  model"
    rows = [head]
    for r in runs:
        d = r.report.to_dict()
        lat, q = latencies(d), quality(d)
        ms = f"{lat['compiled']:.4g}" if lat["compiled"] is not None else "-"
        ratio = (
            f"{lat['compiled'] / lat['given']:.3f}x" if lat["compiled"] and lat["given"] else "-"
        )
        err = f"{q['mean error']:.4g}" if "mean error" in q else "-"
        rows.append(
            f"{r.budget or '-':>10}  {ms:>11}  {ratio:>8}  {r.verdict:<11}  {err:>10}  {r.output}"
        )
    return "\n".join(rows)


# -------------------------------------------------------------------------------------- inputs
def parse_budgets(budget: BudgetLike | Sequence[BudgetLike] | None) -> list[tuple[str, Any]]:
    """[(tag, Budget)] from `0.6x`, `12.5`, `12.5ms`, `"0.8x,0.6x"`, a number (ms) or a list.

    The tag names the budget in file names: `0.6x`, `12.5ms`. UsageError on a bad or repeated one.
    """
    from spa_compiler.compile import Budget, parse_budget

    if budget is None:
        return []
    items: list[Any]
    if isinstance(budget, str):
        items = [b for b in budget.split(",")]
    elif isinstance(budget, (int, float, Budget)):
        items = [budget]
    else:
        items = list(budget)
    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, Budget):
            b = item
        elif isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise UsageError(
                f"cannot read the latency budget {item!r}",
                hint="give milliseconds (12.5 or 12.5ms) or a fraction of dense latency (0.6x)",
            )
        else:
            b = parse_budget(str(item))
        tag = f"{b.fraction:g}x" if b.fraction is not None else f"{b.ms:g}ms"
        if any(tag == t for t, _ in out):
            raise UsageError(
                f"the latency budget {tag} is given twice", hint="give each budget once"
            )
        out.append((tag, b))
    return out


def budget_output(output: PathLike, tag: str) -> Path:
    """The model file of one budget of a multi-budget compile: `small.onnx` -> `small.0.6x.onnx`."""
    p = Path(output)
    return p.with_name(f"{p.stem}.{tag}{p.suffix}")


def default_output(model: PathLike) -> Path:
    """`MODEL.spa.onnx` beside the input (the CLI's default for -o)."""
    p = Path(model)
    return p.with_name(p.stem + ".spa.onnx")


def _shapes(
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None,
) -> dict[str, tuple[int, ...]]:
    from spa_compiler.compile import parse_input_shapes

    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):
        items = [f"{k}:{'x'.join(str(d) for d in v)}" for k, v in input_shapes.items()]
    elif isinstance(input_shapes, str):
        items = [input_shapes]
    else:
        items = list(input_shapes)
    return parse_input_shapes(items)  # one checker: the same messages as --input-shape


def _load_calibration(
    model_path: PathLike, spec: str, loader: Any, shapes: Mapping[str, Sequence[int]] | None = None
) -> Any:
    import onnx

    from spa_compiler.calibration import model_inputs
    from spa_compiler.checks import check_shape_hints
    from spa_compiler.ir import load_proto

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not a readable model: the loader says why, with exit 3
        proto = load_proto(model_path)
    check_shape_hints(proto, shapes or {})  # before any feed is read: the hint is the first error
    specs = model_inputs(proto)
    # the model's declared shapes: --input-shape fixes dynamic dims for latency and shapes, while
    # calibration feeds may vary along them (sentences of their own length)
    expected = {s.name: s.shape for s in specs}
    return loader(spec, [s.name for s in specs], expected_dtypes={s.name: s.dtype for s in specs},
                  expected_shapes=expected)


def _calibration(model: PathLike, calib: Any, shapes: Mapping[str, Sequence[int]] | None = None) -> Any:
    if calib is None:
        return None
    if isinstance(calib, (str, os.PathLike)):
        from spa_compiler.calibration import load_calibration

        return _load_calibration(model, os.fspath(calib), load_calibration, shapes)
    return calib  # already a calibration source


def _check_outputs(
    model: PathLike, dst: Path, budget: Any, calib: Any, latency_table: Any,
    report_path: Path | None, html_path: Path | None,
) -> None:
    """Every path the compile writes, before any work (spa_compiler.outputs.check_outputs)."""
    from spa_compiler.outputs import check_outputs

    try:
        tags = [t for t, _ in parse_budgets(budget)]
    except SpaError:  # reported with the run (and in its report) below
        tags = []
    models = [budget_output(dst, t) for t in tags] if len(tags) > 1 else [dst]
    outputs: dict[str, Path | None] = {}
    for m in models:
        outputs[f"-o {m.name}" if len(models) > 1 else "-o"] = m
        outputs[f"the external-data file of {m.name}"] = m.with_name(m.name + ".data")
    outputs.update({"--report": report_path, "--report-html": html_path})
    inputs = [model] + [p for p in (latency_table, calib) if isinstance(p, (str, os.PathLike))]
    try:
        size = os.path.getsize(model)
    except OSError:
        size = 0
    check_outputs(inputs, outputs, expected_bytes=size * len(models))


def _stopped_how(e: KeyboardInterrupt, rep: Report) -> None:
    """Record in `rep` (and on `e`, for the CLI's one line) that a signal stopped the run, and where."""
    name = getattr(e, "name", "SIGINT")
    stage = rep.stage or "start-up"
    if rep.task and rep.task != stage and not stage.endswith(rep.task):
        stage = f"{stage} ({rep.task})"
    rep.status = "interrupted"
    rep.error = f"stopped by {name} during {stage}; no output was written"
    e.stage = stage  # type: ignore[attr-defined]


def _table(latency_table: Any) -> Any:
    if latency_table is None or not isinstance(latency_table, (str, os.PathLike)):
        return latency_table
    from spa_compiler.latency.table import LatencyTable

    return LatencyTable.load(latency_table)


def _report_paths(
    report: PathLike | None, report_html: PathLike | None
) -> tuple[Path | None, Path | None]:
    json_path = Path(report) if report is not None else None
    html_path = Path(report_html) if report_html is not None else None
    if html_path is not None and html_path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(
            f"the HTML report {html_path} should end in .html",
            hint="e.g. --report-html report.html",
        )
    if (
        json_path is not None
        and html_path is not None
        and json_path.resolve() == html_path.resolve()
    ):
        raise UsageError(
            f"--report and --report-html are the same file {json_path}",
            hint="give them different names, e.g. report.json and report.html",
        )
    return json_path, html_path


# ------------------------------------------------------------------------------------- compile
def compile(  # noqa: A001 - the API's verb, as on the command line
    model: PathLike,
    *,
    output: PathLike | None = None,
    budget: BudgetLike | Sequence[BudgetLike] | None = None,
    target: str = "ort-cpu",
    calib: Any = None,
    passes: str | None = None,
    preset: str | None = None,
    latency_table: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    precision: str = "fp32",
    max_error: float | None = None,
    validate: str = "each",
    runs: int = 30,
    threads: int = 1,
    measure: bool = True,
    seed: int = 0,
    report: PathLike | None = None,
    report_html: PathLike | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> Result:
    """Compile `model` (an .onnx path, never modified) like `spa-compile compile`.

    Args:
        model: The input .onnx file.
        output: The .onnx to write (default `MODEL.spa.onnx` beside the input). With several
            budgets, one file per budget: `<stem>.<budget>.onnx` (e.g. `small.0.6x.onnx`).
        budget: `"0.6x"` (fraction of the dense latency), `"12.5"`/`"12.5ms"` or a number
            (milliseconds); several as `"0.8x,0.6x"` or a list.
        target: `ort-cpu`, `ort-cuda` or `tensorrt`.
        calib: Calibration data: a folder/.npz path or `module:function` (as `--calib`), or a
            calibration source object.
        passes: A pipeline spec (`"cleanup,prune-uniform{ratio=0.3}"`); `preset` names one instead.
        latency_table: A table from `profile` (path or `LatencyTable`).
        input_shapes: `{"input_ids": (8, 512)}` or `["input_ids:8x512"]`.
        report: Write the JSON report here (also on failure); with several budgets, the comparison.
        report_html: Write the HTML report here (also on failure); with several budgets, the
            comparison page.
        progress: `callback(task, done, total)`.
        **options: Further keyword arguments of `compile_model` (new compile options reach the API
            and the CLI through here without a second copy of the signature).

    Returns:
        A `Result`: the runs (file, report, verdict), the report files written.

    Raises:
        SpaError: Its subclasses, with the CLI's messages (`e.one_line()`) and exit codes.
    """
    from spa_compiler.compile import compile_model

    if passes is not None and preset is not None:
        raise UsageError(
            "give passes or preset, not both", hint="a preset is a named pipeline spec"
        )
    unknown = sorted(set(options) - _extra_options(compile_model))
    if unknown:
        raise TypeError(f"compile() got unexpected keyword arguments {unknown}")
    report_path, html_path = _report_paths(report, report_html)
    dst = Path(output) if output is not None else default_output(model)
    # every path the run writes, checked before any work (not an input, not each other, writable);
    # a refused path is never written to, so no report either
    _check_outputs(model, dst, budget, calib, latency_table, report_path, html_path)
    reports: list[Report] = []
    done: list[Run] = []
    several = False
    early = Report(stage="start-up")  # what the run does before the first compile
    current = [early]

    def track(task: str, n: int, total: int) -> None:  # the stage an interrupted report names
        current[0].task = task
        (progress or _no_progress)(task, n, total)

    try:
        budgets = parse_budgets(budget)
        several = len(budgets) > 1
        shapes = _shapes(input_shapes)
        early.stage = "load calibration"
        calibration = _calibration(model, calib, shapes)
        early.stage = "load latency table"
        table = _table(latency_table)
        plan = (
            [(None, None, dst)]
            if not budgets
            else (
                [(budgets[0][0], budgets[0][1], dst)]
                if len(budgets) == 1
                else [(tag, b, budget_output(dst, tag)) for tag, b in budgets]
            )
        )
        for tag, b, out in plan:
            rep = Report()
            reports.append(rep)
            current[0] = rep
            try:
                compile_model(
                    model,
                    out,
                    pipeline=passes,
                    preset_name=preset,
                    target=target,
                    budget=b,
                    input_shapes=shapes,
                    calibration=calibration,
                    report=rep,
                    validate=validate,  # type: ignore[arg-type]
                    measure_runs=runs,
                    threads=threads,
                    precision=precision,
                    latency_table=table,
                    max_error=max_error,
                    seed=seed,
                    progress=track,
                    measure_latency=measure,
                    **options,
                )
            except SpaError as e:
                rep.status, rep.error = "failed", e.one_line()
                raise
            except Exception as e:
                rep.status, rep.error = "failed", f"{type(e).__name__}: {e}"
                raise
            except KeyboardInterrupt as e:  # Ctrl-C or a signal (spa_compiler.signals.Interrupted)
                _stopped_how(e, rep)
                raise
            done.append(Run(tag, Path(rep.output.get("path") or out), rep))
    except SpaError as e:
        if not reports:  # failed before any compile: the report says why
            rep = Report(status="failed", error=e.one_line())
            reports.append(rep)
        raise
    except Exception as e:
        if not reports:
            reports.append(Report(status="failed", error=f"{type(e).__name__}: {e}"))
        raise
    except KeyboardInterrupt as e:
        if not reports:  # stopped before the first compile (loading calibration data, ...)
            _stopped_how(e, early)
            reports.append(early)
        raise
    finally:
        _write_reports(reports, report_path, html_path, several=several)
    return Result(tuple(done), report_path, html_path)


def _extra_options(fn: Callable[..., Any]) -> set[str]:
    """`compile_model`'s keyword arguments that `compile` does not set itself."""
    import inspect as _inspect

    own = {
        "model_path",
        "output_path",
        "pipeline",
        "preset_name",
        "target",
        "budget",
        "input_shapes",
        "calibration",
        "report",
        "validate",
        "measure_runs",
        "threads",
        "precision",
        "latency_table",
        "max_error",
        "seed",
        "progress",
        "measure_latency",
    }
    return set(_inspect.signature(fn).parameters) - own


def _no_progress(task: str, done: int, total: int) -> None:
    del task, done, total


def _write_reports(
    reports: Sequence[Report], json_path: Path | None, html_path: Path | None, *, several: bool
) -> None:
    """The JSON and HTML reports (a comparison with several budgets). A write failure after a run
    that failed is logged (the run's own error stands); after a run that succeeded it raises."""
    if json_path is None and html_path is None:
        return
    from spa_compiler.report import write_text_atomic
    from spa_compiler.reporting import comparison, render

    if several:
        data: dict[str, Any] = comparison([r.to_dict() for r in reports])
    else:
        data = reports[0].to_dict() if reports else Report(status="failed").to_dict()
    ok = all(r.status == "ok" for r in reports)
    for path, text in ((json_path, lambda: _json(data)), (html_path, lambda: render(data))):
        if path is None:
            continue
        try:
            write_text_atomic(path, text())
        except (OSError, SpaError) as e:
            why = e.one_line() if isinstance(e, SpaError) else (e.strerror or str(e))
            if ok:  # a run that succeeded must not exit 0 without the report it was asked for
                from spa_compiler.errors import OutputError

                raise OutputError(f"cannot write the report {path}: {why}") from e
            logger.error("could not write the report to %s: %s", path, why)  # the run's error stands


def _json(data: Mapping[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


# ------------------------------------------------------------------------------------- inspect
@dataclasses.dataclass(frozen=True)
class Inspection:
    """`inspect`'s answer: `data` (what `--json` prints) and `text` (what the CLI prints)."""

    data: dict[str, Any]
    text: str

    def __str__(self) -> str:
        return self.text


def inspect(
    model: PathLike,
    *,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    groups: bool = False,
) -> Inspection:
    """Ops, params, MACs, inputs and prunable chains of `model`, or (`groups=True`) its
    coupled-channel groups, like `spa-compile inspect [--groups]`."""
    shapes = _shapes(input_shapes)
    if groups:
        from spa_compiler.groups.analysis import analyze
        from spa_compiler.groups.report import format_groups, groups_to_json
        from spa_compiler.ir import ModelIR

        from spa_compiler.checks import check_shape_hints

        ir = ModelIR.load(model)
        check_shape_hints(ir, shapes)
        analysis = analyze(ir, input_shapes=shapes)
        return Inspection(groups_to_json(analysis), format_groups(analysis))
    from spa_compiler.inspect import format_inspection, inspect_model

    info = inspect_model(model, shapes)
    return Inspection(info, format_inspection(info))


# ------------------------------------------------------------------------------------- profile
def profile(
    model: PathLike,
    output: PathLike,
    *,
    target: str = "ort-cpu",
    precision: str = "fp32",
    units: str | Sequence[str] = ("channel", "head", "neuron"),
    round_to: int = 0,
    levels: int = 8,
    max_ratio: float = 0.75,
    runs: int = 20,
    threads: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    lower: str = "auto",
) -> Any:
    """Measure a latency table of every prunable group's levels on the target and save it to
    `output` (.json), like `spa-compile profile`; returns the `LatencyTable`.

    `lower`: the variants are timed lowered for the target as `compile` times its candidates
    (auto: the lowering chosen by measurement on the dense model; none; all)."""
    from spa_compiler.checks import check_compute_dtypes, check_runs, check_shape_hints
    from spa_compiler.groups.analysis import analyze
    from spa_compiler.ir import ModelIR
    from spa_compiler.latency.profile import profile_pruning
    from spa_compiler.ort import random_feeds
    from spa_compiler.outputs import check_outputs
    from spa_compiler.targets import get_target

    out = Path(output)
    if out.suffix.lower() != ".json":
        raise UsageError(f"the table {out} should end in .json")
    check_outputs([model], {"-o": out})
    tgt = get_target(target)
    shapes = _shapes(input_shapes)
    ir = ModelIR.load(model)
    check_shape_hints(ir, shapes)
    check_compute_dtypes(ir)
    missing = sorted(set(ir.symbolic_inputs()) - set(shapes))
    if missing:
        raise UsageError(
            f"inputs {missing} have symbolic dimensions", hint="pass --input-shape NAME:DxD"
        )
    check_runs(ir, random_feeds(ir, shapes), shapes)
    unit_list = tuple(
        u.strip() for u in (units.split(",") if isinstance(units, str) else units) if u.strip()
    )
    analysis = analyze(ir, units=unit_list, input_shapes=shapes)
    provider = tgt.provider(precision=precision, threads=threads, runs=runs, input_shapes=shapes)
    if provider.kind == "measured":
        from spa_compiler.lowering.stage import LoweringStage

        stage = LoweringStage.prepare(ir.to_proto(), target=tgt.name, precision=precision, fp16_io=False,
                                      mode=lower, input_shapes=shapes, feeds=random_feeds(ir, shapes),
                                      provider=provider)
        provider = stage.lowered
    table = profile_pruning(
        ir,
        tgt.name,
        provider,
        random_feeds(ir, shapes),
        units=unit_list,
        input_shapes=shapes,
        round_to=round_to,
        max_ratio=max_ratio,
        levels=levels,
        progress=progress or _no_progress,
        analysis=analysis,
    )
    table.save(out)
    return table
