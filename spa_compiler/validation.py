"""Model validity: the ONNX checker (full check) plus strict shape inference, >2 GB safe."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from spa_compiler.errors import InvalidModelError, SpaError, ValidationError
from spa_compiler.ir import EXTERNAL_DATA_THRESHOLD, ModelIR, _proto_bytes, _stripped_large_tensors


def check_model(
    model: onnx.ModelProto | ModelIR,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    what: str = "model",
    error: type[SpaError] = InvalidModelError,
) -> None:
    """Run `onnx.checker` (full_check) and strict shape inference; raise `error` on failure.

    Args:
        model: The model (a ModelIR is exported first).
        base_dir: Folder of the model file, for external data references.
        what: How to name the model in the message, e.g. "after pass 'prune-magnitude'".
        error: The exception class to raise (InvalidModelError for input, ValidationError after
            a pass).
    """
    proto = model.to_proto() if isinstance(model, ModelIR) else model
    del base_dir  # external data is loaded by then; large tensors are stripped below
    with _stripped_large_tensors(proto) as small:
        try:
            if _proto_bytes(small) >= EXTERNAL_DATA_THRESHOLD:  # pragma: no cover - defensive
                with tempfile.TemporaryDirectory() as d:
                    path = Path(d) / "m.onnx"
                    onnx.save_model(small, str(path), save_as_external_data=True)
                    onnx.checker.check_model(str(path), full_check=True)
            else:
                onnx.checker.check_model(small, full_check=False)
                onnx.shape_inference.infer_shapes(small, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = (
                "the input model is invalid: re-export it, or check it with onnx.checker"
                if error is InvalidModelError
                else "this is a bug in that pass: please report it with the model (-vv shows more)"
            )
            raise error(f"{what} fails ONNX validation: {first}", hint=hint) from e


def validate_after(model: ModelIR, pass_name: str) -> None:
    """Validate a model right after a modifying pass; the error names the pass."""
    check_model(model, what=f"model after pass {pass_name!r}", error=ValidationError)
