"""Cheaper latency tables (latency.sampling, the stopping rule of latency.timing): fewer timings,
the same decisions where the latency is what the interpolation says."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from spa_compiler.ir import ModelIR
from spa_compiler.latency.profile import profile_pruning
from spa_compiler.latency.provider import SessionCache, Timing, timing_settings, timing_variant
from spa_compiler.latency.sampling import AllLevels, LevelSampler
from spa_compiler.latency.timing import ratio_ci, time_callables
from tests.core.test_latency_cache import UNITS, CountingProvider
from tests.passes.test_prune_to_budget import _two_layer


def _run(sampler: LevelSampler | AllLevels, curve) -> list[float]:
    timed = []
    while True:
        wave = sampler.next_wave()
        if not wave:
            return timed
        for k in wave:
            timed.append(k)
            sampler.record(k, curve(k))


def test_linear_curve_costs_two_timings() -> None:
    keys = [16, 32, 48, 64, 80, 96, 112, 128]
    s = LevelSampler(keys, 128, tol=0.005)
    timed = _run(s, lambda k: 0.5 + 0.5 * k / 128)
    assert timed == [16, 64]  # the lowest level, then the middle (linear: nothing more)
    assert set(s.measured) == {16, 64}


def test_curved_curve_is_refined_where_it_bends() -> None:
    keys = [16, 32, 48, 64, 80, 96, 112, 128]
    step = lambda k: 0.6 if k <= 64 else 1.0  # noqa: E731 - a step between 64 and 80
    s = LevelSampler(keys, 128, tol=0.005)
    timed = _run(s, step)
    assert len(timed) < len(keys) - 1
    # every level the search can look up is within tol of the true curve after interpolation
    ks = sorted([*s.measured, 128])
    ys = [s.measured.get(k, 1.0) for k in ks]
    for k in keys:
        assert abs(np.interp(k, ks, ys) - step(k)) <= 0.005 + 1e-12, k
    # a curve that is nowhere linear is timed at every level
    s2 = LevelSampler(keys, 128, tol=0.005)
    assert sorted(_run(s2, lambda k: (k / 128) ** 3)) == keys[:-1]
    assert sorted(_run(AllLevels(keys, 128), lambda k: 1.0)) == keys[:-1]


def test_sampler_edge_cases() -> None:
    assert _run(LevelSampler([8], 8, tol=0.01), lambda k: 1.0) == []
    assert _run(LevelSampler([4, 8], 8, tol=0.01), lambda k: 0.5) == [4]
    with pytest.raises(ValueError):
        LevelSampler([4, 8], 4, tol=0.01)


def test_stopping_rule_stops_when_ratios_are_known() -> None:
    calls = [0, 0]

    def a() -> None:
        calls[0] += 1
        sum(range(2000))

    def b() -> None:
        calls[1] += 1
        sum(range(2000))

    # a wide interval is met at the minimum number of rounds; none asked: every round runs
    (_, _, _, n1), _ = time_callables([a, b], warmup=0, runs=50, rel_ci=10.0, min_runs=3)
    assert n1 == 3
    (_, _, _, n2), _ = time_callables([a, b], warmup=0, runs=12)
    assert n2 == 12
    assert ratio_ci([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]) == 0.0
    assert math.isinf(ratio_ci([[1.0], [2.0]]))
    assert ratio_ci([[1.0, 1.0, 1.0, 1.0], [1.0, 1.2, 0.8, 1.0]]) > 0.1


def test_timing_variant_reaches_the_wrapped_provider() -> None:
    from spa_compiler.latency.ort_cpu import OrtCpuProvider
    from spa_compiler.lowering.core import Lowering
    from spa_compiler.lowering.provider import LoweredProvider

    inner = OrtCpuProvider(runs=30)
    wrapped = LoweredProvider(inner, Lowering(precision="fp32", fp16_io=False), {})
    fast = timing_variant(wrapped, runs=10, min_seconds=0.0, rel_ci=0.01, missing=1)
    assert isinstance(fast, LoweredProvider) and fast.inner.runs == 10 and fast.inner.rel_ci == 0.01
    assert fast.inner.sessions is inner.sessions and inner.runs == 30  # the original is untouched
    assert timing_settings(wrapped)["runs"] == 30
    cache = SessionCache(size=2)
    with cache.hold(5):
        for i in range(5):
            cache.items[str(i)] = i
        assert len(cache.items) == 5
    assert list(cache.items) == ["3", "4"]


@dataclasses.dataclass
class _Curve(CountingProvider):
    """Deterministic latencies: MACs (linear in each group's kept units) or a bent function of them."""

    bend: bool = False

    def time(self, model, feeds) -> Timing:
        t = super().time(model, feeds)
        return Timing(t.ms ** 1.5 if self.bend else t.ms, "measured", 1)


def _table(model: ModelIR, provider, sample: bool):
    return profile_pruning(model, "ort-cpu", provider, {}, units=UNITS, input_shapes={"x": (256, 32)},
                           round_to=1, levels=8, sample=sample)


@pytest.mark.parametrize("bend", [False, True])
def test_sampled_table_agrees_with_the_full_one(bend: bool, rng: np.random.Generator,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPA_COMPILER_NO_CACHE", "1")
    model = ModelIR.from_proto(_two_layer(rng))
    full_p, samp_p = _Curve(bend=bend), _Curve(bend=bend)
    full, sampled = _table(model, full_p, False), _table(model, samp_p, True)
    assert samp_p.timed < full_p.timed
    assert set(full.groups) == set(sampled.groups)
    for gid, g in full.groups.items():
        for lv in g.levels:
            assert sampled.lookup(gid, lv.kept_units) == pytest.approx(lv.latency_ms, abs=0.005 * full.dense_ms)
    if not bend:  # linear: interpolation is exact
        for gid, g in full.groups.items():
            for lv in g.levels:
                assert sampled.lookup(gid, lv.kept_units) == pytest.approx(lv.latency_ms, rel=1e-9, abs=1e-9)


def test_sampled_table_gives_the_full_tables_decisions(rng: np.random.Generator,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """prune-ziplm with a budget, same seed: the sampled and the full table choose the same plan,
    and the sampled one times fewer models."""
    from spa_compiler import CompileContext, PassManager
    from spa_compiler.passes.prune_to_budget import PruneToBudgetPass

    monkeypatch.setenv("SPA_COMPILER_NO_CACHE", "1")
    proto = _two_layer(rng)
    kept, timed, rounds = [], [], []
    for sampling in (False, True):
        model = ModelIR.from_proto(proto)
        provider = CountingProvider()
        dense = provider.time(model, {}).ms
        provider.timed = 0
        ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * dense, max_error=10.0,
                             input_shapes={"x": (256, 32)}, dense_ms=dense, seed=0)
        PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", levels=8,
                                       table_sampling=sampling)]).run(model, ctx)
        (rec,) = ctx.report.passes
        kept.append({d["group"]: d["kept"] for d in rec.details if "kept" in d})
        rounds.append(rec.stats["search_rounds"])
        timed.append(provider.timed)
    assert kept[0] == kept[1] and rounds[0] == rounds[1]
    assert timed[1] < timed[0]


def test_a_deviation_within_the_timing_noise_counts_as_linear() -> None:
    keys = [16, 32, 48, 64, 80, 96, 112, 128]
    line = lambda k: 0.5 + 0.5 * k / 128  # noqa: E731
    s = LevelSampler(keys, 128, tol=0.005)
    assert s.next_wave() == [16]
    s.record(16, line(16), ci=0.01)
    assert s.next_wave() == [64]
    s.record(64, line(64) + 0.009, ci=0.01)  # off the line by more than tol, within the intervals
    assert s.next_wave() == []
    s2 = LevelSampler(keys, 128, tol=0.005)
    s2.next_wave()
    s2.record(16, line(16), ci=0.002)
    s2.next_wave()
    s2.record(64, line(64) + 0.009, ci=0.002)  # the same deviation, precise timings: refined
    assert s2.next_wave() == [32, 96]
