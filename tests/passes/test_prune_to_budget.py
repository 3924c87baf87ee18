"""prune-to-budget (and prune-uniform with a budget): criteria quality (relative), exact OBS re-fit, the latency search and its limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler.context import CompileContext
from spa_compiler.criteria.paths import group_paths
from spa_compiler.errors import PreconditionError
from spa_compiler.groups.analysis import analyze
from spa_compiler.ir import ModelIR
from spa_compiler.latency.provider import Timing
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.prune_to_budget import PruneToBudgetPass
from spa_compiler.passes.prune_uniform import PruneUniformPass
from spa_compiler.stats import model_stats
from spa_compiler.validation import check_model
from tests.helpers import make_model, relative_output_error


def mlp_model(rng: np.random.Generator, d: int = 16, hidden: int = 64, batch: int = 64) -> onnx.ModelProto:
    """x(batch, d) -> MatMul(W1) + b1 -> Relu -> MatMul(W2) + b2 -> y, inputs correlated."""
    f = np.float32
    init = {
        "w1": (rng.standard_normal((d, hidden)) / np.sqrt(d)).astype(f),
        "b1": (rng.standard_normal(hidden) * 0.1).astype(f),
        "w2": (rng.standard_normal((hidden, d)) / np.sqrt(hidden)).astype(f),
        "b2": (rng.standard_normal(d) * 0.1).astype(f),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="up"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="up_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="act"),
        helper.make_node("MatMul", ["h2", "w2"], ["y0"], name="down"),
        helper.make_node("Add", ["y0", "b2"], ["y"], name="down_bias"),
    ]
    vi = helper.make_tensor_value_info
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [batch, d])], [vi("y", TensorProto.FLOAT, [batch, d])], init)


_MIX = np.random.default_rng(99).standard_normal((16, 16)).astype(np.float32)


def _calib(rng: np.random.Generator, n: int = 8, batch: int = 64) -> list[dict[str, np.ndarray]]:
    """Correlated inputs (a fixed mixing matrix), as real activations are."""
    return [{"x": (rng.standard_normal((batch, 16)).astype(np.float32) @ _MIX)} for _ in range(n)]


_error = relative_output_error


def test_obs_beats_magnitude_at_same_ratio(rng: np.random.Generator) -> None:
    dense = mlp_model(rng)
    calib, held_out = _calib(rng), _calib(np.random.default_rng(7))
    errors = {}
    for criterion in ("magnitude", "wanda", "obs"):
        model = ModelIR.from_proto(dense)
        ctx = CompileContext(calibration=calib)
        PassManager([PruneToBudgetPass(round_to=1, criterion=criterion, ratio=0.5)]).run(model, ctx)
        assert model.tensors()["w2"].values.shape == (32, 16)
        check_model(model)
        errors[criterion] = _error(model, dense, held_out)
    assert errors["obs"] < errors["wanda"] and errors["obs"] < errors["magnitude"], errors
    assert errors["obs"] < 0.6 * errors["magnitude"], errors


def test_obs_refit_is_exact_least_squares(rng: np.random.Generator) -> None:
    dense = mlp_model(rng)
    model = ModelIR.from_proto(dense)
    calib = _calib(rng)
    (group,) = [g for g in analyze(model).prunable]
    paths = group_paths(model, [group], "obs", calibration=calib, damp=0.0)
    path = paths[group.id]
    kept = 40
    (w_new,) = path.compensated(kept).values()
    removed = path.removed(kept)
    assert np.all(w_new[removed, :] == 0)  # MatMul weight (hidden, d): removed rows are the inputs
    # the re-fit equals the least-squares solution on the activations, built independently
    from spa_compiler.calibration import ActivationCollector

    acts = np.concatenate([a["h2"] for a in ActivationCollector(model, ["h2"]).collect(calib)]).astype(np.float64)
    keep = np.setdiff1d(np.arange(64), removed)
    w2 = model.tensors()["w2"].values.astype(np.float64)
    sol, *_ = np.linalg.lstsq(acts[:, keep], acts @ w2, rcond=None)
    np.testing.assert_allclose(w_new[keep], sol, rtol=1e-4, atol=1e-5)
    # errors along the path never decrease
    assert np.all(np.diff(path.errors) >= -1e-12)
    assert path.errors[0] == 0.0


def test_obspa_needs_no_data_and_beats_magnitude(rng: np.random.Generator) -> None:
    dense = mlp_model(rng)
    held_out = [{"x": rng.standard_normal((64, 16)).astype(np.float32)} for _ in range(4)]
    errs = {}
    for criterion in ("magnitude", "obspa"):
        model = ModelIR.from_proto(dense)
        PassManager([PruneToBudgetPass(round_to=1, criterion=criterion, ratio=0.5)]).run(model, CompileContext())
        errs[criterion] = _error(model, dense, held_out)
    assert errs["obspa"] < errs["magnitude"], errs


@dataclasses.dataclass
class MacsProvider:
    """A deterministic latency model for tests: 1 ms per million MACs plus 0.01 ms."""

    kind: str = "measured"
    calls: int = 0

    def time(self, model, feeds) -> Timing:
        self.calls += 1
        ir = model if isinstance(model, ModelIR) else ModelIR.from_proto(model)
        return Timing(model_stats(ir)["macs"] / 1e6 + 0.01, "measured", 1)

    def time_many(self, models, feeds) -> list[Timing]:
        return [self.time(m, feeds) for m in models]

    def provenance(self) -> dict:
        return {"device": "test", "runtime": "macs", "runtime_version": "1", "provider": None,
                "threads": None, "precision": "fp32"}


def _two_layer(rng: np.random.Generator) -> onnx.ModelProto:
    """Two stacked MLP blocks of different widths: the search must prefer the cheaper errors."""
    f = np.float32
    d, batch = 32, 256
    init = {
        "a1": rng.standard_normal((d, 128)).astype(f) / 6, "a2": rng.standard_normal((128, d)).astype(f) / 11,
        "c1": rng.standard_normal((d, 64)).astype(f) / 6, "c2": rng.standard_normal((64, d)).astype(f) / 8,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "a1"], ["h"], name="l1_up"),
        helper.make_node("Relu", ["h"], ["hr"], name="l1_act"),
        helper.make_node("MatMul", ["hr", "a2"], ["m"], name="l1_down"),
        helper.make_node("MatMul", ["m", "c1"], ["g"], name="l2_up"),
        helper.make_node("Relu", ["g"], ["gr"], name="l2_act"),
        helper.make_node("MatMul", ["gr", "c2"], ["y"], name="l2_down"),
    ]
    vi = helper.make_tensor_value_info
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [batch, d])], [vi("y", TensorProto.FLOAT, [batch, d])], init)


@pytest.mark.parametrize("fraction", [0.8, 0.6, 0.45])
def test_search_meets_budget(rng: np.random.Generator, fraction: float) -> None:
    dense = _two_layer(rng)
    model = ModelIR.from_proto(dense)
    provider = MacsProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=fraction * dense_ms, max_error=10.0)
    result = PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", levels=16, max_ratio=0.9)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert rec.stats["budget_met"] is True
    final = provider.time(model, {}).ms
    assert final <= fraction * dense_ms + 1e-9
    assert final >= 0.95 * fraction * dense_ms  # in the [0.95, 1] window, not gutted below it
    assert result.modified
    check_model(model)


@pytest.mark.parametrize("fraction", [0.8, 0.6])
def test_uniform_search_shares_one_ratio_and_loses_to_per_group_levels(
    rng: np.random.Generator, fraction: float
) -> None:
    dense = _two_layer(rng)
    errors = {}
    for uniform in (True, False):
        model = ModelIR.from_proto(dense)
        provider = MacsProvider()
        dense_ms = provider.time(model, {}).ms
        ctx = CompileContext(latency=provider, feeds={}, budget_ms=fraction * dense_ms, max_error=10.0)
        cls = PruneUniformPass if uniform else PruneToBudgetPass
        opts = {} if uniform else {"levels": 16}
        PassManager([cls(round_to=1, criterion="magnitude", max_ratio=0.9, **opts)]).run(model, ctx)
        (rec,) = ctx.report.passes
        assert rec.stats["budget_met"] is True
        assert rec.stats["mode"] == ("uniform-search" if uniform else "latency-search")
        assert provider.time(model, {}).ms <= fraction * dense_ms + 1e-9
        shares = [1 - d["kept"] / d["units"] for d in rec.details if "kept" in d]
        if uniform:  # one share for all groups (128 and 64 units: rounding differs by < 1 unit)
            assert max(shares) - min(shares) <= 1 / 64 + 1e-9
            assert min(shares) > 0.1
        errors[uniform] = rec.stats["mean_error"]
    # at the same budget the per-group search never has more (criterion) error than one shared share
    assert errors[False] <= errors[True] + 1e-12


def test_unreachable_budget_is_reported_not_gutted(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    provider = MacsProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.05 * dense_ms, max_error=0.05)
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", max_ratio=0.9)]).run(model, ctx)
    (rec,) = ctx.report.passes
    assert rec.stats["budget_met"] is False
    assert rec.stats["mean_error"] <= 0.05 + 1e-9
    assert "unreachable" in rec.stats
    assert any("unreachable" in n for n in ctx.report.notes)


def test_preconditions() -> None:
    ctx = CompileContext()
    model = ModelIR.from_proto(mlp_model(np.random.default_rng(0)))
    for bad in (dict(criterion="nope"), dict(units=("hidden",)), dict(ratio=1.0), dict(levels=1)):
        with pytest.raises(PreconditionError):
            PruneToBudgetPass(**bad).check_preconditions(model, ctx)
    with pytest.raises(PreconditionError, match="latency model"):
        PruneToBudgetPass().check_preconditions(model, CompileContext(budget_ms=1.0))


def test_self_generated_inputs_for_language_models_only() -> None:
    from spa_compiler import models_zoo
    from spa_compiler.ort import random_feeds
    from spa_compiler.synthetic import language_model_io, self_generated

    lm = ModelIR.load(models_zoo.build("tiny_llama", "dynamo"))
    assert language_model_io(lm) == ("input_ids", 256)
    feeds = [random_feeds(lm, {"input_ids": (2, 16)}, seed=s) for s in range(2)]
    gen = self_generated(lm, feeds, rounds=2, seed=0)
    for f, g in zip(feeds, gen):
        assert g["input_ids"].shape == f["input_ids"].shape and g["input_ids"].dtype == f["input_ids"].dtype
        np.testing.assert_array_equal(g["input_ids"][:, 0], f["input_ids"][:, 0])  # the prompt token stays
        assert not np.array_equal(g["input_ids"], f["input_ids"])
        assert 0 <= g["input_ids"].min() and g["input_ids"].max() < 256
    cnn = ModelIR.load(models_zoo.build("tiny_resnet", "dynamo"))
    img = [random_feeds(cnn, seed=0)]
    assert self_generated(cnn, img, rounds=2, seed=0) is img


@dataclasses.dataclass
class MaxProvider(MacsProvider):
    """The two blocks of `_two_layer` run side by side: latency follows the wider one, so pruning
    one block alone gains little and an additive table, profiled one block at a time, misses what
    pruning both together gains."""

    def time(self, model, feeds) -> Timing:
        self.calls += 1
        ir = model if isinstance(model, ModelIR) else ModelIR.from_proto(model)
        t = ir.tensors()
        return Timing(max(t["a1"].values.shape[1], t["c1"].values.shape[1]) / 128 + 0.01, "measured", 1)


def test_joint_fallback_meets_a_budget_the_additive_table_calls_unreachable(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    provider = MaxProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.4 * dense_ms, max_error=10.0)
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", levels=8, max_ratio=0.9)]).run(model, ctx)
    (rec,) = ctx.report.passes
    rounds = rec.details[-1]["search_rounds"]
    # the table-driven rounds could not get there: its fastest plan is one block pruned, ~0.5x
    assert all(r["measured_ms"] > 0.4 * dense_ms for r in rounds if r["status"] != "joint-fallback")
    assert any(r["status"] == "joint-fallback" for r in rounds)
    assert rec.stats["budget_met"] is True and "unreachable" not in rec.stats
    assert provider.time(model, {}).ms <= 0.4 * dense_ms
    check_model(model)


def test_synthetic_feeds_cover_enough_tokens_for_language_models() -> None:
    from spa_compiler import models_zoo

    lm = ModelIR.load(models_zoo.build("tiny_llama", "dynamo"))
    ctx = CompileContext(input_shapes={"input_ids": (1, 16)})
    feeds = PruneToBudgetPass(synthetic_feeds=2, synthetic_tokens=100, lm_rounds=0)._synthetic(ctx, lm)
    assert len(feeds) == 7  # ceil(100 / 16): a short latency shape does not starve the statistics
    assert len({f["input_ids"].tobytes() for f in feeds}) == 7
    cnn = ModelIR.load(models_zoo.build("tiny_resnet", "dynamo"))
    assert len(PruneToBudgetPass(synthetic_feeds=2, synthetic_tokens=100)._synthetic(CompileContext(), cnn)) == 2


@dataclasses.dataclass
class SlowProvider(MacsProvider):
    """The same machine under 4x the load: every latency 4x longer."""

    def time(self, model, feeds) -> Timing:
        t = super().time(model, feeds)
        return Timing(4 * t.ms, t.kind, t.runs)


def test_a_table_from_another_run_is_rescaled_to_the_dense_model_measured_now(rng: np.random.Generator) -> None:
    from spa_compiler.latency.profile import profile_pruning

    model = ModelIR.from_proto(_two_layer(rng))
    units = ("channel", "head", "neuron")
    table = profile_pruning(model, "ort-cpu", MacsProvider(), {}, units=units, input_shapes={}, round_to=1,
                            max_ratio=0.9, levels=16)  # a quiet day
    provider = SlowProvider()  # today the machine is 4x slower
    dense_ms = provider.time(model, {}).ms
    assert dense_ms == pytest.approx(4 * table.dense_ms)
    ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * dense_ms, max_error=10.0, latency_table=table,
                         dense_ms=dense_ms)
    PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", levels=16, max_ratio=0.9)]).run(model, ctx)
    (rec,) = ctx.report.passes
    rounds = rec.details[-1]["search_rounds"]
    # unscaled, round 1 would look for 0.6x of today's dense in the quiet table's milliseconds (2.4x
    # its dense) and choose the dense model; rescaled, the first choice is already near the budget
    assert rounds[0]["predicted_ms"] < 0.7 * table.dense_ms
    assert rec.stats["budget_met"] is True and rec.stats["budget_ms"] == pytest.approx(0.6 * dense_ms)
    assert rec.stats["measured_ms"] <= 0.6 * dense_ms and provider.time(model, {}).ms <= 0.6 * dense_ms


def test_timed_candidates_skip_the_refit(rng: np.random.Generator) -> None:
    from spa_compiler.methods.pruning import apply_plan

    model = ModelIR.from_proto(mlp_model(rng))
    (group,) = analyze(model).prunable
    paths = group_paths(model, [group], "obs", calibration=_calib(rng))
    w2 = model.tensors()["w2"].values.copy()
    removed = paths[group.id].removed(40)
    keep = np.setdiff1d(np.arange(64), removed)
    out = {}
    for compensate in (False, True):
        clone = model.clone()
        stats = apply_plan(clone, paths, {group.id: 40}, units=("channel", "head", "neuron"),
                           compensate=compensate)
        assert stats["weights_refitted"] == int(compensate)
        out[compensate] = clone.tensors()["w2"].values
        assert out[compensate].shape == (40, 16)
    np.testing.assert_array_equal(out[False], w2[keep])  # sliced, not re-fitted
    assert not np.allclose(out[True], w2[keep])  # the re-fit changes the kept rows


def test_a_table_profiled_for_more_unit_kinds_serves_a_pass_that_prunes_fewer(rng: np.random.Generator) -> None:
    from spa_compiler.latency.profile import profile_pruning

    model = ModelIR.from_proto(_two_layer(rng))
    groups = analyze(model).prunable
    table = profile_pruning(model, "ort-cpu", MacsProvider(), {}, units=("channel", "head", "neuron"),
                            input_shapes={}, round_to=1, max_ratio=0.9, levels=16)
    # drop one group from what the pass may prune: the table's extra group must stay dense in the
    # prediction (base), not vanish from it
    keep_out = groups[0].id
    provider = MacsProvider()
    dense_ms = provider.time(model, {}).ms
    ctx = CompileContext(latency=None, feeds={}, budget_ms=0.8 * dense_ms, max_error=10.0, latency_table=table)
    pz = PruneToBudgetPass(round_to=1, criterion="magnitude", levels=16, max_ratio=0.9)
    method = pz.build_method(model, ctx)
    del method.groups[keep_out]
    result = pz.search(model, ctx, method, uniform=False)
    rounds = result.details[-1]["search_rounds"]
    # predictions are whole-model latencies: at least the untouched group's dense share
    assert all(r["predicted_ms"] >= table.groups[keep_out].dense_ms for r in rounds)
    assert result.stats["budget_met"] is True
    assert provider.time(model, {}).ms <= 0.8 * dense_ms + 1e-9
    assert keep_out not in {d.get("group") for d in result.details}
