"""Proto-level helpers shared by ir.py and validation.py (neither imports the other for them):
model size without serializing, and a weightless view of a model over protobuf's 2 GB limit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


def digest(model: onnx.ModelProto) -> str:
    """SHA-256 hex digest of a model's content, for any size.

    Under `EXTERNAL_DATA_THRESHOLD` bytes of inline data: of its deterministic serialization. Past
    it (protobuf cannot serialize a message over 2 GB): of each large initializer's name and data,
    one tensor at a time, then of the serialization of the model with those tensors' data left out
    (a different but equally exact content hash; the two forms never compare with each other, as
    one model is either under the limit or past it)."""
    import hashlib

    if proto_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    h = hashlib.sha256(b"spa-compiler large-model digest v1\0")
    skeleton = onnx.ModelProto()
    copy_fields(skeleton, model, skip="graph")
    g = skeleton.graph
    copy_fields(g, model.graph, skip="initializer")
    for t in model.graph.initializer:
        data = t.raw_data if t.HasField("raw_data") else b""
        if len(data) > EXTERNAL_DATA_MIN_TENSOR:  # one tensor's bytes at a time
            h.update(t.name.encode() + b"\0")
            h.update(data)
            copy_fields(g.initializer.add(), t, skip="raw_data")
        else:
            g.initializer.add().CopyFrom(t)
        del data
    h.update(skeleton.SerializeToString(deterministic=True))
    return h.hexdigest()


def copy_fields(dst: Any, src: Any, skip: str) -> None:
    """Copy the set fields of protobuf message `src` into `dst`, except field `skip`."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, (str, bytes, int, float, bool)):
            setattr(dst, field.name, value)
        elif hasattr(value, "extend"):  # repeated field
            getattr(dst, field.name).extend(value)
        else:
            getattr(dst, field.name).CopyFrom(value)


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)
