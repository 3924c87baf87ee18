"""The coupled-channel analysis as a whole: the dimension algebra (property-based), the API
(ids, no mutation, errors, shared constants, round_to), and the report/CLI views."""

from __future__ import annotations

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler import models_zoo
from spa_compiler.cli import main as cli_main
from spa_compiler.errors import UsageError
from spa_compiler.groups.analysis import (
    ALL_UNITS,
    analyze,
    masked_dense,
    prune_groups,
    random_plan,
    round_removal,
)
from spa_compiler.groups.dims import DimSpace, Term
from spa_compiler.groups.oracle import oracle_check
from spa_compiler.groups.report import format_groups, groups_to_json
from spa_compiler.ir import ModelIR
from tests.helpers import conv_chain_model, make_model

F = np.float32


# ---------------------------------------------------------------------- dimension algebra
@st.composite
def _factorization(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    dims = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    perm = draw(st.permutations(range(len(dims))))
    return dims, list(perm)


@hypothesis.given(_factorization())
@hypothesis.settings(max_examples=60, deadline=None)
def test_reshape_transpose_reshape_index_map(case: tuple[list[int], list[int]]) -> None:
    """Flat axis -> reshape(dims) -> transpose(perm) -> flat: every class's coordinates follow
    the positions exactly as numpy moves them."""
    dims, perm = case
    sp = DimSpace()
    n = int(np.prod(dims))
    x = sp.new(n)
    atoms = [sp.new(d) for d in dims]
    assert sp.unify(x, ("*", tuple(atoms)))
    y = ("*", tuple(atoms[p] for p in perm))
    src = np.arange(n).reshape(dims).transpose(perm).reshape(-1)
    for r in set(sp.leaves(x)):
        if sp.atom_size(r) > 1:  # size-1 factors are no index space (never a group)
            np.testing.assert_array_equal(sp.coords(y, r), sp.coords(x, r)[src])


@hypothesis.given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.integers(1, n - 1), max_size=4, unique=True),
            st.lists(st.integers(1, n - 1), max_size=4, unique=True),
        )
    )
)
@hypothesis.settings(max_examples=60, deadline=None)
def test_two_cuts_of_one_axis_refine_to_the_union_of_boundaries(
    case: tuple[int, list[int], list[int]],
) -> None:
    n, cuts_a, cuts_b = case
    sp = DimSpace()
    x = sp.new(n)

    def parts(cuts: list[int]) -> tuple:
        bounds = [0, *sorted(cuts), n]
        return ("+", tuple(sp.new(b - a) for a, b in zip(bounds, bounds[1:], strict=False)))

    assert sp.unify(x, parts(cuts_a))
    assert sp.unify(x, parts(cuts_b))
    expected = len(set(cuts_a) | set(cuts_b)) + 1
    assert len(sp.leaves(x)) == expected
    # every position belongs to exactly one class, in order
    owner = np.full(n, -1)
    for r in sp.leaves(x):
        c = sp.coords(x, r)
        assert (owner[c >= 0] == -1).all()
        owner[c >= 0] = r
    assert (owner >= 0).all()


@hypothesis.given(st.integers(1, 6), st.integers(1, 6), st.data())
@hypothesis.settings(max_examples=40, deadline=None)
def test_keep_mask_matches_coordinates(h: int, d: int, data: st.DataObject) -> None:
    sp = DimSpace()
    heads, dim = sp.new(h), sp.new(d)
    flat = ("*", (heads, dim))
    gone_h = data.draw(st.sets(st.integers(0, h - 1), max_size=h - 1))
    gone_d = data.draw(st.sets(st.integers(0, d - 1), max_size=d - 1))
    mask = sp.keep_mask(flat, {heads: gone_h, dim: gone_d})
    idx = np.arange(h * d)
    want = ~np.isin(idx // d, list(gone_h)) & ~np.isin(idx % d, list(gone_d))
    np.testing.assert_array_equal(mask, want)
    assert sp.size_under(flat, {heads: h - len(gone_h), dim: d - len(gone_d)}) == int(mask.sum())


def test_incompatible_factorizations_fail() -> None:
    sp = DimSpace()
    x = sp.new(12)
    assert sp.unify(x, ("*", (sp.new(4), sp.new(3))))
    assert not sp.unify(x, ("*", (sp.new(3), sp.new(4))))  # row-major (4,3) vs (3,4): no common cut


def test_sum_of_equal_parts_against_a_product() -> None:
    """Concat(a, b) reshaped to (2, n): a and b become the same class (channel shuffle)."""
    sp = DimSpace()
    a, b = sp.new(6), sp.new(6)
    g, k = sp.new(2), sp.new(6)
    assert sp.unify(("+", (a, b)), ("*", (g, k)))
    assert sp.find(a) == sp.find(b) == sp.find(k)


def test_freeze_and_tags_survive_refinement() -> None:
    sp = DimSpace()
    x = sp.new(8)
    sp.freeze(x, "because")
    sp.tag(x, "head")
    assert sp.unify(x, ("*", (sp.new(2), sp.new(4))))
    for r in sp.leaves(x):
        assert sp.frozen(r) == "because" and "head" in sp.info(r).tags


def _shifted(sp: DimSpace, n: int) -> tuple[Term, Term]:
    """x[1:] and x[:-1] of one axis of n positions."""
    x = sp.new(n)
    head = sp.split(x, 1)
    tail = sp.split(x, n - 1)
    assert head is not None and tail is not None
    return head[1], tail[0]


def test_a_shifted_axis_refines_when_short_and_fails_cleanly_when_long() -> None:
    """x[1:] against x[:-1] ties every position to the next: short axes are cut into one atom
    per position; long ones (a 512-token sequence) used to exceed the recursion limit and now
    fail the unification, which makes the caller freeze them."""
    sp = DimSpace()
    a, b = _shifted(sp, 8)
    assert sp.unify(a, b)
    assert len(set(sp.leaves(a))) == 1 and len(sp.leaves(a)) == 7  # one class: every position
    sp = DimSpace()
    a, b = _shifted(sp, 4096)
    assert not sp.unify(a, b)
    sp.freeze(a, "incompatible")  # what the analysis does next: must not recurse either
    assert all(sp.frozen(r) == "incompatible" for r in sp.leaves(a))


@pytest.mark.parametrize("seq", [16, 512, 4096])
def test_position_shift_on_a_long_sequence_leaves_the_channel_groups_alone(seq: int) -> None:
    """Sub(x[:, 1:], x[:, :-1]) before a MatMul, as exported causal-mask and position code
    does: the analysis finishes at any sequence length, with the same prunable groups."""
    f = TensorProto.FLOAT
    w1 = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    w2 = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "one", "big", "ax"], ["a"]),
        helper.make_node("Slice", ["x", "zero", "minus1", "ax"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("MatMul", ["d", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", f, [1, "S", 8])], [helper.make_tensor_value_info("y", f, [1, "T", 8])],
        {"one": i64([1]), "big": i64([2**62]), "zero": i64([0]), "minus1": i64([-1]), "ax": i64([1]),
         "w1": w1, "w2": w2})
    an = analyze(ModelIR.from_proto(model), input_shapes={"x": [1, seq, 8]})
    assert [(g.n_units, g.unit) for g in an.prunable] == [(12, "neuron")]


# ---------------------------------------------------------------------- round_to
@hypothesis.given(
    st.integers(2, 64), st.sampled_from([1, 2, 8, 16]), st.sampled_from([1, 8, 16, 64]), st.data()
)
@hypothesis.settings(max_examples=80, deadline=None)
def test_round_removal(n: int, unit_size: int, round_to: int, data: st.DataObject) -> None:
    from spa_compiler.groups.analysis import ChannelGroup

    g = ChannelGroup("g", "channel", n, unit_size, False, None, [], [])
    order = data.draw(st.permutations(range(n)))
    k = data.draw(st.integers(0, n - 1))
    out = round_removal(g, order[:k], round_to)
    assert out == list(order[: len(out)])  # a prefix: least important first
    kept = n - len(out)
    assert kept == n or (kept * unit_size) % round_to == 0
    assert len(out) <= k


# ---------------------------------------------------------------------- API
def test_analysis_does_not_modify_the_model_and_ids_are_stable(rng: np.random.Generator) -> None:
    model = ModelIR.load(models_zoo.build("tiny_llama", "torchscript"))
    before = model.fingerprint()
    a = analyze(model)
    assert model.fingerprint() == before
    b = analyze(model.clone())
    assert [g.id for g in a.groups] == [g.id for g in b.groups]
    assert len({g.id for g in a.groups}) == len(a.groups)
    plan = random_plan(a, rng)
    masked_dense(model, plan, analysis=a)
    assert model.fingerprint() == before


def test_member_indices(rng: np.random.Generator) -> None:
    an = analyze(ModelIR.load(models_zoo.build("tiny_vit", "dynamo")), units=ALL_UNITS)
    for g in an.groups:
        for m in g.members:
            idx = m.indices
            assert len(idx) == g.n_units
            for u in (0, g.n_units - 1):
                np.testing.assert_array_equal(idx[u], m.unit_indices(u))


def test_plan_errors(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    an = analyze(model)
    frozen = next(g for g in an.groups if g.frozen)
    ok = an.prunable[0]
    with pytest.raises(UsageError, match="does not have"):
        prune_groups(model, {"nope": [0]}, analysis=an)
    with pytest.raises(UsageError, match="frozen"):
        prune_groups(model, {frozen.id: [0]}, analysis=an)
    with pytest.raises(UsageError, match="cannot remove all"):
        prune_groups(model, {ok.id: list(range(ok.n_units))}, analysis=an)
    with pytest.raises(UsageError, match=r"\[0, 16\)"):
        prune_groups(model, {ok.id: [16]}, analysis=an)
    prune_groups(model, {ok.id: [0]}, analysis=an)
    with pytest.raises(UsageError, match="does not belong"):  # the analysis is used up
        prune_groups(model, {ok.id: [1]}, analysis=an)


def test_shared_initializer_is_copied_not_corrupted(rng: np.random.Generator) -> None:
    w1 = (rng.standard_normal((8, 3, 1, 1)) * 0.5).astype(F)
    init = {
        "w1": w1,
        "w2": (rng.standard_normal((2, 8, 1, 1)) * 0.5).astype(F),
        "w3": (rng.standard_normal((2, 8, 1, 1)) * 0.5).astype(F),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="ca"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "w2"], ["ya"], name="c2"),
        helper.make_node("Conv", ["x", "w1"], ["b"], name="cb"),  # the same initializer
        helper.make_node("Tanh", ["b"], ["tb"], name="tanh_b"),
        helper.make_node("Conv", ["tb", "w3"], ["yb"], name="c3"),
        helper.make_node("Add", ["ya", "yb"], ["y"], name="add"),
    ]
    proto = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        init,
    )
    model = ModelIR.from_proto(proto)
    an = analyze(model)
    ga = next(g for g in an.prunable if any(m.node == "ca" for m in g.producers))
    gb = next(g for g in an.prunable if any(m.node == "cb" for m in g.producers))
    assert ga.id != gb.id  # per-use analysis: sharing a weight does not couple the two groups
    res = oracle_check(model, {ga.id: [1, 5]}, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)})
    assert res.max_rel <= 1e-5
    pruned = {n.name: n for n in res.pruned.graph.nodes}
    assert tuple(pruned["ca"].inputs[1].shape) == (6, 3, 1, 1)
    np.testing.assert_array_equal(
        pruned["cb"].inputs[1].values, w1
    )  # the other user keeps it intact


def test_tied_embedding_is_sliced_once() -> None:
    model = ModelIR.load(models_zoo.build("tiny_gpt", "torchscript"))
    an = analyze(model, include_hidden=True)
    (hidden,) = [g for g in an.prunable if g.unit == "hidden"]
    prune_groups(model, {hidden.id: list(range(0, 64, 4))}, analysis=an)
    import onnx_graphsurgeon as gs

    wte = [t for t in model.tensors().values() if "wte" in t.name and isinstance(t, gs.Constant)]
    assert len(wte) == 1 and tuple(wte[0].shape) == (256, 48)


def test_report_and_json() -> None:
    an = analyze(ModelIR.load(models_zoo.build("tiny_llama", "dynamo")))
    text = format_groups(an)
    assert "prunable" in text and "hidden width" in text and "graph-output" in text
    assert all(g.id in text for g in an.groups)
    data = json.loads(json.dumps(groups_to_json(an)))
    assert len(data["groups"]) == len(an.groups)
    head = next(g for g in data["groups"] if g["unit"] == "head")
    assert head["consumers"][0]["role"] == "input" and head["n_units"] == 2


def test_cli_inspect_groups(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(models_zoo.build("tiny_resnet", "dynamo"))
    assert cli_main(["inspect", "--groups", path]) == 0
    out = capsys.readouterr().out
    assert "coupled-channel groups" in out and "channel" in out
    assert cli_main(["inspect", "--groups", "--json", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["coverage"] == pytest.approx(1.0)


def test_custom_domain_model_still_compiles(rng: np.random.Generator) -> None:
    """A model with an op we have never seen still compiles through the pass, pruned around it."""
    from spa_compiler.context import CompileContext
    from spa_compiler.passes.prune_uniform import PruneUniformPass

    init = {
        "w1": (rng.standard_normal((8, 3, 1, 1))).astype(F),
        "w2": (rng.standard_normal((8, 8, 1, 1))).astype(F),
        "w3": (rng.standard_normal((2, 8, 1, 1))).astype(F),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2"),
        helper.make_node("Swizzle", ["c2"], ["s"], name="swizzle", domain="org.weird"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="c3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [onnx.numpy_helper.from_array(v, k) for k, v in init.items()],
        value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 8, 4, 4])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("org.weird", 1)]
    )
    model = ModelIR.from_proto(proto)
    res = PruneUniformPass(criterion="magnitude", ratio=0.5).run(model, CompileContext())
    assert res.modified and res.stats["groups_pruned"] == 1
    assert res.skipped.get("frozen:unknown-op") == 2  # its input channels and its output channels
    onnx.checker.check_model(model.to_proto())
