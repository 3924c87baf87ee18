"""Group-level pruning criteria: which units of a coupled-channel group go first, what each level
costs, and (for OBS) the compensated consumer weights.

Every criterion turns a `ChannelGroup` into a `GroupPath`: a removal order over the group's units,
the relative error after removing the first r units (r = 0..max), and optionally a way to get the
compensated weights of the group's consumers at any level.

    criterion   data              score / error                                   compensation
    magnitude   none              Σ over members ‖slice of unit‖_p^p, relative     no
    wanda       calibration       Σ_consumers Σ |W_ij|·‖x_j‖ (Wanda), relative     no
    obs         calibration       ZipLM structured OBS over the consumers          exact least squares
    obspa       none (synthetic)  OBS with data-free second moments (SPA's          exact least squares
                                  data-free OBS): closed form from a BatchNorm
                                  (+ activation) producing the consumer's input,
                                  else the model's response to random inputs

OBS works on each consumer as a linear map W2: (out, cols) of its input columns: MatMul/Gemm weights
(transposed as needed) and Conv weights over im2col columns (a channel = kh·kw columns). The error
of a level is Σ_consumers OBS loss / Σ_consumers ½·tr(W2 H W2ᵀ) — the share of the consumers' output
energy lost after optimal re-fitting — so errors of different groups are comparable. Groups with
several consumers (residual streams, concatenations) are pruned jointly: each greedy step removes
the unit with the least summed OBS cost over every consumer and updates each consumer.

Each GroupPath names where its consumers' second moments came from (`GroupPath.moments`):
"calibration" (obs, wanda), "batchnorm" (obspa, closed form: `spa_compiler.criteria.moment_sources`),
"random-input response" (obspa without a BN chain), or several joined by " + " when the
consumers of one group differ.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.criteria.magnitude import group_magnitude
from spa_compiler.criteria.moment_sources import (
    CALIBRATION,
    RESPONSE,
    SourcedMoments,
    batchnorm_moments,
)
from spa_compiler.criteria.registry import CRITERIA
from spa_compiler.errors import UsageError
from spa_compiler.groups.analysis import ChannelGroup, Member
from spa_compiler.ir import ModelIR, constant_value

logger = logging.getLogger(__name__)

#: Rows of im2col kept per calibration batch and Conv consumer (random subset of positions).
MAX_CONV_ROWS = 8192


# ---------------------------------------------------------------------- linear views
@dataclasses.dataclass
class LinearView:
    """A consumer member seen as Y = W2 · x over its input columns.

    Attributes:
        member: The group's consumer member.
        node: The consuming node.
        const: The weight constant.
        w2d: (out, cols) float64 view of the weight.
        unit_cols: Per group unit, its columns in `w2d`.
        input_name: Activation tensor whose features are the columns.
        conv: im2col parameters for Conv consumers (kernel, strides, pads, dilations), else None.
    """

    member: Member
    node: gs.Node
    const: gs.Constant
    w2d: npt.NDArray[np.float64]
    unit_cols: list[npt.NDArray[np.int64]]
    input_name: str
    conv: dict[str, Any] | None
    _to_weight: Callable[[npt.NDArray[np.float64]], npt.NDArray[Any]]

    def to_weight(self, w2d: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        """A (out, cols) matrix back in the constant's layout and dtype."""
        return self._to_weight(w2d).astype(np.asarray(self.const.values).dtype)

    def features(self, x: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[np.floating]:
        """Rows of input features (n, cols) from one captured activation, in its float dtype
        (float32 and float64 kept, others made float64)."""
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        if self.conv is None:
            return np.asarray(x, dtype=dtype).reshape(-1, self.w2d.shape[1])
        from spa_compiler.criteria.hessian import conv_output_shape, im2col_rows

        arr = np.asarray(x)
        conv = {"strides": self.conv["strides"], "pads": self.conv["pads"], "dilations": self.conv["dilations"]}
        n_rows = arr.shape[0] * int(np.prod(conv_output_shape(arr.shape[2:], self.conv["kernel"], **conv)))
        # positions subsampled before the patches are gathered: the cost does not grow with the batch
        rows = rng.choice(n_rows, MAX_CONV_ROWS, replace=False) if n_rows > MAX_CONV_ROWS else np.arange(n_rows)
        return np.asarray(im2col_rows(arr, self.conv["kernel"], rows, **conv), dtype=dtype)


def linear_view(model: ModelIR, member: Member, n_units: int) -> tuple[LinearView | None, str | None]:
    """The OBS view of a consumer member, or (None, reason) when OBS does not apply to it."""
    if member.role != "input":
        return None, f"consumer-role:{member.role}"
    node = next((n for n in model.graph.nodes if n.name == member.node), None)
    if node is None:
        return None, "consumer-node-missing"
    const = constant_value(node.inputs[member.input_index])
    if const is None:
        return None, "consumer-weight-not-constant"
    w = np.asarray(const.values)
    coords = member.coords
    unit_cols: list[npt.NDArray[np.int64]]
    conv = None
    if node.op == "Conv" and member.input_index == 1 and member.axis == 1 and w.ndim >= 3:
        if int(node.attrs.get("group", 1)) != 1:
            return None, "consumer-grouped-conv"
        k = int(np.prod(w.shape[2:]))
        w2d = w.reshape(w.shape[0], -1).astype(np.float64)
        unit_cols = [
            (np.nonzero(coords == u)[0][:, None] * k + np.arange(k)[None, :]).ravel() for u in range(n_units)
        ]
        spatial = w.ndim - 2
        pads = node.attrs.get("pads", [0] * (2 * spatial))
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None, "consumer-conv-auto-pad"
        conv = {
            "kernel": tuple(w.shape[2:]),
            "strides": tuple(node.attrs.get("strides", [1] * spatial)),
            "pads": tuple(pads),
            "dilations": tuple(node.attrs.get("dilations", [1] * spatial)),
        }
        shape = w.shape

        def to_weight(m: npt.NDArray[np.float64], shape: tuple[int, ...] = shape) -> npt.NDArray[Any]:
            return m.reshape(shape)

        input_name = node.inputs[0].name
    elif node.op in ("MatMul", "Gemm") and member.input_index == 1 and w.ndim == 2:
        trans_b = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            return None, "consumer-gemm-transA"
        contracted = 1 if trans_b else 0
        if member.axis != contracted:
            return None, "consumer-axis-not-contracted"
        w2d = (w if trans_b else w.T).astype(np.float64)
        unit_cols = [np.nonzero(coords == u)[0] for u in range(n_units)]

        def to_weight(m: npt.NDArray[np.float64], trans_b: bool = trans_b) -> npt.NDArray[Any]:
            return m if trans_b else m.T

        input_name = node.inputs[0].name
    else:
        return None, f"consumer-layout:{node.op}[{member.input_index}]"
    if any(c.size == 0 for c in unit_cols):
        return None, "consumer-unit-without-columns"
    return (
        LinearView(member, node, const, w2d, unit_cols, input_name, conv, to_weight),
        None,
    )


# ---------------------------------------------------------------------- paths
@dataclasses.dataclass
class GroupPath:
    """What a criterion says about one group.

    Attributes:
        group_id: The group.
        n_units: Units in the group.
        order: Units in removal order (first = least important); length = max removable.
        errors: errors[r] = relative error after removing order[:r] (errors[0] == 0).
        criterion: Which criterion made it (after fallbacks).
        note: Why a fallback happened, if one did.
        views: The consumers OBS compensates (empty for magnitude/wanda).
        hessians: Per view, the prepared Hessian (for exact re-fits): an array, or a
            `criteria.spill.Spilled` handle when the Hessians kept would exceed the memory limit.
        view_moments: Per view, where its second moments came from (`moment_sources` names).
    """

    group_id: str
    n_units: int
    order: list[int]
    errors: npt.NDArray[np.float64]
    criterion: str
    note: str | None = None
    views: list[LinearView] = dataclasses.field(default_factory=list)
    hessians: list[Any] = dataclasses.field(default_factory=list)
    view_moments: list[str] = dataclasses.field(default_factory=list)
    #: Per view index, (kept, full-width weight) re-fitted elsewhere (`criteria.refit`): returned by
    #: `compensated` at that kept count instead of the OBS re-fit.
    fitted: dict[int, tuple[int, npt.NDArray[Any]]] = dataclasses.field(default_factory=dict)
    #: Per view, the input rows (tokens, pixels, images) its measured statistics came from (0: a
    #: closed form, no rows).
    view_rows: list[int] = dataclasses.field(default_factory=list)

    @property
    def moments(self) -> str | None:
        """The moment sources of the consumers, distinct, joined by " + " (None: no moments)."""
        seen = list(dict.fromkeys(self.view_moments))
        return " + ".join(seen) if seen else None

    def error_at(self, kept: int) -> float:
        """Relative error with `kept` units kept."""
        r = self.n_units - kept
        if not 0 <= r < len(self.errors):
            raise ValueError(f"group {self.group_id}: {kept} kept units is outside the path")
        return float(self.errors[r])

    def removed(self, kept: int) -> list[int]:
        """The units removed when keeping `kept` (ValueError when the path stops short of it: a
        path built for a smaller share would otherwise remove fewer units than asked, silently)."""
        r = self.n_units - kept
        if not 0 <= r <= len(self.order):
            raise ValueError(f"group {self.group_id}: {kept} kept units is outside the path "
                             f"({self.n_units - len(self.order)}..{self.n_units})")
        return self.order[:r]

    def compensated(self, kept: int) -> dict[int, npt.NDArray[Any]]:
        """Per view index, the consumer weight re-fitted on the kept columns (full shape, removed
        columns zero); empty when the criterion does not compensate."""
        from spa_compiler.criteria.obs import solve_kept
        from spa_compiler.criteria.spill import as_array

        out: dict[int, npt.NDArray[Any]] = {}
        removed = set(self.removed(kept))
        if not removed:
            return out
        for i, (view, h) in enumerate(zip(self.views, self.hessians)):
            if i in self.fitted and self.fitted[i][0] == kept:
                out[i] = self.fitted[i][1]
                continue
            keep_cols = np.setdiff1d(
                np.arange(view.w2d.shape[1]),
                np.concatenate([view.unit_cols[u] for u in sorted(removed)]),
            )
            # a spilled Hessian is read back here and freed after its solve
            out[i] = view.to_weight(solve_kept(view.w2d, as_array(h), keep_cols))  # full width, zeros removed
        return out


def max_removable(n_units: int, max_ratio: float) -> int:
    """How many units of a group may go at most (always keeps at least one)."""
    return max(0, min(n_units - 1, int(np.floor(n_units * max_ratio))))


def _magnitude_path(
    model: ModelIR, group: ChannelGroup, n_remove: int, p: float, *, normalize: bool = False,
    nodes: Mapping[str, gs.Node] | None = None,
) -> tuple[list[int], npt.NDArray[np.float64]]:
    scores = group_magnitude(model, group, p=p, normalize=normalize, nodes=nodes)
    return _path_from_scores(scores, n_remove)


def _path_from_scores(scores: npt.NDArray[np.float64], n_remove: int) -> tuple[list[int], npt.NDArray[np.float64]]:
    order = np.argsort(scores, kind="stable")
    total = float(scores.sum()) or 1.0
    errs = np.concatenate([[0.0], np.cumsum(scores[order])[:n_remove] / total])
    return [int(u) for u in order[:n_remove]], errs


# ---------------------------------------------------------------------- statistics
def collect_hessians(
    model: ModelIR,
    views: Sequence[LinearView],
    feeds: Iterable[Mapping[str, npt.NDArray[Any]]],
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    prune: bool = False,
    fed: Sequence[str] = (),
    capture: Sequence[str] = (),
    captured: list[dict[str, Any]] | None = None,
) -> dict[int, Any]:
    """One HessianAccumulator per view, fed by one pass of ONNX Runtime over `feeds`.

    `prune`: run only the part of the graph the views' inputs depend on. `fed`: intermediate
    tensors each feed carries (a cut through the graph; with `prune`, the nodes before it are not
    run). `capture`: more tensors to return, one dict per feed appended to `captured`.
    Memory: one accumulator (cols²) per view plus one feed's captured activations.
    """
    from spa_compiler.calibration import ActivationCollector
    from spa_compiler.criteria.hessian import HessianAccumulator

    if not views:
        return {}
    names = sorted({v.input_name for v in views})
    extra = [c for c in dict.fromkeys(capture) if c not in names]
    collector = ActivationCollector(model, names + extra, prune=prune, fed=fed)
    # each batch's X^T X in float32 (the activations' own precision; half the cost), summed in
    # float64 (tests/core/test_hessian_fast.py: same paths as float64 products)
    from spa_compiler.criteria.backend import TorchHessianAccumulator, torch_device

    def accumulator(n: int) -> Any:
        dev = torch_device(n)
        if dev is not None and dev.type == "cuda":
            return TorchHessianAccumulator(n, dev)
        return HessianAccumulator(n, product_dtype=np.float32)

    accs = {i: accumulator(v.w2d.shape[1]) for i, v in enumerate(views)}
    rng = np.random.default_rng(seed)
    n = 0
    for n, acts in enumerate(collector.collect(feeds), start=1):
        for name in names:
            a = np.asarray(acts[name])
            if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
                raise UsageError(
                    f"activation {name!r} is NaN/Inf on calibration feed {n} "
                    f"({int(np.count_nonzero(~np.isfinite(a)))} of {a.size} values): the model "
                    "overflows or divides by zero on this input",
                    hint="check that feed (range, dtype, normalization) or compile in float32",
                )
        for i, v in enumerate(views):
            accs[i].add_batch(v.features(acts[v.input_name], rng))
        if captured is not None:
            captured.append({c: np.asarray(acts[c]) for c in capture})
        if progress:
            progress(n)
    if n == 0:
        raise UsageError("the calibration source yielded no feeds", hint="check --calib")
    return accs


def relative_obs_path(
    views: Sequence[LinearView],
    hessians: Sequence[npt.NDArray[np.float64]],
    n_units: int,
    n_remove: int,
    step: Callable[[int, int], None] | None = None,
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """Joint greedy structured OBS over every consumer; errors relative to the output energy."""
    from spa_compiler.criteria import obs

    # sum(W H * W) is tr(W H W^T) in one matrix product (a 3-operand einsum loops in C, no BLAS)
    from spa_compiler.criteria.backend import energy as _energy

    energy = sum(0.5 * _energy(v.w2d, h) for v, h in zip(views, hessians))
    energy = energy if energy > 0 else 1.0
    if len(views) == 1:
        v, h = views[0], hessians[0]
        path = obs.greedy_prune(v.w2d, h, v.unit_cols, levels=list(range(n_remove + 1)), snapshots=False,
                                progress=step)
        return [int(u) for u in path.order[:n_remove]], np.asarray(path.errors, dtype=np.float64) / energy
    order, step_err = obs.joint_greedy_order([v.w2d for v in views], hessians,
                                             [v.unit_cols for v in views], n_remove, progress=step)
    errs = np.concatenate([[0.0], np.cumsum(step_err)])
    return [int(u) for u in order], errs / energy


# ---------------------------------------------------------------------- the entry point
def group_paths(
    model: ModelIR,
    groups: Sequence[ChannelGroup],
    criterion: str,
    *,
    max_ratio: float = 0.9,
    calibration: Iterable[Mapping[str, npt.NDArray[Any]]] | None = None,
    synthetic_feeds: Iterable[Mapping[str, npt.NDArray[Any]]] | None = None,
    closed_form: bool = True,
    norm: float = 2.0,
    normalize: bool = False,
    damp: float = 0.01,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    removals: Mapping[str, int] | None = None,
) -> dict[str, GroupPath]:
    """A GroupPath for every group under `criterion` (see the module docstring).

    Args:
        model: The model the groups were analysed on (not modified).
        groups: Prunable groups.
        criterion: One of CRITERIA.
        max_ratio: At most this share of each group's units is ever removed.
        calibration: Feeds of real data (wanda, obs).
        synthetic_feeds: Feeds of random data (obspa, consumers without a closed form).
        closed_form: obspa only: synthesize the moments of consumers fed by BatchNormalization
            (+ activation) in closed form (`spa_compiler.criteria.moment_sources`); False: the random-input
            response for every consumer.
        norm: p of the magnitude norm (`criteria.magnitude`).
        normalize: magnitude: divide each member's scores by their mean before summing.
        damp: Relative Hessian damping.
        seed: For the im2col row subsampling.
        progress: (task, done, total) callback.
        removals: group id -> the most units any plan will remove (paths stop there; the greedy
            path's first steps do not depend on its length). Default: max_ratio's share.

    Raises:
        UsageError: unknown criterion, or a criterion that needs data without it.
    """

    def n_removable(g: ChannelGroup) -> int:
        n = max_removable(g.n_units, max_ratio)
        return min(n, max(0, int(removals[g.id]))) if removals is not None and g.id in removals else n

    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}", hint=f"use one of {', '.join(CRITERIA)}")
    paths: dict[str, GroupPath] = {}
    nodes = {n.name: n for n in model.graph.nodes}
    if criterion == "magnitude":
        for g in groups:
            order, errs = _magnitude_path(model, g, n_removable(g), norm, normalize=normalize, nodes=nodes)
            paths[g.id] = GroupPath(g.id, g.n_units, order, errs, "magnitude")
        return paths

    feeds = calibration if criterion in ("wanda", "obs") else synthetic_feeds
    if feeds is None and criterion != "obspa":
        raise UsageError(f"criterion {criterion!r} needs calibration data", hint="pass --calib")
    views_by_group: dict[str, list[LinearView]] = {}
    notes: dict[str, str] = {}
    for g in groups:
        vs = []
        for m in g.consumers:
            v, why = linear_view(model, m, g.n_units)
            if v is None:
                notes[g.id] = why or "no-linear-consumer"
            else:
                vs.append(v)
        views_by_group[g.id] = vs
    flat = [v for vs in views_by_group.values() for v in vs]
    closed: dict[int, SourcedMoments] = {}
    if criterion == "obspa" and closed_form:
        tensors = model.tensors()
        for i, v in enumerate(flat):
            sm, why = batchnorm_moments(tensors[v.input_name], v.w2d.shape[1], conv=v.conv is not None)
            if sm is not None:
                closed[i] = sm
            else:
                logger.debug("%s: moments from the random-input response (%s)", v.node.name, why)
    measured = [v for i, v in enumerate(flat) if i not in closed]
    data_source = CALIBRATION if criterion in ("wanda", "obs") else RESPONSE

    fed = [0]
    stats_task = "calibration statistics" if data_source == CALIBRATION else "random-input statistics"

    def tick(n: int) -> None:
        fed[0] = n
        if progress:
            progress(stats_task, n, 0)

    if measured and feeds is None:
        raise UsageError(
            f"criterion 'obspa' needs random-input feeds for {len(measured)} consumer(s) without a "
            "BatchNorm to synthesize moments from", hint="pass synthetic_feeds")
    if progress and measured:
        progress(stats_task, 0, 0)
    # only the part of the graph the consumers' inputs depend on (an LM head is never run)
    accs = collect_hessians(model, measured, feeds or (), seed=seed, progress=tick, prune=True)
    if progress and measured:
        progress(stats_task, fed[0], fed[0])
    measured_index = {id(v): j for j, v in enumerate(measured)}
    # progress of the OBS paths in greedy steps (one group of a ResNet's last stage is 1800 steps)
    obs_steps = sum(n_removable(g) for g in groups if views_by_group[g.id])
    steps_done = 0
    task = f"{criterion} paths"

    def step(done: int, total: int) -> None:
        del total
        if progress:
            progress(task, steps_done + done, obs_steps)

    if progress and criterion not in ("wanda",) and obs_steps:
        progress(task, 0, obs_steps)
    from spa_compiler.criteria import parallel

    # groups' greedy paths are independent: large ones run in worker processes (criteria.parallel)
    pool = parallel.PathPool.for_groups(
        [(sum(v.w2d.shape[1] ** 2 for v in views_by_group[g.id]), n_removable(g)) for g in groups
         if views_by_group[g.id]], relative_obs_path) if criterion not in ("wanda", "magnitude") else None
    pending: list[tuple[ChannelGroup, list[LinearView], list[Any], list[str], list[int]]] = []
    k = 0
    for gi, g in enumerate(groups):
        vs = views_by_group[g.id]
        n_remove = n_removable(g)
        hs = []
        sources = []
        rows = []
        for v in vs:
            if k in closed:
                hs.append(closed[k].hessian(v.w2d.shape[1], damp=damp))
                sources.append(closed[k].source)
                rows.append(0)
            else:
                # popped: each accumulator (cols² float64) is freed once its Hessian is taken
                acc = accs.pop(measured_index[id(v)])
                rows.append(int(acc.n_samples))
                hs.append(acc.hessian(damp=damp))
                sources.append(data_source)
            k += 1
        if not vs:
            order, errs = _magnitude_path(model, g, n_remove, norm, normalize=normalize, nodes=nodes)
            paths[g.id] = GroupPath(g.id, g.n_units, order, errs, "magnitude",
                                    note=f"fallback: {notes.get(g.id, 'no linear consumer')}")
            continue
        if criterion == "wanda":
            from spa_compiler.criteria.obs import wanda_scores

            scores = sum(wanda_scores(v.w2d, h, v.unit_cols) for v, h in zip(vs, hs))
            order, errs = _path_from_scores(np.asarray(scores, dtype=np.float64), n_remove)
            paths[g.id] = GroupPath(g.id, g.n_units, order, errs, "wanda", note=notes.get(g.id),
                                    view_moments=sources, view_rows=rows)
        else:
            from spa_compiler.criteria.obs import prepare_hessian

            from spa_compiler.criteria.spill import keep

            hs = [prepare_hessian(h) for h in hs]
            if pool is not None:
                pending.append((g, vs, hs, sources, rows))
                pool.submit(g.id, vs, hs, g.n_units, n_remove)
                continue
            order, errs = relative_obs_path(vs, hs, g.n_units, n_remove, step)
            steps_done += n_remove
            # kept for the re-fit: in memory up to a limit, on disk beyond it (criteria.spill)
            paths[g.id] = GroupPath(g.id, g.n_units, order, errs, criterion, note=notes.get(g.id),
                                    views=vs, hessians=[keep(h) for h in hs], view_moments=sources,
                                    view_rows=rows)
            del hs
        if progress and criterion == "wanda":
            progress(task, gi + 1, len(groups))
    if pool is not None:
        from spa_compiler.criteria.spill import keep

        results = pool.results(lambda done: progress(task, done, obs_steps) if progress else None)
        for g, vs, hs, sources, rows in pending:
            order, errs = results[g.id]
            paths[g.id] = GroupPath(g.id, g.n_units, order, errs, criterion, note=notes.get(g.id),
                                    views=vs, hessians=[keep(h) for h in hs], view_moments=sources,
                                    view_rows=rows)
        pending.clear()
        paths = {g.id: paths[g.id] for g in groups if g.id in paths}  # the groups' order
    return paths
