"""Coverage of the coupled-channel analysis: the share of MACs inside prunable groups, per model.

    python -m benchmarks.coverage                 # zoo (both exporters) + real models if installed
    python -m benchmarks.coverage --no-real       # zoo only
    python -m benchmarks.coverage --out docs/coverage.md

For every zoo model and every real model (SmolLM2-135M, all-MiniLM-L6-v2, EfficientNet-Lite0; both
torch exporters), `channel_groups.analyze` runs at fixed small input shapes and the table gives:

* the MACs (Conv, ConvTranspose, Gemm, MatMul) at those shapes;
* "default": the share of MACs that some prunable group shrinks with the default units
  (channel, head, neuron);
* "+head_dim, +hidden": the same with head dimensions and the hidden (residual) width allowed;
* the groups found (prunable / all) and, for the MACs outside prunable groups, the reasons.

A node's MACs count as prunable when one of its channel axes (output channels, contracted
channels, or the head axis of attention products) belongs to a prunable group.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import platform
import sys
import time
from pathlib import Path

from spa_compiler import models_zoo
from spa_compiler.groups.analysis import ALL_UNITS, analyze
from spa_compiler.ir import ModelIR

COMMAND = "python -m benchmarks.coverage --out docs/coverage.md"


def _fmt_macs(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _row(label: str, exporter: str, model: ModelIR, shapes: dict | None) -> tuple[str, dict]:
    t = time.perf_counter()
    default = analyze(model, input_shapes=shapes)
    full = analyze(model, units=ALL_UNITS, include_hidden=True, input_shapes=shapes)
    secs = time.perf_counter() - t
    total = default.total_macs or 1
    reasons = (
        "; ".join(
            f"{why} {100 * macs / total:.1f}%"
            for why, macs in sorted(default.frozen_macs.items(), key=lambda kv: -kv[1])
        )
        or "-"
    )
    cells = [
        label,
        exporter,
        _fmt_macs(default.total_macs),
        f"{100 * default.coverage:.1f}%",
        f"{100 * full.coverage:.1f}%",
        f"{len(default.prunable)} / {len(default.groups)}",
        reasons,
    ]
    line = "| " + " | ".join(cells) + " |"
    data = {
        "model": label,
        "exporter": exporter,
        "macs": default.total_macs,
        "default": default.coverage,
        "full": full.coverage,
        "groups": len(default.groups),
        "prunable": len(default.prunable),
        "frozen_macs": default.frozen_macs,
        "unknown_ops": default.unknown_ops,
        "seconds": secs,
    }
    return line, data


def collect(real_models: bool = True) -> tuple[list[str], list[dict]]:
    """Table rows (markdown) and raw records for every model available."""
    lines: list[str] = []
    records: list[dict] = []
    for name in models_zoo.list_models():
        for exporter in models_zoo.EXPORTERS:
            model = ModelIR.load(models_zoo.build(name, exporter))
            line, rec = _row(name, exporter, model, dict(models_zoo.default_shapes(name)))
            lines.append(line)
            records.append(rec)
            print(line, file=sys.stderr, flush=True)
    if real_models:
        from spa_compiler.models_zoo import real

        for name in real.REAL_MODELS:
            if not real.available(name):
                lines.append(
                    f"| {name} | - | - | - | - | - | not installed (scripts/install_real.sh) |"
                )
                continue
            for exporter in real.EXPORTERS:
                model = ModelIR.load(real.export_real(name, exporter), check=False)
                shapes = real.input_shapes(
                    name, 1, 8 if name != "efficientnet-lite0" else 32, exporter=exporter
                )
                line, rec = _row(name, exporter, model, shapes)
                lines.append(line)
                records.append(rec)
                print(line, file=sys.stderr, flush=True)
    return lines, records


def render(lines: list[str], records: list[dict]) -> str:
    """The markdown document."""
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}" for p in ("onnx", "onnxruntime", "torch") if _has(p)
    )
    worst = min((r["default"] for r in records), default=0.0)
    return "\n".join(
        [
            "# Coverage of the coupled-channel analysis",
            "",
            f"Produced by `{COMMAND}` on {datetime.date.today().isoformat()} "
            f"(Python {platform.python_version()}; {versions}).",
            "",
            "Share of the MACs (Conv, ConvTranspose, Gemm, MatMul at the analysis shapes: zoo",
            "models at their default shapes, text models at batch 1 x 8 tokens, EfficientNet-Lite0",
            "at 1 x 3 x 224 x 224) that a prunable coupled-channel group shrinks. *default*: units",
            "channel, head, neuron; *+head_dim, +hidden*: head dimensions and the hidden",
            "(residual) width allowed too (approximate: the norms see fewer channels).",
            "The last column says why the rest is frozen, with the default units, as a share of",
            "all MACs.",
            "",
            "| model | exporter | MACs | default | +head_dim, +hidden | groups prunable / all "
            "| frozen MACs, by reason |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *lines,
            "",
            f"Lowest default coverage: {100 * worst:.1f}%. Where it is below 100%, the MACs left",
            "are the tied language-model head (its input is the normalized hidden width, output",
            "the vocabulary: a graph output), a patch-embedding conv reading image channels, or",
            "a pooler/classifier writing a graph output. Every group analysis cannot prove safe",
            "is frozen with its reason; `spa-compile inspect --groups MODEL` lists them.",
            "",
        ]
    )


def _has(pkg: str) -> bool:
    try:
        importlib.metadata.version(pkg)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/coverage.md", help="markdown file to write")
    parser.add_argument("--no-real", action="store_true", help="zoo models only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    lines, records = collect(real_models=not args.no_real)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(lines, records))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
