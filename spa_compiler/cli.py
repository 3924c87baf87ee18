"""`spa-compile`: the command-line front end.

Exit codes: 0 ok, 1 pass failure, 2 usage error or missing requirement, 3 invalid input model,
130 / 143 stopped by SIGINT / SIGTERM (`spa_compiler.signals`).
Errors are one line on stderr; the traceback only with -vv.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spa_compiler import signals  # installed already when this process is the command (__init__)
from spa_compiler.errors import SpaError, UsageError

logger = logging.getLogger("spa_compiler")

VERBS = ("compile", "inspect", "list-passes", "demo", "profile", "report")

EXIT_OK, EXIT_PASS, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug + tracebacks")


def _add_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DxD",
        help="fix a symbolic input's shape, e.g. input_ids:8x512 (repeatable)",
    )


class _NoCache(argparse.Action):
    """--no-cache: the process's timing cache off (spa_compiler.latency.cache)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        from spa_compiler.latency.cache import ENV_DISABLE

        os.environ[ENV_DISABLE] = "1"
        setattr(namespace, self.dest, True)


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action=_NoCache, nargs=0, default=False,
                   help="do not read or write the timing cache (also: SPA_COMPILER_NO_CACHE=1)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = _ArgumentParser(
        prog="spa-compile",
        description="Structured compression of ONNX models to a measured latency budget.",
        epilog="exit codes: 0 ok, 1 pass failure, 2 usage/missing requirement, 3 invalid model, "
        "130 stopped by SIGINT, 143 stopped by SIGTERM. "
        "`spa-compile MODEL ...` means `spa-compile compile MODEL ...`.",
    )
    sub = parser.add_subparsers(dest="verb", parser_class=_ArgumentParser)

    c = sub.add_parser("compile", help="compress a model (the default verb)")
    c.add_argument("model", help="input .onnx file (never modified)")
    c.add_argument("-o", "--output", help="output .onnx (default: MODEL.spa.onnx beside the input)")
    c.add_argument("--latency-budget", help="milliseconds (12.5) or fraction of dense latency (0.6x); several "
                   "(0.8x,0.6x) write one model per budget, OUTPUT_STEM.<budget>.onnx, and one comparison report")
    c.add_argument("--target", default="ort-cpu", help="ort-cpu (default), ort-cuda or tensorrt")
    g = c.add_mutually_exclusive_group()
    g.add_argument("-p", "--passes", help='pipeline spec, e.g. "cleanup,prune-uniform{ratio=0.3}"')
    g.add_argument("--preset", help="named pipeline (see list-passes)")
    c.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="precision the target runs in (ort-cuda/tensorrt timing)")
    c.add_argument("--lower", default="auto", choices=("auto", "none", "all"),
                   help="target lowering (fused runtime ops): auto keeps what measures faster, "
                        "none, or all that pass the numerical check")
    c.add_argument("--budget-relative-to", default="given", choices=("given", "lowered"),
                   help="a relative budget (0.6x) multiplies the model as given (default) or its lowered dense form")
    c.add_argument("--fp16-io", action="store_true",
                   help="with --precision fp16: float16 graph inputs/outputs too (default: float32 kept)")
    c.add_argument("--latency-table", help="a latency table from `spa-compile profile` (JSON)")
    c.add_argument("--max-error", type=float, default=None,
                   help="bound on the search's summed error (normalized); beyond it a budget is unreachable")
    c.add_argument("--calib", help="calibration data: a folder of .npz/.npy or test_data_set_*, or module:function")
    c.add_argument("--report", help="write the JSON report here (written even on failure)")
    c.add_argument("--report-html", help="write the HTML report here: one self-contained page (written even on failure)")
    c.add_argument("--validate", default="each", choices=("each", "end", "off"), help="when to validate")
    c.add_argument("--runs", type=int, default=30, help="timed runs per latency measurement (median)")
    c.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads when timing")
    c.add_argument("--no-measure", action="store_true", help="skip latency measurement")
    c.add_argument("--seed", type=int, default=0)
    _add_cache(c)
    _add_shapes(c)
    _add_common(c)

    i = sub.add_parser("inspect", help="ops, params, MACs, inputs, and what is prunable")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--groups", action="store_true", help="list the coupled-channel groups (prunable or frozen, why)")
    i.add_argument("--lower", action="store_true",
                   help="what lowering would do: each fusion family's fused ops and numerical check (not timed)")
    i.add_argument("--target", default="ort-cpu", help="target for --lower (ort-cpu, ort-cuda, tensorrt)")
    _add_shapes(i)
    _add_common(i)

    pr = sub.add_parser("profile", help="measure a latency table of every prunable group's levels")
    pr.add_argument("model")
    pr.add_argument("-o", "--output", required=True, help="the table (JSON)")
    pr.add_argument("--target", default="ort-cpu", help="ort-cpu (default), ort-cuda or tensorrt")
    pr.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    pr.add_argument("--lower", default="auto", choices=("auto", "none", "all"),
                    help="time the variants lowered for the target, as compile does (default auto)")
    pr.add_argument("--units", default="channel,head,neuron", help="unit kinds to profile")
    pr.add_argument("--round-to", type=int, default=0,
                    help="hardware-friendly width multiple (default 0: the target's, 8 or 16)")
    pr.add_argument("--levels", type=int, default=8, help="levels per group (dense included)")
    pr.add_argument("--max-ratio", type=float, default=0.75, help="largest share of a group removed")
    pr.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median)")
    pr.add_argument("--threads", type=int, default=1)
    _add_cache(pr)
    _add_shapes(pr)
    _add_common(pr)

    lp = sub.add_parser("list-passes", help="passes, their options and requirements; presets")
    lp.add_argument("--json", action="store_true")
    _add_common(lp)

    rp = sub.add_parser("report", help="render a saved report.json as the HTML report")
    rp.add_argument("report", help="a JSON report written by --report (one budget or a comparison)")
    rp.add_argument("-o", "--output", help="the HTML file (default: the report's name with .html)")
    _add_common(rp)

    d = sub.add_parser("demo", help="compile a bundled default model and print the report")
    d.add_argument("--out-dir", default="spa-demo", help="where the demo writes its files")
    d.add_argument("--runs", type=int, default=50)
    _add_common(d)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("spa_compiler")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Progress:
    """ctx.progress -> tqdm bars on stderr; only shown for tasks that take more than a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bars: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        # not a terminal (a piped or redirected log): plain, rate-limited lines instead of bars
        self.log: Any = None
        if enabled and not self.enabled and os.environ.get("SPA_COMPILER_PROGRESS", "1") != "0":
            from spa_compiler.progress import LogProgress

            # lines start once the passes run (their option checks come first) or after 8 s
            self.log = LogProgress(prefix="spa-compile ", heartbeat=True,
                                   hold=("load", "lower", "measure dense"))

    def __call__(self, task: str, done: int, total: int) -> None:
        if self.log is not None:
            self.log(task, done, total)
        if not self.enabled:
            return
        now = time.monotonic()
        self.started.setdefault(task, now)
        bar = self.bars.get(task)
        if bar is None and now - self.started[task] > 1.0 and done < total:
            from tqdm import tqdm

            bar = self.bars[task] = tqdm(total=total, desc=task, leave=False, file=sys.stderr)
        if bar is not None:
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()
                del self.bars[task]

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def cmd_compile(args: argparse.Namespace) -> int:
    from spa_compiler.api import compile as compile_api

    progress = _Progress(enabled=True)
    try:
        result = compile_api(
            args.model, output=args.output, budget=args.latency_budget, target=args.target, calib=args.calib,
            passes=args.passes, preset=args.preset, latency_table=args.latency_table,
            input_shapes=args.input_shape, precision=args.precision, max_error=args.max_error,
            validate=args.validate, runs=args.runs, threads=args.threads, measure=not args.no_measure,
            seed=args.seed, report=args.report, report_html=args.report_html, progress=progress,
            lower=args.lower, budget_relative_to=args.budget_relative_to, fp16_io=args.fp16_io,
        )
    finally:
        progress.close()
    print(result.summary())
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from spa_compiler.reporting import load_report, write_html

    src = Path(args.report)
    out = Path(args.output) if args.output else src.with_suffix(".html")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"the HTML report {out} should end in .html", hint="e.g. -o report.html")
    data = load_report(src)
    print(f"wrote {write_html(out, data)}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from spa_compiler.api import inspect

    if args.lower:
        from spa_compiler.compile import parse_input_shapes
        from spa_compiler.lowering.inspect import format_lowering, inspect_lowering

        res = inspect_lowering(args.model, target=args.target,
                               input_shapes=parse_input_shapes(args.input_shape))
        print(json.dumps(res, indent=2) if args.json else format_lowering(res))
        return EXIT_OK
    info = inspect(args.model, input_shapes=args.input_shape, groups=args.groups)
    print(json.dumps(info.data, indent=2) if args.json else info.text)
    return EXIT_OK


def cmd_list_passes(args: argparse.Namespace) -> int:
    from spa_compiler.pass_base import option_infos
    from spa_compiler.passes.registry import PASSES
    from spa_compiler.pipeline import PRESETS, pass_class

    entries = []
    for name in PASSES:
        cls = pass_class(name)
        entries.append(
            {
                "name": name,
                "summary": (cls.__doc__ or "").strip().splitlines()[0],
                "requires": sorted(r.value for r in cls.requires),
                "options": [
                    {"name": o.name, "type": o.type, "default": o.default, "doc": o.doc}
                    for o in option_infos(cls)
                ],
            }
        )
    if args.json:
        print(json.dumps({"passes": entries, "presets": PRESETS}, indent=2, default=str))
        return EXIT_OK
    for e in entries:
        req = f"  [needs: {', '.join(e['requires'])}]" if e["requires"] else ""
        print(f"{e['name']}: {e['summary']}{req}")
        for o in e["options"]:
            print(f"    {o['name']} ({o['type']}, default {o['default']!r}): {o['doc']}")
    print("\npresets:")
    for k, v in PRESETS.items():
        print(f"    {k}: {v or '(empty pipeline)'}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from spa_compiler.demo import run_demo

    progress = _Progress(enabled=True)
    try:
        report = run_demo(Path(args.out_dir), runs=args.runs, progress=progress)
    finally:
        progress.close()
    print(report.summary())
    out = Path(args.out_dir)
    print(f"wrote {report.output.get('path')}, {out / 'report.json'} and {out / 'report.html'} "
          "(open it in a browser)")
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from spa_compiler.api import profile

    progress = _Progress(enabled=True)
    try:
        table = profile(args.model, args.output, target=args.target, precision=args.precision, units=args.units,
                        round_to=args.round_to, levels=args.levels, max_ratio=args.max_ratio, runs=args.runs,
                        threads=args.threads, input_shapes=args.input_shape, progress=progress,
                        lower=args.lower)
    finally:
        progress.close()
    print(f"{len(table.groups)} groups, dense {table.dense_ms:.4f} ms, base {table.base_ms:.4f} ms "
          f"({table.kind}, {table.provenance.device}, {table.provenance.runtime} "
          f"{table.provenance.runtime_version}); wrote {args.output}")
    return EXIT_OK


COMMANDS = {
    "profile": cmd_profile,
    "compile": cmd_compile,
    "inspect": cmd_inspect,
    "list-passes": cmd_list_passes,
    "demo": cmd_demo,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        if signals.installed() and not signals.armed():
            signals.arm()  # installed at import (the command): raise a signal received meanwhile
        else:
            signals.install()  # first: a Ctrl-C or SIGTERM from here on ends with one line
        return _main(argv)
    except KeyboardInterrupt as e:  # raised while an error was being reported
        return _stopped(e)


def _stopped(e: KeyboardInterrupt) -> int:
    name = getattr(e, "name", "SIGINT")
    stage = getattr(e, "stage", None)
    where = f" during {stage}" if stage else ""
    print(f"spa-compile: stopped by {name}{where}; nothing half-written was left", file=sys.stderr)
    return int(getattr(e, "exit_code", signals.EXIT_SIGINT))


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = sum(a.count("v") for a in argv if a.startswith("-v") and set(a[1:]) == {"v"})
    verbose += argv.count("--verbose")
    if argv and argv[0] not in VERBS and argv[0] not in ("-h", "--help") and not argv[0].startswith("-"):
        argv.insert(0, "compile")
    _setup_logging(verbose)
    try:
        args = build_parser().parse_args(argv)
        if args.verb is None:
            build_parser().print_help()
            return EXIT_USAGE
        return COMMANDS[args.verb](args)
    except SpaError as e:
        if verbose >= 2:
            logger.exception("error")
        print(f"spa-compile: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _stopped(e)
    except BrokenPipeError:
        # the reader went away (`spa-compile list-passes | head`): not an error of ours; stop quietly
        # and keep Python from complaining again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        if verbose >= 2:
            logger.exception("internal error")
        print(
            f"spa-compile: internal error: {type(e).__name__}: {e} (run with -vv for the traceback)",
            file=sys.stderr,
        )
        return EXIT_PASS
