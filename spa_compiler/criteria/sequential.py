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
from typing import Any

import numpy as np

from spa_compiler.ir import ModelIR

logger = logging.getLogger(__name__)

#: Hessian damping, as in `criteria.paths.group_paths`.
DAMP = 0.01


def _stage_of(positions: Mapping[str, int], stages: int) -> dict[str, int]:
    """group -> stage (0-based) by first-consumer position, `stages` spans of equal width."""
    if not positions:
        return {}
    lo, hi = min(positions.values()), max(positions.values())
    width = max(1, hi - lo + 1)
    return {g: min(stages - 1, (p - lo) * stages // width) for g, p in positions.items()}


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

    t0 = time.perf_counter()
    paths = method.paths
    order = {n.name: i for i, n in enumerate(model.graph.nodes)}
    todo = {g: k for g, k in kept.items() if k < method.groups[g].n_units and paths[g].views}
    positions = {g: min(order.get(v.node.name, 0) for v in paths[g].views) for g in todo}
    stage_of = _stage_of(positions, max(1, stages))
    n_stages = max(stage_of.values()) + 1 if stage_of else 0
    recalibrated = 0
    for s in range(n_stages):
        gids = sorted((g for g, st in stage_of.items() if st == s), key=lambda g: positions[g])
        if not gids:
            continue
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
            accs = collect_hessians(model, flat, calibration, seed=seed + s, prune=True)
            i = 0
            for g in gids:
                vs = views[g]
                hs = []
                for _ in vs:
                    hs.append(prepare_hessian(accs.pop(i).hessian(damp=DAMP)))
                    i += 1
                if not vs:
                    continue
                grp = method.groups[g]
                n_remove = grp.n_units - kept[g]
                old = paths[g]
                ordr, errs = relative_obs_path(vs, hs, grp.n_units, n_remove)
                paths[g] = GroupPath(g, grp.n_units, ordr, errs, old.criterion, note=old.note, views=vs,
                                     hessians=hs, view_moments=["calibration (sequential)"] * len(vs))
                recalibrated += 1
        mask_plan(model, [paths[g] for g in gids], kept)
        if progress:
            progress("sequential calibration", s + 1, n_stages)
        logger.info("sequential calibration: stage %d/%d, %d group(s)", s + 1, n_stages, len(gids))
    return {"calibration_stages": n_stages, "groups_recalibrated": recalibrated,
            "seconds_sequential": round(time.perf_counter() - t0, 2)}


def mask_plan(model: ModelIR, paths: Iterable[Any], kept: Mapping[str, int]) -> None:
    """Write each path's re-fitted consumer weights (removed columns zero) into `model`."""
    tensors = model.tensors()
    for p in paths:
        for i, w in p.compensated(kept[p.group_id]).items():
            const = tensors.get(p.views[i].const.name)
            if const is None or len(const.outputs) != 1:
                continue  # shared weights are never re-fitted (as in apply_plan)
            const.values = np.asarray(w)


__all__ = ["mask_plan", "sequential_refit"]
