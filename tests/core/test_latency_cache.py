"""Timings cached across runs (spa_compiler.latency.cache) and sessions reused in a run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from spa_compiler.groups.analysis import analyze, prune_groups
from spa_compiler.ir import ModelIR
from spa_compiler.latency.cache import cache_root, entry_key, open_cache
from spa_compiler.latency.profile import profile_pruning
from spa_compiler.latency.ort_cpu import OrtCpuProvider
from spa_compiler.latency.provider import Timing
from spa_compiler.stats import model_stats
from tests.passes.test_prune_to_budget import _two_layer

UNITS = ("channel", "head", "neuron")


@dataclasses.dataclass
class CountingProvider:
    """Deterministic 'measured' latencies (MACs) that count how many models were timed."""

    threads: int = 1
    kind: str = "measured"
    timed: int = 0

    def time(self, model, feeds) -> Timing:
        self.timed += 1
        ir = model if isinstance(model, ModelIR) else ModelIR.from_proto(model)
        return Timing(model_stats(ir)["macs"] / 1e6 + 0.01, "measured", 1)

    def time_many(self, models, feeds) -> list[Timing]:
        return [self.time(m, feeds) for m in models]

    def provenance(self) -> dict:
        return {"device": "test", "runtime": "macs", "runtime_version": "1", "provider": None,
                "threads": self.threads, "precision": "fp32"}


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SPA_COMPILER_NO_CACHE", raising=False)
    monkeypatch.setenv("SPA_COMPILER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _table(model: ModelIR, provider: CountingProvider, shapes: dict | None = None):
    return profile_pruning(model, "ort-cpu", provider, {}, units=UNITS, input_shapes=shapes or {"x": (256, 32)},
                           round_to=1, levels=4)


def test_second_table_of_the_same_model_and_target_times_nothing(cache_dir: Path, rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    first = CountingProvider()
    t1 = _table(model, first)
    assert first.timed > 0
    assert len(list((cache_dir / "latency").glob("*.json"))) == 1
    second = CountingProvider()
    t2 = _table(model, second)
    assert second.timed == 0  # every variant from the cache: nothing re-profiled
    d1, d2 = t1.to_dict(), t2.to_dict()
    assert d1["sites" if "sites" in d1 else "groups"] == d2["sites" if "sites" in d2 else "groups"]
    assert t2.dense_ms == t1.dense_ms
    assert "from the timing cache" in t2.provenance.notes


def test_cache_misses_on_other_shapes_provider_or_structure(cache_dir: Path, rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    _table(model, CountingProvider())
    other_shapes = CountingProvider()
    _table(model, other_shapes, {"x": (128, 32)})
    assert other_shapes.timed > 0
    other_threads = CountingProvider(threads=4)
    _table(model, other_threads)
    assert other_threads.timed > 0
    pruned = model.clone()  # another structure: a narrower layer
    g = analyze(pruned, units=UNITS).prunable[0]
    prune_groups(pruned, {g.id: [0, 1, 2, 3]}, analysis=analyze(pruned, units=UNITS))
    changed = CountingProvider()
    _table(pruned, changed)
    assert changed.timed > 0
    assert len(list((cache_dir / "latency").glob("*.json"))) == 4
    same_weights_changed = model.clone()  # weight values are not part of the key
    for t in same_weights_changed.graph.tensors().values():
        if hasattr(t, "values") and t.values.dtype == np.float32:
            t.values = t.values * 2
    again = CountingProvider()
    _table(same_weights_changed, again)
    assert again.timed == 0


def test_disabled_or_unreadable_cache_is_a_miss_never_an_error(cache_dir: Path, rng: np.random.Generator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    _table(model, CountingProvider())
    (path,) = (cache_dir / "latency").glob("*.json")
    path.write_text("{not json")
    broken = CountingProvider()
    _table(model, broken)
    assert broken.timed > 0
    assert json.loads(path.read_text())["entries"]  # rewritten whole
    monkeypatch.setenv("SPA_COMPILER_NO_CACHE", "1")
    path.unlink()
    off = CountingProvider()
    _table(model, off)
    assert off.timed > 0 and not path.exists()


def test_entries_merge_across_processes_and_key_is_checked(cache_dir: Path) -> None:
    a = open_cache("fp", {"x": (1, 2)}, {"device": "d"})
    b = open_cache("fp", {"x": (1, 2)}, {"device": "d"})
    a.put(entry_key("table", ["g", 1]), 0.5, 2.0)
    a.flush()
    b.put(entry_key("table", ["g", 2]), 0.7, 2.1)
    b.flush()  # merged with a's entry, not overwriting it
    c = open_cache("fp", {"x": (1, 2)}, {"device": "d"})
    assert c.get(entry_key("table", ["g", 1])) == (0.5, 2.0)
    assert c.get(entry_key("table", ["g", 2])) == (0.7, 2.1)
    assert c.get(entry_key("table", ["g", 3])) is None and c.hits == 2 and c.misses == 1
    assert cache_root() == cache_dir


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SPA_COMPILER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "spa-compiler"


def test_ort_provider_builds_one_session_per_structure(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_two_layer(rng))
    provider = dataclasses.replace(OrtCpuProvider(runs=2, min_seconds=0.0))
    feeds = {"x": rng.standard_normal((256, 32)).astype(np.float32)}
    variant = model.clone()
    g = analyze(variant, units=UNITS).prunable[0]
    prune_groups(variant, {g.id: [0, 1]}, analysis=analyze(variant, units=UNITS))
    provider.time_many([model, variant], feeds)
    copy = dataclasses.replace(provider, runs=3)  # build_table's copy shares the sessions
    copy.time_many([model, variant], feeds)
    copy.time(model, feeds)
    assert provider.sessions.misses == 2 and provider.sessions.hits == 3


def test_second_compile_pass_retimes_nothing(cache_dir: Path, rng: np.random.Generator) -> None:
    """prune-ziplm twice on the same model and target: table and search candidates all cached,
    the same decisions."""
    from spa_compiler.passes.prune_to_budget import PruneToBudgetPass
    from spa_compiler import CompileContext, PassManager

    proto = _two_layer(rng)
    kept = []
    timed = []
    for _ in range(2):
        model = ModelIR.from_proto(proto)
        provider = CountingProvider()
        dense = provider.time(model, {}).ms
        provider.timed = 0
        ctx = CompileContext(latency=provider, feeds={}, budget_ms=0.6 * dense, max_error=10.0,
                             input_shapes={"x": (256, 32)}, dense_ms=dense)
        PassManager([PruneToBudgetPass(round_to=1, criterion="magnitude", levels=6)]).run(model, ctx)
        (rec,) = ctx.report.passes
        kept.append({d["group"]: d["kept"] for d in rec.details if "kept" in d})
        timed.append(provider.timed)
    assert timed[0] > 0 and timed[1] == 0
    assert kept[0] == kept[1]
