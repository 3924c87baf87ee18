"""The compile report: what was changed, why, and what it measured (JSON and a text summary)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class PassRecord:
    """One pass as run: options, outcome, numbers, skipped candidates with reasons, time."""

    name: str
    options: dict[str, Any]
    modified: bool
    seconds: float
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None


@dataclasses.dataclass
class Report:
    """Everything a run decided and measured; `to_json()` is what `--report` writes."""

    tool_version: str = ""
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    output: dict[str, Any] = dataclasses.field(default_factory=dict)
    pipeline: str = ""
    target: str = ""
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)
    passes: list[PassRecord] = dataclasses.field(default_factory=list)
    before: dict[str, Any] = dataclasses.field(default_factory=dict)
    after: dict[str, Any] = dataclasses.field(default_factory=dict)
    lowering: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "running"  # running | ok | failed | interrupted
    error: str | None = None
    stage: str = ""  # what the run was doing last (load, measure dense, pass NAME, save, ...)
    task: str = ""  # the last progress task inside the stage (e.g. "calibration statistics")
    notes: list[str] = dataclasses.field(default_factory=list)

    def record(self, rec: PassRecord) -> None:
        """Append one pass's record (the PassManager calls this, passes never do)."""
        self.passes.append(rec)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return _jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically."""
        write_text_atomic(Path(path), self.to_json() + "\n")

    def summary(self) -> str:
        """Human-readable summary printed by the CLI."""
        lines = []
        b, a = self.before, self.after
        if b:
            lines.append(_stats_line("before", b))
        if a:
            lines.append(_stats_line("after ", a))
        if b and a:
            ratios = []
            for key, label in (("params", "params"), ("macs", "MACs"), ("latency_ms", "latency")):
                if b.get(key) and a.get(key) is not None:
                    ratios.append(f"{label} x{a[key] / b[key]:.3f}")
            paired = a.get("paired")
            if paired:
                ratios = [r for r in ratios if not r.startswith("latency")]
                low = paired.get("lowered_dense_ms")
                ratios.append(
                    f"latency x{paired['ratio']:.3f} (as given {paired['dense_ms']:.3f} ms"
                    + (f", lowered dense {low:.3f} ms (x{low / paired['dense_ms']:.3f})" if low else "")
                    + f", compiled {paired['compiled_ms']:.3f} ms, timed in alternation)"
                )
            if ratios:
                lines.append("ratio   " + ", ".join(ratios))
        if self.lowering:
            lines.append(f"lower   {self.lowering.get('describe')} ({self.lowering.get('mode')}): "
                         + (", ".join(f"{t['family']} {'kept' if t.get('kept') else 'not kept'}"
                                      for t in self.lowering.get("tried", []) if t.get("applicable"))
                            or "nothing applicable"))
        if self.budget:
            met = self.budget.get("met")
            verdict = "met" if met else "NOT met" if met is False else "not checked"
            rel = f" ({self.budget['relative_to']})" if self.budget.get("relative_to") else ""
            lines.append(f"budget  {self.budget.get('requested')}{rel} = {self.budget.get('ms', 0):.3f} ms: {verdict}")
        for p in self.passes:
            line = f"pass {p.name}: {'modified' if p.modified else 'no change'} in {p.seconds:.2f}s"
            if p.stats:
                line += " " + ", ".join(f"{k}={_fmt(v)}" for k, v in p.stats.items())
            lines.append(line)
            for reason, n in sorted(p.skipped.items()):
                lines.append(f"    skipped {n} x {reason}")
        deploy = self.output.get("deploy") if self.output else None
        if isinstance(deploy, dict) and deploy.get("checked") is True and "dense" in deploy:
            for label in ("dense", "sparse_weights"):
                d = deploy.get(label) or {}
                lines.append(
                    f"deploy  {deploy.get('runtime')}: engine ({label}) "
                    + (f"built in {d.get('seconds')} s, {d.get('engine_bytes'):,} bytes" if d.get("ok") else "FAILED")
                )
        elif isinstance(deploy, dict) and deploy.get("checked") is False:
            lines.append(f"deploy  not checked: {deploy.get('why')}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _stats_line(label: str, s: Mapping[str, Any]) -> str:
    parts = [f"params {s.get('params', 0):,}"]
    if s.get("macs") is not None:
        parts.append(f"MACs {s['macs']:,}")
    if s.get("latency_ms") is not None:
        if s.get("latency_kind") == "analytic":
            lat = f"latency {s['latency_ms']:.3f} ms (ANALYTIC estimate"
        else:
            lat = f"latency {s['latency_ms']:.3f} ms (median of {s.get('latency_runs', '?')}"
        if s.get("latency_provider"):
            lat += f", {s['latency_provider']}"
        parts.append(lat + ")")
    return f"{label}  " + ", ".join(parts)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename (mode 0666
    less the umask, as the model gets; see `spa_compiler.outputs.write_bytes_atomic`)."""
    from spa_compiler.outputs import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"))
