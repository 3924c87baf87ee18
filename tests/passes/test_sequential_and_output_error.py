"""Sequential calibration (criteria.sequential) and the measured output error in the pruning search."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler import fidelity
from spa_compiler.calibration import ActivationCollector, keep_only
from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR
from spa_compiler.ort import run
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.prune_to_budget import PruneToBudgetPass
from spa_compiler.validation import check_model
from tests.helpers import make_model, relative_output_error
from tests.passes.test_prune_to_budget import MacsProvider

D = 16


def deep_mlp(rng: np.random.Generator, depth: int = 4, hidden: int = 48, batch: int = 64) -> onnx.ModelProto:
    """x -> [MatMul -> Relu -> MatMul] x depth -> y: `depth` neuron groups in a chain, each the
    input of the next block (what sequential calibration changes)."""
    f = np.float32
    init: dict[str, np.ndarray] = {}
    nodes = []
    cur = "x"
    for i in range(depth):
        init[f"u{i}"] = (rng.standard_normal((D, hidden)) / np.sqrt(D)).astype(f)
        init[f"d{i}"] = (rng.standard_normal((hidden, D)) / np.sqrt(hidden) * 1.5).astype(f)
        nodes += [
            helper.make_node("MatMul", [cur, f"u{i}"], [f"h{i}"], name=f"up{i}"),
            helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"act{i}"),
            helper.make_node("MatMul", [f"r{i}", f"d{i}"], [f"o{i}"], name=f"down{i}"),
        ]
        cur = f"o{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    vi = helper.make_tensor_value_info
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [batch, D])], [vi("y", TensorProto.FLOAT, [batch, D])], init)


_MIX = np.random.default_rng(5).standard_normal((D, D)).astype(np.float32)


def _calib(rng: np.random.Generator, n: int = 8, batch: int = 64) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.standard_normal((batch, D)).astype(np.float32) @ _MIX} for _ in range(n)]


def _prune(dense: onnx.ModelProto, calib: list[dict[str, np.ndarray]], **kw: object) -> tuple[ModelIR, dict]:
    model = ModelIR.from_proto(dense)
    ctx = CompileContext(calibration=calib)
    PassManager([PruneToBudgetPass(round_to=1, criterion="obs", ratio=0.6, **kw)]).run(model, ctx)
    (rec,) = ctx.report.passes
    return model, rec.stats


def test_sequential_calibration_beats_one_shot_on_a_deep_chain(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng)
    calib, held_out = _calib(rng), _calib(np.random.default_rng(11))
    one, s1 = _prune(dense, calib, sequential=0)
    seq, s4 = _prune(dense, calib, sequential=4)
    check_model(seq)
    assert s1["calibration_stages"] == 1
    # 7 groups (4 hidden widths, 3 residual-free block outputs); stage 1 (2 groups) keeps its paths
    assert s4["calibration_stages"] == 4 and s4["groups_recalibrated"] == s4["groups_pruned"] - 2
    assert seq.tensors()["d3"].values.shape == one.tensors()["d3"].values.shape
    e1, e4 = relative_output_error(one, dense, held_out), relative_output_error(seq, dense, held_out)
    assert e4 < e1, (e4, e1)
    # the first group's inputs are the dense model's: its re-fit is the same in both
    np.testing.assert_allclose(seq.tensors()["d0"].values, one.tensors()["d0"].values, rtol=1e-5, atol=1e-6)


def test_sequential_with_two_stages_runs_one_extra_pass(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng, depth=4)
    _, st = _prune(dense, _calib(rng), sequential=2)
    assert st["calibration_stages"] == 2 and 0 < st["groups_recalibrated"] < st["groups_pruned"]


def test_collector_prune_runs_only_the_prefix_and_gives_the_same_values(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng)
    feed = _calib(rng, n=1)[0]
    full = ActivationCollector(ModelIR.from_proto(dense), ["r1"]).run(feed)["r1"]
    pruned = ActivationCollector(ModelIR.from_proto(dense), ["r1"], prune=True).run(feed)["r1"]
    np.testing.assert_array_equal(full, pruned)
    g = onnx.GraphProto()
    g.CopyFrom(dense.graph)
    keep_only(g, ["r1"])
    assert [n.name for n in g.node] == ["up0", "act0", "down0", "up1", "act1"]
    assert [o.name for o in g.output] == []  # r1 is not (yet) an output: _add_outputs adds it first


def test_search_records_predicted_and_measured_output_error(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng)
    calib = _calib(rng)
    model = ModelIR.from_proto(dense)
    provider = MacsProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * dense_ms, max_error=10.0, calibration=calib)
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", error_feeds=2)]).run(model, ctx)
    (rec,) = ctx.report.passes
    st = rec.stats
    assert st["budget_met"] is True
    assert st["output_error_feeds"] == "calibration" and "cosine of y" in st["output_error_measure"]
    rounds = next(d["search_rounds"] for d in rec.details if "search_rounds" in d)
    assert all("measured_output_error" in r and "predicted_output_error" in r for r in rounds)
    # the reported figure is the final model's: 1 - mean cosine on the first two calibration feeds
    want = np.mean([fidelity.output_error(run(dense, f)[0], run(model, f)[0], "cosine") for f in calib[:2]])
    assert st["output_error"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert st["output_error_final"] == pytest.approx(want, rel=1e-4, abs=1e-6)  # magnitude: no re-fit


def test_output_error_bound_refuses_a_budget(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng)
    model = ModelIR.from_proto(dense)
    provider = MacsProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.4 * dense_ms, max_error=10.0, calibration=_calib(rng))
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", max_output_error=1e-6)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert rec.stats["budget_met"] is False
    assert "output error" in rec.stats["unreachable"]


def test_error_feeds_zero_turns_it_off(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng)
    model = ModelIR.from_proto(dense)
    provider = MacsProvider()
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * provider.time(model, {}).ms, max_error=10.0,
                         calibration=_calib(rng))
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", error_feeds=0)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert "output_error" not in rec.stats


def test_error_feeds_auto_uses_calibration_until_enough_rows_and_is_off_without(rng: np.random.Generator) -> None:
    dense = deep_mlp(rng, batch=64)
    provider = MacsProvider()
    for calib, want in ((_calib(rng, n=40), 16), (None, None)):  # 64 rows a feed: 1024 rows = 16 feeds
        model = ModelIR.from_proto(dense)
        ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * provider.time(model, {}).ms, max_error=10.0,
                             calibration=calib)
        PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude")]).run(model, ctx)
        (rec,) = ctx.report.passes
        if want is None:
            assert "output_error" not in rec.stats
        else:
            assert f"on {want} feed(s)" in rec.stats["output_error_measure"]


def test_sequential_passes_start_at_the_previous_stage(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stage's pass is fed the cut before the previous stage (captured by the previous pass)
    instead of running the model from its inputs: the same re-fitted weights, fewer nodes run."""
    from spa_compiler.criteria import paths as paths_mod
    from spa_compiler.criteria import sequential

    dense = deep_mlp(rng, depth=6)
    calib = _calib(rng)
    fed_sets = []
    real = paths_mod.collect_hessians

    def spy(*a, **kw):
        fed_sets.append(tuple(kw.get("fed", ())))
        return real(*a, **kw)

    monkeypatch.setattr(paths_mod, "collect_hessians", spy)
    cut, _ = _prune(dense, calib, sequential=4)
    assert sum(1 for f in fed_sets if f) >= 2  # stages 3 and 4 started at a cut
    monkeypatch.setattr(sequential._Cuts, "at", lambda self, q: None)
    fed_sets.clear()
    full, _ = _prune(dense, calib, sequential=4)
    assert not any(fed_sets)
    a, b = cut.tensors(), full.tensors()
    for name in [f"d{i}" for i in range(6)] + [f"u{i}" for i in range(6)]:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-6, atol=1e-7)
