"""Sequential calibration: each group's statistics from the inputs it sees in the compressed model.

The one-shot criterion (`criteria.paths.group_paths`) takes every consumer's Hessian from one pass
of the *dense* model over the calibration feeds. Once the groups before a layer are pruned and
re-fitted, that layer's inputs change; SparseGPT and ZipLM therefore process layers in order, each
calibrated on the outputs of the already-compressed layers before it. This module does that for a
chosen plan (`sequential_refit`), before the plan is applied:

1. the plan's groups (those with OBS consumer views) are ordered by the graph position of their
   first consumer and cut into `stages` consecutive stages of about equal graph span;
2. stage 1 keeps its one-shot paths (nothing before it is compressed, its inputs are the dense
   model's); for every later stage, one pass over the calibration feeds of the model *as compressed
   so far* collects its consumers' Hessians (the collector's graph keeps only the nodes the stage's
   inputs depend on, so early stages run only a prefix of the model), and each group's removal
   order, errors and re-fit are recomputed from them at the plan's level;
3. after each stage its groups are compressed in the model by masking: the re-fitted consumer
   weights (removed columns zero) are written in place, which is what the consumers compute after
   the physical removal. The caller then applies the plan as usual (`PruningMethod.apply`), which
   removes the units of the updated paths and writes the same re-fitted weights.

Cost: stages - 1 calibration passes over model prefixes (about (stages - 1) / 2 whole passes for
evenly spread groups) on top of the one-shot pass, plus the re-fits. `stages=1` is the one-shot path.
The re-fit minimizes ‖W X_c - W' X_c‖ with X_c the compressed model's inputs (SparseGPT's target).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from spa_compiler.ir import ModelIR

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: Hessian damping, as in `criteria.paths.group_paths`.
DAMP = 0.01


def _stage_of(positions: Mapping[K, int], stages: int) -> dict[K, int]:
    """key -> stage (0-based) by graph position, `stages` spans of equal width."""
    if not positions:
        return {}
    lo, hi = min(positions.values()), max(positions.values())
    width = max(1, hi - lo + 1)
    return {g: min(stages - 1, (p - lo) * stages // width) for g, p in positions.items()}


def stage_lists(positions: Mapping[K, int], stages: int) -> list[list[K]]:
    """The keys (groups, sites, ...) cut into at most `stages` consecutive stages of about equal
    graph span, by their graph position (e.g. the index of a layer's first node); empty stages are
    dropped, each stage is sorted by position. `stages <= 1`: one stage. Shared by the sequential
    calibration of pruning (`sequential_refit`) and of N:M sparsity (`methods.nm`)."""
    stage_of = _stage_of(positions, max(1, stages))
    n = max(stage_of.values()) + 1 if stage_of else 0
    out: list[list[K]] = [[] for _ in range(n)]
    for k, s in stage_of.items():
        out[s].append(k)
    return [sorted(ks, key=lambda k: positions[k]) for ks in out if ks]


def node_positions(model: ModelIR) -> dict[str, int]:
    """node name -> index in the graph's (topological) node order."""
    return {n.name: i for i, n in enumerate(model.graph.nodes)}


def sequential_refit(
    model: ModelIR,
    method: Any,
    kept: Mapping[str, int],
    calibration: Iterable[Mapping[str, Any]],
    *,
    stages: int = 4,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Recompute the OBS paths of `kept`'s groups stage by stage (see the module docstring).

    `method` is a `PruningMethod` built with the "obs" criterion on `model` (its paths are replaced
    for the groups of stages 2 and later); `model` is modified in place (masked re-fits).

    Returns:
        Stats for the report: stages run, groups re-calibrated, seconds.
    """
    from spa_compiler.criteria.obs import prepare_hessian
    from spa_compiler.criteria.paths import GroupPath, relative_obs_path, collect_hessians, linear_view
    from spa_compiler.criteria.spill import keep

    t0 = time.perf_counter()
    paths = method.paths
    order = node_positions(model)
    todo = {g: k for g, k in kept.items() if k < method.groups[g].n_units and paths[g].views}
    positions = {g: min(order.get(v.node.name, 0) for v in paths[g].views) for g in todo}
    staged = stage_lists(positions, stages)
    n_stages = len(staged)
    recalibrated = 0
    # each pass starts at the cut before the previous stage's first consumer, captured by the
    # previous pass (nothing before that cut changes in between): a pass runs two stages, not a
    # prefix of the model (`_Cuts`)
    cuts = _Cuts(model)
    fed: tuple[str, ...] = ()
    fed_values: list[dict[str, Any]] | None = None
    for s, gids in enumerate(staged):
        if s > 0:
            views = {}
            for g in gids:
                grp = method.groups[g]
                vs = []
                for m in grp.consumers:
                    v, _why = linear_view(model, m, grp.n_units)
                    if v is not None:
                        vs.append(v)
                views[g] = vs
            flat = [v for g in gids for v in views[g]]
            later = s + 1 < n_stages
            nxt = cuts.at(min(positions[g] for g in gids)) if later else None
            usable = fed if fed_values is not None and not ({v.input_name for v in flat} & set(fed)) else ()
            feeds = (calibration if not usable else
                     ({**f, **c} for f, c in zip(calibration, fed_values)))  # type: ignore[arg-type]
            capture = [] if nxt is None else [c for c in nxt if c not in usable]
            captured = cuts.capture()
            accs = collect_hessians(model, flat, feeds, seed=seed + s, prune=True, fed=usable,
                                    capture=capture, captured=captured)
            if nxt is not None and not captured.overflowed:
                carried = [c for c in nxt if c in usable]
                fed_values = [{**cap, **{c: old[c] for c in carried}} for cap, old in
                              zip(captured, fed_values or [{}] * len(captured))]
                fed = tuple(nxt)
            else:
                fed, fed_values = (), None
            del captured
            i = 0
            for g in gids:
                vs = views[g]
                hs = []
                rows = []
                for _ in vs:
                    acc = accs.pop(i)
                    rows.append(int(acc.n_samples))
                    hs.append(prepare_hessian(acc.hessian(damp=DAMP)))
                    i += 1
                if not vs:
                    continue
                grp = method.groups[g]
                n_remove = grp.n_units - kept[g]
                old = paths[g]
                ordr, errs = relative_obs_path(vs, hs, grp.n_units, n_remove)
                paths[g] = GroupPath(g, grp.n_units, ordr, errs, old.criterion, note=old.note, views=vs,
                                     hessians=[keep(h) for h in hs],
                                     view_moments=["calibration (sequential)"] * len(vs), view_rows=rows)
                del old, hs
                recalibrated += 1
        mask_plan(model, [paths[g] for g in gids], kept)
        if progress:
            progress("sequential calibration", s + 1, n_stages)
        logger.info("sequential calibration: stage %d/%d, %d group(s)", s + 1, n_stages, len(gids))
    return {"calibration_stages": n_stages, "groups_recalibrated": recalibrated,
            "seconds_sequential": round(time.perf_counter() - t0, 2)}


class _Cuts:
    """The tensors crossing a cut of the (topologically ordered) graph before a node position."""

    #: Captured cut values kept in memory at most (bytes over all feeds); beyond, passes start
    #: at the graph's inputs.
    MAX_BYTES = 2 * 2**30

    def __init__(self, model: ModelIR) -> None:
        nodes = list(model.graph.nodes)
        self.nodes = nodes
        producer: dict[str, int] = {}
        self.ok = True
        for i, n in enumerate(nodes):
            for t in n.outputs:
                producer[t.name] = i
        self.producer = producer
        self.reads: list[set[str]] = []
        #: tensors that depend on a graph input (the rest are functions of the weights alone, e.g.
        #: a tied LM head's transposed embedding: the same on every feed, so never captured)
        self.varying: set[str] = {t.name for t in model.graph.inputs}
        for i, n in enumerate(nodes):
            names = {t.name for t in n.inputs}
            names |= _subgraph_reads(n)
            self.reads.append(names)
            if any(producer.get(x, -1) >= i for x in names):
                self.ok = False  # not topologically ordered: no cuts
            if names & self.varying:
                self.varying.update(t.name for t in n.outputs)

    def at(self, q: int) -> list[str] | None:
        """Tensors that depend on the graph's inputs, made by nodes before position q and read at or
        after it (None: no cut). The weights-only tensors crossing the cut are not in it: the pass
        fed the cut recomputes them from the weights."""
        if not self.ok or q <= 0:
            return None
        read_after: set[str] = set().union(*self.reads[q:]) if q < len(self.reads) else set()
        return sorted(x for x in read_after if self.producer.get(x, len(self.nodes)) < q and x in self.varying)

    def capture(self) -> _Captured:
        """An empty list for one pass's captured cut values, bounded by MAX_BYTES."""
        return _Captured(self.MAX_BYTES)


class _Captured(list):  # type: ignore[type-arg]
    """Captured cut values, one dict per feed (`collect_hessians(captured=)`). Past `limit` bytes it
    empties itself and takes nothing more (`overflowed`): the next pass then starts at the graph's
    inputs, and the captured values never hold more than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.nbytes = 0
        self.overflowed = False

    def append(self, values: dict[str, Any]) -> None:
        if self.overflowed:
            return
        self.nbytes += sum(int(np.asarray(v).nbytes) for v in values.values())
        if self.nbytes > self.limit:
            self.overflowed = True
            self.clear()
            return
        super().append(values)


def _subgraph_reads(node: Any) -> set[str]:
    out: set[str] = set()
    for v in node.attrs.values():
        for g in (v if isinstance(v, (list, tuple)) else [v]):
            if hasattr(g, "nodes") and hasattr(g, "inputs"):
                for n in g.nodes:
                    out |= {t.name for t in n.inputs}
                    out |= _subgraph_reads(n)
    return out


def mask_plan(model: ModelIR, paths: Iterable[Any], kept: Mapping[str, int]) -> None:
    """Write each path's re-fitted consumer weights (removed columns zero) into `model`, and keep
    them as the path's fit at that level (`GroupPath.fitted`), so applying the plan does not solve
    them again."""
    tensors = model.tensors()
    for p in paths:
        k = kept[p.group_id]
        for i, w in p.compensated(k).items():
            p.fitted[i] = (k, w)  # the plan's apply writes the same weights: solved once
            const = tensors.get(p.views[i].const.name)
            if const is None or len(const.outputs) != 1:
                continue  # shared weights are never re-fitted (as in apply_plan)
            const.values = np.asarray(w)


__all__ = ["mask_plan", "node_positions", "sequential_refit", "stage_lists"]
