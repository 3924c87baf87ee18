"""One copy of the weights: clones share the arrays they do not change, pruning a clone never
touches the source's arrays, and ONNX Runtime sessions, calibration and validation read a ModelIR's
own arrays (or none) instead of exported copies, with the same results as before."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from spa_compiler import models_zoo
from spa_compiler.calibration import ActivationCollector
from spa_compiler.context import CompileContext
from spa_compiler.errors import InvalidModelError
from spa_compiler.ir import ModelIR
from spa_compiler.ort import make_session, random_feeds
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.prune_to_budget import PruneToBudgetPass
from spa_compiler.validation import check_model
from tests.helpers import conv_chain_model


def _llama() -> tuple[ModelIR, dict[str, tuple[int, ...]]]:
    model = ModelIR.load(models_zoo.build("tiny_llama", "dynamo"))
    return model, models_zoo.default_shapes("tiny_llama")


def _arrays(model: ModelIR) -> dict[str, np.ndarray]:
    tensors = model.tensors().items()
    return {n: np.asarray(t.values) for n, t in tensors if isinstance(t, gs.Constant)}


def test_pruning_a_clone_leaves_the_source_untouched() -> None:
    model, shapes = _llama()
    snapshot = {n: a.copy() for n, a in _arrays(model).items()}
    before = model.fingerprint()
    calib = [random_feeds(model, shapes, seed=i) for i in range(2)]
    clone = model.clone()
    PassManager([PruneToBudgetPass(criterion="obs", units=("head", "neuron"), ratio=0.5)]).run(
        clone, CompileContext(calibration=calib, input_shapes=shapes)
    )
    source, pruned = _arrays(model), _arrays(clone)
    assert model.fingerprint() == before
    for name, value in snapshot.items():
        np.testing.assert_array_equal(source[name], value)
    changed = [n for n in source if n not in pruned or pruned[n].shape != source[n].shape]
    shared = [n for n in pruned if n in source and np.shares_memory(pruned[n], source[n])]
    assert changed and shared  # pruned tensors got new arrays, the others are still the source's
    for name in shared:
        assert not pruned[name].flags.writeable


@pytest.mark.parametrize("optimize", [False, True])
def test_session_from_the_models_arrays_matches_the_exported_copy(optimize: bool) -> None:
    model, shapes = _llama()
    feeds = random_feeds(model, shapes, seed=1)
    own = make_session(model, optimize=optimize).run(None, feeds)
    copied = make_session(model.to_proto(), optimize=optimize).run(None, feeds)
    for a, b in zip(own, copied, strict=True):
        np.testing.assert_array_equal(a, b)


def test_collector_on_a_model_ir_matches_the_proto() -> None:
    model, shapes = _llama()
    names = [n.outputs[0].name for n in model.graph.nodes if n.op == "MatMul"][:4]
    feeds = [random_feeds(model, shapes, seed=2)]
    with ActivationCollector(model, names) as a, ActivationCollector(model.to_proto(), names) as b:
        (x,), (y,) = list(a.collect(feeds)), list(b.collect(feeds))
    for name in names:
        np.testing.assert_array_equal(x[name], y[name])


def test_weightless_validation_still_catches_bad_weights(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    check_model(model)
    w = model.tensors()["w2"]
    w.values = np.zeros((w.shape[0], w.shape[1] + 1, *w.shape[2:]), dtype=w.dtype)  # in-channels
    with pytest.raises(InvalidModelError, match="fails ONNX validation"):
        check_model(model)
    skeleton = model.to_proto(weights=False)  # what was checked: the weights were left out
    assert onnx.TensorProto.EXTERNAL in {t.data_location for t in skeleton.graph.initializer}


# -- sessions of ModelProtos: one copy of the weights variants share ------------------------------


def _proto_variant(proto: onnx.ModelProto, name: str, scale: float) -> onnx.ModelProto:
    """A copy of `proto` with initializer `name` scaled (every other tensor the same content)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    t = next(t for t in out.graph.initializer if t.name == name)
    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(scale), name))
    return out


def _pointers(sess: object) -> dict[str, int]:
    names = getattr(sess, "_spa_names")
    return {n: v.data_ptr() for n, v in zip(names, getattr(sess, "_spa_initializers"))}


def test_proto_sessions_share_equal_weights_and_match_inline_sessions() -> None:
    import onnxruntime as ort

    model, shapes = _llama()
    proto = model.to_proto()
    big = sorted((t for t in proto.graph.initializer if len(t.raw_data) >= 1024), key=lambda t: -len(t.raw_data))
    changed = big[0].name
    other = _proto_variant(proto, changed, 0.5)
    feeds = random_feeds(model, shapes)
    s1, s2 = make_session(proto, threads=1), make_session(other, threads=1)
    p1, p2 = _pointers(s1), _pointers(s2)
    assert {t.name for t in big} <= set(p1)  # every large tensor went to ORT as an external initializer
    assert all(p1[n] == p2[n] for n in p1 if n != changed)  # one copy of what the variants share
    assert p1[changed] != p2[changed]
    for m, s in ((proto, s1), (other, s2)):  # same results as ORT reading the serialized model
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for a, b in zip(s.run(None, feeds), ref.run(None, feeds)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer
                                                                  if t.name == changed)),
                                  np.asarray(_arrays(model)[changed]))  # the input proto is untouched


def test_shared_weight_references_hold_no_data_and_fail_loudly_once_released() -> None:
    import gc

    from spa_compiler.ort import share_weights

    model, shapes = _llama()
    proto = model.to_proto()
    held: list[np.ndarray] = []
    light = share_weights(proto, held)
    assert len(light.SerializeToString()) < len(proto.SerializeToString()) / 20
    assert [t.name for t in light.graph.initializer] == [t.name for t in proto.graph.initializer]
    feeds = random_feeds(model, shapes)
    np.testing.assert_allclose(make_session(light).run(None, feeds)[0], make_session(proto).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-6)
    del held
    gc.collect()
    with pytest.raises(RuntimeError, match="no longer held"):
        make_session(light)


def test_lowering_variants_are_timed_on_one_copy_of_the_weights() -> None:
    from spa_compiler.latency.ort_cpu import OrtCpuProvider
    from spa_compiler.lowering.select import choose

    proto = onnx.load(models_zoo.build("tiny_bert", "torchscript"))
    shapes = models_zoo.DEFAULT_SHAPES["tiny_bert"]
    feeds = random_feeds(ModelIR.from_proto(proto), shapes)
    seen: list[tuple[int, dict[str, int]]] = []

    class Recording(OrtCpuProvider):
        def time_many(self, models, feeds):  # type: ignore[no-untyped-def]
            for m in models:
                inline = sum(len(t.raw_data) for t in m.graph.initializer)
                seen.append((inline, _pointers(make_session(m, threads=1))))
            return super().time_many(models, feeds)

    d = choose(proto, target="ort-cpu", precision="fp32", fp16_io=False, mode="auto", input_shapes=shapes,
               feeds=feeds, provider=Recording(runs=2, min_seconds=0.0, warmup=0))
    assert len(seen) >= 3 and d.timings["dense_ms"]  # none, all, all-minus-each: timed side by side
    dense_inline = sum(len(t.raw_data) for t in proto.graph.initializer)
    assert all(inline < dense_inline / 20 for inline, _ in seen)  # no variant carried its own weights
    common = set.intersection(*(set(p) for _, p in seen))
    assert common  # tensors every variant has (the FFN weights): one array for all of them
    assert all(len({p[n] for _, p in seen}) == 1 for n in common)
