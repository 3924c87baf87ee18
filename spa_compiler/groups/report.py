"""Human and JSON views of a `GroupAnalysis` (`spa-compile inspect --groups [--json]`).

The table lists every group: its id, unit kind, `units × positions per unit`, the parameters and
MACs it controls, who writes it (producer weights) and who reads it (consumer weights), and whether
it is prunable or frozen, with the reason. The JSON carries the same plus, per member, the tensor,
axis, role and the indices of unit 0 (enough for tools to see the index maps without megabytes of
indices).
"""

from __future__ import annotations

from typing import Any

from spa_compiler.groups.analysis import ChannelGroup, GroupAnalysis, Member


def _short(name: str, width: int = 28) -> str:
    """The last two path components of an exporter node name, e.g. `q_proj/MatMul`."""
    parts = [p for p in name.split("/") if p]
    s = "/".join(parts[-2:]) if len(parts) > 1 else name
    return s if len(s) <= width else "…" + s[-(width - 1) :]


def _members(ms: list[Member], limit: int = 3) -> str:
    names = list(dict.fromkeys(_short(m.node) for m in ms))
    if not names:
        return "-"
    more = f" +{len(names) - limit}" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _num(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def format_groups(analysis: GroupAnalysis) -> str:
    """A table of the groups, prunable first in graph order, then frozen, with a coverage line."""
    g_all = analysis.groups
    lines = [
        f"coupled-channel groups: {len(g_all)} ({len(analysis.prunable)} prunable); "
        f"{100 * analysis.coverage:.1f}% of {_num(analysis.total_macs)} MACs in prunable groups"
        + (f"  (input shapes {dict(analysis.input_shapes)})" if analysis.input_shapes else ""),
    ]
    if analysis.unknown_ops:
        lines.append(
            "unknown ops (frozen around them): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(analysis.unknown_ops.items()))
        )
    rows = [
        ("id", "unit", "units", "one unit is", "params", "MACs", "written by -> read by", "status")
    ]

    def row(g: ChannelGroup) -> tuple[str, ...]:
        w = [m for m in g.producers if m.role == "weight"] or g.producers
        status = "prunable" if not g.frozen else f"frozen: {g.reason}"
        size = f"{g.n_units}x{g.unit_size}" if g.unit_size != 1 else str(g.n_units)
        return (
            g.id,
            g.unit,
            size,
            g.label,
            _num(g.params),
            _num(g.macs),
            f"{_members(w)} -> {_members(g.consumers)}",
            status,
        )

    rows += [row(g) for g in g_all if not g.frozen]
    rows += [row(g) for g in g_all if g.frozen]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    widths = [min(w, 60) for w in widths]
    for r in rows:
        cells = [
            c if len(c) <= widths[i] else c[: widths[i] - 1] + "…" for i, c in enumerate(r[:-1])
        ]
        lines.append(
            "  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + "  " + r[-1]
        )
    if analysis.frozen_macs:
        total = max(1, analysis.total_macs)
        lines.append("MACs outside prunable groups, by reason:")
        for why, macs in sorted(analysis.frozen_macs.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {why}: {_num(macs)} ({100 * macs / total:.1f}%)")
    return "\n".join(lines)


def group_to_json(g: ChannelGroup) -> dict[str, Any]:
    """One group as JSON."""
    return {
        "id": g.id,
        "unit": g.unit,
        "n_units": g.n_units,
        "unit_size": g.unit_size,
        "frozen": g.frozen,
        "reason": g.reason,
        "params": g.params,
        "macs": g.macs,
        "label": g.label,
        "producers": [m.to_json() for m in g.producers],
        "consumers": [m.to_json() for m in g.consumers],
    }


def groups_to_json(analysis: GroupAnalysis) -> dict[str, Any]:
    """The whole analysis as JSON: coverage figures and every group."""
    return {
        "total_macs": analysis.total_macs,
        "prunable_macs": analysis.prunable_macs,
        "coverage": analysis.coverage,
        "frozen_macs": dict(analysis.frozen_macs),
        "unknown_ops": dict(analysis.unknown_ops),
        "input_shapes": {k: list(v) for k, v in analysis.input_shapes.items()},
        "units": list(analysis.units),
        "include_hidden": analysis.include_hidden,
        "groups": [group_to_json(g) for g in analysis.groups],
    }
