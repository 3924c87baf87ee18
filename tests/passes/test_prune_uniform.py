"""prune-uniform: the same share of every coupled-channel group, through the PassManager.

Positive: structure (widths shrink, every group by the same share), validity (checker + strict
shapes via the PassManager) and numerics (the pass equals prune_groups of the plan it chose, and
the masked-dense oracle holds for that plan). Negative: the skip reasons and option validation.
Hard zoo cases: a residual CNN and a GQA transformer, both exporters.
"""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler import models_zoo
from spa_compiler.context import CompileContext
from spa_compiler.criteria.magnitude import group_magnitude
from spa_compiler.errors import PreconditionError
from spa_compiler.groups.analysis import analyze
from spa_compiler.groups.oracle import oracle_check
from spa_compiler.ir import ModelIR
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.prune_uniform import PruneUniformPass
from spa_compiler.passes.registry import PASSES
from spa_compiler.pipeline import parse
from spa_compiler.validation import check_model
from tests.helpers import conv_chain_model, run_ort


def PruneSpaPass(**kw):  # noqa: N802 - prune-spa's defaults, as its alias keeps them
    return PruneUniformPass(**{"criterion": "magnitude", "min_units": 2, "max_ratio": 0.95, "round_to": 1, **kw})


def test_registered_and_old_names_still_parse() -> None:
    assert PASSES["prune-uniform"] == "spa_compiler.passes.prune_uniform:PruneUniformPass"
    assert PruneUniformPass.__doc__
    (p,) = parse("prune-spa{ratio=0.4,criterion=magnitude-normalized}")
    assert isinstance(p, PruneUniformPass)
    assert (p.criterion, p.normalize, p.ratio, p.min_units, p.round_to) == ("magnitude", True, 0.4, 2, 1)
    (p,) = parse("prune-magnitude{ratio=0.5,min-channels=8}")
    assert isinstance(p, PruneUniformPass) and (p.criterion, p.min_units) == ("magnitude", 8)
    (p,) = parse("prune-ziplm{uniform=true,levels=4,criterion=obspa}")
    assert isinstance(p, PruneUniformPass) and p.criterion == "obspa"
    (p,) = parse("prune-ziplm{levels=4}")
    assert p.name == "prune-to-budget" and p.levels == 4


def test_prunes_conv_chain_and_matches_oracle(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng, c=16))
    reference = model.clone()
    result = PassManager([PruneSpaPass(ratio=0.25)]).run(model, CompileContext())
    assert result.modified
    rec = CompileContext()
    res = PruneSpaPass(ratio=0.25).run(reference.clone(), rec)
    assert res.stats["groups_pruned"] == 2 and res.stats["units_removed"] == 8
    widths = {n.name: tuple(n.inputs[1].shape) for n in model.nodes(("Conv",))}
    assert widths == {"conv1": (12, 3, 3, 3), "conv2": (12, 12, 3, 3), "conv3": (8, 12, 1, 1)}
    # the pass removed the lowest-magnitude units: the oracle for that same plan holds
    an = analyze(reference)
    plan = {d["group"]: _lowest(reference, an, d["group"], d["units"] - d["kept"]) for d in res.details}
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    ores = oracle_check(reference, plan, {"x": x})
    assert ores.max_rel <= 1e-5
    np.testing.assert_allclose(
        run_ort(model, {"x": x})[0], run_ort(ores.pruned, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


def _lowest(model: ModelIR, an, gid: str, k: int) -> list[int]:  # noqa: ANN001
    g = an.group(gid)
    s = group_magnitude(model, g)
    return [int(u) for u in np.argsort(s, kind="stable")[:k]]


def test_round_to_and_skips(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng, c=16))
    res = PruneSpaPass(ratio=0.3, round_to=8).run(model, CompileContext())
    # 30% of 16 = 4.8 removed -> 11 kept -> the nearest multiple of 8 at or above is 16: nothing removed
    assert not res.modified
    assert res.skipped["nothing-to-remove"] == 2
    assert res.skipped["frozen:graph-input"] == 1 and res.skipped["frozen:graph-output"] == 1
    res = PruneSpaPass(ratio=0.5, round_to=8).run(model, CompileContext())
    assert res.modified and all(d["kept"] % 8 == 0 for d in res.details)


def test_min_units_and_zero_ratio(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng, c=16))
    res = PruneSpaPass(ratio=0.5, min_units=32).run(model, CompileContext())
    assert not res.modified and res.skipped["too-few-units"] == 2
    res = PruneSpaPass(ratio=0.0).run(model, CompileContext())
    assert not res.modified and res.skipped["nothing-to-remove"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"units": ("channel", "heads")}, "unknown units"),
        ({"norm": "l3"}, "norm"),
        ({"criterion": "oracle"}, "criterion"),
        ({"round_to": -1}, "round-to"),
    ],
)
def test_option_validation(rng: np.random.Generator, kwargs: dict, message: str) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    with pytest.raises(PreconditionError, match=message):
        PassManager([PruneSpaPass(**kwargs)]).run(model, CompileContext())


@pytest.mark.parametrize("exporter", models_zoo.EXPORTERS)
@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_llama"])
def test_zoo_models(name: str, exporter: str) -> None:
    model = ModelIR.load(models_zoo.build(name, exporter))
    feeds = models_zoo.sample_inputs(name, seed=0)
    params = model.count_params()
    units = ("channel", "head", "neuron", "head_dim")
    result = PassManager([PruneSpaPass(ratio=0.5, units=units)]).run(model, CompileContext())
    assert result.modified
    check_model(model)
    assert model.count_params() < 0.8 * params
    outs = run_ort(model, feeds)
    assert all(np.isfinite(o).all() for o in outs)
    if name == "tiny_llama":  # GQA: 1 of 2 kv heads and 1 of 2 query-in-group heads gone per layer
        shapes = sorted(
            tuple(n.inputs[1].shape)
            for n in model.nodes(("MatMul",))
            if n.inputs[1].__class__.__name__ == "Constant" and n.inputs[1].shape[0] == 64
        )
        assert (
            64,
            8,
        ) in shapes  # k/v projections: 1 kv head x head dim 8 (16 with half the rope pairs)


def test_hidden_width_when_asked() -> None:
    model = ModelIR.load(models_zoo.build("tiny_gpt", "dynamo"))
    res = PassManager([PruneSpaPass(ratio=0.25, include_hidden=True)]).run(model, CompileContext())
    assert res.modified
    emb = next(t for t in model.tensors().values() if t.name == "wte.weight")
    assert emb.shape[1] == 48  # the tied embedding/LM head lost a quarter of the hidden width
