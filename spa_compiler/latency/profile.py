"""Latency tables measured in context: the latency of every variant of every site of a method.

ZipLM times each layer variant in its real shapes. We time it in its real context: the whole model,
with the site changed to the variant (by the method itself, `Method.apply(exact=False)`), on the
target, with the compile's inputs. Sites that are the same layer at the same shapes (the 30 FFNs of
a 30-layer decoder) share a *signature* (`method.signature(site)`, when the method has one); all
sites of a signature take a variant together and the measured saving is shared between them, so a
table costs (signatures × variants) timings, not (sites × variants). A site's contribution is
measured relative to its fastest variant: c_s(v) = (T_sig(v) - T_sig(v_min)) / |sig| (for pruning
made non-decreasing in kept units: timing noise never makes a wider layer cheaper), and
base_ms = T_dense - Σ_s c_s(dense), so the additive model reproduces the dense latency exactly.
Where sites overlap (one layer's input channels in one group, its output channels in another, as in
every CNN chain) the summed savings can exceed the model's latency; they are then scaled down to fit
(base 0), and the search's measure-and-correct rounds absorb the remaining error of the additive
model.

`profile_pruning` is the one routine that builds a pruning table for a target: the CLI's `profile`,
the pruning passes (when no table is given) and the benchmarks call it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from spa_compiler._version import __version__
from spa_compiler.ir import ModelIR
from spa_compiler.latency.cache import entry_key, open_cache
from spa_compiler.latency.provider import timing_settings, timing_variant
from spa_compiler.latency.sampling import AllLevels, LevelSampler
from spa_compiler.latency.table import (
    GroupLatency,
    LatencyTable,
    LevelLatency,
    Provenance,
    SiteLatency,
    structure_fingerprint,
)
from spa_compiler.methods.base import Method, Site

logger = logging.getLogger(__name__)

#: Sampled tables: a stretch of levels is linear when its middle measures within this share of the
#: dense latency of the line through its ends (`latency.sampling`).
LINEAR_TOL = 0.005
#: Sampled tables: each alternation stops once every ratio's 95% interval is within +-this.
TABLE_REL_CI = 0.01


def _held(provider: Any, n: int) -> Any:
    """Keep `n` sessions of `provider` (or the provider it wraps) cached while one batch is timed."""
    import contextlib

    p = provider
    while p is not None and getattr(p, "sessions", None) is None:
        p = getattr(p, "inner", None)
    return p.sessions.hold(n) if p is not None else contextlib.nullcontext()


def build_table(
    model: ModelIR,
    method: Method,
    provider: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    input_shapes: Mapping[str, Sequence[int]],
    progress: Callable[[str, int, int], None] | None = None,
    sites: Sequence[Site] | None = None,
    sample: bool = True,
    batch: int = 6,
) -> LatencyTable:
    """Measure (or estimate, for an analytic provider) a latency table of `method`'s variants.

    Args:
        model: The model (not modified; clones are changed).
        method: The method whose sites and variants are profiled (bound to `model`).
        provider: A `LatencyProvider`.
        feeds: The inputs every timing uses.
        input_shapes: Concrete input shapes (recorded in the provenance).
        progress: (task, done, total) callback.
        sites: The sites to profile (default: all of the method's).
        sample: Measured pruning tables: time each signature's levels coarse to fine and keep only
            the levels where the latency is not linear (`latency.sampling.LevelSampler`), and stop
            each alternation once its ratios are known to +-TABLE_REL_CI. False: every level, a
            fixed number of runs (the reference). Analytic tables always estimate every level.
        batch: Variants timed in one alternation with the dense model (measured providers).
    """
    measured = provider.kind != "analytic"
    if measured:
        # a table needs many timings: fewer runs each, no minimum time, and (with `sample`) a
        # stopping rule once the ratios are known to +-TABLE_REL_CI
        runs = int(timing_settings(provider).get("runs", 30))
        changes: dict[str, Any] = {"runs": max(5, runs // 3), "min_seconds": 0.0}
        if sample:
            changes.update(runs=max(5, runs // 4), rel_ci=TABLE_REL_CI, warmup=1)
        provider = timing_variant(provider, **changes)
    chosen = list(sites) if sites is not None else list(method.sites())
    sig_of = getattr(method, "signature", None)
    by_sig: dict[Any, list[Site]] = defaultdict(list)
    for site in chosen:
        by_sig[sig_of(site) if sig_of is not None else site.id].append(site)
    variants = {sig: method.variants(members[0]) for sig, members in by_sig.items()}
    n_variants = sum(1 for vs in variants.values() for v in vs if not v.dense)
    numeric = method.name == "pruning"
    samplers: dict[Any, AllLevels | LevelSampler] = {}
    for sig, vs in variants.items():
        dense_key = next(v.key for v in vs if v.dense)
        keys = [v.key for v in vs]
        samplers[sig] = (LevelSampler(keys, dense_key, LINEAR_TOL) if sample and measured and numeric
                         else AllLevels(keys, dense_key))
    ratios: dict[Any, dict[Hashable, float]] = {sig: {} for sig in by_sig}
    dense_times: list[float] = []
    fingerprint = structure_fingerprint(model.to_proto(weights=False))
    # timings of earlier runs of this model, shapes and provider (analytic estimates: never cached)
    cache = open_cache(fingerprint, input_shapes, provider.provenance()) if measured else None
    per_call = max(1, batch if measured else 1)
    done = 0

    def total() -> int:
        return done + sum(s.remaining() for s in samplers.values())

    if progress and n_variants:
        progress("latency table", 0, total())
    timed = 0
    while True:
        wave = [(sig, key) for sig, smp in samplers.items() for key in smp.next_wave()]
        if not wave:
            break
        misses = []
        for sig, key in wave:
            members = by_sig[sig]
            entry = entry_key("table", [method.name, sorted(s.id for s in members), repr(key)])
            hit = cache.get(entry) if cache is not None else None
            if hit is not None:
                ratio, dense_ms_then = hit
                dense_times.append(dense_ms_then)
                ratios[sig][key] = ratio
                samplers[sig].record(key, ratio, cache.ci(entry))  # type: ignore[union-attr]
                done += 1
            else:
                misses.append((sig, key, entry))
        for at in range(0, len(misses), per_call):
            chunk = misses[at:at + per_call]
            clones = []
            for sig, key, _ in chunk:
                clone = model.clone()
                method.apply(clone, {s.id: key for s in by_sig[sig]}, exact=False, validate=False)
                clones.append(clone)
            # timed in alternation with the dense model: each ratio is immune to load drift
            with _held(provider, len(chunk) + 2):
                t_dense, *t_vars = provider.time_many([model, *clones], feeds)
            del clones
            dense_times.append(t_dense.ms)
            for (sig, key, entry), t_var in zip(chunk, t_vars):
                ratio = t_var.ms / t_dense.ms
                ratios[sig][key] = ratio
                samplers[sig].record(key, ratio, getattr(t_var, "ci", None) or 0.0)
                if cache is not None:
                    cache.put(entry, ratio, t_dense.ms, getattr(t_var, "ci", None))
                logger.debug("profile %s x%d at %s: %.4f of dense (%d rounds)", by_sig[sig][0].id,
                             len(by_sig[sig]), key, ratio, getattr(t_var, "runs", 0))
            done += len(chunk)
            timed += len(chunk)
            if cache is not None and timed % 8 < len(chunk):
                cache.flush()  # a stopped run keeps what it measured
            if progress:
                progress("latency table", done, total())
        if progress:
            progress("latency table", done, total())
    if cache is not None:
        cache.flush()
        if cache.hits:
            logger.info("latency table: %d of %d timings from the cache (%s)", cache.hits, done, cache.path)
    jobs = done
    dense = provider.time(model, feeds) if not dense_times else None
    dense_ms = float(np.median(dense_times)) if dense_times else dense.ms  # type: ignore[union-attr]
    table_groups: dict[str, GroupLatency | SiteLatency] = {}
    for sig, members in by_sig.items():
        dense_key = next(v.key for v in variants[sig] if v.dense)
        times = {**{k: r * dense_ms for k, r in ratios[sig].items()}, dense_key: dense_ms}
        if method.name == "pruning":
            ks = sorted(int(k) for k in times)  # type: ignore[call-overload]
            lo = times[ks[0]]
            contrib = []
            running = 0.0
            for k in ks:
                running = max(running, (times[k] - lo) / len(members))  # non-decreasing in k
                contrib.append(running)
            for site in members:
                unit_size = int(site.info.get("unit_size", 1))
                table_groups[site.id] = GroupLatency(
                    n_units=int(dense_key),  # type: ignore[call-overload]
                    unit_size=unit_size,
                    levels=tuple(LevelLatency(k, k * unit_size, c) for k, c in zip(ks, contrib)),
                )
        else:
            lo = min(times.values())
            named = {("dense" if k == dense_key else str(k)): (t - lo) / len(members) for k, t in times.items()}
            for site in members:
                table_groups[site.id] = SiteLatency(method.name, named)
    total = sum(gl.dense_ms for gl in table_groups.values())
    if total > dense_ms:
        # Sites that share a layer (a conv whose input channels are one group and output channels
        # another) each claim the saving of that layer, so the summed savings can exceed the whole
        # model. Scale them down to fit; the measure-and-correct rounds absorb what is left.
        scale = dense_ms / total
        table_groups = {gid: _scaled(gl, scale) for gid, gl in table_groups.items()}
        total = dense_ms
    base = max(0.0, dense_ms - total)
    prov = provider.provenance()
    provenance = Provenance(
        device=str(prov.get("device")),
        runtime=str(prov.get("runtime")),
        runtime_version=str(prov.get("runtime_version") or ""),
        precision=str(prov.get("precision") or "fp32"),
        input_shapes={k: tuple(int(d) for d in v) for k, v in input_shapes.items()},
        model_fingerprint=fingerprint,
        tool_version=__version__,
        provider=prov.get("provider"),
        threads=prov.get("threads"),
        model_name=str(model.source.name if model.source else ""),
        notes=f"in-context timing ({method.name}), {len(by_sig)} signatures, {jobs} variants"
              + (f" of {n_variants} (levels where the latency is linear within {LINEAR_TOL:g} of dense "
                 "are interpolated)" if jobs < n_variants else "")
              + (f" ({cache.hits} from the timing cache)" if cache is not None and cache.hits else "")
              + (f"; lowering: {prov['lowering']}" if prov.get("lowering") else ""),
    )
    return LatencyTable(
        kind="analytic" if provider.kind == "analytic" else "measured",
        provenance=provenance,
        dense_ms=dense_ms,
        base_ms=base,
        groups=table_groups,
    )


def _scaled(gl: GroupLatency | SiteLatency, scale: float) -> GroupLatency | SiteLatency:
    if isinstance(gl, SiteLatency):
        return SiteLatency(gl.method, {k: v * scale for k, v in gl.variants.items()})
    return GroupLatency(gl.n_units, gl.unit_size, tuple(
        LevelLatency(lv.kept_units, lv.kept_width, lv.latency_ms * scale) for lv in gl.levels))


def profile_pruning(
    model: ModelIR,
    target: str,
    provider: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    units: Sequence[str],
    input_shapes: Mapping[str, Sequence[int]],
    round_to: int = 0,
    max_ratio: float = 0.75,
    levels: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
    analysis: Any = None,
    groups: Sequence[Any] | None = None,
    sample: bool = True,
) -> LatencyTable:
    """The pruning latency table of `model` for `target`: every prunable group at `levels`
    hardware-friendly widths (`round_to=0`: the target's multiple, `targets.width_multiple`);
    `sample`: see `build_table`."""
    from spa_compiler.methods.pruning import PruningMethod, kept_levels
    from spa_compiler.targets import width_multiple

    multiple = round_to or width_multiple(target)
    method = PruningMethod.for_timing(
        model,
        lambda g: kept_levels(g.n_units, g.unit_size, round_to=multiple, max_ratio=max_ratio, count=levels),
        units=units, analysis=analysis, groups=groups,
    )
    return build_table(model, method, provider, feeds, input_shapes=input_shapes, progress=progress, sample=sample)
