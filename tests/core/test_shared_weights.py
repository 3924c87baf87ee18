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
