"""Analytic roofline latency (spa_compiler.latency.analytic).

Oracles: hand-computed MACs and bytes for a small MLP; the roofline's monotonicity in work; a
calibrated device reproducing the measurement it was calibrated on; analytic tables validating as
LatencyTable and feeding the search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from spa_compiler.errors import UsageError
from spa_compiler.ir import ModelIR
from spa_compiler.latency.analytic import (
    PRESETS,
    AnalyticDevice,
    GroupCost,
    analytic_table,
    calibrate,
    estimate_model,
    get_device,
)
from spa_compiler.latency.table import LatencyTable, structure_fingerprint
from spa_compiler.search.knapsack import GroupOptions, Level, choose_levels
from spa_compiler.stats import model_stats
from tests.helpers import conv_chain_model, make_model

DEV = AnalyticDevice("test", "fp32", macs_per_s=1e9, bytes_per_s=1e9, op_overhead_ms=0.01)


def _mlp(batch: int | str = 4, hidden: int = 32) -> Any:
    rng = np.random.default_rng(0)
    f = np.float32
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Identity", ["r"], ["r2"], name="id"),
            helper.make_node("MatMul", ["r2", "w2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])],
        {
            "w1": rng.standard_normal((16, hidden)).astype(f),
            "w2": rng.standard_normal((hidden, 8)).astype(f),
        },
    )


def test_estimate_ms_is_a_roofline() -> None:
    assert DEV.estimate_ms(2e6, 1e3) == pytest.approx(2.0)  # compute bound: 2e6 MACs at 1e9/s
    assert DEV.estimate_ms(1e3, 3e6) == pytest.approx(3.0)  # memory bound
    assert DEV.estimate_ms(0, 0, ops=3) == pytest.approx(0.03)
    with pytest.raises(ValueError):
        DEV.estimate_ms(-1, 0)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1e12), st.floats(0, 1e12), st.floats(0, 1e12), st.floats(0, 1e12))
def test_estimate_ms_is_monotone(m1: float, m2: float, b1: float, b2: float) -> None:
    dev = PRESETS["h200-fp16"]
    lo = dev.estimate_ms(min(m1, m2), min(b1, b2))
    assert lo <= dev.estimate_ms(max(m1, m2), min(b1, b2)) + 1e-12
    assert lo <= dev.estimate_ms(min(m1, m2), max(b1, b2)) + 1e-12


def test_model_estimate_counts_macs_and_bytes_by_hand() -> None:
    est = estimate_model(_mlp(), DEV)
    by = {n.name: n for n in est.nodes}
    assert by["mm1"].macs == 4 * 16 * 32 and by["mm2"].macs == 4 * 32 * 8
    assert by["mm1"].bytes_moved == 4 * (4 * 16 + 16 * 32 + 4 * 32)
    assert by["relu"].macs == 0 and by["relu"].bytes_moved == 4 * (2 * 4 * 32)
    assert by["id"].ms == 0.0  # free op
    assert est.unknown_nodes == 0 and est.executed_nodes == 3
    assert est.macs == model_stats(ModelIR.from_proto(_mlp()))["macs"]
    expected = sum(
        DEV.estimate_ms(n.macs or 0, n.bytes_moved or 0, ops=1) for n in est.nodes if n.ms > 0
    )
    assert est.total_ms == pytest.approx(expected) and est.kind == "analytic"


def test_fp16_devices_count_two_bytes_per_float() -> None:
    half = AnalyticDevice("h", "fp16", 1e9, 1e9, 0.0)
    a = estimate_model(_mlp(), DEV)
    b = estimate_model(_mlp(), half)
    assert b.bytes_moved * 2 == a.bytes_moved


def test_symbolic_inputs_need_shapes() -> None:
    model = _mlp(batch="N")
    est = estimate_model(model, DEV)
    assert est.unknown_nodes > 0
    fixed = estimate_model(model, DEV, input_shapes={"x": [4, 16]})
    assert fixed.unknown_nodes == 0
    assert fixed.total_ms == pytest.approx(estimate_model(_mlp(), DEV).total_ms)
    with pytest.raises(UsageError, match="not model inputs"):
        estimate_model(model, DEV, input_shapes={"z": [1]})


def test_constant_subgraphs_are_free() -> None:
    f = np.float32
    model = make_model(
        [
            helper.make_node("Mul", ["a", "b"], ["ab"], name="folded"),
            helper.make_node("Add", ["x", "ab"], ["y"], name="add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        {"a": np.ones((2, 3), f), "b": np.ones((2, 3), f)},
    )
    est = estimate_model(model, DEV)
    assert {n.name: n.ms for n in est.nodes}["folded"] == 0.0
    assert est.executed_nodes == 1


def test_conv_model_and_calibration() -> None:
    model = conv_chain_model(np.random.default_rng(0))
    est = estimate_model(model, "cpu-generic")
    assert est.macs > 0 and est.unknown_nodes == 0
    cal = calibrate(est, measured_ms=3 * est.total_ms)
    assert estimate_model(model, cal).total_ms == pytest.approx(3 * est.total_ms)
    tiny = calibrate(
        est, measured_ms=est.total_ms / 1000
    )  # below the overheads: overhead scaled too
    assert estimate_model(model, tiny).total_ms == pytest.approx(est.total_ms / 1000)
    assert "calibrated" in cal.name


def test_presets_and_unknown_device() -> None:
    assert get_device("h200-fp16").precision == "fp16"
    assert PRESETS["h200-fp16"].macs_per_s > PRESETS["h200-fp32"].macs_per_s
    with pytest.raises(UsageError, match="unknown analytic device 'tpu'"):
        get_device("tpu")


def test_analytic_table_validates_and_feeds_the_search() -> None:
    model = _mlp(hidden=64)
    dev = AnalyticDevice("d", "fp32", 1e6, 1e12, 0.0)  # compute bound: latency proportional to MACs
    est = estimate_model(model, dev)
    groups = [
        GroupCost(
            "hidden",
            n_units=64,
            unit_size=1,
            macs=4 * 16 * 64 + 4 * 64 * 8,
            bytes_moved=0,
            levels=[16, 32, 48],
        )
    ]
    table = analytic_table(
        dev,
        groups,
        total_ms=est.total_ms,
        model_fingerprint=structure_fingerprint(model),
        input_shapes={"x": [4, 16]},
        model_name="mlp",
    )
    assert isinstance(table, LatencyTable) and table.kind == "analytic"
    assert table.provenance.runtime == "analytic"
    assert LatencyTable.from_dict(table.to_dict()) == table
    assert table.base_ms == pytest.approx(0.0, abs=1e-5)  # all MACs belong to the group (Relu ~ 0)
    assert table.lookup("hidden", 32) == pytest.approx(table.lookup("hidden", 64) / 2)
    opts = [GroupOptions("hidden", [Level(k, table.lookup("hidden", k), e)
                                     for k, e in {64: 0.0, 48: 1.0, 32: 2.0, 16: 5.0}.items()])]
    r = choose_levels(opts, budget_ms=0.6 * est.total_ms, base_ms=table.base_ms)
    assert r.feasible and r.levels == {"hidden": 32}
