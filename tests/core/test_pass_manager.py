"""PassManager: requirement pre-check, in-place promise, validation naming the pass, the report."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from spa_compiler.context import CompileContext
from spa_compiler.errors import MissingRequirementError, PassError, ValidationError
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.cleanup import CleanupPass
from spa_compiler.requirements import Requirement
from tests.helpers import conv_chain_model


@dataclasses.dataclass(frozen=True)
class _NeedsCalib(Pass):
    """Needs calibration."""

    name: ClassVar[str] = "needs-calib"
    requires: ClassVar[frozenset[Requirement]] = frozenset({Requirement.CALIBRATION})

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return PassResult(model, modified=False)


@dataclasses.dataclass(frozen=True)
class _NeedsLatencyAndShapes(Pass):
    """Needs a latency model and static shapes."""

    name: ClassVar[str] = "needs-latency"
    requires: ClassVar[frozenset[Requirement]] = frozenset(
        {Requirement.LATENCY_MODEL, Requirement.STATIC_SHAPES}
    )

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return PassResult(model, modified=False)


@dataclasses.dataclass(frozen=True)
class _Breaks(Pass):
    """Corrupts the weight shape of the second conv."""

    name: ClassVar[str] = "breaks"

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        w = model.tensors()["w2"]
        w.values = w.values[:, :5]
        return PassResult(model, modified=True)


@dataclasses.dataclass(frozen=True)
class _Raises(Pass):
    """Raises a plain exception."""

    name: ClassVar[str] = "raises"

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        raise ZeroDivisionError("oops")


@dataclasses.dataclass(frozen=True)
class _ReturnsOther(Pass):
    """Breaks the in-place promise."""

    name: ClassVar[str] = "returns-other"

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return PassResult(model.clone(), modified=True)


def _model(rng: np.random.Generator) -> ModelIR:
    return ModelIR.from_proto(conv_chain_model(rng))


def test_all_missing_requirements_reported_before_any_work(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model = ModelIR.from_proto(proto)
    before = model.fingerprint()
    pm = PassManager([_Breaks(), _NeedsCalib(), _NeedsLatencyAndShapes()])
    with pytest.raises(MissingRequirementError) as e:
        pm.run(model, CompileContext())
    msg = e.value.one_line()
    assert "needs-calib" in msg and "calibration" in msg
    assert "latency model" in msg and "fixed dimensions" in msg
    assert "--calib" in msg and "--input-shape" in msg
    assert model.fingerprint() == before  # 'breaks' never ran


def test_validation_names_the_pass(rng: np.random.Generator) -> None:
    ctx = CompileContext()
    with pytest.raises(ValidationError, match="after pass 'breaks'"):
        PassManager([CleanupPass(), _Breaks()]).run(_model(rng), ctx)
    assert [r.name for r in ctx.report.passes] == ["cleanup", "breaks"]
    assert ctx.report.passes[-1].error


def test_validation_off_lets_it_through(rng: np.random.Generator) -> None:
    PassManager([_Breaks()], validate="off").run(_model(rng), CompileContext())


def test_exceptions_wrapped_with_pass_name(rng: np.random.Generator) -> None:
    with pytest.raises(PassError, match="'raises' failed .*ZeroDivisionError.*after passes \\['cleanup'\\]"):
        PassManager([CleanupPass(), _Raises()]).run(_model(rng), CompileContext())


def test_in_place_promise_enforced(rng: np.random.Generator) -> None:
    with pytest.raises(PassError, match="different ModelIR"):
        PassManager([_ReturnsOther()]).run(_model(rng), CompileContext())


def test_keep_input_leaves_caller_model_alone(rng: np.random.Generator) -> None:
    from spa_compiler.passes.prune_uniform import PruneUniformPass

    model = _model(rng)
    before = model.fingerprint()
    result = PassManager([PruneUniformPass(criterion="magnitude", ratio=0.5)], keep_input=True).run(model, CompileContext())
    assert result.modified and result.model is not model
    assert model.fingerprint() == before


def test_report_records_stats_and_time(rng: np.random.Generator) -> None:
    from spa_compiler.passes.prune_uniform import PruneUniformPass

    ctx = CompileContext()
    model = _model(rng)
    PassManager([PruneUniformPass(criterion="magnitude", ratio=0.5)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert rec.modified and rec.stats["groups_pruned"] == 2 and rec.seconds >= 0
    assert rec.skipped == {"frozen:graph-input": 1, "frozen:graph-output": 1}
    assert model.version == 1
