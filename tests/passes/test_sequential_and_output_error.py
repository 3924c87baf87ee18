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


def test_sequential_refit_solves_each_consumer_once(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The masked re-fit of a stage is the plan's re-fit: applying the plan reuses it (no second
    solve per consumer) and writes the same weights as solving again."""
    from spa_compiler.criteria import obs

    dense = deep_mlp(rng, depth=4)
    calib = _calib(rng)
    calls = []
    real = obs.solve_kept

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(obs, "solve_kept", spy)
    model, st = _prune(dense, calib, sequential=4)
    assert st["weights_refitted"] > 0 and len(calls) == st["weights_refitted"], (len(calls), st)
    from spa_compiler.criteria.paths import GroupPath

    monkeypatch.setattr(GroupPath, "fitted", property(lambda self: {}, lambda self, v: None), raising=False)
    calls.clear()
    again, _ = _prune(dense, calib, sequential=4)
    assert len(calls) > st["weights_refitted"]  # without the cache: solved at mask and at apply
    for name in [f"d{i}" for i in range(4)]:
        np.testing.assert_array_equal(model.tensors()[name].values, again.tensors()[name].values)


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


def test_uniform_candidates_are_measured_and_the_least_measured_error_wins(rng: np.random.Generator) -> None:
    """With the output error measured, one share of every group of a kind competes with the
    searched plans; the plan kept is the one of least measured output error within the budget.
    uniform-candidates=false measures none."""
    dense = deep_mlp(rng)
    calib = _calib(rng)

    def compile_(**kw: object) -> tuple[dict, list[dict]]:
        model = ModelIR.from_proto(dense)
        provider = MacsProvider()
        ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * provider.time(model, {}).ms,
                             max_error=10.0, calibration=calib)
        PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", error_feeds=2, **kw)]).run(model, ctx)
        (rec,) = ctx.report.passes
        return rec.stats, next(d["search_rounds"] for d in rec.details if "search_rounds" in d)

    st, rounds = compile_()
    cands = [r for r in rounds if r["status"] == "uniform-candidate" and "measured_ms" in r]
    assert cands and all("measured_output_error" in r and r["uniform_share"] > 0 for r in cands)
    within = [r["measured_output_error"] for r in rounds
              if "measured_ms" in r and r["measured_ms"] <= st["aimed_ms"] * (1 + 1e-9)]
    assert st["budget_met"] is True and st["output_error"] == pytest.approx(min(within))
    chosen = rounds[st["chosen_round"] - 1]  # the report says which round's plan was kept
    assert chosen["measured_output_error"] == st["output_error"]
    assert st["chosen_from"] == chosen.get("family", "search")
    assert not [r for r in rounds if "cut more" in str(r.get("family"))]  # graded: off by default
    _st, off = compile_(uniform_candidates=False)
    assert not [r for r in off if r["status"] == "uniform-candidate"]


def test_graded_variants_cut_deeper_groups_more_or_less_by_graph_order(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The graded variants of a kind's family (uniform-graded=true): the share removed grows (slope
    +0.5) or falls (-0.5) linearly with the group's graph position, and they are measured after
    the plain family."""
    import spa_compiler.passes._pruning as pruning

    seen: dict[str, object] = {}
    real = pruning.meet_budget

    def spy(*a: object, **kw: object):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(pruning, "meet_budget", spy)
    dense = deep_mlp(rng, depth=5)
    model = ModelIR.from_proto(dense)
    provider = MacsProvider()
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * provider.time(model, {}).ms, max_error=10.0,
                         calibration=_calib(rng))
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", error_feeds=2, uniform_graded=True)]).run(
        model, ctx)
    variants = seen["uniform_variants"]
    assert isinstance(variants, dict)
    (fam,) = variants
    # graph order: up0 (its units read by down0), down0 (read by up1), up1, ...
    groups = [g for i in range(5) for g in seen["dense_plan"] if str(g).split(":")[0] in (f"up{i}", f"down{i}")]
    dense_units = seen["dense_plan"]
    for name, sign in ((f"{fam}, deeper cut more", 1), (f"{fam}, earlier cut more", -1)):
        plan = variants[fam][name](0.4)
        share = [1 - int(plan[g]) / int(dense_units[g]) for g in groups]  # type: ignore[call-overload]
        # a share of 16 or 48 units rounds: monotone to within one unit of the narrower group
        assert all(sign * (b - a) > -1 / 16 for a, b in zip(share, share[1:])), (name, share)
        assert sign * (share[-1] - share[0]) > 0.25, (name, share)
    (rec,) = ctx.report.passes
    rounds = next(d["search_rounds"] for d in rec.details if "search_rounds" in d)
    fams = [r.get("family") for r in rounds if r["status"] == "uniform-candidate"]
    assert fams.index(fam) < fams.index(f"{fam}, deeper cut more")
    assert f"{fam}, earlier cut more" in fams


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


def _tied_head(dense: onnx.ModelProto) -> onnx.ModelProto:
    """`dense` with an output projection through a weights-only tensor made at the graph's start
    (as an exporter writes a tied LM head: Transpose(embedding) first, read by the last MatMul):
    it crosses every cut of the graph."""
    out = onnx.ModelProto()
    out.CopyFrom(dense)
    g = out.graph
    g.initializer.append(onnx.numpy_helper.from_array(np.random.default_rng(3).standard_normal((D, D)).astype(np.float32), "head"))
    last = g.node[-1].input[0]
    del g.node[-1]
    nodes = [helper.make_node("Transpose", ["head"], ["headT"], name="tie"), *g.node,
             helper.make_node("MatMul", [last, "headT"], ["y"], name="lm_head")]
    del g.node[:]
    g.node.extend(nodes)
    return out


def _cut_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from spa_compiler.criteria import paths as paths_mod

    calls: list[dict] = []
    real = paths_mod.collect_hessians

    def spy(*a, **kw):
        out = real(*a, **kw)
        cap = kw.get("captured")
        calls.append({"fed": tuple(kw.get("fed", ())), "capture": tuple(kw.get("capture", ())),
                      "kept": len(cap) if cap is not None else None,
                      "overflowed": getattr(cap, "overflowed", None)})
        return out

    monkeypatch.setattr(paths_mod, "collect_hessians", spy)
    return calls


def _same_weights(a: ModelIR, b: ModelIR, depth: int) -> None:
    ta, tb = a.tensors(), b.tensors()
    for name in [f"d{i}" for i in range(depth)] + [f"u{i}" for i in range(depth)]:
        np.testing.assert_allclose(ta[name].values, tb[name].values, rtol=1e-6, atol=1e-7)


def test_weights_only_tensors_are_recomputed_not_captured_at_a_cut(rng: np.random.Generator,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor made from the weights alone (a tied head's transpose) is the same on every feed: a
    cut leaves it out (the pass recomputes it), so the captured values hold one copy of nothing
    per feed instead of a weight per feed (SmolLM2: 113 MB a feed, 7.6 GB for 64 feeds)."""
    from spa_compiler.criteria import sequential

    dense = _tied_head(deep_mlp(rng, depth=6))
    ir = ModelIR.from_proto(dense)
    order = {n.name: i for i, n in enumerate(ir.graph.nodes)}
    cut = sequential._Cuts(ir).at(order["up3"])
    assert cut is not None and "o2" in cut and "headT" not in cut
    calls = _cut_spy(monkeypatch)
    calib = _calib(rng)
    with_cuts, _ = _prune(dense, calib, sequential=4)
    fed = [c for c in calls if c["fed"]]
    assert len(fed) >= 2 and not any("headT" in c["fed"] + c["capture"] for c in calls)
    monkeypatch.setattr(sequential._Cuts, "at", lambda self, q: None)
    without, _ = _prune(dense, calib, sequential=4)
    _same_weights(with_cuts, without, 6)
    np.testing.assert_allclose(run(with_cuts.to_proto(), calib[0])[0], run(without.to_proto(), calib[0])[0],
                               rtol=1e-5, atol=1e-6)


def test_captured_cut_values_past_the_limit_are_dropped_as_they_come(rng: np.random.Generator,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Captured values stop at `_Cuts.MAX_BYTES` while the pass runs (not after it has held them
    all): the list empties itself, the next pass starts at the inputs, and the weights are the same."""
    from spa_compiler.criteria import sequential

    dense = deep_mlp(rng, depth=6)
    calib = _calib(rng)  # 8 feeds of 64 x 16 float32: 4 KiB of cut value each
    calls = _cut_spy(monkeypatch)
    monkeypatch.setattr(sequential._Cuts, "MAX_BYTES", 3 * 64 * D * 4)
    small, _ = _prune(dense, calib, sequential=4)
    captures = [c for c in calls if c["capture"]]
    assert captures and all(c["overflowed"] and c["kept"] == 0 for c in captures)
    assert not any(c["fed"] for c in calls)  # every pass from the graph's inputs
    monkeypatch.setattr(sequential._Cuts, "MAX_BYTES", 2**30)
    calls.clear()
    roomy, _ = _prune(dense, calib, sequential=4)
    assert any(c["fed"] for c in calls) and not any(c["overflowed"] for c in calls if c["capture"])
    _same_weights(small, roomy, 6)


def _bias_blocks(rng: np.random.Generator, depth: int, hidden: int, batch: int, *, up_bias: float,
                 down_scale: float, residual: bool) -> onnx.ModelProto:
    """x -> [down(relu(up(x) + bu)) + bd] x depth -> y, each block added to its input if `residual`."""
    f = np.float32
    init: dict[str, np.ndarray] = {}
    nodes = []
    cur = "x"
    for i in range(depth):
        init[f"u{i}"] = (rng.standard_normal((D, hidden)) / np.sqrt(D)).astype(f)
        init[f"bu{i}"] = (up_bias + 0.2 * rng.standard_normal(hidden)).astype(f)
        init[f"d{i}"] = (rng.standard_normal((hidden, D)) / np.sqrt(hidden) * down_scale).astype(f)
        init[f"bd{i}"] = (0.1 * rng.standard_normal(D)).astype(f)
        nodes += [
            helper.make_node("MatMul", [cur, f"u{i}"], [f"h{i}"], name=f"up{i}"),
            helper.make_node("Add", [f"h{i}", f"bu{i}"], [f"hb{i}"], name=f"upb{i}"),
            helper.make_node("Relu", [f"hb{i}"], [f"r{i}"], name=f"act{i}"),
            helper.make_node("MatMul", [f"r{i}", f"d{i}"], [f"o{i}"], name=f"down{i}"),
            helper.make_node("Add", [f"o{i}", f"bd{i}"], [f"ob{i}"], name=f"downb{i}"),
        ]
        if residual:
            nodes.append(helper.make_node("Add", [cur, f"ob{i}"], [f"s{i}"], name=f"res{i}"))
        cur = f"s{i}" if residual else f"ob{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    vi = helper.make_tensor_value_info
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [batch, D])], [vi("y", TensorProto.FLOAT, [batch, D])], init)


def biased_mlp(rng: np.random.Generator, depth: int = 4, hidden: int = 48, batch: int = 64) -> onnx.ModelProto:
    """deep_mlp with a bias Add after every MatMul and positive-mean hidden units (what a removed
    neuron's mean contribution, lost without bias correction, looks like)."""
    return _bias_blocks(rng, depth, hidden, batch, up_bias=0.5, down_scale=1.5, residual=False)


@pytest.mark.parametrize("make", [deep_mlp, biased_mlp])
def test_dense_target_refit_beats_the_per_layer_refit(rng: np.random.Generator, make) -> None:
    dense = make(rng)
    calib, held_out = _calib(rng), _calib(np.random.default_rng(11))
    layer, sl = _prune(dense, calib, sequential=4, refit="layer")
    full, sd = _prune(dense, calib, sequential=4, refit="dense")
    check_model(full)
    assert "refit_layers" not in sl
    # every MatMul from the first pruned consumer (down0) on: down0, up1, down1, ... down3
    assert sd["refit_layers"] == 7 and sd["refit_stages"] >= 2
    assert full.tensors()["d3"].values.shape == layer.tensors()["d3"].values.shape
    el, ed = relative_output_error(layer, dense, held_out), relative_output_error(full, dense, held_out)
    assert ed < 0.8 * el, (ed, el)
    if make is biased_mlp:  # the bias of a pruned consumer absorbs the removed neurons' mean output
        bd3 = onnx.numpy_helper.to_array(next(t for t in dense.graph.initializer if t.name == "bd3"))
        assert not np.allclose(full.tensors()["bd3"].values, bd3)
        np.testing.assert_array_equal(layer.tensors()["bd3"].values, bd3)


def _two_streams(rng: np.random.Generator, n: int, cols: int, out: int, *, mean: float, noise: float):  # type: ignore[no-untyped-def]
    """Dense inputs xd, compressed inputs xc (xd plus noise), a layer (w, b) and their re-fit statistics."""
    from spa_compiler.criteria.refit import _Stats

    xd = rng.standard_normal((n, cols)) + mean
    xc = xd + noise * rng.standard_normal((n, cols))
    w, b = rng.standard_normal((out, cols)), rng.standard_normal(out)
    st = _Stats(cols)
    st.add(xc.astype(np.float32), xd.astype(np.float32))
    return xd, xc, w, b, st


def test_solve_dense_target_is_least_squares_to_the_dense_outputs(rng: np.random.Generator) -> None:
    from spa_compiler.criteria.refit import solve_dense_target

    n, cols, out = 4000, 6, 3
    xd, xc, w, b, st = _two_streams(rng, n, cols, out, mean=0.3, noise=0.2)
    keep = np.array([0, 1, 3, 4])
    w2, b2 = solve_dense_target(w, st, keep, b, damp=1e-9)
    a = np.hstack([xc[:, keep], np.ones((n, 1))])
    sol = np.linalg.lstsq(a, xd @ w.T + b, rcond=None)[0]
    np.testing.assert_allclose(w2[:, keep], sol[:-1].T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b2, sol[-1], rtol=1e-3, atol=1e-4)
    assert not w2[:, [2, 5]].any()


def test_refit_option_is_checked() -> None:
    from spa_compiler.errors import PreconditionError

    model = ModelIR.from_proto(deep_mlp(np.random.default_rng(0)))
    with pytest.raises(PreconditionError, match="refit must be"):
        PassManager([PruneToBudgetPass(round_to=1, criterion="obs", refit="bogus")]).run(model, CompileContext(
            calibration=_calib(np.random.default_rng(1))))


def test_data_free_dense_refit_runs_on_the_synthetic_feeds(rng: np.random.Generator) -> None:
    dense = biased_mlp(rng)
    held_out = [{"x": np.random.default_rng(3).standard_normal((64, D)).astype(np.float32)} for _ in range(4)]
    outs = {}
    for flag in (False, True):
        model = ModelIR.from_proto(dense)
        ctx = CompileContext(input_shapes={"x": [64, D]})
        PassManager([PruneToBudgetPass(round_to=1, criterion="obspa", ratio=0.6, refit="dense", refit_synthetic=flag)]).run(model, ctx)
        (rec,) = ctx.report.passes
        outs[flag] = (model, rec.stats)
    assert "refit_layers" not in outs[False][1]
    assert outs[True][1]["refit_layers"] == 7 and outs[True][1]["refit_feeds_source"] == "synthetic"
    # the synthetic feeds are standard normal like these held-out inputs: the dense re-fit is closer
    e0 = relative_output_error(outs[False][0], dense, held_out)
    e1 = relative_output_error(outs[True][0], dense, held_out)
    assert e1 < e0, (e1, e0)


def test_target_error_matches_the_direct_sum_and_validation_can_keep_the_weight(rng: np.random.Generator) -> None:
    from spa_compiler.criteria.refit import solve_dense_target, target_error

    n, cols, out = 500, 5, 3
    xd, xc, w, b, st = _two_streams(rng, n, cols, out, mean=0.5, noise=0.3)
    w2, b2 = rng.standard_normal((out, cols)), rng.standard_normal(out)
    yd = xd @ w.T + b
    direct = np.mean(np.sum((yd - xc @ w2.T - b2) ** 2, axis=1)) - np.mean(np.sum(yd ** 2, axis=1))
    assert target_error(w2, b2, st, w, b) == pytest.approx(direct, rel=1e-4, abs=1e-4)
    # the least-squares fit has the least error on its own rows
    wf, bf = solve_dense_target(w, st, np.arange(cols), b, damp=1e-9)
    assert target_error(wf, bf, st, w, b) < min(target_error(w, b, st, w, b), direct)


def test_dense_refit_holds_out_feeds_and_reports_its_choices(rng: np.random.Generator) -> None:
    dense = biased_mlp(rng)
    _, st = _prune(dense, _calib(rng, n=20), sequential=0, refit="dense")
    chosen = st["refit_damping_chosen"]
    assert sum(chosen.values()) == 7 and set(chosen) <= {"kept", "0.01", "0.1", "1.0"}
    assert st["refit_feeds"] == 20


def residual_mlp(rng: np.random.Generator, depth: int = 4, hidden: int = 48, batch: int = 64) -> onnx.ModelProto:
    """x -> [x + down(relu(up(x) + bu)) + bd] x depth -> y: residual blocks (pre-norm-free)."""
    return _bias_blocks(rng, depth, hidden, batch, up_bias=0.3, down_scale=1.0, residual=True)


def test_residual_refit_finds_the_residual_adds_and_corrects_the_stream(rng: np.random.Generator) -> None:
    from spa_compiler.criteria.refit import linear_layers

    dense = residual_mlp(rng)
    lins = {x.node: x for x in linear_layers(ModelIR.from_proto(dense))}
    assert lins["down1"].residual == "s0" and lins["down0"].residual == "x" and lins["up1"].residual is None
    calib, held_out = _calib(rng, n=20), _calib(np.random.default_rng(11))
    layer, _ = _prune(dense, calib, sequential=0, refit="layer")
    res, st = _prune(dense, calib, sequential=0, refit="residual")
    check_model(res)
    assert st["refit_stages"] >= 4  # one residual-corrected layer a stage
    el, er = relative_output_error(layer, dense, held_out), relative_output_error(res, dense, held_out)
    assert er < el, (er, el)


@pytest.mark.parametrize("sequential", [0, 4])
def test_thin_calibration_is_reported_per_input_column(rng: np.random.Generator, sequential: int) -> None:
    """The report gives the calibration rows per input column of the widest-fed consumer (the
    hidden width 48 of `down*`: 8 feeds x 64 rows = 512 rows, 10.7 per column) and says when that
    is under MIN_ROWS_PER_COLUMN; with twice the feeds (21.3 per column) it says nothing."""
    from spa_compiler.passes._pruning import MIN_ROWS_PER_COLUMN

    dense = deep_mlp(rng)

    def run_with(n: int) -> tuple[dict, list[str]]:
        model = ModelIR.from_proto(dense)
        ctx = CompileContext(calibration=_calib(np.random.default_rng(3), n=n))
        PassManager([PruneToBudgetPass(round_to=1, criterion="obs", ratio=0.5, sequential=sequential)]).run(model, ctx)
        (rec,) = ctx.report.passes
        return rec.stats, [x for x in ctx.report.notes if "calibration is thin" in x]

    stats, notes = run_with(8)
    assert stats["calibration_rows"] == 512
    assert stats["calibration_rows_per_column"] == round(512 / 48, 2) < MIN_ROWS_PER_COLUMN
    (note,) = notes
    assert "down" in note and "48 input columns" in note and f"{MIN_ROWS_PER_COLUMN * 48} rows" in note
    stats, notes = run_with(16)
    assert stats["calibration_rows"] == 1024 and stats["calibration_rows_per_column"] == round(1024 / 48, 2)
    assert notes == []


def test_no_calibration_coverage_without_measured_statistics(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(deep_mlp(rng))
    ctx = CompileContext(calibration=_calib(rng))
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", ratio=0.5)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert "calibration_rows_per_column" not in rec.stats
    assert not any("calibration is thin" in x for x in ctx.report.notes)
