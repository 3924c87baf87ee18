"""The exact oracle (docs/algorithms.md §1) on every zoo model from both exporters.

For each model: every prunable group alone (a random 40% of its units), then all prunable groups
at once (two seeds): the masked-dense reference and the physically pruned model agree to float
rounding; pruning nothing leaves the outputs bit-identical; the pruned model keeps its symbolic
batch/sequence dims and runs at other sizes; with the hidden width included, pruning still yields
a valid model that runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler import models_zoo
from spa_compiler.groups.analysis import ALL_UNITS, analyze, prune_groups, random_plan
from spa_compiler.groups.oracle import oracle_check
from spa_compiler.ir import ModelIR
from spa_compiler.validation import check_model
from tests.helpers import run_ort

CASES = [(n, e) for n in models_zoo.list_models() for e in models_zoo.EXPORTERS]
CNNS = {"tiny_resnet", "tiny_mobilenet", "tiny_densenet", "tiny_shufflenet"}
REL = 1e-5


def _load(name: str, exporter: str) -> ModelIR:
    return ModelIR.load(models_zoo.build(name, exporter))


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_oracle_every_group(name: str, exporter: str) -> None:
    model = _load(name, exporter)
    feeds = models_zoo.sample_inputs(name, seed=3)
    an = analyze(model, units=ALL_UNITS)
    assert an.prunable, [(g.id, g.reason) for g in an.groups]
    assert not an.unknown_ops
    rng = np.random.default_rng(7)
    for g in an.prunable:
        res = oracle_check(model, random_plan(an, rng, share=0.4, groups=[g]), feeds)
        assert res.max_rel <= REL, (g.id, res.max_abs)
    for seed in (0, 1):
        plan = random_plan(an, np.random.default_rng(seed), share=0.25)
        res = oracle_check(model, plan, feeds)
        assert res.max_rel <= REL, (seed, res.max_abs)
        assert res.params_after < res.params_before


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_every_unit_kind_found(name: str, exporter: str) -> None:
    an = analyze(_load(name, exporter), units=ALL_UNITS)
    kinds = {g.unit for g in an.prunable}
    if name in CNNS:
        assert kinds == {"channel"}
        assert an.coverage == pytest.approx(1.0)
    else:
        assert {"head", "head_dim", "neuron"} <= kinds
        assert any(g.unit == "hidden" and g.frozen for g in an.groups)
        assert an.coverage >= 0.8
    if name == "tiny_llama":  # GQA: kv heads (with their query group) and the query-in-group index
        assert sorted(g.n_units for g in an.prunable if g.unit == "head") == [2, 2, 2, 2]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_pruning_nothing_is_identity(name: str, exporter: str) -> None:
    model = _load(name, exporter)
    feeds = models_zoo.sample_inputs(name, seed=0)
    before = run_ort(model, feeds)
    an = analyze(model)
    fingerprint = model.fingerprint()
    stats = prune_groups(model, {g.id: [] for g in an.prunable}, analysis=an)
    assert stats["units_removed"] == 0
    assert model.fingerprint() == fingerprint
    for a, b in zip(before, run_ort(model, feeds), strict=False):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_hidden_width_and_dynamic_dims(name: str, exporter: str) -> None:
    model = _load(name, exporter)
    symbolic = {t.name: list(t.shape) for t in model.graph.inputs}
    an = analyze(model, units=ALL_UNITS, include_hidden=True)
    plan = random_plan(an, np.random.default_rng(5), share=0.3)
    prune_groups(model, plan, analysis=an, round_to=2)
    check_model(model)
    assert {t.name: list(t.shape) for t in model.graph.inputs} == symbolic
    spec = models_zoo.get_model(name)
    shapes = {k: list(v) for k, v in spec.input_shapes.items()}
    for tensor, axes in spec.dynamic_axes.items():
        if tensor in shapes:
            for axis in axes:
                shapes[tensor][axis] += 3
    feeds = models_zoo.sample_inputs(name, seed=1, shapes={k: tuple(v) for k, v in shapes.items()})
    outs = run_ort(model, feeds)
    assert all(np.isfinite(o).all() for o in outs if np.issubdtype(o.dtype, np.floating))
