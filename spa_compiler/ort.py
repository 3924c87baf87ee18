"""ONNX Runtime sessions for checks, calibration and timing (no provider guessing)."""

from __future__ import annotations

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
    values = add_initializers(so, initializers or {})
    if isinstance(model, onnx.ModelProto):
        for lib in custom_op_libraries(model):
            so.register_custom_ops_library(lib)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, sess_options=so, providers=list(providers))
    sess._spa_initializers = values  # ORT reads these arrays for the session's lifetime
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
