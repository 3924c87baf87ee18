"""Latency tables measured in context: the latency of every level of every prunable group.

ZipLM times each layer variant in its real shapes. We time it in its real context: the whole model,
with the group pruned to the level, on the target, with the compile's inputs. Groups that are the
same layer at the same shapes (the 30 FFNs of a 30-layer decoder) share a *signature*; all groups of
a signature are pruned to a level together and the measured saving is shared between them, so a
table costs (signatures × levels) timings, not (groups × levels). A group's contribution is
measured relative to its smallest level: c_g(k) = (T_s(k) - T_s(k_min)) / |s|, made non-decreasing in
k (timing noise never makes a wider layer cheaper), and base_ms = T_dense - Σ_g c_g(n), so the
additive model reproduces the dense latency exactly. Where groups overlap (one layer's input
channels in one group, its output channels in another, as in every CNN chain) the summed savings
can exceed the model's latency; they are then scaled down to fit (base 0), and the search's
measure-and-correct rounds absorb the remaining error of the additive model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spa_compiler import __version__
from spa_compiler.groups.analysis import ChannelGroup, GroupAnalysis, analyze, prune_groups
from spa_compiler.ir import ModelIR
from spa_compiler.latency.cache import entry_key, open_cache
from spa_compiler.latency.table import GroupLatency, LatencyTable, LevelLatency, Provenance, structure_fingerprint

logger = logging.getLogger(__name__)


def kept_levels(n_units: int, unit_size: int, *, round_to: int = 1, max_ratio: float = 0.75,
                count: int = 8) -> list[int]:
    """Kept-unit counts a group may take: hardware-friendly widths, at most `count`, dense included.

    A level k is allowed when its width k·unit_size is a multiple of `round_to` (the dense width is
    always allowed) and at most `max_ratio` of the units are removed. A group too narrow for any
    such level gets the multiple halved until one exists (a 12-channel group under round_to=8 may
    keep 8; under 16 it would have no level): the latency search then decides whether it pays.
    """
    lo = max(1, n_units - int(np.floor(n_units * max_ratio)))
    allowed = [k for k in range(lo, n_units) if (k * max(1, unit_size)) % max(1, round_to) == 0]
    if not allowed:
        if round_to > 1:
            return kept_levels(n_units, unit_size, round_to=round_to // 2, max_ratio=max_ratio, count=count)
        return [n_units]
    if len(allowed) > count - 1:
        idx = np.unique(np.round(np.linspace(0, len(allowed) - 1, count - 1)).astype(int))
        allowed = [allowed[i] for i in idx]
    return [*allowed, n_units]


def signature(model: ModelIR, group: ChannelGroup) -> tuple[Any, ...]:
    """Groups with equal signatures are the same layer at the same shapes."""
    tensors = model.tensors()
    members = []
    for m in group.members:
        t = tensors.get(m.tensor)
        shape = tuple(t.shape) if t is not None and t.shape is not None else None
        members.append((m.op, m.role, m.axis, shape))
    return (group.unit, group.n_units, group.unit_size, tuple(sorted(members, key=repr)))


def build_table(
    model: ModelIR,
    groups: Sequence[ChannelGroup],
    levels: Mapping[str, Sequence[int]],
    provider: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    units: Sequence[str],
    input_shapes: Mapping[str, Sequence[int]],
    progress: Callable[[str, int, int], None] | None = None,
    analysis: GroupAnalysis | None = None,
) -> LatencyTable:
    """Measure (or estimate, for an analytic provider) a latency table in context.

    Args:
        model: The model (not modified; clones are pruned).
        groups: Prunable groups to profile.
        levels: group id -> kept-unit levels (dense included).
        provider: A `LatencyProvider`.
        feeds: The inputs every timing uses.
        units: Unit kinds the groups were analysed with.
        input_shapes: Concrete input shapes (recorded in the provenance).
        progress: (task, done, total) callback.
        analysis: `analyze(model, units=units)` if the caller has it (else computed here, once);
            every pruned clone gets it rebound (`GroupAnalysis.for_clone`), never re-analysed.
    """
    if dataclasses.is_dataclass(provider) and hasattr(provider, "runs"):
        # a table needs many timings: fewer runs each (the medians stay stable), no minimum time
        changes = {"runs": max(5, provider.runs // 3)}
        if hasattr(provider, "min_seconds"):
            changes["min_seconds"] = 0.0
        provider = dataclasses.replace(provider, **changes)
    by_sig: dict[tuple[Any, ...], list[ChannelGroup]] = defaultdict(list)
    for g in groups:
        by_sig[signature(model, g)].append(g)
    jobs = [(sig, k) for sig, gs_ in by_sig.items() for k in levels[gs_[0].id] if k < gs_[0].n_units]
    measured: dict[tuple[Any, ...], dict[int, float]] = {sig: {} for sig in by_sig}
    ratios: dict[tuple[Any, ...], dict[int, float]] = {sig: {} for sig in by_sig}
    dense_times: list[float] = []
    fingerprint = structure_fingerprint(model.to_proto(weights=False))
    # timings of earlier runs of this model, shapes and provider (analytic estimates: never cached)
    cache = (open_cache(fingerprint, input_shapes, provider.provenance())
             if provider.kind != "analytic" else None)
    if progress and jobs:
        progress("latency table", 0, len(jobs))
    for i, (sig, k) in enumerate(jobs):
        members = by_sig[sig]
        entry = entry_key("table", [sorted(g.id for g in members), int(k)])
        hit = cache.get(entry) if cache is not None else None
        if hit is not None:
            ratios[sig][k], dense_ms_then = hit
            dense_times.append(dense_ms_then)
        else:
            if analysis is None:
                analysis = analyze(model, units=units)
            clone = model.clone()
            plan = {g.id: list(range(g.n_units - k)) for g in members}
            prune_groups(clone, plan, analysis=analysis.for_clone(clone), validate=False)
            # timed in alternation with the dense model: the ratio is immune to load drift
            t_dense, t_var = provider.time_many([model, clone], feeds)
            del clone
            dense_times.append(t_dense.ms)
            ratios[sig][k] = t_var.ms / t_dense.ms
            if cache is not None:
                cache.put(entry, ratios[sig][k], t_dense.ms)
                if i % 8 == 7:
                    cache.flush()  # a stopped run keeps what it measured
        if progress:
            progress("latency table", i + 1, len(jobs))
        logger.debug("profile %s x%d at %d units: %.4f of dense", members[0].id, len(members), k, ratios[sig][k])
    if cache is not None:
        cache.flush()
        if cache.hits:
            logger.info("latency table: %d of %d timings from the cache (%s)", cache.hits, len(jobs), cache.path)
    dense = provider.time(model, feeds) if not dense_times else None
    dense_ms = float(np.median(dense_times)) if dense_times else dense.ms  # type: ignore[union-attr]
    for sig in by_sig:
        measured[sig] = {k: r * dense_ms for k, r in ratios[sig].items()}
    table_groups: dict[str, GroupLatency] = {}
    for sig, members in by_sig.items():
        n = members[0].n_units
        ks = sorted(levels[members[0].id])
        times = {**measured[sig], n: dense_ms}
        lo = times[ks[0]]
        contrib = []
        running = 0.0
        for k in ks:
            running = max(running, (times[k] - lo) / len(members))  # non-decreasing in k
            contrib.append(running)
        for g in members:
            table_groups[g.id] = GroupLatency(
                n_units=n,
                unit_size=g.unit_size,
                levels=tuple(LevelLatency(k, k * g.unit_size, c) for k, c in zip(ks, contrib)),
            )
    total = sum(gl.dense_ms for gl in table_groups.values())
    if total > dense_ms:
        # Groups that share a layer (a conv whose input channels are one group and output channels
        # another) each claim the saving of that layer, so the summed savings can exceed the whole
        # model. Scale them down to fit; the measure-and-correct rounds absorb what is left.
        scale = dense_ms / total
        table_groups = {
            gid: GroupLatency(gl.n_units, gl.unit_size, tuple(
                LevelLatency(lv.kept_units, lv.kept_width, lv.latency_ms * scale) for lv in gl.levels))
            for gid, gl in table_groups.items()
        }
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
        notes=f"in-context timing, {len(by_sig)} signatures, {len(jobs)} pruned variants"
              + (f" ({cache.hits} from the timing cache)" if cache is not None and cache.hits else ""),
    )
    return LatencyTable(
        kind="analytic" if provider.kind == "analytic" else "measured",
        provenance=provenance,
        dense_ms=dense_ms,
        base_ms=base,
        groups=table_groups,
    )
