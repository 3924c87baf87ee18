"""Lowering: fused output agrees with the input model on every zoo model of both exporters; per-layer
head counts; the measured choice (with a deterministic fake provider); a rewrite that fails the
check is dropped; the file written is the file timed; lowering alone meeting a budget prunes nothing."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from spa_compiler import models_zoo
from spa_compiler.compile import compile_model, parse_budget
from spa_compiler.ir import ModelIR, load_proto
from spa_compiler.latency.provider import Timing
from spa_compiler.lowering import ALL_FAMILIES, Lowering, LoweredProvider, choose, lower, proto_digest
from spa_compiler.lowering.select import relative_error
from spa_compiler.ort import make_session, random_feeds

TRANSFORMERS = ("tiny_vit", "tiny_bert", "tiny_gpt", "tiny_llama")
ATTENTION_OPS = {"Attention", "MultiHeadAttention"}


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(x) for x in make_session(model, optimize=False).run(None, feeds)]


def _other_shapes(name: str) -> dict[str, tuple[int, ...]] | None:
    """A second size for models with symbolic dims (the lowered graph must keep them symbolic)."""
    spec = models_zoo.get_model(name)
    if not spec.dynamic_axes:
        return None
    if name == "tiny_vit":
        return {"pixel_values": (3, 3, 32, 32)}
    return {k: (3, 24) for k in spec.input_shapes}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", models_zoo.list_models())
def test_fused_output_agrees_with_input_model(name: str, exporter: str) -> None:
    proto = onnx.load(models_zoo.build(name, exporter))
    shapes = models_zoo.DEFAULT_SHAPES[name]
    res = lower(proto, Lowering(families=ALL_FAMILIES), shapes)
    if name in TRANSFORMERS:  # every attention block is fused, whichever exporter wrote it
        assert sum(_ops(res.model)[op] for op in ATTENTION_OPS) == 2, (res.fused, res.skipped)
        assert _ops(res.model)["Softmax"] == 0
    ir = ModelIR.from_proto(proto)
    for sizes in filter(None, [shapes, _other_shapes(name)]):
        for seed in (0, 1):
            feeds = random_feeds(ir, sizes, seed=seed)
            assert relative_error(_run(res.model, feeds), _run(proto, feeds)) <= 1e-4


def test_input_model_not_modified() -> None:
    proto = onnx.load(models_zoo.build("tiny_bert", "torchscript"))
    before = proto.SerializeToString(deterministic=True)
    lower(proto, Lowering(families=ALL_FAMILIES), models_zoo.DEFAULT_SHAPES["tiny_bert"])
    assert proto.SerializeToString(deterministic=True) == before


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_per_layer_head_counts_fused_per_node(exporter: str) -> None:
    """A pruned model whose layers keep different numbers of heads: one fused node per layer, each
    with its own num_heads (ORT's script alone takes one count for the whole model)."""
    from spa_compiler.groups.analysis import analyze, prune_groups

    name = "tiny_bert"
    shapes = models_zoo.DEFAULT_SHAPES[name]
    model = ModelIR.load(models_zoo.build(name, exporter))
    analysis = analyze(model, units=("head",), input_shapes=shapes)
    heads = [g for g in analysis.prunable if g.unit == "head"]
    assert len(heads) == 2
    plan = {heads[0].id: [0], heads[1].id: [1, 2]}  # 4 -> 3 and 4 -> 2 heads
    prune_groups(model, plan, analysis=analysis, validate=True)
    pruned = model.to_proto()
    res = lower(pruned, Lowering(families=ALL_FAMILIES), shapes)
    counts = sorted(int(a.i) for n in res.model.graph.node if n.op_type in ATTENTION_OPS
                    for a in n.attribute if a.name == "num_heads")
    assert counts == [2, 3]
    feeds = random_feeds(model, shapes, seed=3)
    assert relative_error(_run(res.model, feeds), _run(pruned, feeds)) <= 1e-4


def test_fp16_writes_float16_weights_and_keeps_float32_io() -> None:
    proto = onnx.load(models_zoo.build("tiny_gpt", "dynamo"))
    shapes = models_zoo.DEFAULT_SHAPES["tiny_gpt"]
    out = lower(proto, Lowering(families=("mha",), precision="fp16"), shapes).model
    floats = {t.data_type for t in out.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                            onnx.TensorProto.FLOAT16)}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    io16 = lower(proto, Lowering(precision="fp16", fp16_io=True), shapes).model
    assert io16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


# -- the measured choice, with a deterministic provider -----------------------------------------


@dataclasses.dataclass
class CostProvider:
    """Times a model as the sum of per-op costs (deterministic, no timing noise)."""

    cost: dict[str, float] = dataclasses.field(default_factory=dict)
    default: float = 1.0
    kind: str = "measured"
    timed: list[str] = dataclasses.field(default_factory=list)
    #: (parameter count, fused attention present) of every model timed
    seen: list[tuple[int, bool]] = dataclasses.field(default_factory=list)

    def _ms(self, model: Any) -> float:
        proto = model if isinstance(model, onnx.ModelProto) else model.to_proto(weights=False)
        self.timed.append(proto_digest(proto))
        params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
        self.seen.append((params, bool(ATTENTION_OPS & {n.op_type for n in proto.graph.node})))
        # ops cost launch overhead, weights cost bandwidth: both lowering and pruning pay
        return sum(self.cost.get(n.op_type, self.default) for n in proto.graph.node) * 0.01 + params * 2e-5

    def time(self, model: Any, feeds: Any) -> Timing:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Any, feeds: Any) -> list[Timing]:
        return [Timing(self._ms(m), "measured", 10) for m in models]

    def provenance(self) -> dict[str, Any]:
        return {"device": "fake", "runtime": "fake", "runtime_version": "0", "provider": "fake",
                "threads": 1, "precision": "fp32"}


def _choose(name: str, provider: Any, mode: str = "auto") -> Any:
    proto = onnx.load(models_zoo.build(name, "torchscript"))
    shapes = models_zoo.DEFAULT_SHAPES[name]
    feeds = random_feeds(ModelIR.from_proto(proto), shapes)
    return choose(proto, target="ort-cpu", precision="fp32", fp16_io=False, mode=mode, input_shapes=shapes,
                  feeds=feeds, provider=provider)


def test_choice_keeps_only_what_times_faster() -> None:
    # fused norms cost more than the ops they replace: the family is tried, checked, and not kept
    d = _choose("tiny_bert", CostProvider(cost={"SkipLayerNormalization": 50.0}))
    tried = {e["family"]: e for e in d.tried}
    assert tried["skip_layer_norm"]["applicable"] and tried["skip_layer_norm"]["check_fp32"]["ok"]
    assert tried["skip_layer_norm"]["kept"] is False
    assert "skip_layer_norm" not in d.lowering.families
    assert tried["attention"]["kept"] is True and "attention" in d.lowering.families
    assert tried["layer_norm"]["applicable"] is False  # nothing of its kind in post-LN BERT alone


def test_nothing_kept_when_every_fusion_is_slower() -> None:
    slow = {op: 100.0 for op in ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu",
                                 "Gelu", "EmbedLayerNormalization", "LayerNormalization")}
    d = _choose("tiny_bert", CostProvider(cost=slow))
    assert d.lowering.families == ()
    assert any("none applied" in n for n in d.notes)


def test_no_device_means_no_measured_lowering() -> None:
    d = _choose("tiny_bert", None)
    assert d.lowering.families == ()
    assert any("no device" in n for n in d.notes)
    assert _choose("tiny_bert", None, mode="all").lowering.families  # --lower all: every passing family


def test_rewrite_failing_the_check_is_dropped_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from spa_compiler.lowering import attention

    real = attention._emit

    def wrong_scale(G: Any, m: dict[str, Any], shapes: Any) -> Any:
        return real(G, {**m, "scale": m["scale"] * 3.0}, shapes)

    monkeypatch.setattr(attention, "_emit", wrong_scale)
    d = _choose("tiny_llama", CostProvider())
    mha = next(e for e in d.tried if e["family"] == "mha")
    assert mha["applicable"] and mha["check_fp32"]["ok"] is False
    assert mha["kept"] is False and "numerical check" in mha["why"]
    assert "mha" not in d.lowering.families


def test_lowered_provider_times_the_lowered_form() -> None:
    proto = onnx.load(models_zoo.build("tiny_llama", "dynamo"))
    shapes = models_zoo.DEFAULT_SHAPES["tiny_llama"]
    inner = CostProvider()
    low = Lowering(families=("mha", "skip_layer_norm"))
    prov = LoweredProvider(inner, low, shapes)
    prov.time_many([proto], {})
    assert inner.timed[-1] == proto_digest(lower(proto, low, shapes).model) == prov.last_digest


# -- integration: compile_model -------------------------------------------------------------------


def _compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: Any, **kw: Any) -> Any:
    from spa_compiler.targets import Target

    monkeypatch.setattr(Target, "provider", lambda self, **k: provider)
    src = models_zoo.build("tiny_bert", "torchscript")
    return compile_model(src, tmp_path / "out.onnx", input_shapes=models_zoo.DEFAULT_SHAPES["tiny_bert"],
                         validate="end", **kw)


def test_written_file_is_the_timed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = CostProvider()
    rep = _compile(tmp_path, monkeypatch, provider, budget=parse_budget("0.5x"), preset_name="spa")
    assert "met_by_lowering_alone" not in rep.budget  # lowering alone does not reach 0.5x: pruned on top
    written = load_proto(tmp_path / "out.onnx")
    assert rep.lowering["chosen"]["families"]
    assert ATTENTION_OPS & set(_ops(written))
    # same bytes as what the search timed for this structure and what the verdict timed
    assert rep.output["sha256_lowered"] == rep.output["sha256_timed"] == proto_digest(written)
    assert provider.timed[-1] == proto_digest(written)  # the last model timed is the file as read back
    # every pruned candidate the search timed was timed in lowered form
    src = load_proto(models_zoo.build("tiny_bert", "torchscript"))
    dense_params = sum(int(np.prod(t.dims)) for t in src.graph.initializer)
    pruned = [fused for p, fused in provider.seen if p < dense_params]
    assert len(pruned) >= 2 and all(pruned)
    paired = rep.after["paired"]
    assert {"dense_ms", "lowered_dense_ms", "compiled_ms", "ratio", "ratio_to_lowered"} <= set(paired)
    assert paired["lowered_dense_ms"] < paired["dense_ms"]


def test_lowering_alone_meeting_the_budget_prunes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _compile(tmp_path, monkeypatch, CostProvider(), budget=parse_budget("0.95x"), preset_name="spa")
    assert rep.budget["met_by_lowering_alone"] is True
    assert [p.name for p in rep.passes] == ["cleanup", "cleanup"]
    assert any("nothing lossy was done" in n for n in rep.notes)
    assert rep.budget["met"] is True
    src = load_proto(models_zoo.build("tiny_bert", "torchscript"))
    out = load_proto(tmp_path / "out.onnx")
    feeds = random_feeds(ModelIR.from_proto(src), models_zoo.DEFAULT_SHAPES["tiny_bert"], seed=5)
    assert relative_error(_run(out, feeds), _run(src, feeds)) <= 1e-4  # lossless


def test_budget_relative_to_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _compile(tmp_path, monkeypatch, CostProvider(), budget=parse_budget("0.95x"), preset_name="none",
                   budget_relative_to="lowered")
    lowered = rep.lowering["timings"]["paired_dense_ms"]["lowered"]
    assert rep.budget["ms"] == pytest.approx(0.95 * lowered, rel=1e-4)
    assert rep.budget["relative_to"] == "lowered dense model"
    assert "met_by_lowering_alone" not in rep.budget


def test_lower_none_writes_the_input_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _compile(tmp_path, monkeypatch, CostProvider(), preset_name="none", lower="none")
    assert rep.lowering["chosen"]["families"] == []
    out = load_proto(tmp_path / "out.onnx")
    assert not ATTENTION_OPS & set(_ops(out))


def test_cli_rejects_unknown_lower_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from spa_compiler.cli import main

    assert main(["compile", "x.onnx", "--lower", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lower" in err and len(err.splitlines()) == 1


def test_inspect_lower_shows_each_family(capsys: pytest.CaptureFixture[str]) -> None:
    from spa_compiler.cli import main

    path = models_zoo.build("tiny_llama", "dynamo")
    assert main(["inspect", "--lower", str(path), "--input-shape", "input_ids:2x16"]) == 0
    out = capsys.readouterr().out
    assert "MultiHeadAttention x2" in out and "SkipSimplifiedLayerNormalization x4" in out
    assert "not timed" in out


def test_compiled_model_failing_the_check_is_written_unlowered(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The rewrites are checked on the dense model when chosen and on the compiled model before it is
    written; a failure there writes the model with the precision alone and says so."""
    from spa_compiler.lowering import select

    real = select.check

    def fails_on_compiled(lowered: Any, reference: Any, feeds: Any, **kw: Any) -> Any:
        res = real(lowered, reference, feeds, **kw)
        if len(feeds) == 1:  # the compiled model's check (the dense model's uses two feeds)
            return dataclasses.replace(res, ok=False, why="forced by the test")
        return res

    monkeypatch.setattr(select, "check", fails_on_compiled)
    rep = _compile(tmp_path, monkeypatch, CostProvider(), preset_name="none")
    assert rep.lowering["chosen"]["families"]  # chosen on the dense model
    assert rep.lowering["check_compiled"]["ok"] is False
    assert any("precision alone" in n for n in rep.lowering["notes"])
    assert not ATTENTION_OPS & set(_ops(load_proto(tmp_path / "out.onnx")))


def test_families_whose_ops_are_absent_are_not_rewritten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CNN has no Softmax, ReduceMean, Erf or Tanh: no family's pattern can be there, so none is
    run over the model (each would copy it and run ORT's script), and the decision says why."""
    from spa_compiler.lowering import select

    assert set(select.FAMILY_NEEDS) == set(ALL_FAMILIES)  # every family has its precondition
    calls = []
    real = select.lower

    def spy(*a, **kw):
        calls.append(a[1])
        return real(*a, **kw)

    monkeypatch.setattr(select, "lower", spy)
    d = _choose("tiny_resnet", CostProvider(cost={}))
    assert calls == [] or all(not c.families for c in calls)  # no family rewrite was run
    assert {e["family"] for e in d.tried} == set(ALL_FAMILIES)
    assert all(not e["applicable"] and "nodes)" in e["why"] for e in d.tried)
    assert d.lowering.families == ()
