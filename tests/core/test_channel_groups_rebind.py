"""`GroupAnalysis.for_clone`: an analysis rebound to a clone prunes it exactly as a fresh
analysis of the clone would, refuses models of another structure, and leaves the original
analysis valid for its own model."""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler import models_zoo
from spa_compiler.errors import UsageError
from spa_compiler.groups.analysis import ALL_UNITS, analyze, prune_groups, random_plan
from spa_compiler.ir import ModelIR, constant_value
from spa_compiler.ort import random_feeds, run

CASES = [
    (name, exporter)
    for name in ("tiny_resnet", "tiny_shufflenet", "tiny_llama", "tiny_bert")
    for exporter in ("torchscript", "dynamo")
]


def _load(name: str, exporter: str) -> ModelIR:
    return ModelIR.load(models_zoo.build(name, exporter))


def _outputs(model: ModelIR, name: str) -> list[np.ndarray]:
    return run(model, random_feeds(model, models_zoo.default_shapes(name), seed=3))


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_rebound_prune_equals_fresh_analysis(name: str, exporter: str) -> None:
    model = _load(name, exporter)
    before = model.fingerprint()
    analysis = analyze(model, units=ALL_UNITS)
    assert analysis.prunable, "no prunable group: the test would prove nothing"
    rng = np.random.default_rng(11)
    plans = [random_plan(analysis, rng, share=s) for s in (0.25, 0.5, 0.1)]
    for plan in plans:
        rebound_model = model.clone()
        rebound = analysis.for_clone(rebound_model)
        assert [g.id for g in rebound.groups] == [g.id for g in analysis.groups]
        stats_a = prune_groups(rebound_model, plan, analysis=rebound)
        fresh_model = model.clone()
        stats_b = prune_groups(fresh_model, plan, analysis=analyze(fresh_model, units=ALL_UNITS))
        assert stats_a == stats_b
        assert stats_a["units_removed"] > 0
        assert rebound_model.fingerprint() == fresh_model.fingerprint()
        for a, b in zip(_outputs(rebound_model, name), _outputs(fresh_model, name), strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(UsageError):  # a rebound analysis is consumed by its prune
            prune_groups(rebound_model, plan, analysis=rebound)
    assert model.fingerprint() == before  # rebinding never touches the analysed model

    # the original analysis still prunes its own model, as a fresh analysis would
    plan = plans[0]
    reference = _load(name, exporter)  # (a clone serializes differently from a loaded model)
    prune_groups(reference, plan, analysis=analyze(reference, units=ALL_UNITS))
    prune_groups(model, plan, analysis=analysis)
    assert model.fingerprint() == reference.fingerprint()


def test_rebind_after_weight_change_and_after_own_prune() -> None:
    """Weight values are not structure; a consumed analysis can still be rebound to a copy of
    the model as it was analysed (the latency search prunes clones, then the model itself)."""
    model = _load("tiny_llama", "dynamo")
    analysis = analyze(model, units=("head", "neuron"))
    plan = random_plan(analysis, np.random.default_rng(0))
    spare = model.clone()
    changed = model.clone()
    for t in changed.graph.tensors().values():
        c = constant_value(t)
        vals = None if c is None else np.asarray(c.values)
        if vals is not None and vals.dtype.kind == "f" and vals.ndim >= 2:  # weight matrices
            c.values = np.asarray(vals * 1.5, dtype=vals.dtype)
    fresh = changed.clone()
    prune_groups(changed, plan, analysis=analysis.for_clone(changed))
    prune_groups(fresh, plan, analysis=analyze(fresh, units=("head", "neuron")))
    assert changed.fingerprint() == fresh.fingerprint()

    prune_groups(model, plan, analysis=analysis.for_clone(model))  # the model itself, rebound
    reference = _load("tiny_llama", "dynamo")
    prune_groups(reference, plan, analysis=analyze(reference, units=("head", "neuron")))
    assert model.fingerprint() == reference.fingerprint()
    spare_reference = spare.clone()
    prune_groups(spare_reference, plan, analysis=analyze(spare_reference, units=("head", "neuron")))
    prune_groups(spare, plan, analysis=analysis.for_clone(spare))  # after `model` changed
    assert spare.fingerprint() == spare_reference.fingerprint()


def test_rebind_refuses_other_structures() -> None:
    model = _load("tiny_resnet", "torchscript")
    analysis = analyze(model)
    with pytest.raises(UsageError, match="structurally identical"):
        analysis.for_clone(_load("tiny_shufflenet", "torchscript"))
    with pytest.raises(UsageError, match="structurally identical"):
        analysis.for_clone(_load("tiny_resnet", "dynamo"))
    pruned = model.clone()
    prune_groups(pruned, random_plan(analysis, np.random.default_rng(1)), analysis=analysis.for_clone(pruned))
    with pytest.raises(UsageError, match="structurally identical"):
        analysis.for_clone(pruned)
    renamed = model.clone()
    renamed.graph.nodes[3].name = renamed.graph.nodes[3].name + "_x"
    with pytest.raises(UsageError, match="structurally identical"):
        analysis.for_clone(renamed)
    extra = model.clone()
    extra.graph.nodes.pop()
    with pytest.raises(UsageError, match="structurally identical"):
        analysis.for_clone(extra)
    # the analysis is unharmed by the refusals
    target = model.clone()
    prune_groups(target, random_plan(analysis, np.random.default_rng(2)), analysis=analysis.for_clone(target))


def test_rebind_refuses_changed_shape_arithmetic() -> None:
    model = _load("tiny_llama", "torchscript")
    analysis = analyze(model)
    an = analysis._state
    name = next(
        n for n, v in an.memo.items()
        if v is not None and np.asarray(v).dtype.kind == "i" and np.asarray(v).size > 0
        and constant_value(model.graph.tensors()[n]) is not None
    )
    clone = model.clone()
    c = constant_value(clone.graph.tensors()[name])
    assert c is not None
    c.values = np.asarray(c.values) + 1
    with pytest.raises(UsageError, match="integer constant"):
        analysis.for_clone(clone)


def test_rebind_needs_an_analyzer_state() -> None:
    model = _load("tiny_resnet", "dynamo")
    analysis = analyze(model)
    import dataclasses

    with pytest.raises(UsageError):
        dataclasses.replace(analysis, _state=None).for_clone(model.clone())
