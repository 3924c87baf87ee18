"""Record the decisions a compile makes (per group: units kept; per search round: predicted and
measured latency), so a refactor can be shown to leave them unchanged.

Deterministic by construction: the latency model is the analytic one (`--target tensorrt` on a
machine without a GPU gives analytic estimates), or a fixed latency table given with `--table`.

    python -m benchmarks.decisions --out before.json
    python -m benchmarks.decisions --out after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

CASES = [
    # (zoo model, exporter, pipeline, budget)
    ("tiny_resnet", "torchscript", "cleanup,prune-ziplm{criterion=obspa},cleanup", "0.7x"),
    ("tiny_bert", "torchscript", "cleanup,prune-ziplm{criterion=obspa},cleanup", "0.6x"),
    ("tiny_bert", "dynamo", "cleanup,prune-ziplm{criterion=magnitude},cleanup", "0.6x"),
    ("tiny_llama", "dynamo", "cleanup,prune-ziplm{criterion=obspa},cleanup", "0.8x"),
    ("tiny_mobilenet", "torchscript", "cleanup,prune-ziplm{criterion=obspa,uniform=true},cleanup", "0.6x"),
    ("tiny_resnet", "torchscript", "cleanup,prune-spa{ratio=0.5},cleanup", None),
]


def decisions(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"budget": report.get("budget", {}).get("ms"), "passes": []}
    for rec in report.get("passes", []):
        entry: dict[str, Any] = {"name": rec.get("name"), "stats": {}}
        for k, v in (rec.get("stats") or {}).items():
            if "time" in k or k.endswith("_s"):
                continue
            entry["stats"][k] = round(v, 6) if isinstance(v, float) else v
        kept, rounds = {}, []
        for d in rec.get("details") or []:
            if "group" in d and "kept" in d:
                kept[d["group"]] = d["kept"]
            if "search_rounds" in d:
                rounds = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                          for r in d["search_rounds"]]
        entry["kept"] = kept
        entry["rounds"] = rounds
        out["passes"].append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from spa_compiler import models_zoo
    from spa_compiler.compile import compile_model, parse_budget
    from spa_compiler.report import Report

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, exporter, pipeline, budget in CASES:
            src = models_zoo.build(name, exporter)
            report = Report()
            compile_model(src, Path(tmp) / "out.onnx", pipeline=pipeline, target="tensorrt",
                          budget=parse_budget(budget) if budget else None,
                          input_shapes=models_zoo.default_shapes(name), report=report, seed=0)
            results[f"{name}/{exporter}/{pipeline}/{budget}"] = decisions(report.to_dict())
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
