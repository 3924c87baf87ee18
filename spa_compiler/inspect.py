"""`spa-compile inspect`: what a model is made of, and what of it is prunable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spa_compiler.ir import ModelIR
from spa_compiler.stats import model_stats


def inspect_model(path: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """A JSON-able description: inputs, outputs, opset, ops, params, MACs, coupled-channel groups."""
    from spa_compiler.groups.analysis import analyze

    from spa_compiler.checks import check_shape_hints

    model = ModelIR.load(path)
    check_shape_hints(model, shapes or {})
    stats = model_stats(model, shapes)
    analysis = analyze(model, input_shapes=shapes)
    reasons: Counter[str] = Counter(
        (g.reason or "unknown").split(":")[0] for g in analysis.groups if g.frozen
    )
    return {
        "path": str(path),
        "ir_version": model.ir_version,
        "opset": model.opset,
        "inputs": [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.shape or [])} for t in model.graph.inputs],
        "outputs": [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.shape or [])} for t in model.graph.outputs],
        "params": stats["params"],
        "macs": stats["macs"],
        "nodes": stats["nodes"],
        "ops": stats["ops"],
        "groups": len(analysis.groups),
        "prunable_groups": len(analysis.prunable),
        "prunable_units": {u: sum(1 for g in analysis.prunable if g.unit == u)
                           for u in sorted({g.unit for g in analysis.prunable})},
        "prunable_mac_share": analysis.coverage,
        "unknown_ops": dict(analysis.unknown_ops),
        "frozen_groups": dict(reasons),
    }


def format_inspection(info: Mapping[str, Any]) -> str:
    """The text `inspect` prints."""
    lines = [f"{info['path']}: IR {info['ir_version']}, opset {info['opset']}"]
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            lines.append(f"  {kind[:-1]:6} {t['name']}: {t['dtype']} {t['shape']}")
    macs = f"{info['macs']:,}" if info["macs"] is not None else "unknown (symbolic shapes: pass --input-shape)"
    lines.append(f"  params {info['params']:,}   MACs {macs}   nodes {info['nodes']}")
    lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    units = ", ".join(f"{n} {u}" for u, n in info["prunable_units"].items()) or "none"
    lines.append(
        f"  coupled-channel groups: {info['prunable_groups']} prunable of {info['groups']} ({units}); "
        f"{100 * info['prunable_mac_share']:.1f}% of MACs prunable (list: spa-compile inspect --groups)"
    )
    if info["unknown_ops"]:
        lines.append("  ops without a rule (their channels frozen): "
                     + ", ".join(f"{k} x{v}" for k, v in info["unknown_ops"].items()))
    if info["frozen_groups"]:
        lines.append("  frozen groups by reason: "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(info["frozen_groups"].items())))
    return "\n".join(lines)
