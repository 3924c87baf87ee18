"""ONNX Runtime sessions for checks, calibration and timing (no provider guessing)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.errors import MissingRequirementError
from spa_compiler.ir import ModelIR

if TYPE_CHECKING:
    import onnxruntime as ort


def import_ort() -> Any:
    """The onnxruntime module (CPU or GPU build), or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingRequirementError(
            "ONNX Runtime is not installed",
            hint="pip install 'spa-compiler[cpu]' (or [gpu] for onnxruntime-gpu; never both)",
        ) from e
    return onnxruntime


def make_session(
    model: onnx.ModelProto | ModelIR | str,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimize: bool = True,
    initializers: Mapping[str, npt.NDArray[Any]] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession with fixed thread counts.

    A ModelIR goes to ONNX Runtime as its weightless export plus its own weight arrays as external
    initializers (`ModelIR.to_proto_split`): ONNX Runtime reads the arrays in place, so no copy of
    the weights is made to build the session (on the CPU provider).

    Args:
        model: A model, ModelIR or path.
        providers: Execution providers, in order.
        threads: intra-op threads (None: ORT's default); inter-op is always 1.
        optimize: ORT graph optimizations on (timing) or off (numerical checks of our graph).
        initializers: Values of initializers that `model` leaves out (external data at
            `spa_compiler.ir.STRIPPED_LOCATION`), by name; the session keeps them alive.
    """
    ort = import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors reach callers as exceptions; ORT would also log them
    if isinstance(model, ModelIR):
        model, own = model.to_proto_split()
        initializers = {**own, **(initializers or {})}
    if isinstance(model, onnx.ModelProto):
        model, shared = split_weights(model)
        initializers = {**shared, **(initializers or {})}
    values = add_initializers(so, initializers or {})
    if isinstance(model, onnx.ModelProto):
        for lib in custom_op_libraries(model):
            so.register_custom_ops_library(lib)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, sess_options=so, providers=list(providers))
    sess._spa_initializers = values  # ORT reads these arrays for the session's lifetime
    sess._spa_names = list(initializers or {})
    return sess


def custom_op_libraries(model: onnx.ModelProto) -> list[str]:
    """ONNX Runtime libraries a model with `spa.ops` nodes needs: $SPA_ORT_CUSTOM_OPS (paths joined
    by ':') when set, else the runtime_ops build (`runtime_ops.ort_library_path()`) when there is
    one; [] for models without spa.ops nodes."""
    import os

    if not any(o.domain == "spa.ops" for o in model.opset_import):
        return []
    env = os.environ.get("SPA_ORT_CUSTOM_OPS")
    if env:
        return [p for p in env.split(":") if p]
    try:
        from spa_compiler import runtime_ops

        return [str(runtime_ops.ort_library_path())]  # type: ignore[attr-defined]
    except Exception:  # no op package or not built: ORT then names the missing op
        return []


#: Weight arrays handed to ONNX Runtime sessions, by content (`split_weights`): models that share
#: weights (the lowering variants of one model, candidates that differ in a few layers) give their
#: sessions one copy of each shared tensor. Weak: an array lives while a session or a
#: `share_weights` holder refers to it.
_SHARED: weakref.WeakValueDictionary[str, npt.NDArray[Any]] = weakref.WeakValueDictionary()

#: Location of a tensor whose data is an array of `_SHARED` (`share_weights`); the key follows.
SHARED_LOCATION = "spa-shared:"

#: Tensor types ONNX Runtime's Python binding takes as numpy arrays (others stay inline).
_SPLIT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
}


def _shared_array(t: onnx.TensorProto) -> tuple[str, npt.NDArray[Any]]:
    """The shared array holding a raw tensor's data (registered on first sight) and its key."""
    import hashlib

    data = t.raw_data
    dims = tuple(int(d) for d in t.dims)
    key = f"{t.data_type}:{'x'.join(map(str, dims))}:{hashlib.blake2b(data, digest_size=20).hexdigest()}"
    arr = _SHARED.get(key)
    if arr is None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        arr = np.frombuffer(data, dtype=dtype).reshape(dims)  # read-only view of `data`, no copy
        _SHARED[key] = arr
    return key, arr


def _is_large_raw(t: onnx.TensorProto) -> bool:
    from spa_compiler.protos import EXTERNAL_DATA_MIN_TENSOR

    # ByteSize, not len(raw_data): reading a bytes field copies it
    return (t.data_location != onnx.TensorProto.EXTERNAL and t.data_type in _SPLIT_TYPES
            and t.HasField("raw_data") and t.ByteSize() >= EXTERNAL_DATA_MIN_TENSOR)


def _placeholder(t: onnx.TensorProto, location: str) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.name, out.data_type = t.name, t.data_type
    out.dims.extend(t.dims)
    out.data_location = onnx.TensorProto.EXTERNAL
    out.external_data.add(key="location", value=location)
    return out


def _with_initializers(model: onnx.ModelProto, initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    from spa_compiler.protos import copy_fields

    out = onnx.ModelProto()
    copy_fields(out, model, skip="graph")
    copy_fields(out.graph, model.graph, skip="initializer")
    out.graph.initializer.extend(initializers)
    return out


def share_weights(model: onnx.ModelProto, held: list[Any]) -> onnx.ModelProto:
    """A copy of `model` whose large initializers (main graph, raw data) point to shared arrays
    instead of holding their data, for timing several variants of one model side by side without a
    copy of the weights per variant (`make_session` resolves them). The arrays are appended to
    `held`: keep it as long as the copy is used. Tensors equal in content are one array."""
    inits: list[onnx.TensorProto] = []
    for t in model.graph.initializer:
        if _is_large_raw(t):
            key, arr = _shared_array(t)
            held.append(arr)
            inits.append(_placeholder(t, SHARED_LOCATION + key))
        else:
            inits.append(t)
    return _with_initializers(model, inits)


def split_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[Any]]]:
    """`model` without the data of its large initializers (main graph, raw data; placeholders at
    `STRIPPED_LOCATION`) and those tensors as arrays by name, for ONNX Runtime's external
    initializers (read in place on the CPU: the session makes no copy of them). A tensor whose
    content another session already holds is that session's array; a `share_weights` reference is
    its array. The model itself is returned when it has nothing to split."""
    from spa_compiler.protos import STRIPPED_LOCATION

    if not any(_is_large_raw(t) or _shared_key(t) for t in model.graph.initializer):
        return model, {}
    arrays: dict[str, npt.NDArray[Any]] = {}
    inits: list[onnx.TensorProto] = []
    for t in model.graph.initializer:
        key = _shared_key(t)
        if key is not None:
            arr = _SHARED.get(key)
            if arr is None:
                raise RuntimeError(f"initializer {t.name!r} refers to shared weights no longer held (a bug)")
            arrays[t.name] = arr
        elif _is_large_raw(t):
            arrays[t.name] = _shared_array(t)[1]
        else:
            inits.append(t)
            continue
        inits.append(_placeholder(t, STRIPPED_LOCATION))
    return _with_initializers(model, inits), arrays


def _shared_key(t: onnx.TensorProto) -> str | None:
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    loc = next((e.value for e in t.external_data if e.key == "location"), "")
    return loc[len(SHARED_LOCATION):] if loc.startswith(SHARED_LOCATION) else None


def add_initializers(so: Any, arrays: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
    """Hand `arrays` to ONNX Runtime as external initializers of the session options `so`.

    Returns the OrtValues (each holds its array): keep them as long as the session lives.
    """
    if not arrays:
        return []
    ort = import_ort()
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays.values()]
    so.add_external_initializers(list(arrays), values)
    return values


def run(
    model: onnx.ModelProto | ModelIR | str | ort.InferenceSession,
    feeds: Mapping[str, npt.NDArray[np.generic]],
    *,
    optimize: bool = False,
) -> list[npt.NDArray[np.generic]]:
    """Run once on the CPU provider and return every graph output."""
    sess = model if hasattr(model, "run") and hasattr(model, "get_inputs") else make_session(
        model, optimize=optimize  # type: ignore[arg-type]
    )
    return list(sess.run(None, dict(feeds)))


def random_feeds(
    model: onnx.ModelProto | ModelIR,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    seed: int = 0,
) -> dict[str, npt.NDArray[np.generic]]:
    """Random inputs for every graph input: N(0,1) floats, small non-negative ints, ones for masks.

    Integer inputs get values in [0, 2) unless the name says ids (then [0, 32)): safe for Gather
    over any vocabulary of at least 32 rows. Symbolic dimensions must be given in `shapes`.
    """
    from spa_compiler.errors import UsageError

    ir = model if isinstance(model, ModelIR) else ModelIR.from_proto(model)
    rng = np.random.default_rng(seed)
    feeds: dict[str, npt.NDArray[np.generic]] = {}
    for t in ir.graph.inputs:
        if t.name in ir.input_defaults:  # a weight the caller may override: its own value is used
            continue
        shape = tuple((shapes or {}).get(t.name, t.shape or ()))
        if any(not (isinstance(d, int) and d >= 0) for d in shape):
            raise UsageError(
                f"input {t.name!r} has symbolic dimensions {list(shape)}",
                hint=f"pass --input-shape {t.name}:" + "x".join(
                    str(d) if isinstance(d, int) and d >= 0 else "N" for d in shape
                ),
            )
        dtype = np.dtype(t.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[t.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[t.name] = np.ones(shape, dtype=bool)
        elif np.issubdtype(dtype, np.integer):
            name = t.name.lower()
            if "mask" in name:
                feeds[t.name] = np.ones(shape, dtype=dtype)
            elif "position" in name and shape:
                feeds[t.name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
            else:
                high = 32 if ("id" in name and "type" not in name) else 2
                rows = gather_rows(t)
                if rows:  # indices into an embedding table: draw from all of its rows
                    high = rows
                feeds[t.name] = rng.integers(0, high, size=shape).astype(dtype)
        else:
            raise UsageError(f"input {t.name!r} has dtype {dtype}, which random inputs cannot fill")
    return feeds


def gather_rows(t: Any) -> int | None:
    """Rows of the smallest constant table that a Gather (axis 0) indexes with `t`, if any."""
    from spa_compiler.ir import constant_value

    rows = []
    for node in t.outputs:
        if node.op == "Gather" and len(node.inputs) == 2 and node.inputs[1] is t and node.attrs.get("axis", 0) == 0:
            table = constant_value(node.inputs[0])
            if table is not None and table.shape:
                rows.append(int(table.shape[0]))
    return min(rows) if rows else None
