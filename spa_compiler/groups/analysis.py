"""Coupled-channel groups of any ONNX graph, and their physical removal (SPA / DepGraph).

Analysis (`analyze`):

1. static shapes: symbolic input dims are fixed on a weight-stripped copy of the graph and ONNX
   shape inference (with data propagation) is run; ONNX Runtime fills what inference misses;
2. every axis of every tensor gets a term over atoms (`spa_compiler.groups.dims`); every node's rule
   (`channel_rules.RULES`) unifies, cuts, factors, contracts, freezes or reduces axes; constants
   get one set of axes per use, so a shared initializer is sliced (or copied) per use and never
   corrupted; graph inputs and outputs are frozen; unknown ops freeze every axis they touch;
3. every shape-carrying input (Reshape target, Slice bounds, Split sizes, Expand shape, ...) is
   checked: each element either comes from a constant (rewritten at prune time through a private
   copy of its chain) or is run-time arithmetic that tracks the new sizes by itself (verified by
   evaluating it under random sizes); otherwise the classes involved are frozen. Sizes that leak
   into arithmetic (e.g. `1/sqrt(q.shape[-1])`) freeze the classes they depend on;
4. each remaining class of at least two positions is a `ChannelGroup`: removing unit `u` removes,
   in every member, the flat indices `member.indices[u]`.

Rewrite (`prune_groups`): all planned groups at once; constants sliced along every axis whose
term mentions a pruned class, shape constants and attributes rewritten, shapes re-inferred, the
graph validated (checker + strict shape inference). `masked_dense` builds the test oracle's
reference: consumer weights (and bilinear inputs) of the removed units zeroed.

    group unit   what one unit is                               members (producers | consumers)
    channel      one output channel of a Conv (BN, residual)     conv rows, BN, bias | next cols
    neuron       one FFN intermediate neuron                      up/gate rows | down cols
    head         one attention head (GQA: a kv head + its q group)  q/k/v rows | o-proj cols
    head_dim     one position inside every head                   q/k (or v) rows | q·kᵀ / o-proj
    hidden       one residual-stream channel (norms: approximate) everything on the stream
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx_graphsurgeon as gs

from spa_compiler.errors import UsageError, ValidationError
from spa_compiler.groups.dims import DimSpace, Term
from spa_compiler.groups.rules import RULES, Req, Rule, rule_for
from spa_compiler.groups.shape_eval import Namer, ShapeEvaluator, element_source, rebuild
from spa_compiler.ir import ModelIR, constant_value

logger = logging.getLogger(__name__)

#: Every unit kind, in report order.
ALL_UNITS = ("channel", "neuron", "head", "head_dim", "hidden")

#: Values given to symbolic input dims during analysis (distinct, small, not 1).
SYMBOLIC_SIZES = (2, 5, 7, 11, 13, 17, 19, 23, 29, 31)

#: The second try when the small sizes leave tensors without a shape (a 7x7 kernel over a height of
#: 5, a stride-32 backbone: spatial dims of detection/OCR models): distinct primes above 64.
LARGE_SYMBOLIC_SIZES = (67, 71, 73, 79, 83, 89, 97, 101, 103, 107)

LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})
NORM_OPS = frozenset(
    {
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "RMSNormalization",
        "GroupNormalization",
    }
)

_TRIALS = 2


def _primes(n: int, start: int = 1009) -> list[int]:
    """`n` distinct primes from `start` up: probe sizes no two size expressions share by chance."""
    out: list[int] = []
    k = start
    while len(out) < n:
        if all(k % d for d in range(2, int(k**0.5) + 1)):
            out.append(k)
        k += 1
    return out


# ---------------------------------------------------------------------- public records
@dataclasses.dataclass(frozen=True)
class Member:
    """One tensor axis of a group: a constant (or, for bilinear consumers, an activation).

    Attributes:
        node: Name of the node reading the tensor.
        op: Its op type.
        tensor: Constant name (for role "activation": the activation tensor name).
        axis: Axis of `tensor` the group's units index.
        role: "weight" (output axis of a linear op), "bias", "param" (per-channel parameters,
            norms, tables), "input" (contracted axis of a constant weight: consumer),
            "activation" (contracted axis of a run-time operand, e.g. q in q·kᵀ: consumer).
        node_index: Position of the node in graph order at analysis time.
        input_index: Which input of the node.
        coords: For each flat position along `axis`, its unit (-1: not in this group).
    """

    node: str
    op: str
    tensor: str
    axis: int
    role: str
    node_index: int
    input_index: int
    coords: npt.NDArray[np.int64] = dataclasses.field(repr=False, compare=False)

    def unit_indices(self, unit: int) -> npt.NDArray[np.int64]:
        """Flat indices along `axis` that belong to `unit`."""
        return np.nonzero(self.coords == unit)[0]

    @property
    def indices(self) -> list[npt.NDArray[np.int64]]:
        """Per unit, the flat indices along `axis` (e.g. the D rows of one head)."""
        order = np.argsort(self.coords, kind="stable")
        sorted_c = self.coords[order]
        n = int(self.coords.max()) + 1 if self.coords.size else 0
        bounds = np.searchsorted(sorted_c, np.arange(n + 1))
        return [np.sort(order[bounds[u] : bounds[u + 1]]) for u in range(n)]

    def to_json(self) -> dict[str, Any]:
        """JSON form (the indices of unit 0 as an example, not all of them)."""
        first = self.unit_indices(0)
        return {
            "node": self.node,
            "op": self.op,
            "tensor": self.tensor,
            "axis": self.axis,
            "role": self.role,
            "indices_per_unit": int(first.size),
            "unit0_indices": [int(i) for i in first[:16]],
        }


@dataclasses.dataclass
class ChannelGroup:
    """A set of coupled channels that can only be removed together.

    Attributes:
        id: Stable name, e.g. "/layer1/conv1/Conv:channel" (anchor node : unit).
        unit: "channel" | "neuron" | "head" | "head_dim" | "hidden".
        n_units: Number of prunable units.
        unit_size: Positions per unit on the anchor member (e.g. head_dim rows per head).
        frozen: Whether the group must not be pruned.
        reason: Why it is frozen (None if prunable).
        producers: Members that are sliced but do not contract the units (weights' output
            rows, biases, norm parameters, per-channel constants).
        consumers: Members that contract the units (next layer's input columns; attention's
            q·kᵀ for head dims): what OBS criteria score and what the oracle zeroes.
        params: Parameters attributable to the group (removed if every unit went).
        macs: Multiply-accumulates attributable to the group (static analysis shapes).
        label: A short human description.
    """

    id: str
    unit: str
    n_units: int
    unit_size: int
    frozen: bool
    reason: str | None
    producers: list[Member]
    consumers: list[Member]
    params: int = 0
    macs: int = 0
    label: str = ""
    root: int = dataclasses.field(default=-1, repr=False)
    frozen_by_option: bool = dataclasses.field(default=False, repr=False)

    @property
    def members(self) -> list[Member]:
        """Producers then consumers."""
        return [*self.producers, *self.consumers]


@dataclasses.dataclass
class GroupAnalysis:
    """The result of `analyze`: every group plus coverage figures.

    Attributes:
        groups: Every group (prunable and frozen), in graph order of their anchor nodes.
        total_macs: MACs of Conv/ConvTranspose/Gemm/MatMul nodes at the analysis shapes.
        prunable_macs: MACs of those nodes that some prunable group shrinks.
        frozen_macs: MACs of the other nodes, by the main reason their channels are frozen.
        unknown_ops: "domain:op" -> count of nodes without a rule.
        input_shapes: The concrete input shapes analysis used.
        units: Units requested.
        include_hidden: Whether hidden-width groups were made prunable.
    """

    groups: list[ChannelGroup]
    total_macs: int
    prunable_macs: int
    frozen_macs: dict[str, int]
    unknown_ops: dict[str, int]
    input_shapes: dict[str, tuple[int, ...]]
    units: tuple[str, ...]
    include_hidden: bool
    _state: Any = dataclasses.field(default=None, repr=False)

    def group(self, gid: str) -> ChannelGroup:
        """The group with id `gid` (KeyError with the known ids otherwise)."""
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(f"no group {gid!r}")

    @property
    def prunable(self) -> list[ChannelGroup]:
        """Groups that may be pruned."""
        return [g for g in self.groups if not g.frozen]

    @property
    def coverage(self) -> float:
        """Share of MACs inside prunable groups."""
        return self.prunable_macs / self.total_macs if self.total_macs else 0.0

    def for_clone(self, clone: ModelIR) -> GroupAnalysis:
        """This analysis, bound to `clone`, without analysing again (time O(graph size)).

        `clone` must be a structurally identical copy of the model as it was analysed (e.g.
        `model.clone()`, possibly with other weight values): same nodes in the same order with
        the same names, ops, attribute names and input/output tensor names, the same constants
        (by name and shape) and the same values of the integer constants the analysis read
        (shapes, axes, indices); float values (weights) may differ.
        The groups, ids and figures are those of this analysis; `prune_groups(clone, plan,
        analysis=analysis.for_clone(clone))` gives exactly the model a fresh `analyze(clone)`
        would. The result is a new analysis, consumed by one `prune_groups`; this one is not
        changed and stays bound to its own model, and may be rebound any number of times (also
        after it pruned its model: the copy must then match the model as analysed). Passing the
        analysed model itself gives a second, independent analysis of it.

        Raises:
            UsageError: `clone` differs in structure, or this analysis has no analyzer state.
        """
        if self._state is None or not hasattr(self._state, "structure"):
            raise UsageError(
                "this group analysis cannot be rebound (it has no analyzer state)",
                hint="use a GroupAnalysis returned by analyze()",
            )
        return dataclasses.replace(
            self,
            groups=list(self.groups),
            frozen_macs=dict(self.frozen_macs),
            unknown_ops=dict(self.unknown_ops),
            input_shapes=dict(self.input_shapes),
            _state=_rebind(self._state, clone),
        )

    rebind = for_clone


@dataclasses.dataclass
class _Slot:
    node: int
    kind: str
    where: int | str
    req: list[Req | None]
    ref: list[Term | None]
    edit: list[str | None] = dataclasses.field(default_factory=list)
    replace: set[int] = dataclasses.field(default_factory=set)


# ---------------------------------------------------------------------- static shapes
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


def _strip(proto: onnx.ModelProto) -> None:
    for t in proto.graph.initializer:
        if t.data_type in _FLOAT_TYPES and int(np.prod(t.dims or [1])) > 64:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value="__stripped__")


def _fix_inputs(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    sizes: Sequence[int] = SYMBOLIC_SIZES,
) -> dict[str, tuple[int, ...]]:
    chosen: dict[str, int] = {}
    fixed: dict[str, tuple[int, ...]] = {}
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        given = (input_shapes or {}).get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        out = []
        for k, d in enumerate(dims):
            if given is not None and k < len(given):
                v = int(given[k])
            elif d.HasField("dim_value") and d.dim_value >= 0:
                v = d.dim_value
            else:
                key = d.dim_param or f"{vi.name}:{k}"
                if key not in chosen:
                    chosen[key] = sizes[len(chosen) % len(sizes)]
                v = chosen[key]
            d.Clear()
            d.dim_value = v
            out.append(v)
        fixed[vi.name] = tuple(out)
    return fixed


def _collect_shapes(
    proto: onnx.ModelProto,
) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype]]:
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        if tt.elem_type:
            dtypes[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        dtypes[t.name] = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    return shapes, dtypes


def static_shapes(
    model: ModelIR, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype], dict[str, tuple[int, ...]]]:
    """Static shape and dtype of every tensor, with symbolic input dims fixed.

    Returns (shapes, dtypes, the input shapes used). ONNX shape inference first; tensors it
    leaves without a static shape are measured by one ONNX Runtime run (when ORT can run it).
    """
    best = None
    for sizes in (SYMBOLIC_SIZES, LARGE_SYMBOLIC_SIZES):
        shapes, dtypes, fixed, missing = _static_shapes(model, input_shapes, sizes)
        if best is None or len(missing) < len(best[3]):
            best = shapes, dtypes, fixed, missing
        given = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        if not missing or all(given.get(k) == v for k, v in fixed.items()):
            break  # complete, or no symbolic dim to size differently
        logger.debug("%d tensors without a shape with input sizes %s: trying larger ones", len(missing), fixed)
    assert best is not None
    return best[0], best[1], best[2]


def _static_shapes(
    model: ModelIR, input_shapes: Mapping[str, Sequence[int]] | None, sizes: Sequence[int]
) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype], dict[str, tuple[int, ...]], list[str]]:
    proto, weights = model.to_proto_split()  # the weights go to ORT as they are, if it runs
    fixed = _fix_inputs(proto, input_shapes, sizes)
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    _strip(light)  # value_info kept: it is the only shape source for ops inference cannot type
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as e:  # inference is best effort; ORT fills the rest
        logger.debug("shape inference failed: %s", e)
        inferred = light
    shapes, dtypes = _collect_shapes(inferred)
    missing = []
    for n in proto.graph.node:
        for o in n.output:
            if o and o not in shapes and n.op_type != "Constant":
                missing.append(o)
    if missing:
        _ort_shapes(proto, fixed, missing, shapes, dtypes, weights)
    return shapes, dtypes, fixed, [o for o in missing if o not in shapes]


def _ort_shapes(
    proto: onnx.ModelProto,
    fixed: Mapping[str, tuple[int, ...]],
    missing: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, np.dtype],
    weights: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Shapes and dtypes of `missing` from one ONNX Runtime run (`weights`: the initializers
    `proto` leaves out, see `ModelIR.to_proto_split`)."""
    try:
        from spa_compiler.ort import make_session, random_feeds

        full = onnx.ModelProto()
        full.CopyFrom(proto)
        known = {o.name for o in full.graph.output}
        for name in missing:
            if name not in known:
                full.graph.output.add(name=name)
        feeds = random_feeds(ModelIR.from_proto(proto), fixed)
        sess = make_session(full, optimize=False, initializers=weights)
        outs = sess.run(None, feeds)
        for meta, val in zip(sess.get_outputs(), outs, strict=False):
            arr = np.asarray(val)
            shapes.setdefault(meta.name, tuple(int(d) for d in arr.shape))
            dtypes.setdefault(meta.name, arr.dtype)
    except Exception as e:  # a model ORT cannot run (custom ops): rules freeze unknown shapes
        logger.debug("ORT shape fallback failed: %s", e)


# ---------------------------------------------------------------------- the analyzer
def _is_const(t: gs.Tensor) -> bool:
    return constant_value(t) is not None


def _present(node: gs.Node, i: int) -> bool:
    return i < len(node.inputs) and bool(node.inputs[i].name)


def _node_label(node: gs.Node, index: int) -> str:
    return node.name or f"#{index}:{node.op}"


def _subgraph_refs(node: gs.Node) -> set[str]:
    """Names of outer tensors a node's subgraphs read."""
    refs: set[str] = set()
    for v in node.attrs.values():
        graphs = v if isinstance(v, list) else [v]
        for g in graphs:
            if isinstance(g, gs.Graph):
                inner = set(g.tensors())
                local = {t.name for n in g.nodes for t in n.outputs} | {t.name for t in g.inputs}
                for n in g.nodes:
                    for t in n.inputs:
                        if t.name and t.name not in local and (t.name in inner):
                            refs.add(t.name)
                    refs |= _subgraph_refs(n)
    return refs


class _Analyzer:
    """Runs the rules over one graph (implements `channel_rules.RuleContext`)."""

    def __init__(
        self,
        model: ModelIR,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, np.dtype],
        rules: Mapping[str, Rule],
    ) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes: list[gs.Node] = list(self.graph.nodes)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.space = DimSpace()
        self.opset = model.opset
        self.shapes = shapes
        self.dtypes = dtypes
        self.rules = dict(rules)
        self.var_axes: dict[str, list[Term]] = {}
        self.const_axes: dict[tuple[int, int], list[Term]] = {}
        self.contractions: dict[tuple[int, int], int] = {}
        self.slots: list[_Slot] = []
        self.unknown: Counter[str] = Counter()
        self.subgraph_refs: set[str] = set()
        self.ev0 = ShapeEvaluator(self._sizes_orig)

    # -- RuleContext -------------------------------------------------------------------
    def _axes_of_var(self, name: str) -> list[Term] | None:
        if name in self.var_axes:
            return self.var_axes[name]
        shape = self.shapes.get(name)
        if shape is None:
            return None
        axes = [self.space.new(d) for d in shape]
        self.var_axes[name] = axes
        return axes

    def inp(self, node: gs.Node, i: int) -> list[Term] | None:
        if not _present(node, i):
            return None
        t = node.inputs[i]
        c = constant_value(t)
        if c is not None:
            key = (self.index[id(node)], i)
            if key not in self.const_axes:
                self.const_axes[key] = [self.space.new(int(d)) for d in np.shape(c.values)]
            return self.const_axes[key]
        return self._axes_of_var(t.name)

    def out(self, node: gs.Node, j: int) -> list[Term] | None:
        if j >= len(node.outputs) or not node.outputs[j].name:
            return None
        return self._axes_of_var(node.outputs[j].name)

    def shape_in(self, node: gs.Node, i: int) -> tuple[int, ...] | None:
        if not _present(node, i):
            return None
        c = constant_value(node.inputs[i])
        if c is not None:
            return tuple(int(d) for d in np.shape(c.values))
        return self.shapes.get(node.inputs[i].name)

    def shape_out(self, node: gs.Node, j: int) -> tuple[int, ...] | None:
        if j >= len(node.outputs):
            return None
        return self.shapes.get(node.outputs[j].name)

    def const(self, node: gs.Node, i: int) -> npt.NDArray[Any] | None:
        if not _present(node, i):
            return None
        c = constant_value(node.inputs[i])
        return None if c is None else np.asarray(c.values)

    def value(self, node: gs.Node, i: int) -> npt.NDArray[Any] | None:
        if not _present(node, i):
            return None
        return self.ev0.value(node.inputs[i])

    def same(self, a: Term, b: Term, why: str) -> bool:
        if self.space.unify(a, b):
            return True
        self.space.freeze(a, f"incompatible:{why}")
        self.space.freeze(b, f"incompatible:{why}")
        return False

    def freeze(self, terms: Term | Sequence[Term], reason: str) -> None:
        items = terms if isinstance(terms, list) else [terms]
        for t in items:
            self.space.freeze(t, reason)

    def reduce(self, term: Term, reason: str) -> None:
        self.space.reduce(term, reason)

    def tag(self, term: Term, tag: str) -> None:
        self.space.tag(term, tag)

    def contract(self, node: gs.Node, i: int, axis: int) -> None:
        self.contractions[(self.index[id(node)], i)] = axis

    def slot(
        self,
        node: gs.Node,
        kind: str,
        where: int | str,
        req: Sequence[Req | None],
        ref: Sequence[Term | None] | None = None,
    ) -> None:
        refs = list(ref) if ref is not None else [None] * len(req)
        self.slots.append(_Slot(self.index[id(node)], kind, where, list(req), refs))

    def freeze_node(self, node: gs.Node, reason: str) -> None:
        for i in range(len(node.inputs)):
            x = self.inp(node, i)
            if x:
                self.freeze(list(x), reason)
        for j in range(len(node.outputs)):
            y = self.out(node, j)
            if y:
                self.freeze(list(y), reason)

    def is_used(self, t: gs.Tensor) -> bool:
        return bool(t.outputs) or any(o is t for o in self.graph.outputs)

    # -- sizes -----------------------------------------------------------------------
    def _sizes_orig(self, t: gs.Tensor) -> Sequence[int] | None:
        c = constant_value(t)
        if c is not None:
            return np.shape(c.values)
        return self.shapes.get(t.name)

    def sizes_under(self, assign: Mapping[int, int]) -> Any:
        def sizes_of(t: gs.Tensor) -> Sequence[int] | None:
            c = constant_value(t)
            if c is not None:
                return np.shape(c.values)
            axes = self.var_axes.get(t.name)
            if axes is None:
                return self.shapes.get(t.name)
            return [self.space.size_under(a, assign) for a in axes]

        return sizes_of

    # -- run -------------------------------------------------------------------------
    def run(self) -> None:
        sp = self.space
        for t in self.graph.inputs:
            axes = self._axes_of_var(t.name)
            if axes:
                self.freeze(list(axes), "graph-input")
                for d, a in zip(t.shape or [], axes, strict=False):
                    if not (isinstance(d, int) and d >= 0):
                        self.space.tag(a, "dynamic")
        for t in self.graph.outputs:
            axes = self._axes_of_var(t.name)
            if axes:
                self.freeze(list(axes), "graph-output")
        for node in self.nodes:
            sub = _subgraph_refs(node)
            if sub:
                self.subgraph_refs |= sub
                for name in sub:
                    axes = self._axes_of_var(name)
                    if axes:
                        self.freeze(list(axes), f"subgraph-capture:{node.name}")
            rule = rule_for(node, self.rules)
            if rule is None:
                key = f"{node.domain or 'ai.onnx'}:{node.op}"
                self.unknown[key] += 1
                self.freeze_node(node, f"unknown-op:{key}")
                continue
            if any(
                _present(node, i) and self.shape_in(node, i) is None
                for i in range(len(node.inputs))
            ) or any(o.name and self.shapes.get(o.name) is None for o in node.outputs):
                if node.op not in ("Constant",):
                    self.freeze_node(node, f"shape-unknown:{node.op}")
                    continue
            n_slots = len(self.slots)
            try:
                rule(self, node)
            except Exception as e:  # a rule must never take the analysis down: freeze instead
                logger.debug("rule %s failed on %s: %s", node.op, node.name, e, exc_info=True)
                self.freeze_node(node, f"rule-error:{node.op}")
            self._freeze_created_axes(node, self.slots[n_slots:])
        del sp
        self._check_slots()
        self._check_size_sinks()

    def _freeze_created_axes(self, node: gs.Node, slots: Sequence[_Slot]) -> None:
        """Output axes the rule tied to nothing (e.g. TopK's k) have a size set by a value:
        frozen, unless a shape input the rewrite controls sizes them (Expand's broadcast axes)."""
        sized: set[int] = set()
        for s in slots:
            for r in s.req:
                for t in self.req_terms(r):
                    sized.update(self.space.leaves(t))
        for j in range(len(node.outputs)):
            y = self.out(node, j)
            for a in y or []:
                if isinstance(a, int) and not self.space.touched(a) and self.space.atom_size(a) > 1:
                    if self.space.find(a) not in sized:
                        self.space.freeze(
                            a, f"created-by:{node.op}:{_node_label(node, self.index[id(node)])}"
                        )

    # -- shape-carrying inputs -------------------------------------------------------
    def _live(self, terms: Iterable[Term | None]) -> set[int]:
        out: set[int] = set()
        for t in terms:
            if t is None:
                continue
            for r in self.space.leaves(t):
                if self.space.frozen(r) is None and self.space.atom_size(r) > 0:
                    out.add(r)
        return out

    @staticmethod
    def req_terms(req: Req | None) -> list[Term]:
        return [] if req is None else [t for _, t in req[1]]

    def req_value(self, req: Req, assign: Mapping[int, int]) -> int:
        return int(req[0] + sum(c * self.space.size_under(t, assign) for c, t in req[1]))

    def _effective(
        self, slot: _Slot, vals: npt.NDArray[Any], e: int, assign: Mapping[int, int]
    ) -> int | None:
        v = int(np.asarray(vals).reshape(-1)[e])
        ref = slot.ref[e] if e < len(slot.ref) else None
        node = self.nodes[slot.node]
        if slot.kind == "reshape":
            if v == -1:
                return None
            if v == 0 and not int(node.attrs.get("allowzero", 0)) and ref is not None:
                return self.space.size_under(ref, assign)
            return v
        if slot.kind == "expand":
            if v == 1 and ref is not None:
                return self.space.size_under(ref, assign)
            return v
        if slot.kind == "slice":
            n = self.space.size_under(ref, assign) if ref is not None else None
            if n is None:
                return v
            v = v + n if v < 0 else v
            return min(max(v, 0), n)
        return v

    def _slot_tensor(self, slot: _Slot) -> gs.Tensor | None:
        node = self.nodes[slot.node]
        if isinstance(slot.where, str) or not _present(node, slot.where):
            return None
        return node.inputs[slot.where]

    def _check_slots(self) -> None:
        for slot in self.slots:
            t = self._slot_tensor(slot)
            slot.edit = []
            for e in range(len(slot.req)):
                src = (
                    element_source(t, e, self.shapes, self.ev0.value)
                    if t is not None and slot.kind != "split"
                    else None
                )
                slot.edit.append(None if src is None else src[0])
        rng = np.random.default_rng(0)
        for _ in range(8):
            live_roots = [r for r in self.space.roots() if self.space.frozen(r) is None]
            live_roots = [r for r in live_roots if self.space.atom_size(r) > 1]
            primes = _primes(len(live_roots))
            trials = []
            for _k in range(_TRIALS):
                order = rng.permutation(len(live_roots))
                assign = {r: primes[int(j)] for r, j in zip(live_roots, order, strict=False)}
                trials.append((assign, ShapeEvaluator(self.sizes_under(assign))))
            changed = False
            for slot in self.slots:
                if slot.kind in ("attr", "split", "default_scale"):
                    continue
                t = self._slot_tensor(slot)
                if t is None:
                    continue
                runtime = [
                    e
                    for e in range(len(slot.req))
                    if slot.req[e] is not None
                    and slot.edit[e] != "const"
                    and e not in slot.replace
                    and self._live(
                        [*self.req_terms(slot.req[e]), slot.ref[e] if e < len(slot.ref) else None]
                    )
                ]
                if not runtime:
                    continue
                bad: list[int] = []
                for assign, ev in trials:
                    vals = ev.value(t)
                    for e in runtime:
                        if e in bad:
                            continue
                        eff = None if vals is None else self._effective(slot, vals, e, assign)
                        if vals is None or (
                            eff is not None and eff != self.req_value(slot.req[e], assign)
                        ):  # type: ignore[arg-type]
                            bad.append(e)
                for e in list(bad):
                    terms_e = [
                        *self.req_terms(slot.req[e]),
                        slot.ref[e] if e < len(slot.ref) else None,
                    ]
                    if slot.edit[e] == "piece" and not self._dynamic(terms_e):
                        slot.replace.add(e)  # a run-time size piece the rewrite makes a constant
                        bad.remove(e)
                if bad:
                    node = self.nodes[slot.node]
                    terms: list[Term | None] = []
                    for e in bad:
                        terms += [
                            *self.req_terms(slot.req[e]),
                            slot.ref[e] if e < len(slot.ref) else None,
                        ]
                    roots = self._live(terms) | self._upstream_live(t)
                    for r in roots:
                        self.space.freeze(r, f"shape-chain:{_node_label(node, slot.node)}")
                    changed = changed or bool(roots)
            if not changed:
                break

    def _dynamic(self, terms: Iterable[Term | None]) -> bool:
        """Whether a size depends on a symbolic (dynamic) input dim."""
        for t in terms:
            if t is None:
                continue
            for r in self.space.leaves(t):
                if "dynamic" in self.space.info(r).tags:
                    return True
        return False

    def _upstream_live(self, t: gs.Tensor, seen: set[int] | None = None) -> set[int]:
        """Live classes of the axes read by Shape/Size nodes upstream of `t`."""
        seen = set() if seen is None else seen
        if id(t) in seen or not t.inputs:
            return set()
        seen.add(id(t))
        node = t.inputs[0]
        if node.op in ("Shape", "Size"):
            axes = self.var_axes.get(node.inputs[0].name) or []
            return self._live(axes)
        out: set[int] = set()
        for x in node.inputs:
            if x.name and not _is_const(x):
                out |= self._upstream_live(x, seen)
        return out

    def _check_size_sinks(self) -> None:
        """Sizes used as data (e.g. attention scale 1/sqrt(D) from Shape): freeze those classes."""
        slot_inputs = {(s.node, s.where) for s in self.slots}
        shape_nodes = [n for n in self.nodes if n.op in ("Shape", "Size")]
        if not shape_nodes:
            return
        for i, node in enumerate(self.nodes):
            if node.op in ("Shape", "Size"):
                continue
            if all(self.ev0.value(o) is not None for o in node.outputs if o.name):
                continue  # still shape arithmetic
            for k, x in enumerate(node.inputs):
                if not x.name or _is_const(x) or (i, k) in slot_inputs:
                    continue
                if self.ev0.value(x) is None:
                    continue
                live = self._upstream_live(x)
                if not live:
                    continue
                base = np.asarray(self.ev0.value(x))
                for r in sorted(live):
                    n = self.space.atom_size(r)
                    probe = ShapeEvaluator(self.sizes_under({r: max(1, n - 1)}))
                    v = probe.value(x)
                    if (
                        v is None
                        or np.shape(v) != base.shape
                        or not np.array_equal(np.asarray(v), base)
                    ):
                        self.space.freeze(r, f"size-used-in-computation:{_node_label(node, i)}")


# ---------------------------------------------------------------------- MACs
def _node_macs(an: _Analyzer, node: gs.Node) -> int:
    sh_out = an.shape_out(node, 0)
    if sh_out is None:
        return 0
    if node.op == "Conv":
        w = an.shape_in(node, 1)
        return int(np.prod(sh_out)) * int(np.prod(w[1:])) if w else 0
    if node.op == "ConvTranspose":
        x, w = an.shape_in(node, 0), an.shape_in(node, 1)
        return int(np.prod(x)) * int(np.prod(w[1:])) if x and w else 0
    if node.op == "Gemm":
        a = an.shape_in(node, 0)
        if not a:
            return 0
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return int(np.prod(sh_out)) * int(k)
    if node.op == "MatMul":
        a = an.shape_in(node, 0)
        return int(np.prod(sh_out)) * int(a[-1]) if a else 0
    return 0


# ---------------------------------------------------------------------- building groups
def _role(
    an: _Analyzer, node: gs.Node, i: int, axis: int, key: tuple[int, int], const: bool
) -> str:
    if an.contractions.get(key) == axis:
        return "input" if const else "activation"
    if node.op in LINEAR_OPS:
        if node.op in ("Conv", "ConvTranspose", "Gemm") and i == 2:
            return "bias"
        return "weight"
    return "param"


def _short_reason(reason: str) -> str:
    head = reason.split(":")[0]
    if head == "unknown-op":
        return ":".join(reason.split(":")[:3])
    return head


def _build(
    an: _Analyzer, units: Sequence[str], include_hidden: bool, fixed: dict[str, tuple[int, ...]]
) -> GroupAnalysis:
    sp = an.space
    refs: dict[int, list[tuple[int, int, int, bool]]] = defaultdict(list)
    terms_of: dict[tuple[int, int], list[Term]] = {}
    for key, axes in an.const_axes.items():
        terms_of[key] = axes
        kernel = an.nodes[key[0]].op in ("Conv", "ConvTranspose") and key[1] == 1
        for k, t in enumerate(axes):
            if kernel and k >= 2:
                continue  # kernel window axes are not channels
            for r in dict.fromkeys(sp.leaves(t)):
                refs[r].append((key[0], key[1], k, True))
    for key, axis in an.contractions.items():
        if key in an.const_axes:
            continue
        node = an.nodes[key[0]]
        axes = an.var_axes.get(node.inputs[key[1]].name)
        if not axes:
            continue
        terms_of[key] = axes
        for r in dict.fromkeys(sp.leaves(axes[axis])):
            refs[r].append((key[0], key[1], axis, False))

    # MACs per node and the axes each node's MACs scale with
    node_macs: dict[int, int] = {}
    node_terms: dict[int, list[Term]] = {}
    for i, node in enumerate(an.nodes):
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        m = _node_macs(an, node)
        if not m:
            continue
        node_macs[i] = m
        terms = list(an.var_axes.get(node.outputs[0].name) or [])
        for k in range(len(node.inputs)):
            ax = an.contractions.get((i, k))
            if ax is not None:
                src = an.const_axes.get((i, k)) or an.var_axes.get(node.inputs[k].name) or []
                if ax < len(src):
                    terms.append(src[ax])
        node_terms[i] = terms

    groups: list[ChannelGroup] = []
    for root in sorted(refs):
        n = sp.atom_size(root)
        if n < 2 or sp.find(root) != root:
            continue
        members: list[Member] = []
        bad_product = False
        for node_i, inp_i, axis, is_const in refs[root]:
            node = an.nodes[node_i]
            term = terms_of[(node_i, inp_i)][axis]
            try:
                coords = sp.coords(term, root)
            except ValueError:
                bad_product = True
                continue
            members.append(
                Member(
                    node=_node_label(node, node_i),
                    op=node.op,
                    tensor=node.inputs[inp_i].name,
                    axis=axis,
                    role=_role(an, node, inp_i, axis, (node_i, inp_i), is_const),
                    node_index=node_i,
                    input_index=inp_i,
                    coords=coords,
                )
            )
        if not any(m.role in ("weight", "input") or m.op in NORM_OPS for m in members):
            continue  # no weight reads or writes these positions: not a channel group
        info = sp.info(root)
        producers = [m for m in members if m.role not in ("input", "activation")]
        consumers = [m for m in members if m.role in ("input", "activation")]
        tags = info.tags
        if info.reduced and "head" not in tags:
            unit = "hidden"
        elif "head" in tags:
            unit = "head"
        elif "head_dim" in tags:
            unit = "head_dim"
        elif any(m.op in ("Conv", "ConvTranspose") for m in members):
            unit = "channel"
        else:
            unit = "neuron"
        reason = info.frozen
        by_option = False
        if reason is None and bad_product:
            reason = "non-rectangular: a unit appears twice in one product"
        if reason is None and info.reduced and not include_hidden:
            reason = f"hidden width: normalized by {info.reduced[0]} (prunable with include_hidden)"
            by_option = True
        if reason is None and unit != "hidden" and unit not in units:
            reason = f"unit '{unit}' not selected"
            by_option = True
        if reason is None and not consumers:
            reason = "no consumer: nothing reads these channels"
        anchor = (
            next((m for m in producers if m.role == "weight"), None) or (producers or consumers)[0]
        )
        unit_size = int(anchor.unit_indices(0).size)
        # params: each constant counted once, by the share of its axis in the group
        params = 0
        seen_const: dict[str, float] = {}
        for m in members:
            if m.role == "activation":
                continue
            arr = an._sizes_orig(an.nodes[m.node_index].inputs[m.input_index])
            numel = int(np.prod(arr)) if arr is not None else 0
            share = float((m.coords >= 0).mean()) if m.coords.size else 0.0
            seen_const[m.tensor] = max(seen_const.get(m.tensor, 0.0), numel * share)
        params = int(round(sum(seen_const.values())))
        macs = 0
        for i, m in node_macs.items():
            frac = 0.0
            for t in node_terms[i]:
                if root in sp.leaves(t):
                    frac = max(frac, float((sp.coords(t, root) >= 0).mean()))
            macs += int(m * frac)
        g = ChannelGroup(
            id="",
            unit=unit,
            n_units=n,
            unit_size=unit_size,
            frozen=reason is not None,
            reason=reason,
            producers=producers,
            consumers=consumers,
            params=params,
            macs=macs,
            root=root,
            frozen_by_option=by_option,
        )
        g.label = _label(g)
        groups.append(g)

    def anchor_key(g: ChannelGroup) -> tuple[int, int]:
        a = next((m for m in g.producers if m.role == "weight"), None) or g.members[0]
        first = int(np.nonzero(a.coords >= 0)[0][0]) if (a.coords >= 0).any() else 0
        return (a.node_index, first)

    groups.sort(key=anchor_key)
    used: Counter[str] = Counter()
    for g in groups:
        a = next((m for m in g.producers if m.role == "weight"), None) or g.members[0]
        base = f"{a.node}:{g.unit}"
        used[base] += 1
        g.id = base if used[base] == 1 else f"{base}#{used[base]}"

    # coverage
    total = sum(node_macs.values())
    prunable_roots = {g.root for g in groups if not g.frozen}
    covered = 0
    frozen_by: Counter[str] = Counter()
    root_reason = {g.root: g.reason for g in groups}
    for i, m in node_macs.items():
        roots = {r for t in node_terms[i] for r in sp.leaves(t)}
        if roots & prunable_roots:
            covered += m
            continue
        reasons = [_short_reason(root_reason[r]) for r in roots if root_reason.get(r)]
        key = ", ".join(sorted(set(reasons))) or "no prunable channel"
        frozen_by[key] += m
    return GroupAnalysis(
        groups=groups,
        total_macs=total,
        prunable_macs=covered,
        frozen_macs=dict(frozen_by),
        unknown_ops=dict(an.unknown),
        input_shapes=fixed,
        units=tuple(units),
        include_hidden=include_hidden,
        _state=an,
    )


def _label(g: ChannelGroup) -> str:
    """What one unit of the group is, in words (GQA heads told apart by their row counts)."""
    sizes = sorted({int(m.unit_indices(0).size) for m in g.producers if m.role == "weight"})
    if g.unit == "head":
        weights = {m.tensor for m in g.producers if m.role == "weight"}
        if len(sizes) >= 2 and sizes[-1] % sizes[0] == 0 and sizes[-1] > sizes[0]:
            return f"kv head with its {sizes[-1] // sizes[0]} query heads"
        if len(weights) == 1:
            return "query head in every kv group"
        return "attention head (q, k, v rows; o columns)"
    if g.unit == "head_dim":
        return "one position in every head"
    if g.unit == "hidden":
        return "residual-stream channel"
    if g.unit == "neuron":
        return "neuron"
    return "channel"


# ---------------------------------------------------------------------- public API
def analyze(
    model: ModelIR,
    *,
    units: Sequence[str] = ("channel", "head", "neuron"),
    include_hidden: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    rules: Mapping[str, Rule] | None = None,
) -> GroupAnalysis:
    """Find every coupled-channel group of `model` (the model is not changed).

    Args:
        model: The model.
        units: Unit kinds that may be pruned ("channel", "neuron", "head", "head_dim");
            groups of other kinds are reported frozen with reason "unit '...' not selected".
        include_hidden: Make hidden-width (normalized residual stream) groups prunable; their
            pruning is approximate (the norms see fewer channels), so the oracle does not apply.
        input_shapes: Concrete shapes for inputs with symbolic dims (default: small distinct
            sizes); they only affect MAC figures, never the groups.
        rules: Replacement rule registry (tests use it to leave an op out).
    """
    bad = [u for u in units if u not in ALL_UNITS]
    if bad:
        raise UsageError(f"unknown unit kinds {bad}", hint=f"use some of {list(ALL_UNITS)}")
    shapes, dtypes, fixed = static_shapes(model, input_shapes)
    an = _Analyzer(model, shapes, dtypes, RULES if rules is None else rules)
    an.run()
    an.model_version = model.version  # type: ignore[attr-defined]
    an.n_nodes = len(an.nodes)  # type: ignore[attr-defined]
    result = _build(an, tuple(units), include_hidden, fixed)
    # what `GroupAnalysis.for_clone` needs: the structure analysed and the shape values known
    an.structure = _structure(model)  # type: ignore[attr-defined]
    an.memo = an.ev0.memo_by_name(model.graph.tensors())  # type: ignore[attr-defined]
    logger.info(
        "channel groups: %d (%d prunable), %.0f%% of MACs prunable, unknown ops %s",
        len(result.groups),
        len(result.prunable),
        100 * result.coverage,
        dict(an.unknown),
    )
    return result


def round_removal(group: ChannelGroup, remove: Sequence[int], round_to: int) -> list[int]:
    """Shorten `remove` (kept in order: least important first) so the kept width
    (kept units × unit_size) is a multiple of `round_to` (or nothing is removed)."""
    remove = list(remove)
    if round_to <= 1 or not remove:
        return remove
    n, us = group.n_units, max(1, group.unit_size)
    keep = n - len(remove)
    while keep < n and (keep * us) % round_to:
        keep += 1
    return remove[: n - keep]


def _structure(model: ModelIR) -> list[tuple[Any, ...]]:
    """What an analysis depends on besides values: graph I/O, and per node (in order) its name,
    op, domain, attribute names, inputs (name; constants also with their shape) and outputs."""
    g = model.graph

    def key(t: gs.Tensor) -> tuple[Any, ...]:
        if isinstance(t, gs.Constant):
            return (t.name, "const", tuple(t.shape))
        return (t.name,)

    out: list[tuple[Any, ...]] = [
        ("inputs", tuple(t.name for t in g.inputs)),
        ("outputs", tuple(t.name for t in g.outputs)),
    ]
    for n in g.nodes:
        out.append(
            (
                n.name,
                n.op,
                n.domain or "",
                tuple(sorted(n.attrs)),
                tuple(key(t) for t in n.inputs),
                tuple(t.name for t in n.outputs),
            )
        )
    return out


def _rebind(an: _Analyzer, clone: ModelIR) -> _Analyzer:
    """A copy of analyzer `an` bound to `clone` (see `GroupAnalysis.for_clone`).

    Shared (prune_groups only reads them): shapes, dtypes, axes, contractions, slots, rules.
    Own: the graph references, the node index, the dimension space (its union-find compresses
    paths and may add trivial atoms) and the shape evaluator (memoized by tensor identity,
    re-seeded, by name, with the values the analysis computed for non-constant tensors)."""
    want: list[tuple[Any, ...]] = an.structure  # type: ignore[attr-defined]
    have = _structure(clone)
    if have != want:
        if len(have) != len(want):
            where = f"{len(want) - 2} nodes analysed, {len(have) - 2} in the clone"
        else:
            i = next(i for i, (a, b) in enumerate(zip(want, have, strict=True)) if a != b)
            where = f"first difference: {want[i]!r:.200} vs {have[i]!r:.200}"
        raise UsageError(
            f"the model is not a structurally identical copy of the analysed one ({where})",
            hint="call analyze() on this model instead of rebinding an analysis of another",
        )
    new = _Analyzer.__new__(_Analyzer)
    new.__dict__.update(an.__dict__)
    new.model = clone
    new.graph = clone.graph
    new.nodes = list(clone.graph.nodes)
    new.index = {id(n): i for i, n in enumerate(new.nodes)}
    new.space = an.space.copy()
    new.ev0 = ShapeEvaluator(new._sizes_orig)
    tensors = clone.graph.tensors()
    for name, value in an.memo.items():  # type: ignore[attr-defined]
        t = tensors.get(name)
        if t is None:
            continue
        c = constant_value(t)
        if c is None:
            new.ev0.seed(t, value)  # a computed shape value: the same on a structural copy
            continue
        # constants are read again from the clone (weights may have other values: a float
        # constant of at most MAX_ELEMENTS values may be memoized); integer ones are shape
        # arithmetic (shape, axes, indices, starts): they must agree with the analysis
        cur = np.asarray(c.values)
        if value is not None and cur.dtype.kind in "iub" and (
            cur.shape != np.shape(value) or not np.array_equal(cur, value)
        ):
            raise UsageError(
                f"integer constant {name!r} has another value than in the analysed model",
                hint="call analyze() on this model instead of rebinding an analysis of another",
            )
    new.model_version = clone.version  # type: ignore[attr-defined]
    new.n_nodes = len(new.nodes)  # type: ignore[attr-defined]
    new.consumed = False  # type: ignore[attr-defined]
    return new


def _state_for(model: ModelIR, analysis: GroupAnalysis | None) -> tuple[GroupAnalysis, _Analyzer]:
    if analysis is None:
        analysis = analyze(model, units=ALL_UNITS, include_hidden=True)
    an = analysis._state
    if (
        an is None
        or an.model is not model
        or getattr(an, "model_version", None) != model.version
        or len(model.graph.nodes) != an.n_nodes
        or getattr(an, "consumed", False)
    ):
        raise UsageError(
            "the group analysis does not belong to this model (or the model changed since)",
            hint="call analyze(model) again on the model you prune",
        )
    return analysis, an


def _resolve_plan(
    analysis: GroupAnalysis, plan: Mapping[str, Sequence[int]], round_to: int
) -> tuple[dict[int, set[int]], dict[str, list[int]]]:
    removed: dict[int, set[int]] = {}
    final: dict[str, list[int]] = {}
    ids = {g.id: g for g in analysis.groups}
    for gid, units in plan.items():
        g = ids.get(gid)
        if g is None:
            raise UsageError(
                f"plan names group {gid!r}, which the analysis does not have",
                hint="take ids from analyze(model).groups",
            )
        if g.frozen and not g.frozen_by_option:
            raise UsageError(f"group {gid!r} is frozen ({g.reason}) and cannot be pruned")
        rem = list(dict.fromkeys(int(u) for u in units))
        if any(not 0 <= u < g.n_units for u in rem):
            raise UsageError(f"group {gid!r}: unit indices must be in [0, {g.n_units})")
        rem = round_removal(g, rem, round_to)
        if len(rem) >= g.n_units:
            raise UsageError(f"group {gid!r}: cannot remove all {g.n_units} units")
        if rem:
            removed[g.root] = set(rem)
            final[gid] = sorted(rem)
    return removed, final


def prune_groups(
    model: ModelIR,
    plan: Mapping[str, Sequence[int]],
    *,
    round_to: int = 1,
    analysis: GroupAnalysis | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Physically remove the planned units of the planned groups, in place, in one go.

    Args:
        model: The model (edited in place).
        plan: group id -> unit indices to remove (in order of preference when `round_to`
            shortens the list).
        round_to: Kept widths are made multiples of this (fewer units removed if needed).
        analysis: `analyze(model)` result for this very model (computed if None, with every
            unit kind and hidden width allowed).
        validate: Run the checker and strict shape inference on the result (a PassManager that
            validates after each pass can turn this off).

    Returns:
        Stats: groups_pruned, units_removed, params_before, params_after, removed (per group).

    Raises:
        UsageError: unknown or frozen group, out-of-range units, all units of a group.
        ValidationError: the rewritten model fails the checker (a bug: please report it).
    """
    analysis, an = _state_for(model, analysis)
    removed, final = _resolve_plan(analysis, plan, round_to)
    params_before = model.count_params()
    if not removed:
        return {
            "groups_pruned": 0,
            "units_removed": 0,
            "params_before": params_before,
            "params_after": params_before,
            "removed": {},
        }
    sp = an.space
    pruned_roots = set(removed)

    def touched(t: Term | None) -> bool:
        return t is not None and bool(pruned_roots.intersection(sp.leaves(t)))

    new_sizes = {r: sp.atom_size(r) - len(u) for r, u in removed.items()}
    namer = Namer(model)

    # 1. constants, per use; in place when every use agrees, else private copies
    by_const: dict[int, list[tuple[gs.Node, int, tuple]]] = defaultdict(list)
    const_obj: dict[int, gs.Constant] = {}
    attr_consts: set[int] = (
        set()
    )  # values of Constant nodes: may be shared with clones, never edited
    for (ni, ii), axes in an.const_axes.items():
        node = an.nodes[ni]
        c = constant_value(node.inputs[ii])
        if c is None:
            continue
        keeps = tuple(
            (k, np.nonzero(sp.keep_mask(t, removed))[0]) for k, t in enumerate(axes) if touched(t)
        )
        by_const[id(c)].append((node, ii, keeps))
        const_obj[id(c)] = c
        if not isinstance(node.inputs[ii], gs.Constant):
            attr_consts.add(id(c))
    for cid, uses in by_const.items():
        c = const_obj[cid]
        if not any(k for _, _, k in uses):
            continue
        sigs = [tuple((k, idx.tobytes()) for k, idx in keeps) for _, _, keeps in uses]
        in_place = (
            len(set(sigs)) == 1
            and cid not in attr_consts
            and c.name not in an.subgraph_refs
            and _all_readers_known(c, uses)
        )
        if in_place:
            c.values = _take(np.asarray(c.values), uses[0][2])
            continue
        made: dict[tuple, gs.Constant] = {}
        for (node, ii, keeps), sig in zip(uses, sigs, strict=False):
            if not keeps:
                continue
            if sig not in made:
                made[sig] = gs.Constant(
                    namer((c.name or "const") + "_pruned"), _take(np.asarray(c.values), keeps)
                )
            node.inputs[ii] = made[sig]

    # 2. shape-carrying inputs and attributes
    for slot in an.slots:
        if not any(
            touched(t)
            for e in range(len(slot.req))
            for t in [*an.req_terms(slot.req[e]), slot.ref[e] if e < len(slot.ref) else None]
        ):
            continue
        _rewrite_slot(model, an, slot, new_sizes, namer)

    # 3. stale shapes, cleanup, validation
    io = {id(t) for t in model.graph.inputs} | {id(t) for t in model.graph.outputs}
    for t in model.graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    an.consumed = True  # type: ignore[attr-defined]
    model.cleanup()
    from spa_compiler.validation import check_model

    if validate:
        check_model(model, what="model after prune_groups", error=ValidationError)
    units_removed = sum(len(u) for u in removed.values())
    logger.info("prune_groups: %d groups, %d units removed", len(removed), units_removed)
    return {
        "groups_pruned": len(removed),
        "units_removed": units_removed,
        "params_before": params_before,
        "params_after": model.count_params(),
        "removed": final,
    }


def _all_readers_known(c: gs.Constant, uses: Sequence[tuple[gs.Node, int, tuple]]) -> bool:
    """Whether every reader of the constant is one of the analysed uses."""
    known = {(id(n), i) for n, i, _ in uses}
    readers = c.outputs if isinstance(c, gs.Constant) and c.outputs else []
    for n in readers:
        for i, t in enumerate(n.inputs):
            if t is c and (id(n), i) not in known:
                return False
    return True


def _take(values: npt.NDArray[Any], keeps: tuple) -> npt.NDArray[Any]:
    for k, idx in keeps:
        values = np.take(values, idx, axis=k)
    return np.ascontiguousarray(values)


def _rewrite_slot(
    model: ModelIR, an: _Analyzer, slot: _Slot, sizes: Mapping[int, int], namer: Namer
) -> None:
    node = an.nodes[slot.node]
    sp = an.space
    if slot.kind == "attr":
        req = slot.req[0]
        if req is not None:
            node.attrs[str(slot.where)] = an.req_value(req, sizes)
        return
    if slot.kind == "default_scale":  # pin 1/sqrt(original head size) before head sizes change
        req = slot.req[0]
        if req is not None and str(slot.where) not in node.attrs:
            node.attrs[str(slot.where)] = float(1.0 / np.sqrt(an.req_value(req, {})))
        return
    if slot.kind == "split":
        new = [an.req_value(r, sizes) for r in slot.req if r is not None]
        node.attrs.pop("num_outputs", None)
        if model.opset >= 13:
            const = gs.Constant(
                namer((node.name or "split") + "_sizes"), np.asarray(new, dtype=np.int64)
            )
            if len(node.inputs) > 1:
                node.inputs[1] = const
            else:
                node.inputs.append(const)
        else:
            node.attrs["split"] = new
        return
    t = an._slot_tensor(slot)
    if t is None:
        return
    old = an.ev0.value(t)
    edits: dict[int, int] = {}
    for e, req in enumerate(slot.req):
        if req is None:
            continue
        want = an.req_value(req, sizes)
        if e in slot.replace:
            edits[e] = want
            continue
        if old is None or slot.edit[e] != "const":
            continue
        v = int(np.asarray(old).reshape(-1)[e])
        ref = slot.ref[e] if e < len(slot.ref) else None
        n_new = sp.size_under(ref, sizes) if ref is not None else None
        n_old = sp.size(ref) if ref is not None else None
        if slot.kind == "reshape":
            if v == -1 or (v == 0 and not int(node.attrs.get("allowzero", 0)) and n_new == want):
                continue
        elif slot.kind == "expand":
            if v == 1 and n_new == want:
                continue
        elif slot.kind == "slice" and n_new is not None and n_old is not None:
            if v >= n_old and want == n_new:
                continue
            if v < 0:
                want = want - n_new if want < n_new else n_new
        if want != v:
            edits[e] = want
    if edits:
        node.inputs[int(slot.where)] = rebuild(
            model, t, edits, an.shapes, an.dtypes, namer, an.ev0.value
        )


def masked_dense(
    model: ModelIR, plan: Mapping[str, Sequence[int]], *, analysis: GroupAnalysis | None = None
) -> ModelIR:
    """A copy of `model` in which whatever reads the planned units is zeroed (the oracle).

    Constant consumer weights get their columns of the removed units set to zero (a shared
    constant is copied first); run-time consumers (q in q·kᵀ) get a 0/1 mask multiplied in.
    Pruning exactly `plan` must then give the same outputs up to float rounding.
    """
    analysis, an = _state_for(model, analysis)
    ids = {g.id: g for g in analysis.groups}
    copy = model.clone()
    nodes = list(copy.graph.nodes)
    namer = Namer(copy)
    for gid, units in plan.items():
        g = ids[gid]
        rem = [int(u) for u in units]
        if not rem:
            continue
        for m in g.consumers:
            node = nodes[m.node_index]
            idx = np.nonzero(np.isin(m.coords, rem))[0]
            t = node.inputs[m.input_index]
            if m.role == "input":
                c = constant_value(t)
                if c is None:
                    continue
                vals = np.array(c.values, copy=True)
                sl = [slice(None)] * vals.ndim
                sl[m.axis] = idx  # type: ignore[call-overload]
                vals[tuple(sl)] = 0
                readers = sum(1 for n in t.outputs for x in n.inputs if x is t)
                if readers <= 1 and isinstance(t, gs.Constant):
                    c.values = vals
                else:
                    node.inputs[m.input_index] = gs.Constant(
                        namer((c.name or "w") + "_masked"), vals
                    )
            else:
                orig = an.nodes[m.node_index].inputs[m.input_index].name  # t may be masked already
                rank = len(an.shapes.get(orig, ()))
                n_axis = m.coords.size
                shape = [1] * rank
                shape[m.axis] = n_axis
                mask = np.ones(n_axis, dtype=an.dtypes.get(orig, np.dtype(np.float32)))
                mask[idx] = 0
                out = gs.Variable(namer(t.name + "_masked"), dtype=t.dtype)
                mul = gs.Node(
                    "Mul",
                    namer((node.name or "n") + "_mask"),
                    inputs=[t, gs.Constant(namer(t.name + "_mask"), mask.reshape(shape))],
                    outputs=[out],
                )
                copy.graph.nodes.append(mul)
                node.inputs[m.input_index] = out
    copy.cleanup()
    return copy


def random_plan(
    analysis: GroupAnalysis,
    rng: np.random.Generator,
    *,
    share: float = 0.25,
    groups: Iterable[ChannelGroup] | None = None,
) -> dict[str, list[int]]:
    """A random removal of `share` of the units (at least one) of every prunable group."""
    plan: dict[str, list[int]] = {}
    for g in analysis.prunable if groups is None else groups:
        k = min(g.n_units - 1, max(1, int(round(share * g.n_units))))
        if k > 0:
            plan[g.id] = sorted(int(u) for u in rng.choice(g.n_units, size=k, replace=False))
    return plan
