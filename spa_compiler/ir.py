"""ModelIR: the in-memory model every pass edits.

It wraps an `onnx_graphsurgeon.Graph` (graph surgery with numpy-backed constants) and keeps the
model-level fields graphsurgeon does not carry (IR version, metadata, model-local functions).

Invariants kept here:
    * the input file is never modified: `load` only reads;
    * constant values are never edited in place: a pass that changes a weight assigns a new array
      (``const.values = new``). `clone` relies on it: clones share the arrays they do not change
      (copy-on-write), and shared arrays are read-only, so an in-place edit fails loudly;
    * one copy of the weights: `from_proto` keeps no reference into the ModelProto it imports, and
      the exports that do not need weight values (`to_proto(weights=False)`, ONNX Runtime sessions
      through `to_proto_split`) leave the large float tensors out instead of copying them;
    * `save` is atomic: the model (and its external-data file) are written into a temporary folder
      beside the destination and moved into place only once complete; on any failure nothing is left;
    * the IR version written is chosen for the target runtime (`ir_version=` on `to_proto`/`save`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from spa_compiler.errors import InvalidModelError, OutputError, UnsupportedModelError, UsageError
from spa_compiler.protos import (  # noqa: F401  (re-exported: the names ir.py has always offered)
    EXTERNAL_DATA_MIN_TENSOR,
    EXTERNAL_DATA_THRESHOLD,
    STRIPPED_LOCATION,
    proto_bytes,
    stripped_large_tensors,
)

logger = logging.getLogger(__name__)

# graphsurgeon logs its warnings to stdout (e.g. for every bfloat16 constant), which would corrupt
# `inspect --json` and other machine-read output; what matters to the user we say ourselves
gs.logger.G_LOGGER.severity = max(gs.logger.G_LOGGER.severity, gs.logger.G_LOGGER.ERROR)

#: Opsets of the default domain that the passes and channel rules are written and tested for.
MIN_OPSET = 11
MAX_OPSET = onnx.defs.onnx_opset_version()

def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, in hex (for reports and the never-modified check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelIR:
    """A model being compiled: a graphsurgeon graph plus model-level metadata.

    Attributes:
        graph: The graphsurgeon graph. Passes edit it in place.
        ir_version: IR version of the loaded model (the saved one is chosen per target).
        source: Path the model was loaded from, if any.
        version: Bumped by the PassManager after every modifying pass; analyses cache on it.
    """

    def __init__(
        self,
        graph: gs.Graph,
        *,
        ir_version: int = 10,
        metadata: Mapping[str, str] | None = None,
        source: Path | None = None,
    ) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.metadata = dict(metadata or {})
        self.source = source
        self.version = 0
        #: Initializers that the model also lists as graph inputs (a default value the caller may
        #: override): kept as graph inputs, i.e. non-constant and frozen, written back on export.
        self.input_defaults: dict[str, onnx.TensorProto] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_proto(cls, model: onnx.ModelProto, *, source: Path | None = None) -> ModelIR:
        """Wrap a ModelProto (whose external data, if any, is already loaded)."""
        _check_opsets(model)
        try:
            graph = gs.import_onnx(model)
        except Exception as e:  # graphsurgeon raises plain exceptions on malformed graphs
            raise InvalidModelError(f"cannot import the graph: {e}") from e
        defaults = _initializer_inputs(model)
        _keep_as_inputs(graph, model, defaults)
        _detach(graph)
        meta = {p.key: p.value for p in model.metadata_props}
        ir = cls(graph, ir_version=model.ir_version, metadata=meta, source=source)
        ir.input_defaults = defaults
        return ir

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check: bool = True) -> ModelIR:
        """Load an ONNX file (with its external data), validating it unless `check` is False.

        Raises:
            InvalidModelError: not a file, not ONNX, truncated, missing external data, invalid.
            UnsupportedModelError: an opset outside [MIN_OPSET, MAX_OPSET].
        """
        proto = load_proto(path)
        if check:
            from spa_compiler.validation import check_model

            check_model(proto, base_dir=Path(path).parent, what=f"input model {path}")
        return cls.from_proto(proto, source=Path(path))

    # ------------------------------------------------------------------ export
    def to_proto(self, *, ir_version: int | None = None, weights: bool = True) -> onnx.ModelProto:
        """Export to a ModelProto. `ir_version` defaults to the loaded model's (capped by onnx's).

        `weights=False` gives the structure only: float initializers of at least
        `EXTERNAL_DATA_MIN_TENSOR` bytes keep their name, dtype and dims but point to external data
        at `STRIPPED_LOCATION` (enough for shape inference, statistics and fingerprints, without a
        copy of the weights). With weights, the tensors are the ones graphsurgeon writes, filled
        one at a time so that only one copy of the weights is built.
        """
        proto, left = self._export(ir_version)
        if weights:
            for t in proto.graph.initializer:
                const = left.get(t.name)
                if const is not None:
                    _fill(t, const)
        return proto

    def to_proto_split(
        self, *, ir_version: int | None = None
    ) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[np.generic]]]:
        """The weightless export (`to_proto(weights=False)`) and the arrays it left out, by
        initializer name: the model's own arrays, shared, not copied (e.g. for ONNX Runtime's
        external initializers, `spa_compiler.ort.make_session`)."""
        proto, left = self._export(ir_version)
        return proto, {name: np.asarray(c.values) for name, c in left.items()}

    def _export(self, ir_version: int | None) -> tuple[onnx.ModelProto, dict[str, gs.Constant]]:
        ir = min(ir_version or self.ir_version, onnx.IR_VERSION)
        inner = _subgraph_tensor_names(self.graph)
        left: dict[str, gs.Constant] = {}
        swapped: list[tuple[gs.Constant, Any]] = []
        offset = 0
        try:
            for name, t in self.graph.tensors().items():
                if not isinstance(t, gs.Constant) or name in inner or name in left:
                    continue
                arr = _left_out(t)
                if arr is None:
                    continue
                swapped.append((t, t._values))
                t._values = LazyValues(_placeholder(name, arr, offset))
                left[name] = t
                offset += arr.nbytes
            model = gs.export_onnx(self.graph, do_type_check=False)
        finally:
            for t, values in swapped:
                t._values = values
        model.ir_version = ir
        if self.input_defaults:  # overridable weights: graph inputs with an initializer each
            listed = {vi.name for vi in model.graph.input}
            have = {t.name for t in model.graph.initializer}
            for name, tensor in self.input_defaults.items():
                if name in listed and name not in have:
                    model.graph.initializer.append(tensor)
        del model.metadata_props[:]
        for k, v in self.metadata.items():
            model.metadata_props.add(key=k, value=v)
        return model, left

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        ir_version: int | None = None,
        external_data: bool | None = None,
    ) -> Path:
        """Write the model atomically. Returns the path written.

        Args:
            path: Destination `.onnx` file.
            ir_version: IR version to write (see `spa_compiler.targets`).
            external_data: Write tensors to `<name>.data` beside the model; default: only when the
                tensor data exceeds what one protobuf can hold.
        """
        return save_proto(self.to_proto(ir_version=ir_version), path, external_data=external_data)

    def clone(self) -> ModelIR:
        """A copy of the graph and metadata that shares the constant arrays (copy-on-write).

        Passes never edit a constant's array in place; they assign a new one to the clone's
        constant, which leaves this model's untouched. Cloning costs the graph, not the weights.
        Every shared array becomes read-only (in both models), so an in-place edit raises instead
        of leaking into the other model.
        """
        _freeze_constants(self.graph)
        other = ModelIR(
            self.graph.copy(),
            ir_version=self.ir_version,
            metadata=self.metadata,
            source=self.source,
        )
        other.input_defaults = dict(self.input_defaults)
        # graph.copy() shares the Constant objects of node attributes: give the clone its own
        for node in other.graph.nodes:  # (Constant nodes hold their value in an attribute)
            for key, value in list(node.attrs.items()):
                if isinstance(value, gs.Constant):
                    node.attrs[key] = gs.Constant(value.name, value.values)
        other.version = self.version
        return other

    # ------------------------------------------------------------------ queries
    @property
    def opset(self) -> int:
        """Opset of the default ONNX domain."""
        return int(self.graph.opset)

    def nodes(self, op_types: Iterable[str] | None = None) -> list[gs.Node]:
        """Nodes in graph order, optionally only those of the given op types."""
        if op_types is None:
            return list(self.graph.nodes)
        wanted = set(op_types)
        return [n for n in self.graph.nodes if n.op in wanted]

    def tensors(self) -> dict[str, gs.Tensor]:
        """All tensors by name."""
        return self.graph.tensors()

    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        """The node that writes `tensor`, or None for inputs and constants."""
        return tensor.inputs[0] if tensor.inputs else None

    @staticmethod
    def consumers(tensor: gs.Tensor) -> list[gs.Node]:
        """The nodes that read `tensor`."""
        return list(tensor.outputs)

    def constant_input(self, node: gs.Node, index: int) -> gs.Constant | None:
        """The node's `index`-th input if it is a constant (initializer, or a Constant node)."""
        if index >= len(node.inputs):
            return None
        return constant_value(node.inputs[index])

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        """Whether `tensor` is one of the graph outputs."""
        return any(t is tensor for t in self.graph.outputs)

    def count_params(self) -> int:
        """Number of elements in float constants: initializers and Constant nodes (some exporters,
        Paddle2ONNX among them, write every weight as a Constant node)."""
        total = 0
        for t in self.graph.tensors().values():
            if isinstance(t, gs.Constant) and is_float_dtype(t.dtype):
                total += int(np.prod(t.shape))
        for node in self.graph.nodes:
            value = node.attrs.get("value") if node.op == "Constant" else None
            if isinstance(value, gs.Constant) and is_float_dtype(value.dtype):
                total += int(np.prod(value.shape))
        return total

    def input_shapes(self) -> dict[str, tuple[int | str | None, ...]]:
        """Declared shape of every graph input (symbolic dims as strings, unknown as None)."""
        return {t.name: tuple(t.shape or ()) for t in self.graph.inputs}

    # ------------------------------------------------------------------ edits
    def cleanup(self) -> None:
        """Remove dead nodes and tensors, then sort topologically (the graphsurgeon idiom)."""
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()

    def set_input_shapes(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Fix the shapes of graph inputs (the `--input-shape` hints), then re-infer shapes.

        Raises:
            UsageError: a name that is not a graph input, or a rank that does not match.
        """
        inputs = {t.name: t for t in self.graph.inputs}
        for name, shape in shapes.items():
            if name not in inputs:
                raise UsageError(
                    f"--input-shape names {name!r}, which is not a model input",
                    hint=f"use one of {sorted(inputs)}",
                )
            old = inputs[name].shape
            if old is not None and len(old) != len(shape):
                raise UsageError(
                    f"--input-shape {name}: rank {len(shape)} given, the model's input has rank {len(old)}",
                    hint=f"give {len(old)} dimensions, e.g. {name}:{'x'.join('1' for _ in old)}",
                )
            if old is not None:
                for i, (o, n) in enumerate(zip(old, shape)):
                    if isinstance(o, int) and o > 0 and o != n:
                        raise UsageError(
                            f"--input-shape {name}: dimension {i} is fixed to {o} in the model, not {n}",
                            hint="only symbolic dimensions can be set",
                        )
            inputs[name].shape = [int(d) for d in shape]
        self.infer_shapes()

    def symbolic_inputs(self) -> dict[str, tuple[int | str | None, ...]]:
        """Graph inputs with at least one dimension that is not fixed (an int >= 0; 0 is a fixed
        empty dimension, -1 as some exporters write it is symbolic)."""
        out = {}
        for t in self.graph.inputs:
            shape = t.shape
            if shape is None or any(not (isinstance(d, int) and d >= 0) for d in shape):
                out[t.name] = tuple(shape or ())
        return out

    def infer_shapes(self) -> None:
        """Run ONNX shape inference and re-import, so every tensor carries its inferred shape.

        Works for models over 2 GB: large tensors are stripped (dims kept) before inference.
        Node and tensor identities are NOT kept: call this before holding references. Constant
        arrays are: the re-imported graph holds the same arrays (no copy of the weights).
        """
        proto, left = self._export(None)
        with stripped_large_tensors(proto) as stripped:
            del stripped.graph.value_info[:]
            inferred = onnx.shape_inference.infer_shapes(stripped, data_prop=True)
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(inferred.graph.value_info)
        graph = gs.import_onnx(proto)
        _keep_as_inputs(graph, proto, self.input_defaults)
        tensors = graph.tensors()
        for name, old in left.items():
            new = tensors[name]
            assert isinstance(new, gs.Constant)
            new.values = old._values
            new.data_location = old.data_location
            new._export_dtype = old._export_dtype
        _detach(graph)
        self.graph = graph

    def fingerprint(self) -> str:
        """Hash of the serialized graph, for the never-modified and equality checks in tests."""
        from spa_compiler.protos import digest

        return digest(self.to_proto())


def is_float_dtype(dtype: Any) -> bool:
    """Whether a graphsurgeon dtype is floating point: a numpy float dtype, or an ONNX
    TensorProto code for a type numpy lacks (bfloat16, float8, float4), as graphsurgeon gives them."""
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return dtype in _ONNX_FLOAT_CODES
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))
    except TypeError:
        return False


_ONNX_FLOAT_CODES = frozenset(
    getattr(onnx.TensorProto, n)
    for n in ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
              "FLOAT8E5M2FNUZ", "FLOAT4E2M1", "FLOAT8E8M0")
    if hasattr(onnx.TensorProto, n)
)


def _initializer_inputs(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers that are also graph inputs (older exporters list every weight as an input)."""
    listed = {vi.name for vi in model.graph.input}
    out = {}
    for t in model.graph.initializer:
        if t.name in listed:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(t)
            out[t.name] = copy_
    return out


def _keep_as_inputs(graph: gs.Graph, model: onnx.ModelProto, defaults: Mapping[str, onnx.TensorProto]) -> None:
    """graphsurgeon imports an initializer that is also a graph input as a Constant and drops the
    input: make it a graph input Variable again, in its place in the input order."""
    if not defaults:
        return
    tensors = graph.tensors()
    made: dict[str, gs.Variable] = {}
    for name, proto in defaults.items():
        t = tensors.get(name)
        if isinstance(t, gs.Variable):
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(proto.data_type) if proto.data_type != onnx.TensorProto.BFLOAT16 else proto.data_type
        v = gs.Variable(name, dtype=dtype, shape=[int(d) for d in proto.dims])
        if t is not None:
            for node in list(t.outputs):
                for i, x in enumerate(list(node.inputs)):
                    if x is t:
                        node.inputs[i] = v
            graph.outputs = [v if x is t else x for x in graph.outputs]
        made[name] = v
    if not made:
        return
    current = {t.name: t for t in graph.inputs}
    order = [vi.name for vi in model.graph.input]
    graph.inputs[:] = [current.get(n) or made[n] for n in order if n in current or n in made] + [
        t for t in graph.inputs if t.name not in order
    ]


# ---------------------------------------------------------------------- constant storage
def _left_out(c: gs.Constant) -> npt.NDArray[np.generic] | None:
    """The array a weightless export leaves out of `c`: loaded floating-point values of at least
    `EXTERNAL_DATA_MIN_TENSOR` bytes, exported in their own dtype; else None."""
    arr = c._values
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or not arr.dtype.isnative:
        return None
    if arr.nbytes < EXTERNAL_DATA_MIN_TENSOR:
        return None
    exp = c._export_dtype
    if exp is not None and not (isinstance(exp, (np.dtype, type)) and np.dtype(exp) == arr.dtype):
        return None
    return arr


def _placeholder(name: str, arr: npt.NDArray[np.generic], offset: int) -> onnx.TensorProto:
    """Name, dtype and dims of `arr`, its data said to be at `STRIPPED_LOCATION`."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(int(d) for d in arr.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (
        ("location", STRIPPED_LOCATION), ("offset", str(offset)), ("length", str(arr.nbytes))
    ):
        t.external_data.add(key=key, value=value)
    return t


def _fill(t: onnx.TensorProto, const: gs.Constant) -> None:
    """Turn a placeholder into the tensor graphsurgeon exports for `const` (raw data)."""
    del t.external_data[:]
    t.ClearField("data_location")
    t.raw_data = np.asarray(const.values).tobytes()
    if const.data_location is not None:
        t.data_location = const.data_location


def _graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """`graph`, its local functions, and every subgraph below them."""
    todo = [graph, *getattr(graph, "functions", [])]
    while todo:
        g = todo.pop()
        yield g
        for node in g.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, list) else [value]:
                    if isinstance(sub, gs.Graph):
                        todo.append(sub)


def _constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every Constant of every graph below `graph`: initializers and node attributes."""
    for g in _graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                yield t
        for node in g.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Constant):
                    yield value


def _subgraph_tensor_names(graph: gs.Graph) -> set[str]:
    """Names of the tensors subgraphs and functions see (exports of those keep their data)."""
    names: set[str] = set()
    for g in _graphs(graph):
        if g is not graph:
            names.update(g.tensors())
    return names


def _detach(graph: gs.Graph) -> None:
    """Load every constant that graphsurgeon imported lazily and copy the opset imports, so the
    graph keeps no reference into the ModelProto it came from (any reference keeps all of that
    proto's tensor data alive).

    Values numpy can hold are loaded exactly as a first access would load them; the rest (bfloat16,
    float8, external data not loaded, sparse tensors) keep their lazy form over a private copy of
    their TensorProto.
    """
    for g in _graphs(graph):
        if g.import_domains is not None:  # graphsurgeon keeps the proto's own repeated field
            holder = onnx.ModelProto()
            holder.opset_import.extend(g.import_domains)
            g.import_domains = holder.opset_import
    for c in _constants(graph):
        v = c._values
        if not isinstance(v, LazyValues):
            continue
        if isinstance(v, SparseValues):
            sparse = onnx.SparseTensorProto()
            sparse.CopyFrom(v.tensor)
            c._values = SparseValues(sparse)
        elif _loadable(v):
            c._values = v.load()
        else:
            t = onnx.TensorProto()
            t.CopyFrom(v.tensor)
            c._values = LazyValues(t)


def _loadable(v: LazyValues) -> bool:
    """Whether numpy holds these values as they are (not bfloat16/float8, data not external)."""
    return not isinstance(v.dtype, int) and v.tensor.data_location != onnx.TensorProto.EXTERNAL


def _freeze_constants(graph: gs.Graph) -> None:
    """Make every constant array of `graph` read-only (a read-only view over the same memory)."""
    for c in _constants(graph):
        v = c._values
        if isinstance(v, LazyValues) and not isinstance(v, SparseValues) and _loadable(v):
            v = c.values  # load once here, so that the clone shares this array
        if isinstance(v, np.ndarray) and v.flags.writeable:
            ro = v.view()
            ro.flags.writeable = False
            c._values = ro


def constant_value(tensor: gs.Tensor) -> gs.Constant | None:
    """`tensor` as a Constant if it is an initializer or the output of a Constant node."""
    if isinstance(tensor, gs.Constant):
        return tensor
    prod = tensor.inputs[0] if tensor.inputs else None
    if prod is not None and prod.op == "Constant" and "value" in prod.attrs:
        value = prod.attrs["value"]
        if isinstance(value, gs.Constant):
            return value
    return None


def constant_array(tensor: gs.Tensor) -> npt.NDArray[np.generic] | None:
    """The numpy value of a constant tensor (see `constant_value`), else None."""
    c = constant_value(tensor)
    return None if c is None else np.asarray(c.values)


# ---------------------------------------------------------------------- file I/O
def load_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file with its external data, turning every failure into InvalidModelError."""
    p = Path(path)
    if not p.exists():
        raise InvalidModelError(f"{p}: no such file", hint="check the path")
    if p.is_dir():
        raise InvalidModelError(f"{p} is a directory, not an ONNX file", hint="pass the .onnx file")
    if not p.is_file():
        raise InvalidModelError(f"{p} is not a regular file", hint="pass the .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InvalidModelError(
            f"{p} is not a valid ONNX protobuf (truncated or not ONNX): {type(e).__name__}",
            hint="re-export the model; check the file is complete",
        ) from e
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(
            f"{p} parsed, but holds no ONNX graph (not an ONNX model?)",
            hint="pass a model file written by an ONNX exporter",
        )
    missing = _missing_external_data(model, p.parent)
    if missing:
        raise InvalidModelError(
            f"{p}: external-data file {missing!r} is missing (looked in {p.parent})",
            hint="keep the .data file next to the .onnx file it belongs to",
        )
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise InvalidModelError(
            f"{p}: cannot read its external data: {e}",
            hint="the .data file is truncated or does not belong to this model",
        ) from e
    return model


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def _missing_external_data(model: onnx.ModelProto, base: Path) -> str | None:
    for t in _external_tensors(model):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or not (base / loc).is_file():
            return loc
        offset = int(info.get("offset", 0) or 0)
        length = int(info.get("length", 0) or 0)
        if length and offset + length > (base / loc).stat().st_size:
            return f"{loc} (shorter than the model says: truncated)"
    return None


def _check_opsets(model: onnx.ModelProto) -> None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not MIN_OPSET <= imp.version <= MAX_OPSET:
            raise UnsupportedModelError(
                f"the model uses ONNX opset {imp.version}; spa-compiler supports opsets "
                f"{MIN_OPSET} to {MAX_OPSET}",
                hint="re-export with an opset in that range (e.g. torch.onnx.export(..., opset_version=17))",
            )


def _mark_external(graph: onnx.GraphProto, location: str, min_bytes: int) -> None:
    """Point every initializer of `graph` and its subgraphs with at least `min_bytes` of raw data
    at `location` (onnx.save_model then writes them there, one file)."""
    from onnx.external_data_helper import set_external_data

    from spa_compiler.protos import graphs

    for g in graphs(graph):
        for t in g.initializer:
            if t.HasField("raw_data") and len(t.raw_data) >= min_bytes:
                set_external_data(t, location)


def save_proto(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> Path:
    """Write `model` to `path` atomically (model and external-data file), never half-written."""
    dest = Path(path)
    if dest.is_dir():
        raise UsageError(f"output {dest} is a directory", hint="give a file name ending in .onnx")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {parent} does not exist", hint="create it first")
    if external_data is None:
        external_data = proto_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data"
    from spa_compiler.outputs import TEMP_PREFIX
    from spa_compiler.signals import deferred

    tmpdir: Path | None = None
    try:
        with deferred():  # a signal comes after the assignment, so the folder is removed below
            try:
                tmpdir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
            except OSError as e:
                raise OutputError(f"cannot write the output {dest}: {e.strerror or e}") from e
        tmp_model = tmpdir / dest.name
        try:
            if external_data:
                model = copy.deepcopy(model)  # writing the data clears it from the proto
                # tensors are marked here, not through save_model(save_as_external_data=True): onnx
                # refuses when a file named like the data file exists in the *working* folder (it
                # tests the relative location against the cwd), e.g. compiling model.onnx to
                # out/model.onnx from the input's folder
                _mark_external(model.graph, data_name, EXTERNAL_DATA_MIN_TENSOR)
                onnx.save_model(model, str(tmp_model))
                # onnx creates the data file private (0600); give it the model file's mode
                os.chmod(tmpdir / data_name, os.stat(tmp_model).st_mode & 0o777)
            else:
                onnx.save_model(model, str(tmp_model))
        except OSError as e:
            raise OutputError(
                f"cannot write the output {dest}: {e.strerror or e}", hint="check free space and permissions"
            ) from e
        with deferred():  # both files move, or (on a signal before this block) neither does
            if external_data:
                os.replace(tmpdir / data_name, parent / data_name)
            os.replace(tmp_model, dest)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return dest
