"""PassManager: requirement pre-check, the run loop, validation after each pass, the report."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

from spa_compiler.context import CompileContext
from spa_compiler.errors import MissingRequirementError, PassError, SpaError
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.report import PassRecord
from spa_compiler.requirements import Requirement
from spa_compiler.validation import validate_after

logger = logging.getLogger(__name__)

Validate = Literal["each", "end", "off"]


class PassManager:
    """Runs passes in order on one ModelIR, in place.

    Args:
        passes: The pipeline.
        validate: "each" (checker + strict shape inference after every modifying pass; default),
            "end" (once at the end, for large models) or "off".
        keep_input: Work on a clone so the caller's ModelIR is untouched.
    """

    def __init__(
        self, passes: Sequence[Pass], *, validate: Validate = "each", keep_input: bool = False
    ) -> None:
        if validate not in ("each", "end", "off"):
            raise ValueError(f"validate must be 'each', 'end' or 'off', not {validate!r}")
        self.passes = tuple(passes)
        self.validate = validate
        self.keep_input = keep_input

    def check_requirements(self, model: ModelIR, ctx: CompileContext) -> None:
        """Raise one MissingRequirementError listing every unmet (pass, requirement) pair."""
        unmet: list[tuple[str, Requirement]] = []
        for p in self.passes:
            for req in sorted(p.requirements(), key=lambda r: r.value):
                if req is Requirement.STATIC_SHAPES:
                    if set(model.symbolic_inputs()) - set(ctx.input_shapes):
                        unmet.append((p.name, req))
                elif not ctx.provides(req):
                    unmet.append((p.name, req))
        if unmet:
            what = "; ".join(f"pass {n!r} needs {r.description}" for n, r in unmet)
            flags = ", ".join(sorted({r.flag for _, r in unmet}))
            raise MissingRequirementError(what, hint=f"pass {flags}")

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        """Run every pass; returns a result over the whole pipeline."""
        self.check_requirements(model, ctx)
        for p in self.passes:
            p.check_preconditions(model, ctx)
        if self.keep_input:
            model = model.clone()
        any_modified = False
        totals: dict[str, float] = {}
        for i, p in enumerate(self.passes):
            started = time.perf_counter()
            rec = PassRecord(name=p.name, options=p.options(), modified=False, seconds=0.0)
            ctx.report.stage = f"pass {p.name}"
            try:
                logger.info("running pass %s %s", p.name, p.options())
                result = p.run(model, ctx)
                if result.model is not model:
                    raise PassError(
                        f"pass {p.name!r} returned a different ModelIR; passes must edit in place",
                        hint="pass developer: return PassResult(model, ...) with the model you got",
                    )
                rec.modified = result.modified
                rec.stats = dict(result.stats)
                rec.skipped = dict(result.skipped)
                rec.details = list(result.details)
                ctx.report.notes.extend(result.notes)
                if result.modified:
                    model.version += 1
                    model.cleanup()
                    if self.validate == "each":
                        validate_after(model, p.name)
            except SpaError as e:
                rec.error = e.one_line()
                raise
            except Exception as e:
                done = [q.name for q in self.passes[:i]]
                rec.error = f"{type(e).__name__}: {e}"
                raise PassError(
                    f"pass {p.name!r} failed ({type(e).__name__}: {e}) after passes {done}",
                    hint="run with -vv for the traceback and report it with the model",
                ) from e
            finally:
                rec.seconds = time.perf_counter() - started
                ctx.report.record(rec)
            any_modified |= result.modified
            for k, v in result.stats.items():
                if isinstance(v, (int, float)):
                    totals[f"{p.name}.{k}"] = v
            logger.info(
                "pass %s: %s in %.2fs", p.name, "modified" if result.modified else "no change", rec.seconds
            )
        if any_modified and self.validate == "end":
            validate_after(model, self.passes[-1].name if self.passes else "(none)")
        return PassResult(model, modified=any_modified, stats=totals)
