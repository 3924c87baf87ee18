"""substitute-monarch: substitution numerics in both forms, recognition of a Monarch-trained
torch model's export, the search keeping sites dense unless measured faster, and bad input."""

from __future__ import annotations

import io
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.methods.monarch import MonarchMethod
from spa_compiler.monarch import emit as em
from spa_compiler.monarch import factor as F
from spa_compiler.monarch import recognize
from spa_compiler.passes.substitute_monarch import SubstituteMonarchPass
from spa_compiler.validation import check_model
from tests.helpers import TOL, make_model, run_ort

vi = helper.make_tensor_value_info


def mlp(rng, *, d=32, h=64, gemm=False, shared=False, batched=False) -> onnx.ModelProto:
    """x (2, 5, d) -> MatMul W1 (d, h) + b1 -> Relu -> MatMul/Gemm W2 -> y (.., d)."""
    f = np.float32
    init = {"w1": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(f), "b1": rng.standard_normal(h).astype(f),
            "w2": (rng.standard_normal((d, h) if gemm else (h, d)) / np.sqrt(h)).astype(f),
            "b2": rng.standard_normal(d).astype(f)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
             helper.make_node("Add", ["a", "b1"], ["ab"], name="add1"),
             helper.make_node("Relu", ["ab"], ["r"], name="relu")]
    if gemm:
        nodes += [helper.make_node("Reshape", ["r", "flat"], ["r2"], name="flatten"),
                  helper.make_node("Gemm", ["r2", "w2", "b2"], ["y"], name="fc2", transB=1)]
        init["flat"] = np.array([-1, h], np.int64)
        out = vi("y", TensorProto.FLOAT, [10, d])
    else:
        nodes += [helper.make_node("MatMul", ["r", "w2"], ["y0"], name="fc2"),
                  helper.make_node("Add", ["y0", "b2"], ["y"], name="add2")]
        out = vi("y", TensorProto.FLOAT, [2, 5, d])
    outputs = [out]
    if shared:  # w1 read twice
        nodes.append(helper.make_node("MatMul", ["x", "w1"], ["z"], name="fc1b"))
        outputs.append(vi("z", TensorProto.FLOAT, [2, 5, h]))
    if batched:
        init["w3"] = rng.standard_normal((2, d, d)).astype(f)
        nodes.append(helper.make_node("MatMul", ["x", "w3"], ["z3"], name="fc3"))
        outputs.append(vi("z3", TensorProto.FLOAT, [2, 5, d]))
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [2, 5, d])], outputs, init)


def _x(rng, d=32):
    return {"x": rng.standard_normal((2, 5, d)).astype(np.float32)}


@pytest.mark.parametrize("gemm", [False, True])
def test_fixed_variant_matches_numpy_in_standard_onnx(rng, gemm):
    proto = mlp(rng, gemm=gemm)
    model = ModelIR.from_proto(proto)
    before = ModelIR.from_proto(proto)
    res = SubstituteMonarchPass(variant="b4r2", emit="onnx", min_elements=0, recognize=False).run(model, CompileContext())
    assert res.modified and res.stats["layers_substituted"] == 2
    assert not model.nodes(("Gemm",)) and len(model.nodes(("MatMul",))) == 4  # two stages per layer
    check_model(model)
    feeds = _x(rng)
    # numpy reference: the same projection applied to each weight
    x = feeds["x"].astype(np.float64)
    w1 = before.tensors()["w1"].values.T
    w2 = before.tensors()["w2"].values if gemm else before.tensors()["w2"].values.T
    m1 = F.dense_weight(*F.project(w1, 4, 4, 2))
    m2 = F.dense_weight(*F.project(w2, 4, 4, 2))
    hdn = np.maximum(x @ m1.T + before.tensors()["b1"].values, 0)
    want = (hdn.reshape(-1, 64) if gemm else hdn) @ m2.T + before.tensors()["b2"].values
    (got,) = run_ort(model, feeds)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-4)


def test_custom_op_form_agrees_with_the_standard_form(rng):
    """The MonarchMatMul node, decomposed by its own definition, equals the standard form; with the
    runtime_ops CPU kernel library (SPA_ORT_CUSTOM_OPS) it also runs in ORT with the same outputs."""
    proto = mlp(rng)
    std, cust = ModelIR.from_proto(proto), ModelIR.from_proto(proto)
    method = MonarchMethod.build(std, blocks=(4,), ranks=(2,), min_elements=0)
    plan = {s: "b4r2" for s in method.linear}
    method.apply(std, plan)
    MonarchMethod.build(cust, blocks=(4,), ranks=(2,), min_elements=0, form="custom-op").apply(cust, plan)
    ops = [n for n in cust.graph.nodes if n.op == em.OP_TYPE]
    assert len(ops) == 2 and all(n.domain == em.DOMAIN for n in ops)
    feeds = _x(rng)
    (y_std,) = run_ort(std, feeds)
    # evaluate the custom-op graph by its factors (the op's definition, numpy)
    t = cust.tensors()
    x = feeds["x"]
    h = np.maximum(F.apply(x, t[ops[0].inputs[1].name].values, t[ops[0].inputs[2].name].values)
                   + t["b1"].values, 0)
    y = F.apply(h, t[ops[1].inputs[1].name].values, t[ops[1].inputs[2].name].values) + t["b2"].values
    np.testing.assert_allclose(y, y_std, **TOL["fp32"])
    if em.custom_op_available()[0]:
        (y_op,) = run_ort(cust, feeds)
        np.testing.assert_allclose(y_op, y_std, **TOL["fp32"])


def test_group_analysis_treats_monarch_nodes_like_any_other(rng):
    from spa_compiler.groups.analysis import analyze

    for form in ("onnx", "custom-op"):
        model = ModelIR.from_proto(mlp(rng))
        MonarchMethod.build(model, blocks=(4,), ranks=(1,), min_elements=0, form=form).apply(
            model, {"fc1": "b4r1"})
        analysis = analyze(model, units=("neuron", "channel", "head"))
        assert analysis.groups and all(g.reason for g in analysis.groups if g.frozen), form
        if form == "custom-op":  # no rule or schema for the op here: what it touches is frozen, with a reason
            reasons = {g.reason.split(":")[0] for g in analysis.groups if g.frozen}
            assert reasons & {"unknown-op", "shape-unknown", "monarch-block-structure"}, reasons
            assert not analysis.prunable
        else:  # standard ops: the analysis reads the reshapes' factors like any other graph
            assert {g.unit for g in analysis.groups} >= {"neuron"}


def test_bad_input_is_skipped_with_a_reason(rng):
    model = ModelIR.from_proto(mlp(rng, shared=True, batched=True))
    sites, skipped = MonarchMethod.find_sites(model, min_elements=0)
    assert set(sites) == {"fc2"}
    assert skipped["shared-weight"] == 2 and skipped["batched-weight"] == 1
    # a prime width has no valid block count
    f = np.float32
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [vi("x", TensorProto.FLOAT, [3, 13])],
                       [vi("y", TensorProto.FLOAT, [3, 7])], {"w": rng.standard_normal((13, 7)).astype(f)})
    m = MonarchMethod.build(ModelIR.from_proto(proto), min_elements=0)
    assert not m.linear and m.skipped == {"no-valid-block-count": 1}
    # a non-constant weight is not a layer; the input file's graph is never touched on skip
    proto2 = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                        [vi("x", TensorProto.FLOAT, [3, 8]), vi("w", TensorProto.FLOAT, [8, 8])],
                        [vi("y", TensorProto.FLOAT, [3, 8])])
    res = SubstituteMonarchPass(variant="b2r1", min_elements=0, emit="onnx").run(ModelIR.from_proto(proto2), CompileContext())
    assert not res.modified and res.stats["sites"] == 0


def test_options_are_validated():
    ctx = CompileContext()
    for bad in (dict(emit="cuda"), dict(variant="b4"), dict(blocks="4,x"), dict(max_fraction=0.0), dict(data="x")):
        with pytest.raises(PreconditionError):
            SubstituteMonarchPass(**bad).check_preconditions(None, ctx)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- recognition
def _torch_monarch_model(rng, n=16, nblocks=4, rank_in=1):
    """A Monarch-trained layer in the style of HazyResearch's MonarchLinear: two block-diagonal
    factors applied with bmm, the permutation done by reshape/transpose (written from the
    description of `blockdiag_butterfly_multiply`: x (B, n) -> (k, B, p) -> bmm w1^T -> (B, k*q)
    viewed as (B, r, l) and transposed -> bmm w2^T -> (l, B, s) -> (B, s*l))."""
    torch = pytest.importorskip("torch")

    class MonarchLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
            k = nblocks
            p = n // k
            q = n // k * rank_in  # first factor's output block
            l_ = n // k  # second factor's blocks
            r = k * q // l_
            s = n // l_
            self.w1 = torch.nn.Parameter(torch.randn(k, q, p, generator=g) / p**0.5)
            self.w2 = torch.nn.Parameter(torch.randn(l_, s, r, generator=g) / r**0.5)
            self.bias = torch.nn.Parameter(torch.randn(n, generator=g))

        def forward(self, x):
            batch_shape, n_in = x.shape[:-1], x.shape[-1]
            k, q, p = self.w1.shape
            l_, s, r = self.w2.shape
            xb = x.reshape(-1, k, p).transpose(0, 1)
            out1 = torch.bmm(xb, self.w1.transpose(-1, -2))  # (k, B, q)
            out1 = out1.transpose(0, 1).reshape(-1, r, l_).transpose(-1, -2).transpose(0, 1)  # (l, B, r)
            out2 = torch.bmm(out1.contiguous(), self.w2.transpose(-1, -2))  # (l, B, s)
            return out2.permute(1, 2, 0).reshape(*batch_shape, s * l_) + self.bias

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m1 = MonarchLinear()
            self.m2 = MonarchLinear()

        def forward(self, x):
            return self.m2(torch.relu(self.m1(x)))

    net = Net().eval()
    buf = io.BytesIO()
    x = torch.randn(6, n)
    torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue()), net


def test_monarch_trained_graph_is_recognised_and_fused_losslessly(rng):
    torch = pytest.importorskip("torch")
    proto, net = _torch_monarch_model(rng)
    model = ModelIR.from_proto(proto)
    assert len([n for n in model.graph.nodes if n.op == "MatMul"]) == 4
    chains, _ = recognize.find_chains(model)
    assert len(chains) == 2
    m = recognize.probe(model, chains[0])
    assert not isinstance(m, str)
    got = recognize.structure_of(chains[0], m)
    assert not isinstance(got, str) and got[0].key == "b4r1"
    # the fused graph: no batched MatMul left, two MonarchMatMul nodes
    fused = ModelIR.from_proto(proto)
    res = SubstituteMonarchPass(emit="custom-op", substitute=False).run(fused, CompileContext())
    assert res.stats["chains_fused"] == 2
    assert [n.op for n in fused.graph.nodes].count(em.OP_TYPE) == 2 and not fused.nodes(("MatMul",))
    x = rng.standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    # the op's definition on the fused factors reproduces the torch model
    t = fused.tensors()
    ops = [n for n in fused.graph.nodes if n.op == em.OP_TYPE]
    adds = {n.inputs[0].name: n for n in fused.graph.nodes if n.op == "Add"}
    h = F.apply(x, t[ops[0].inputs[1].name].values, t[ops[0].inputs[2].name].values)
    h = np.maximum(h + adds[ops[0].outputs[0].name].inputs[1].values, 0)
    y = F.apply(h, t[ops[1].inputs[1].name].values, t[ops[1].inputs[2].name].values)
    y = y + adds[ops[1].outputs[0].name].inputs[1].values
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    if em.custom_op_available()[0]:  # the runtime_ops CPU kernel library is built
        (y_op,) = run_ort(fused, {"x": x})
        np.testing.assert_allclose(y_op, want, rtol=1e-4, atol=1e-5)
    # with the standard form as target the chains are recognised but kept as they are
    kept = ModelIR.from_proto(proto)
    res2 = SubstituteMonarchPass(emit="onnx", substitute=False).run(kept, CompileContext())
    assert not res2.modified and res2.skipped == {"chain:recognised-kept-as-is": 2}


def test_a_chain_that_is_not_monarch_is_left_alone(rng):
    """Two batched products with a permutation that does not give the op's structure at the
    weights' block counts (a rank deficit the probe detects) are left alone with a reason."""
    f = np.float32
    b, p, c = 2, 4, 2  # block-diagonal (contiguous output blocks) of rank-2 blocks: not rank 1 per slice
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["x3"], name="r1"),
             helper.make_node("Transpose", ["x3"], ["xt"], perm=[1, 0, 2], name="t1"),
             helper.make_node("MatMul", ["xt", "w1"], ["u"], name="bmm1"),
             helper.make_node("Transpose", ["u"], ["ut"], perm=[0, 1, 2], name="t2"),  # no permutation
             helper.make_node("MatMul", ["ut", "w2"], ["v"], name="bmm2"),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2], name="t3"),
             helper.make_node("Reshape", ["vt", "s2"], ["y"], name="r2")]
    init = {"s1": np.array([-1, b, p], np.int64), "s2": np.array([-1, b * p], np.int64),
            "w1": rng.standard_normal((b, p, c)).astype(f), "w2": rng.standard_normal((b, c, p)).astype(f)}
    proto = make_model(nodes, [vi("x", TensorProto.FLOAT, [3, b * p])], [vi("y", TensorProto.FLOAT, [3, b * p])], init)
    model = ModelIR.from_proto(proto)
    res = SubstituteMonarchPass(emit="custom-op", substitute=False).run(model, CompileContext())
    assert not res.modified and res.skipped == {"chain:not-monarch-in-op-convention": 1}


# ---------------------------------------------------------------------- the search
def test_search_keeps_sites_dense_unless_a_variant_is_measured_faster(rng):
    from spa_compiler.latency.table import LatencyTable, Provenance, SiteLatency

    proto = mlp(rng, d=64, h=256)
    model = ModelIR.from_proto(proto)
    method = MonarchMethod.build(model, blocks=(4,), ranks=(1, 4), min_elements=0)
    keys = [v.key for v in method.variants(method.sites()[0])]
    assert keys[0] == "dense" and len(keys) == 3
    prov = Provenance("test", "onnxruntime", "1", "fp32", {"x": (2, 5, 64)}, "f", "0")
    # fc1: every variant slower than dense; fc2: b4r1 faster
    table = LatencyTable("analytic", prov, 1.0, 0.4, {
        "fc1": SiteLatency("monarch", {"dense": 0.3, "b4r1": 0.35, "b4r4": 0.4}),
        "fc2": SiteLatency("monarch", {"dense": 0.3, "b4r1": 0.1, "b4r4": 0.2})})
    ctx = CompileContext(latency_table=table, budget_ms=0.85, dense_ms=1.0, max_error=10.0)
    res = SubstituteMonarchPass(min_elements=0, blocks="4", ranks="1,4", emit="onnx", recognize=False).run(model, ctx)
    plan = {d["site"]: d["variant"] for d in res.details if "site" in d}
    assert plan["fc1"] == "dense" and plan["fc2"] in ("b4r1", "b4r4")
    assert res.skipped == {"no-variant-measured-faster": 1}
    check_model(model)
