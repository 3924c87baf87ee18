"""Proto-level helpers shared by ir.py and validation.py (neither imports the other for them):
model size without serializing, and a weightless view of a model over protobuf's 2 GB limit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import onnx

#: Above this many bytes of tensor data the model is written with an external-data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

#: Tensors smaller than this stay inline when external data is used.
EXTERNAL_DATA_MIN_TENSOR = 1024

#: Where a weightless export (`ModelIR.to_proto_split`) points the float tensors it leaves out.
STRIPPED_LOCATION = "__stripped__"


def proto_bytes(model: onnx.ModelProto) -> int:
    """Bytes of inline tensor data (initializers) of a model, without serializing it (tensors
    whose data lives outside the proto count nothing)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        total += len(t.raw_data) if t.HasField("raw_data") else int(np.prod(t.dims or [1])) * 4
    return total


@contextlib.contextmanager
def stripped_large_tensors(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """Yield a shallow-data copy of `model` whose large initializers carry dims but no data.

    Shape inference and the checker need only dims; this keeps them under protobuf's 2 GB limit.
    """
    if proto_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        yield model
        return
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for t in stripped.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > EXTERNAL_DATA_MIN_TENSOR:
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value="__stripped__")
    yield stripped
