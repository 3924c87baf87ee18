"""Structured pruning as a `Method`: sites are coupled-channel groups, variants are units kept.

A site is one prunable group of `groups.analysis` (conv channels with their BN/residual/concat
partners, attention heads, FFN neurons, ...); its variants are kept-unit counts at hardware-friendly
widths (`kept_levels`), the dense count first. The error of a variant is the criterion's relative
error for removing that many units in the criterion's order (`criteria.paths`), and `apply`
removes them from every tensor of the group at once (`groups.analysis.prune_groups`), re-fitting
the consumers' surviving weights first when the criterion compensates (OBS, OBSPA).

A `PruningMethod` can also be built without a criterion (`PruningMethod.for_timing`): its plans
remove the first units of each group, which is all a latency measurement needs (latency depends on
widths, not on which units go), so profiling never pays for a criterion.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from spa_compiler.criteria.moment_sources import BATCHNORM
from spa_compiler.criteria.paths import GroupPath, group_paths
from spa_compiler.groups.analysis import ChannelGroup, GroupAnalysis, analyze, prune_groups
from spa_compiler.ir import ModelIR
from spa_compiler.methods.base import Plan, Site, Variant

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


def uniform_kept(n_units: int, levels: Sequence[int], share: float) -> int:
    """The fewest kept units among `levels` that still keep (1 - share) of `n_units` (rounded)."""
    target = n_units - int(round(n_units * share))
    ok = [k for k in levels if k >= target]
    return min(ok) if ok else n_units


def group_signature(model: ModelIR, group: ChannelGroup) -> tuple[Any, ...]:
    """Groups with equal signatures are the same layer at the same shapes (profiled together)."""
    tensors = model.tensors()
    members = []
    for m in group.members:
        t = tensors.get(m.tensor)
        shape = tuple(t.shape) if t is not None and t.shape is not None else None
        members.append((m.op, m.role, m.axis, shape))
    return (group.unit, group.n_units, group.unit_size, tuple(sorted(members, key=repr)))


def apply_plan(
    model: ModelIR,
    paths: Mapping[str, GroupPath],
    kept: Mapping[str, int],
    *,
    units: tuple[str, ...],
    validate: bool = True,
    analysis: GroupAnalysis | None = None,
    compensate: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Prune `model` in place to `kept` units per group, writing compensated weights first.

    `progress(stage, done, total)` is told after each group's re-fit ("re-fit") and before the
    removal ("remove units"), for the log of a long apply (a 1B model's solves take a minute).

    `compensate=False` skips the re-fit (least-squares solves): a candidate that is only timed has
    the same latency with any weight values, so the search pays for the solves once, at the end.

    `analysis`: an `analyze(..., units=units)` of `model` or of the model `model` was cloned
    from; it is rebound to `model` (`GroupAnalysis.for_clone`, no new analysis) and is itself
    left unconsumed, so one analysis serves any number of calls. Without it `model` is analysed.
    """
    tensors = model.tensors()
    compensated = 0
    skipped_shared = 0
    done: set[str] = set()
    plan: dict[str, list[int]] = {}
    todo = [g for g, k in kept.items() if k < paths[g].n_units]
    for j, gid in enumerate(todo):
        k = kept[gid]
        path = paths[gid]
        plan[gid] = path.removed(k)
        if progress is not None and compensate:
            progress("re-fit", j, len(todo))
        for i, w in (path.compensated(k) if compensate else {}).items():
            view = path.views[i]
            const = tensors.get(view.const.name)
            if const is None or view.const.name in done:
                continue
            if len(const.outputs) != 1:  # shared weight: never re-fit it for one reader only
                skipped_shared += 1
                continue
            const.values = w
            done.add(view.const.name)
            compensated += 1
    if progress is not None and compensate and todo:
        progress("re-fit", len(todo), len(todo))
    if not plan:
        stats: dict[str, Any] = {"groups_pruned": 0}
    else:
        if progress is not None:
            progress("remove units", 0, 1)
        bound = analysis.for_clone(model) if analysis is not None else analyze(model, units=units)
        stats = prune_groups(model, plan, analysis=bound, validate=validate)
        if progress is not None:
            progress("remove units", 1, 1)
    stats = {k: v for k, v in stats.items() if k != "removed"}  # per-unit lists go to details
    stats["weights_refitted"] = compensated
    stats["refit_skipped_shared"] = skipped_shared
    return stats


@dataclasses.dataclass
class PruningMethod:
    """Structured pruning of one model's coupled-channel groups (see the module docstring).

    Attributes:
        model: The model the groups were found in (apply works on it or any clone of it).
        analysis: Its group analysis (rebound to clones, never recomputed).
        groups: Prunable groups by id, in analysis order.
        levels: Per group, the kept-unit counts the search may choose (dense last).
        units: Unit kinds analysed.
        paths: Per group, the criterion's removal order and errors; None for a timing-only method.
        criterion: The criterion the paths came from ("" for timing only).
        skipped: Why groups were left out, reason -> count (frozen groups, criterion fallbacks).
    """

    name: ClassVar[str] = "pruning"
    composes_after: ClassVar[frozenset[str]] = frozenset()

    model: ModelIR
    analysis: GroupAnalysis
    groups: dict[str, ChannelGroup]
    levels: dict[str, list[int]]
    units: tuple[str, ...]
    paths: dict[str, GroupPath] | None = None
    criterion: str = ""
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def analyse(model: ModelIR, *, units: Sequence[str], input_shapes: Mapping[str, Sequence[int]] | None = None,
                include_hidden: bool = False, min_units: int = 1) -> tuple[GroupAnalysis, dict[str, ChannelGroup],
                                                                           dict[str, int]]:
        """The analysis, the prunable groups of the selected unit kinds, and skip counts."""
        units = tuple(units)
        analysis = analyze(model, units=units, include_hidden=include_hidden,
                           input_shapes=dict(input_shapes) if input_shapes else None)
        skipped: dict[str, int] = {}
        groups: dict[str, ChannelGroup] = {}
        for g in analysis.groups:
            if g.frozen:
                key = f"frozen:{(g.reason or 'unknown').split(':')[0]}"
            elif g.unit not in units:
                key = f"unit-not-selected:{g.unit}"
            elif g.n_units < min_units:
                key = "too-few-units"
            else:
                groups[g.id] = g
                continue
            skipped[key] = skipped.get(key, 0) + 1
        return analysis, groups, skipped

    @classmethod
    def for_timing(cls, model: ModelIR, levels_of: Any, *, units: Sequence[str],
                   analysis: GroupAnalysis | None = None,
                   groups: Sequence[ChannelGroup] | None = None) -> PruningMethod:
        """A method without a criterion: plans remove each group's first units (latency only).

        `levels_of(group) -> [kept counts]` gives each group's variants.
        """
        if analysis is None:
            analysis = analyze(model, units=tuple(units))
        chosen = list(groups) if groups is not None else list(analysis.prunable)
        gmap = {g.id: g for g in chosen}
        return cls(model, analysis, gmap, {g.id: list(levels_of(g)) for g in chosen}, tuple(units))

    @classmethod
    def build(
        cls,
        model: ModelIR,
        *,
        criterion: str,
        units: Sequence[str],
        round_to: int,
        max_ratio: float,
        count: int,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        calibration: Any = None,
        synthetic: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
        closed_form: bool = True,
        norm: float = 2.0,
        normalize: bool = False,
        include_hidden: bool = False,
        min_units: int = 1,
        seed: int = 0,
        progress: Any = None,
        share: float | None = None,
    ) -> PruningMethod:
        """Analyse `model`, score every prunable group with `criterion`, and list its levels.

        `synthetic` makes the data-free criterion's random feeds; it is called only when there is a
        group to score. `share`: the plan will remove at most this share of each group (a ratio
        without a budget): the criterion's paths stop there instead of at `max_ratio`.
        """
        units = tuple(units) + (("hidden",) if include_hidden and "hidden" not in units else ())
        if progress:
            progress("channel groups", 0, 1)
        analysis, groups, skipped = cls.analyse(model, units=units, include_hidden=include_hidden,
                                                input_shapes=input_shapes, min_units=min_units)
        if progress:
            progress("channel groups", 1, 1)
        method = cls(model, analysis, groups, {}, units, None, criterion, skipped)
        if not groups:
            method.paths = {}
            return method
        paths = group_paths(
            model, list(groups.values()), criterion, max_ratio=max_ratio, calibration=calibration,
            synthetic_feeds=synthetic() if synthetic is not None else None, closed_form=closed_form, norm=norm, normalize=normalize,
            seed=seed, progress=progress,
            removals=None if share is None else {gid: int(round(g.n_units * share)) for gid, g in groups.items()},
        )
        for p in paths.values():
            if p.note:
                key = f"criterion-fallback:{p.note.split(':')[-1].strip()}"
                skipped[key] = skipped.get(key, 0) + 1
        method.paths = paths
        method.levels = {gid: method.allowed(gid, round_to=round_to, max_ratio=max_ratio, count=count)
                         for gid in groups}
        return method

    def allowed(self, gid: str, *, round_to: int, max_ratio: float, count: int) -> list[int]:
        """`kept_levels` of a group, limited to what its criterion path covers."""
        g = self.groups[gid]
        ks = kept_levels(g.n_units, g.unit_size, round_to=round_to, max_ratio=max_ratio, count=count)
        if self.paths is None:
            return ks
        return [k for k in ks if g.n_units - k < len(self.paths[gid].errors)]

    # ------------------------------------------------------------------ Method protocol
    def sites(self) -> list[Site]:
        out = []
        for g in self.groups.values():
            weights = frozenset(m.tensor for m in g.members if m.role != "activation")
            out.append(Site(g.id, self.name, weights, label=f"{g.unit} group {g.id}",
                            info={"unit": g.unit, "units": g.n_units, "unit_size": g.unit_size}))
        return out

    def variants(self, site: Site) -> list[Variant]:
        g = self.groups[site.id]
        ks = self.levels.get(site.id) or [g.n_units]
        return [Variant(g.n_units, dense=True, label="dense"),
                *(Variant(k, label=f"{k}/{g.n_units} {g.unit}s") for k in sorted(ks, reverse=True) if k < g.n_units)]

    def error(self, site: Site | str, variant: Hashable) -> float:
        gid = site.id if isinstance(site, Site) else site
        if self.paths is None:
            raise ValueError("a timing-only pruning method has no errors")
        return self.paths[gid].error_at(int(variant))  # type: ignore[call-overload]

    def signature(self, site: Site) -> tuple[Any, ...]:
        """Sites with equal signatures are the same layer at the same shapes (profiled together)."""
        return group_signature(self.model, self.groups[site.id])

    def conflicts(self, a: Site, b: Site) -> bool:
        del a, b
        return False  # the analysis makes groups disjoint

    def apply(self, model: ModelIR, plan: Plan, *, exact: bool = True, validate: bool = True,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        kept = {str(g): int(k) for g, k in plan.items()}  # type: ignore[call-overload]
        if self.paths is None:
            if exact:
                raise ValueError("a timing-only pruning method cannot apply exact plans")
            removal = {gid: list(range(self.groups[gid].n_units - k)) for gid, k in kept.items()
                       if k < self.groups[gid].n_units}
            if not removal:
                return {"groups_pruned": 0}
            return prune_groups(model, removal, analysis=self.analysis.for_clone(model), validate=validate)
        return apply_plan(model, self.paths, kept, units=self.units, validate=validate,
                          analysis=self.analysis, compensate=exact, progress=progress)

    # ------------------------------------------------------------------ plans and reports
    def uniform_plan(self, share: float, levels: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
        """Every group losing about `share` of its units (the nearest allowed level at or above)."""
        lv = levels if levels is not None else self.levels
        return {gid: uniform_kept(g.n_units, lv[gid], share) for gid, g in self.groups.items()}

    def plan_error(self, plan: Mapping[str, int]) -> float:
        """Summed error of a plan."""
        return sum(self.error(g, k) for g, k in plan.items())

    def moment_counts(self) -> dict[str, int]:
        """Consumers per moment source, e.g. {"moments_batchnorm": 3, "moments_random_input": 1}."""
        counts = {"moments_batchnorm": 0, "moments_random_input": 0}
        for p in (self.paths or {}).values():
            for src in p.view_moments:
                counts["moments_batchnorm" if src == BATCHNORM else "moments_random_input"] += 1
        return counts

    def calibration_coverage(self) -> dict[str, Any] | None:
        """How well the measured statistics are determined: of the consumers whose second moments
        were measured on feeds, the one with the fewest input rows per input column.

        Returns:
            {"rows_per_column", "rows", "columns", "consumer"}, or None when no consumer's moments
            were measured (magnitude, closed forms only).
        """
        worst: tuple[float, int, int, str] | None = None
        for p in (self.paths or {}).values():
            for v, rows in zip(p.views, p.view_rows):
                cols = int(v.w2d.shape[1])
                if rows <= 0 or cols <= 0:
                    continue
                if worst is None or rows / cols < worst[0]:
                    worst = (rows / cols, rows, cols, v.node.name)
        if worst is None:
            return None
        return {"rows_per_column": round(worst[0], 2), "rows": worst[1], "columns": worst[2],
                "consumer": worst[3]}

    def detail(self, gid: str, k: int, latency: float | None = None) -> dict[str, Any]:
        """The report record of one group at `k` kept units."""
        g = self.groups[gid]
        assert self.paths is not None
        p = self.paths[gid]
        d: dict[str, Any] = {"group": g.id, "unit": g.unit, "units": g.n_units, "kept": k,
                             "unit_size": g.unit_size, "error": round(p.error_at(k), 6),
                             "criterion": p.criterion}
        if latency is not None:
            d["latency_ms"] = round(latency, 6)
        if p.moments:
            d["moments"] = p.moments
        if p.note:
            d["note"] = p.note
        return d
