"""A latency provider that times every model in its lowered form: what is timed is what is written.

`LoweredProvider(inner, lowering, shapes)` lowers each model it is given (`core.lower`) and times
the result with `inner`, a provider that times models exactly as given (no precision conversion
of its own). The search loop, the latency tables and the final verdict all time through it, so
every candidate is judged in the form it would be deployed in. `last_digest` is the SHA-256 of the
serialized model last timed (the report compares it with the file written).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from spa_compiler.lowering.core import Lowering, lower


def proto_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of a model's content (external data loaded: layout does not count; any size,
    `protos.digest`)."""
    from spa_compiler.protos import digest

    return digest(model)


@dataclasses.dataclass
class LoweredProvider:
    """Times `lowering` of each model with `inner`."""

    inner: Any
    lowering: Lowering
    input_shapes: Mapping[str, Sequence[int]]
    last_digest: str | None = None

    @property
    def kind(self) -> str:
        return self.inner.kind

    def lowered(self, model: Any) -> onnx.ModelProto:
        """The model as this provider times it."""
        if self.lowering.is_identity:
            return model if isinstance(model, onnx.ModelProto) else model.to_proto()
        return lower(model, self.lowering, self.input_shapes).model

    def time(self, model: Any, feeds: Mapping[str, Any]) -> Any:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[Any], feeds: Mapping[str, Any]) -> list[Any]:
        if self.lowering.is_identity or self.inner.kind == "analytic":
            # analytic estimates model the runtime on the unlowered graph (and its precision)
            return self.inner.time_many(list(models), feeds)  # ModelIRs go as they are (no copy)
        protos = [self.lowered(m) for m in models]
        self.last_digest = proto_digest(protos[-1])
        return self.inner.time_many(protos, feeds)

    def provenance(self) -> dict[str, Any]:
        prov = dict(self.inner.provenance())
        prov["precision"] = self.lowering.precision
        prov["lowering"] = self.lowering.describe()
        return prov
