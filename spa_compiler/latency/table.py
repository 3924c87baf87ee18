"""Latency tables: the latency of every variant of every site, measured (or estimated) on a target.

A site is what a compression method changes (`spa_compiler.methods`): a coupled-channel group for
pruning, one weight for N:M or Monarch. Pruning variants are kept-unit counts (numeric: lookups
interpolate between measured levels); other methods' variants are named ("2:4", "b4r1") and looked
up exactly. Every entry records its method.

A table belongs to one model (by a structural fingerprint: graph, shapes and dtypes, not weight
values), one device, one runtime and precision, and one set of input shapes. It holds, for each
prunable group, the latency contribution of the group at several levels (kept units), the latency of
the non-prunable remainder (`base_ms`), and the dense model's whole latency (`dense_ms`). The
additive model is  latency(choice) ~= base_ms + sum_g latency_g(kept_g);  `additivity_gap_ms` says
how far the dense model's measured latency is from that sum.

JSON layout (schema "spa-latency-table/2"; "/1" tables, which have "groups" instead of "sites"
and no "method", are read as pruning tables):

    {
      "schema": "spa-latency-table/2",
      "kind": "measured",                      # or "analytic"
      "provenance": {
        "device": "NVIDIA H200", "runtime": "onnxruntime", "runtime_version": "1.31.1",
        "provider": "CUDAExecutionProvider", "threads": null, "precision": "fp16",
        "input_shapes": {"input_ids": [8, 512]}, "date": "2025-01-31T12:00:00+00:00",
        "tool_version": "0.1.0", "model_fingerprint": "3f1c...", "model_name": "smollm2.onnx",
        "notes": ""
      },
      "dense_ms": 10.8,
      "base_ms": 3.2,
      "sites": {
        "ffn.0": {"method": "pruning", "n_units": 1536, "unit_size": 1,
                  "levels": [{"kept_units": 768, "kept_width": 768, "latency_ms": 0.61}, ...]},
        "mlp.0.down": {"method": "nm", "variants": {"dense": 0.20, "2:4": 0.15}}
      }
    }

Levels are sorted by kept units (strictly increasing) and must include the dense level
(kept_units == n_units). Lookups between levels interpolate linearly; outside the measured range
they raise, because extrapolating a measured latency curve is guesswork.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from spa_compiler.errors import UsageError

SCHEMA = "spa-latency-table/2"
SCHEMAS = ("spa-latency-table/1", SCHEMA)
Kind = Literal["measured", "analytic"]
KINDS: tuple[str, ...] = ("measured", "analytic")


@dataclasses.dataclass(frozen=True)
class LevelLatency:
    """One measured level of a group: `kept_units` units (of `unit_size` channels) kept."""

    kept_units: int
    kept_width: int
    latency_ms: float


@dataclasses.dataclass(frozen=True)
class GroupLatency:
    """Latency contributions of one group at its measured levels (sorted by kept units)."""

    n_units: int
    unit_size: int
    levels: tuple[LevelLatency, ...]
    method: str = "pruning"

    @property
    def dense_ms(self) -> float:
        """The group's contribution when nothing is pruned."""
        return self.levels[-1].latency_ms

    def variant_ms(self, key: Hashable) -> float:
        """Contribution of a variant (kept units)."""
        if isinstance(key, bool) or not isinstance(key, (int, float, np.integer, np.floating)):
            raise ValueError(f"pruning variants are kept-unit counts, not {key!r}")
        return self.latency(float(key))

    def latency(self, kept_units: float) -> float:
        """Contribution at `kept_units`, linear between measured levels; ValueError outside them."""
        lo, hi = self.levels[0].kept_units, self.levels[-1].kept_units
        if not lo <= kept_units <= hi:
            raise ValueError(f"kept units {kept_units:g} outside the measured range {lo}..{hi}")
        xs = [lv.kept_units for lv in self.levels]
        ys = [lv.latency_ms for lv in self.levels]
        return float(np.interp(kept_units, xs, ys))


@dataclasses.dataclass(frozen=True)
class SiteLatency:
    """Latency contributions of one site of a method with named variants ("dense" included)."""

    method: str
    variants: Mapping[str, float]

    @property
    def dense_ms(self) -> float:
        return float(self.variants["dense"])

    def variant_ms(self, key: Hashable) -> float:
        """Contribution of a named variant; ValueError for one not measured."""
        try:
            return float(self.variants[str(key)])
        except KeyError:
            raise ValueError(f"variant {key!r} was not measured (measured: {sorted(self.variants)})") from None


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where and how the table's numbers were obtained."""

    device: str
    runtime: str
    runtime_version: str
    precision: str
    input_shapes: Mapping[str, tuple[int, ...]]
    model_fingerprint: str
    tool_version: str
    date: str = dataclasses.field(default_factory=lambda: Provenance.now())
    provider: str | None = None
    threads: int | None = None
    model_name: str = ""
    notes: str = ""

    @staticmethod
    def now() -> str:
        """The current UTC time in ISO 8601, to the second."""
        return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """A validated latency table. Build with the constructor, `from_dict` or `load`."""

    kind: Kind
    provenance: Provenance
    dense_ms: float
    base_ms: float
    groups: Mapping[str, GroupLatency | SiteLatency]

    def __post_init__(self) -> None:
        _validate_dict(self.to_dict(), source="latency table")

    # -- lookups ---------------------------------------------------------------------------------

    @property
    def sites(self) -> Mapping[str, GroupLatency | SiteLatency]:
        """Every site's entry (`groups` is the same mapping; pruning sites are groups)."""
        return self.groups

    def methods(self) -> set[str]:
        """The methods the table has entries for."""
        return {g.method for g in self.groups.values()}

    def group(self, group_id: Hashable) -> GroupLatency | SiteLatency:
        """The group's entry; UsageError naming the known groups otherwise."""
        key = str(group_id)
        try:
            return self.groups[key]
        except KeyError:
            known = sorted(self.groups)
            shown = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "")
            raise UsageError(
                f"the latency table has no group {key!r} (it has {len(known)}: {shown})",
                hint="re-profile the latency table for this model and pipeline",
            ) from None

    def lookup(self, group_id: Hashable, variant: Hashable) -> float:
        """Latency contribution of a site's variant (pruning: kept units, interpolated between
        measured levels; other methods: the named variant)."""
        g = self.group(group_id)
        try:
            return g.variant_ms(variant)
        except ValueError as e:
            raise UsageError(
                f"latency table, group {str(group_id)!r}: {e}",
                hint="profile more levels of this group, or search only the measured range",
            ) from None

    def predict_ms(self, kept: Mapping[Hashable, float]) -> float:
        """Additive prediction: base + each group's contribution (groups not named stay dense)."""
        unknown = sorted(str(k) for k in kept if str(k) not in self.groups)
        if unknown:
            raise UsageError(f"the latency table has no groups {unknown}")
        total = self.base_ms
        for gid, g in self.groups.items():
            total += self.lookup(gid, kept[gid]) if gid in kept else g.dense_ms
        return total

    @property
    def additive_dense_ms(self) -> float:
        """base + sum of dense contributions: the additive prediction for the dense model."""
        return self.base_ms + math.fsum(g.dense_ms for g in self.groups.values())

    @property
    def additivity_gap_ms(self) -> float:
        """Measured dense latency minus the additive model's dense prediction."""
        return self.dense_ms - self.additive_dense_ms

    # -- checks against the model being compiled ---------------------------------------------------

    def check_compatible(
        self,
        *,
        model_fingerprint: str | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        precision: str | None = None,
        groups: Mapping[Hashable, int] | None = None,
        source: str = "the latency table",
        subset: bool = False,
    ) -> None:
        """UsageError if the table was made for another model, shapes, precision or grouping.

        Args:
            model_fingerprint: `structure_fingerprint()` of the model being compiled.
            input_shapes: The shapes being compiled for.
            precision: e.g. "fp32" / "fp16".
            groups: group id -> n_units of the model's channel groups; every table group must exist
                with the same number of units (model groups missing from the table stay dense).
            source: How to name the table in messages (its path).
            subset: `groups` is a selection (e.g. only FFN neurons): table groups outside it are not
                an error (they stay dense); the ones inside must match.
        """
        p = self.provenance
        hint = "re-profile the latency table for this model (spa-compile profile)"
        if model_fingerprint is not None and p.model_fingerprint != model_fingerprint:
            raise UsageError(
                f"{source} was made for another model (fingerprint {p.model_fingerprint[:12]}, "
                f"{p.model_name or 'unnamed'}; this model is {model_fingerprint[:12]})",
                hint=hint,
            )
        if input_shapes is not None:
            want = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
            have = {k: tuple(v) for k, v in p.input_shapes.items()}
            if want != have:
                raise UsageError(
                    f"{source} was measured for input shapes {have}, not {want}", hint=hint
                )
        if precision is not None and p.precision != precision:
            raise UsageError(f"{source} is for precision {p.precision}, not {precision}", hint=hint)
        if groups is not None:
            model_units = {str(k): int(v) for k, v in groups.items()}
            missing = sorted(k for k, g in self.groups.items()
                             if isinstance(g, GroupLatency) and k not in model_units)
            if missing and not subset:
                raise UsageError(f"{source} has groups the model lacks: {missing[:8]}", hint=hint)
            bad = sorted(
                f"{k}: table {g.n_units}, model {model_units[k]}"
                for k, g in self.groups.items()
                if isinstance(g, GroupLatency) and k in model_units and g.n_units != model_units[k]
            )
            if bad:
                raise UsageError(
                    f"{source} and the model disagree on group sizes ({'; '.join(bad[:4])})",
                    hint=hint,
                )

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the schema in the module docstring)."""
        p = dataclasses.asdict(self.provenance)
        p["input_shapes"] = {
            k: [int(d) for d in v] for k, v in self.provenance.input_shapes.items()
        }
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "provenance": p,
            "dense_ms": self.dense_ms,
            "base_ms": self.base_ms,
            "sites": {gid: _entry_dict(g) for gid, g in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "latency table") -> LatencyTable:
        """Validate and build; UsageError naming the first offending field otherwise."""
        _validate_dict(data, source=source)
        p = dict(data["provenance"])
        p["input_shapes"] = {k: tuple(v) for k, v in p["input_shapes"].items()}
        groups: dict[str, GroupLatency | SiteLatency] = {}
        for gid, g in _entries(data).items():
            if g.get("method", "pruning") == "pruning":
                groups[gid] = GroupLatency(
                    n_units=g["n_units"],
                    unit_size=g["unit_size"],
                    levels=tuple(
                        LevelLatency(lv["kept_units"], lv["kept_width"], float(lv["latency_ms"]))
                        for lv in g["levels"]
                    ),
                )
            else:
                groups[gid] = SiteLatency(g["method"], {str(k): float(v) for k, v in g["variants"].items()})
        known = {f.name for f in dataclasses.fields(Provenance)}
        return cls(
            kind=data["kind"],
            provenance=Provenance(**{k: v for k, v in p.items() if k in known}),
            dense_ms=float(data["dense_ms"]),
            base_ms=float(data["base_ms"]),
            groups=groups,
        )

    def to_json(self) -> str:
        """The JSON text: indented, one line per level (large tables stay readable)."""
        data = self.to_dict()
        groups = data.pop("sites")
        head = json.dumps(data, indent=1)[:-2]  # drop the closing "\n}"
        parts = []
        for gid, g in groups.items():
            if "levels" not in g:
                parts.append(f"  {json.dumps(gid)}: {json.dumps(g)}")
                continue
            levels = ",\n".join("    " + json.dumps(lv) for lv in g["levels"])
            parts.append(
                f'  {json.dumps(gid)}: {{"method": {json.dumps(g["method"])}, "n_units": {g["n_units"]}, '
                f'"unit_size": {g["unit_size"]}, "levels": [\n{levels}\n  ]}}'
            )
        body = ",\n".join(parts)
        return head + ',\n "sites": {' + ("\n" + body + "\n " if parts else "") + "}\n}\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file and rename)."""
        from spa_compiler.report import write_text_atomic

        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read and validate a table file; UsageError with the path and the problem otherwise."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read latency table {path}: {e.strerror or e}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"latency table {path} is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from e
        return cls.from_dict(data, source=f"latency table {path}")


# -- validation ----------------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_dict(data: Any, *, source: str) -> None:
    """Raise UsageError for the first problem found in a table's dict form."""

    def bad(where: str, what: str) -> UsageError:
        return UsageError(
            f"{source}: {where} {what}", hint="re-create the table with spa-compile profile"
        )

    if not isinstance(data, dict):
        raise bad("top level", f"must be a JSON object, got {type(data).__name__}")
    if data.get("schema") not in SCHEMAS:
        raise bad("'schema'", f"must be one of {list(SCHEMAS)}, got {data.get('schema')!r}")
    if data.get("kind") not in KINDS:
        raise bad("'kind'", f"must be one of {list(KINDS)}, got {data.get('kind')!r}")
    p = data.get("provenance")
    if not isinstance(p, dict):
        raise bad("'provenance'", "must be an object")
    for key in (
        "device",
        "runtime",
        "runtime_version",
        "precision",
        "model_fingerprint",
        "tool_version",
        "date",
    ):
        if not isinstance(p.get(key), str) or not p[key]:
            raise bad(f"provenance.{key}", f"must be a non-empty string, got {p.get(key)!r}")
    for key in ("provider", "model_name", "notes"):
        if p.get(key) is not None and not isinstance(p[key], str):
            raise bad(f"provenance.{key}", f"must be a string, got {p[key]!r}")
    if p.get("threads") is not None and not (_is_int(p["threads"]) and p["threads"] > 0):
        raise bad("provenance.threads", f"must be a positive integer or null, got {p['threads']!r}")
    shapes = p.get("input_shapes")
    if not isinstance(shapes, dict):
        raise bad("provenance.input_shapes", "must be an object {input name: [dims]}")
    for name, dims in shapes.items():
        if not isinstance(dims, (list, tuple)) or not all(_is_int(d) and d > 0 for d in dims):
            raise bad(
                f"provenance.input_shapes[{name!r}]",
                f"must be a list of positive integers, got {dims!r}",
            )
    for key in ("dense_ms", "base_ms"):
        if not (_is_num(data.get(key)) and data[key] >= 0):
            raise bad(f"'{key}'", f"must be a non-negative number, got {data.get(key)!r}")
    key = "groups" if data["schema"] == SCHEMAS[0] else "sites"
    groups = data.get(key)
    if not isinstance(groups, dict):
        raise bad(f"'{key}'", "must be an object {site id: {...}}")
    for gid, g in groups.items():
        where = f"{key}[{gid!r}]"
        if not isinstance(g, dict):
            raise bad(where, "must be an object")
        method = g.get("method", "pruning")
        if not isinstance(method, str) or not method:
            raise bad(f"{where}.method", f"must be a non-empty string, got {method!r}")
        if method != "pruning":
            variants = g.get("variants")
            if not isinstance(variants, dict) or "dense" not in variants:
                raise bad(f"{where}.variants", "must be an object {variant: latency_ms} with a 'dense' entry")
            for vk, vt in variants.items():
                if not (_is_num(vt) and vt >= 0):
                    raise bad(f"{where}.variants[{vk!r}]", f"must be a non-negative number, got {vt!r}")
            continue
        n: Any = g.get("n_units")
        unit: Any = g.get("unit_size")
        if not (_is_int(n) and n > 0):
            raise bad(f"{where}.n_units", f"must be a positive integer, got {n!r}")
        if not (_is_int(unit) and unit > 0):
            raise bad(f"{where}.unit_size", f"must be a positive integer, got {unit!r}")
        levels = g.get("levels")
        if not isinstance(levels, list) or not levels:
            raise bad(f"{where}.levels", "must be a non-empty list")
        prev = -1
        for i, lv in enumerate(levels):
            at = f"{where}.levels[{i}]"
            if not isinstance(lv, dict):
                raise bad(at, "must be an object {kept_units, kept_width, latency_ms}")
            k: Any = lv.get("kept_units")
            w: Any = lv.get("kept_width")
            t: Any = lv.get("latency_ms")
            if not (_is_int(k) and 0 <= k <= n):
                raise bad(f"{at}.kept_units", f"must be an integer in 0..{n}, got {k!r}")
            if k <= prev:
                raise bad(f"{at}.kept_units", f"must increase strictly (after {prev}), got {k}")
            prev = k
            if not (_is_int(w) and w >= 0):
                raise bad(f"{at}.kept_width", f"must be a non-negative integer, got {w!r}")
            if not (_is_num(t) and t >= 0):
                raise bad(f"{at}.latency_ms", f"must be a non-negative number, got {t!r}")
        if prev != n:
            raise bad(
                f"{where}.levels", f"must end with the dense level (kept_units {n}), ends at {prev}"
            )


def _entries(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The site entries of a table dict of either schema."""
    return data["groups"] if data.get("schema") == SCHEMAS[0] else data["sites"]


def _entry_dict(g: GroupLatency | SiteLatency) -> dict[str, Any]:
    if isinstance(g, SiteLatency):
        return {"method": g.method, "variants": dict(g.variants)}
    return {
        "method": g.method,
        "n_units": g.n_units,
        "unit_size": g.unit_size,
        "levels": [dataclasses.asdict(lv) for lv in g.levels],
    }


# -- model fingerprint -----------------------------------------------------------------------------


def structure_fingerprint(model: onnx.ModelProto | str | os.PathLike[str] | Any) -> str:
    """SHA-256 of a model's structure: nodes, attributes, graph I/O and initializer shapes and
    dtypes.

    Weight values are left out, so a table profiled on a random-weight copy of an architecture
    matches the trained model. Accepts a ModelProto, a ModelIR or a path (external data not loaded).
    """
    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model), load_external_data=False)
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = model.to_proto(weights=False)  # a ModelIR: float weights are left out anyway
    h = hashlib.sha256()
    for imp in sorted((o.domain, o.version) for o in proto.opset_import):
        h.update(repr(imp).encode())
    _hash_graph(h, proto.graph)
    return h.hexdigest()


def _value_info_key(vi: onnx.ValueInfoProto) -> tuple[Any, ...]:
    t = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
    return (vi.name, t.elem_type, dims if t.HasField("shape") else None)


_INT_TYPES = {
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
}


def _small_int_values(t: onnx.TensorProto) -> tuple[int, ...] | None:
    """Values of small integer tensors (shapes, axes: they are structure); None for weights."""
    if t.data_type not in _INT_TYPES or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if int(np.prod(t.dims)) > 64:
        return None
    return tuple(int(v) for v in numpy_helper.to_array(t).ravel())


def _hash_graph(h: Any, g: onnx.GraphProto) -> None:
    """Hash a graph's structure independently of node order (a toposort does not change it)."""
    h.update(repr([_value_info_key(v) for v in g.input]).encode())
    h.update(repr([_value_info_key(v) for v in g.output]).encode())
    h.update(
        repr(
            sorted(
                (t.name, t.data_type, tuple(t.dims), _small_int_values(t)) for t in g.initializer
            )
        ).encode()
    )
    node_digests = []
    for n in g.node:
        hn = hashlib.sha256()
        hn.update(repr((n.op_type, n.domain, tuple(n.input), tuple(n.output))).encode())
        for a in sorted(n.attribute, key=lambda a: a.name):
            if a.type == onnx.AttributeProto.GRAPH:
                hn.update(a.name.encode())
                _hash_graph(hn, a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _hash_graph(hn, sub)
            elif a.type == onnx.AttributeProto.TENSOR:
                hn.update(
                    repr((a.name, a.t.data_type, tuple(a.t.dims), _small_int_values(a.t))).encode()
                )
            else:
                hn.update(repr((a.name, onnx.helper.get_attribute_value(a))).encode())
        node_digests.append(hn.hexdigest())
    for d in sorted(node_digests):
        h.update(d.encode())
