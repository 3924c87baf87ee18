"""Latency tables (spa_compiler.latency.table): schema, validation, lookups, fingerprints.

Oracles: interpolation reproduces the measured levels exactly and is monotone on monotone data
(hypothesis); JSON round trips are lossless; each malformed field gives a UsageError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from spa_compiler.errors import UsageError
from spa_compiler.latency.table import (
    SCHEMA,
    GroupLatency,
    LatencyTable,
    LevelLatency,
    Provenance,
    structure_fingerprint,
)
from spa_compiler.search.knapsack import GroupOptions, Level, choose_levels
from tests.helpers import make_model


def _prov(**kw: Any) -> Provenance:
    base: dict[str, Any] = dict(
        device="NVIDIA H200",
        runtime="onnxruntime",
        runtime_version="1.31.1",
        precision="fp16",
        input_shapes={"x": (8, 16)},
        model_fingerprint="f" * 64,
        tool_version="0.1.0",
        provider="CUDAExecutionProvider",
        model_name="m.onnx",
    )
    base.update(kw)
    return Provenance(**base)


def _table(**kw: Any) -> LatencyTable:
    groups = {
        "ffn.0": GroupLatency(
            8, 4, (LevelLatency(2, 8, 0.2), LevelLatency(4, 16, 0.35), LevelLatency(8, 32, 0.6))
        ),
        "heads.0": GroupLatency(4, 16, (LevelLatency(1, 16, 0.1), LevelLatency(4, 64, 0.3))),
    }
    args: dict[str, Any] = dict(
        kind="measured", provenance=_prov(), dense_ms=1.5, base_ms=0.55, groups=groups
    )
    args.update(kw)
    return LatencyTable(**args)


@st.composite
def group_latencies(draw: st.DrawFn, monotone: bool = False) -> GroupLatency:
    n = draw(st.integers(1, 64))
    kept = sorted(draw(st.sets(st.integers(0, n - 1), max_size=6)) | {n})
    lats = [draw(st.floats(0.0, 100.0, allow_nan=False)) for _ in kept]
    if monotone:
        lats = sorted(lats)
    unit = draw(st.integers(1, 8))
    return GroupLatency(
        n, unit, tuple(LevelLatency(k, k * unit, t) for k, t in zip(kept, lats, strict=True))
    )


@settings(max_examples=200, deadline=None)
@given(group_latencies())
def test_interpolation_hits_the_levels_and_stays_between_neighbours(g: GroupLatency) -> None:
    for lv in g.levels:
        assert g.latency(lv.kept_units) == pytest.approx(lv.latency_ms)
    for a, b in zip(g.levels, g.levels[1:], strict=False):
        mid = (a.kept_units + b.kept_units) / 2
        v = g.latency(mid)
        assert min(a.latency_ms, b.latency_ms) - 1e-9 <= v <= max(a.latency_ms, b.latency_ms) + 1e-9
        assert v == pytest.approx((a.latency_ms + b.latency_ms) / 2)


@settings(max_examples=200, deadline=None)
@given(group_latencies(monotone=True), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=20))
def test_interpolation_is_monotone_on_monotone_tables(
    g: GroupLatency, fractions: list[float]
) -> None:
    lo, hi = g.levels[0].kept_units, g.levels[-1].kept_units
    xs = sorted(lo + f * (hi - lo) for f in fractions)
    ys = [g.latency(x) for x in xs]
    assert all(y1 <= y2 + 1e-12 for y1, y2 in zip(ys, ys[1:], strict=False))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8), group_latencies(), max_size=5),
    st.floats(0, 50, allow_nan=False),
    st.sampled_from(["measured", "analytic"]),
)
def test_json_round_trip(groups: dict[str, GroupLatency], base: float, kind: str) -> None:
    t = LatencyTable(
        kind=kind,  # type: ignore[arg-type]
        provenance=_prov(threads=2),
        dense_ms=base + 1.0,
        base_ms=base,
        groups=groups,
    )
    again = LatencyTable.from_dict(json.loads(t.to_json()))
    assert again == t
    assert again.to_dict() == t.to_dict()


def test_lookups_and_additive_prediction() -> None:
    t = _table()
    assert t.lookup("ffn.0", 3) == pytest.approx(0.275)
    assert t.lookup("heads.0", 4) == pytest.approx(0.3)
    assert t.additive_dense_ms == pytest.approx(0.55 + 0.6 + 0.3)
    assert t.additivity_gap_ms == pytest.approx(1.5 - 1.45)
    assert t.predict_ms({}) == pytest.approx(t.additive_dense_ms)
    assert t.predict_ms({"ffn.0": 4, "heads.0": 1}) == pytest.approx(0.55 + 0.35 + 0.1)
    with pytest.raises(UsageError, match="outside the measured range 2..8"):
        t.lookup("ffn.0", 1)
    with pytest.raises(UsageError, match="no group 'ffn.9'"):
        t.lookup("ffn.9", 4)
    with pytest.raises(UsageError, match="no groups"):
        t.predict_ms({"nope": 1})


def test_group_options_feed_the_search() -> None:
    t = _table()
    errors = {"ffn.0": {8: 0.0, 4: 1.0, 2: 3.0}, "heads.0": {4: 0.0, 1: 2.0}}
    opts = [GroupOptions(g, [Level(k, t.lookup(g, k), e) for k, e in by.items()]) for g, by in errors.items()]
    r = choose_levels(opts, budget_ms=0.55 + 0.35 + 0.3, base_ms=t.base_ms)
    assert r.feasible and r.levels == {"ffn.0": 4, "heads.0": 4}


def test_save_and_load(tmp_path: Path) -> None:
    t = _table()
    path = tmp_path / "table.json"
    t.save(path)
    assert LatencyTable.load(path) == t
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spa-tmp-")]
    text = path.read_text()
    assert '"kind": "measured"' in text and text.count("\n") < 60


def test_version_1_tables_still_load_and_named_variants_round_trip(tmp_path: Path) -> None:
    from spa_compiler.latency.table import SiteLatency

    d = _table().to_dict()
    v1 = {**{k: v for k, v in d.items() if k != "sites"}, "schema": "spa-latency-table/1",
          "groups": {g: {k: v for k, v in e.items() if k != "method"} for g, e in d["sites"].items()}}
    old = LatencyTable.from_dict(v1)
    assert old == _table() and old.methods() == {"pruning"}
    mixed = LatencyTable.from_dict({**d, "sites": {**d["sites"], "mlp.0.down": {
        "method": "nm", "variants": {"dense": 0.2, "2:4": 0.15}}}})
    assert isinstance(mixed.groups["mlp.0.down"], SiteLatency)
    assert mixed.lookup("mlp.0.down", "2:4") == pytest.approx(0.15)
    assert mixed.methods() == {"pruning", "nm"}
    with pytest.raises(UsageError, match="not measured"):
        mixed.lookup("mlp.0.down", "4:8")
    path = tmp_path / "t.json"
    mixed.save(path)
    assert LatencyTable.load(path) == mixed
    assert mixed.predict_ms({"mlp.0.down": "2:4"}) == pytest.approx(mixed.additive_dense_ms - 0.05)


def _mutated(edit: Any) -> dict[str, Any]:
    d = _table().to_dict()
    edit(d)
    return d


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(schema="other/2"), "'schema' must be one of"),
        (lambda d: d.update(kind="guessed"), "'kind' must be one of"),
        (lambda d: d["provenance"].pop("device"), "provenance.device must be a non-empty string"),
        (lambda d: d["provenance"].update(date=""), "provenance.date"),
        (lambda d: d["provenance"].update(threads=0), "provenance.threads"),
        (lambda d: d["provenance"].update(input_shapes={"x": [8, "N"]}), r"input_shapes\['x'\]"),
        (lambda d: d.update(dense_ms=-1), "'dense_ms' must be a non-negative number"),
        (lambda d: d.update(base_ms=True), "'base_ms'"),
        (lambda d: d.update(sites=[]), "'sites' must be an object"),
        (lambda d: d["sites"]["ffn.0"].update(n_units=0), r"sites\['ffn.0'\].n_units"),
        (lambda d: d["sites"]["ffn.0"].update(levels=[]), "levels must be a non-empty list"),
        (lambda d: d["sites"]["ffn.0"]["levels"].pop(), "must end with the dense level"),
        (lambda d: d["sites"]["ffn.0"]["levels"].reverse(), "must increase strictly"),
        (
            lambda d: d["sites"]["ffn.0"]["levels"][0].update(kept_units=9),
            r"kept_units must be an integer in 0..8",
        ),
        (lambda d: d["sites"]["ffn.0"]["levels"][0].update(latency_ms=float("nan")), "latency_ms"),
        (lambda d: d["sites"]["ffn.0"]["levels"][0].update(latency_ms="0.2"), "latency_ms"),
    ],
)
def test_malformed_tables_are_usage_errors(edit: Any, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        LatencyTable.from_dict(_mutated(edit), source="t.json")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read latency table"):
        LatencyTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": ')
    with pytest.raises(UsageError, match=r"bad.json is not JSON: .* line 1"):
        LatencyTable.load(bad)
    bad.write_text("[]")
    with pytest.raises(UsageError, match="bad.json: top level must be a JSON object"):
        LatencyTable.load(bad)
    assert SCHEMA == "spa-latency-table/2"


def test_check_compatible() -> None:
    t = _table()
    t.check_compatible(
        model_fingerprint="f" * 64,
        input_shapes={"x": [8, 16]},
        precision="fp16",
        groups={"ffn.0": 8, "heads.0": 4, "other": 12},
    )
    with pytest.raises(UsageError, match="made for another model"):
        t.check_compatible(model_fingerprint="a" * 64)
    with pytest.raises(UsageError, match="input shapes"):
        t.check_compatible(input_shapes={"x": [1, 16]})
    with pytest.raises(UsageError, match="precision fp16, not fp32"):
        t.check_compatible(precision="fp32")
    with pytest.raises(UsageError, match="groups the model lacks"):
        t.check_compatible(groups={"ffn.0": 8})
    with pytest.raises(UsageError, match="disagree on group sizes"):
        t.check_compatible(groups={"ffn.0": 16, "heads.0": 4})


def _mlp(rng: np.random.Generator, hidden: int = 16, batch: int = 2) -> Any:
    f = np.float32
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        {
            "w1": rng.standard_normal((8, hidden)).astype(f),
            "w2": rng.standard_normal((hidden, 4)).astype(f),
        },
    )


def test_structure_fingerprint_ignores_weights_not_structure(tmp_path: Path) -> None:
    a = _mlp(np.random.default_rng(0))
    b = _mlp(np.random.default_rng(1))
    assert structure_fingerprint(a) == structure_fingerprint(b)
    assert structure_fingerprint(a) != structure_fingerprint(
        _mlp(np.random.default_rng(0), hidden=12)
    )
    assert structure_fingerprint(a) != structure_fingerprint(
        _mlp(np.random.default_rng(0), batch=3)
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(a.SerializeToString())
    assert structure_fingerprint(path) == structure_fingerprint(a)
    from spa_compiler.ir import ModelIR

    assert structure_fingerprint(ModelIR.from_proto(a)) == structure_fingerprint(a)


def test_structure_fingerprint_sees_shape_constants() -> None:
    def reshaped(shape: list[int]) -> Any:
        return make_model(
            [helper.make_node("Reshape", ["x", "s"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
            [
                helper.make_tensor_value_info(
                    "y", TensorProto.FLOAT, [len(shape) and shape[0], shape[1]]
                )
            ],
            {"s": np.array(shape, np.int64)},
        )

    assert structure_fingerprint(reshaped([4, 4])) != structure_fingerprint(reshaped([2, 8]))


def test_provenance_records_a_date() -> None:
    p = _prov()
    assert p.date.endswith("+00:00") and p.date[:2] == "20"


def test_kept_levels_are_hardware_multiples_and_narrow_groups_relax() -> None:
    from spa_compiler.methods.pruning import kept_levels

    lv = kept_levels(1536, 1, round_to=8, max_ratio=0.75, count=8)
    assert lv[-1] == 1536 and len(lv) == 8 and all(k % 8 == 0 for k in lv)
    assert min(lv) >= 384  # at most 75% removed
    assert kept_levels(12, 64, round_to=8, count=20) == list(range(3, 13))  # heads of 64 are multiples already
    # 12 channels under 16: nothing allowed, the multiple halves to 8
    assert kept_levels(12, 1, round_to=16, max_ratio=0.75) == [8, 12]
    assert kept_levels(3, 1, round_to=8, max_ratio=0.75) == [2, 3]  # halved to 2
    assert kept_levels(1, 1, round_to=8) == [1]


def test_width_multiple_per_target() -> None:
    from spa_compiler.errors import UsageError
    from spa_compiler.targets import width_multiple

    assert width_multiple("ort-cpu") in (8, 16)
    assert width_multiple("ort-cuda") == 8 and width_multiple("tensorrt") == 8
    with pytest.raises(UsageError):
        width_multiple("nope")
