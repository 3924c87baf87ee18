"""Markdown tables from benchmarks/nm/results/*.json (what README.md shows).

    python -m benchmarks.nm.table
"""

from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
CRITERIA = ("magnitude", "wanda", "sparsegpt")


def _load(name: str) -> dict | None:
    p = R / name
    return json.loads(p.read_text()) if p.exists() else None


def quality() -> str:
    lines = ["| model | criterion | data | figure | dense | layers 2:4 (skipped) | mean layer error | compile wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in ("smollm2", "minilm", "efficientnet"):
        for c in CRITERIA:
            r = _load(f"{model}-{c}.json")
            if r is None:
                continue
            q = r["quality"]["results"]
            if model == "smollm2":
                fig = f"perplexity **{q['perplexity']:.2f}** ({q['windows']} x 512 tokens)"
                dense = f"{q['dense_perplexity']:.2f}"
            elif model == "minilm":
                fig = f"cosine to dense **{q['cosine_to_dense']:.4f}** (min {q['cosine_to_dense_min']:.3f}), probe {q['probe_accuracy']:.1%}"
                d = _load("minilm-dense-quick.json")
                dense = "cosine 1" + (f", probe {d['results']['probe_accuracy']:.1%}" if d else "")
            else:
                fig = (f"top-1 agreement **{q['top1_agreement']:.1%}**, logit cosine {q['logit_cosine_to_dense']:.3f}, "
                       f"probe {q['probe_accuracy']:.1%}")
                d = _load("efficientnet-dense-quick.json")
                dense = "agreement 100%" + (f", probe {d['results']['probe_accuracy']:.1%}" if d else "")
            data = "none" if c == "magnitude" else "calibration"
            kind = "weight energy" if r["stats"]["error_kind"] == "weight-energy" else "output"
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(r["skipped"].items()))
            lines.append(f"| {model} | {c} | {data} | {fig} | {dense} | {r['stats']['layers_sparsified']} ({skipped}) | "
                         f"{r['stats']['mean_error_applied']:.4f} ({kind}) | {r['compile_seconds']:.0f} s |")
    return "\n".join(lines)


def crosscheck() -> str:
    lines = ["| model | layers | calibration feeds | max relative difference | mean | file |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model in ("minilm", "smollm2"):
        r = _load(f"crosscheck-{model}.json")
        if r is None:
            continue
        lines.append(f"| {model} | {r['layers']} | {r['feeds']} | **{r['max_relative_difference']:.4%}** | "
                     f"{r['mean_relative_difference']:.4%} | results/crosscheck-{model}.json |")
    if len(lines) == 2:
        lines.append("| (not finished in this session: `run.sh crosscheck-minilm` was still running at the "
                     "deadline under load 20-30) | | | | | |")
    return "\n".join(lines)


def latency() -> str:
    lines = []
    r = _load("latency-minilm-ort-cpu.report.json")
    if r is not None:
        nm = next(p for p in r["passes"] if p["name"] == "sparsify-nm")
        lines += ["MiniLM-L6 (1 x 128 tokens) on ORT CPU, `sparsify-nm{criterion=magnitude}` (keep=measured):",
                  "", "| layer kind (sites) | 2:4 saving, share of the model (measured in context) | kept |",
                  "| --- | --- | --- |"]
        dense = next(p["stats"].get("table_dense_ms") for p in r["passes"] if p["name"] == "sparsify-nm")
        seen: dict[str, list] = {}
        for d in (d for d in nm["details"] if "site" in d):
            key = f"{d['op']} {d['shape'][0]}x{d['shape'][1]}"
            seen.setdefault(key, []).append(d)
        st = nm["stats"]
        if "confirm_ratios" in st:
            lines.insert(1, f"(whole-model confirmation, candidate / slower dense copy per round: "
                            f"{', '.join(f'{x:.3f}' for x in st['confirm_ratios'])}; layers kept: "
                            f"{st['layers_sparsified']} of {st['sites']})")
        for key, ds in seen.items():
            gain = sum(d["measured_gain_ms"]["2:4"] for d in ds)
            lines.append(f"| {key} ({len(ds)}) | {gain / dense:+.2%} of {dense:.3f} ms | "
                         f"{sum(d['applied'] for d in ds)} of {len(ds)} |")
    t = _load("tensorrt-minilm.report.json")
    if t is not None:
        dep = t["output"]["deploy"]
        nm = next(p for p in t["passes"] if p["name"] == "sparsify-nm")
        lines += ["", f"`--preset nm --target tensorrt` on MiniLM (no GPU here: the prior decides, "
                      f"{nm['stats']['layers_sparsified']} of {nm['stats']['sites']} layers 2:4), deploy check with "
                      f"{dep.get('runtime')}: dense build ok={dep['dense']['ok']} ({dep['dense']['engine_bytes']} bytes), "
                      f"sparse-weights build ok={dep['sparse_weights']['ok']} ({dep['sparse_weights']['engine_bytes']} bytes); "
                      f"sparse layers: {dep['sparse_weights'].get('sparse_layers')}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(quality(), "", crosscheck(), "", latency(), sep="\n")
