"""`spa-compile inspect --lower`: what lowering would do to a model, without timing it.

Each fusion family the target allows is applied alone and checked numerically against the model
(fp32, ONNX Runtime CPU, random feeds); whether a family is kept is decided at compile time by
measurement on the target (`select.choose`), which this does not do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spa_compiler.errors import UsageError


def inspect_lowering(
    path: str, *, target: str, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """The lowering decision in mode `all` without a device: fused ops and checks per family."""
    from spa_compiler.ir import ModelIR
    from spa_compiler.lowering.select import choose
    from spa_compiler.ort import random_feeds
    from spa_compiler.targets import get_target

    tgt = get_target(target)
    model = ModelIR.load(path)
    missing = [n for n in model.symbolic_inputs() if n not in input_shapes]
    if missing:
        raise UsageError(f"input {missing[0]!r} has symbolic dimensions and no shape hint",
                         hint=f"pass --input-shape {missing[0]}:DxD")
    proto = model.to_proto()
    feeds = random_feeds(model, input_shapes)
    d = choose(proto, target=tgt.name, precision="fp32", fp16_io=False, mode="all",
               input_shapes=input_shapes, feeds=feeds, provider=None)
    out = d.to_json()
    out["target"] = tgt.name
    out["note"] = "not timed: at compile time each family is kept only where it measures faster (--lower auto)"
    return out


def format_lowering(res: Mapping[str, Any]) -> str:
    lines = [f"lowering for {res['target']} (each family alone, checked in fp32; not timed):"]
    for e in res.get("tried", []):
        fused = ", ".join(f"{k} x{v}" for k, v in (e.get("fused") or {}).items()) or "-"
        check = e.get("check_fp32")
        ck = f"check {'ok' if check['ok'] else 'FAILED'} (rel. error {check['rel_error']})" if check else ""
        lines.append(f"  {e['family']:<17} {fused:<45} {ck} {'' if e.get('applicable') else e.get('why', '')}".rstrip())
        for reason, n in sorted((e.get("unmatched") or {}).items()):
            lines.append(f"      not fused: {n} x {reason}")
    lines.extend(f"note: {n}" for n in res.get("notes", []))
    lines.append(f"note: {res['note']}")
    return "\n".join(lines)
