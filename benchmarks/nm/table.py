"""Markdown tables from benchmarks/nm/results/*.json (what README.md shows).

    python -m benchmarks.nm.table            # print
    python -m benchmarks.nm.table --write    # replace the tables in README.md
"""

from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
CRITERIA = ("magnitude", "wanda", "wanda-seq", "sparsegpt", "sparsegpt-seq")
DENSE_REF = Path(__file__).resolve().parents[1] / "quality" / "dense_reference.json"
CALIB = {"smollm2": "{n} x 512 tokens (other novels)", "minilm": "256 train sentences",
         "efficientnet": "256 train images"}


def _load(name: str) -> dict | None:
    p = R / name
    return json.loads(p.read_text()) if p.exists() else None


def _dense(model: str, sizes: dict) -> dict | None:
    """The dense model's results at the same sizes: the harness's reference, else a quick-size run here."""
    ref = json.loads(DENSE_REF.read_text()) if DENSE_REF.exists() else {}
    key = {"minilm": "minilm-l6-torchscript", "efficientnet": "efficientnet-lite0-torchscript"}.get(model)
    if key in ref:
        r = ref[key].get("results", ref[key])
        if all(r.get(k) == v for k, v in (("n_train", sizes.get("n_train")),
                                          ("n_test", sizes.get("n_test", sizes.get("n"))))):
            return r
    d = _load(f"{model}-dense-quick.json")
    return d["results"] if d and d.get("sizes") == sizes else None


def _data(model: str, r: dict, crit: str) -> str:
    if crit == "magnitude":
        return "none"
    cmd = r["compile_command"]
    n = len(list(Path(cmd.split("--calib ")[1].split()[0]).glob("*.npz"))) if model == "smollm2" else 0
    cal = CALIB[model].format(n=n or "?")
    st = r["stats"].get("calibration_stages", 1)
    return f"{cal}, " + (f"sequential ({st} stages)" if crit.endswith("-seq") else "one-shot")


def quality() -> str:
    lines = ["| model | criterion | calibration | quality | fidelity to dense | dense | layers 2:4 (skipped) | "
             "mean layer error | compile wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in ("smollm2", "minilm", "efficientnet"):
        for c in CRITERIA:
            r = _load(f"{model}-{c}.json")
            if r is None:
                continue
            q = r["quality"]["results"]
            sizes = r["quality"].get("sizes", {})
            if model == "smollm2":
                fig = f"perplexity **{q['perplexity']:.2f}** ({q['windows']} x 512 tokens)"
                fid = f"KL {q['kl_to_dense']:.3f}, top-1 agreement {q['top1_agreement']:.1%}"
                dense = f"{q['dense_perplexity']:.2f}"
            elif model == "minilm":
                fig = f"probe {q['probe_accuracy']:.1%} ({q['n_train']}/{q['n_test']})"
                fid = f"cosine **{q['cosine_to_dense']:.4f}** (min {q['cosine_to_dense_min']:.3f})"
                d = _dense(model, sizes)
                dense = f"probe {d['probe_accuracy']:.1%}" if d else "?"
            else:
                fig = f"probe {q['probe_accuracy']:.1%} ({q['n_train']}/{q['n_test']})"
                kl = f", KL {q['kl_to_dense']:.3f}" if "kl_to_dense" in q else ""
                fid = (f"top-1 agreement **{q['top1_agreement']:.1%}**{kl}, "
                       f"logit cosine {q['logit_cosine_to_dense']:.3f}")
                d = _dense(model, sizes)
                dense = f"probe {d['probe_accuracy']:.1%}" if d else "?"
            kind = "weight energy" if r["stats"]["error_kind"] == "weight-energy" else "output"
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(r["skipped"].items()))
            lines.append(f"| {model} | {c} | {_data(model, r, c)} | {fig} | {fid} | {dense} | "
                         f"{r['stats']['layers_sparsified']} ({skipped}) | "
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


def h200() -> str:
    """The whole-model op form on ORT CUDA (benchmarks/nm/op_model.py on the H200)."""
    r = _load("op-model-h200.json")
    if r is None:
        return ""
    lines = [f"{r.get('device', '?')}, onnxruntime {r['onnxruntime']} CUDA provider, {r['precision']}, "
             f"{r['weights']}; medians of {len(next(iter(next(iter(r['models'].values()))['shapes'].values()))['median_ms_per_round']['dense'])} "
             "rounds in alternation (dense, pattern, op), each the median of 30 io-bound runs:", "",
             "| model | tokens | dense ms | dense-pattern 2:4 / dense (per round) | NMSparseMatMul op / dense (per round) | "
             "op vs pattern: max rel. diff, cosine | NMSparseMatMul nodes on |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in r["models"].items():
        if "error" in m:
            lines.append(f"| {name} | failed: {m['error']} | | | | | |")
            continue
        d = m["dims"]
        label = f"{name} (d={d['hidden']}, {d['layers']} layers, ff={d['intermediate']}; {m['compile']['op']['forms'].get('NMSparseMatMul', 0)} op sites)"
        for shape, x in m["shapes"].items():
            pr, op = x["ratio_to_dense_per_round"]["pattern"], x["ratio_to_dense_per_round"]["op"]
            where = ", ".join(x.get("placement_op", {}).get("NMSparseMatMul", [])) or "(first shape only)"
            lines.append(f"| {label} | {shape} | {x['median_ms']['dense']:.3f} | "
                         f"**{x['median_ms']['pattern'] / x['median_ms']['dense']:.3f}** ({min(pr):.3f}-{max(pr):.3f}) | "
                         f"**{x['median_ms']['op'] / x['median_ms']['dense']:.3f}** ({min(op):.3f}-{max(op):.3f}) | "
                         f"{x['rel_err_op_vs_pattern']:.1e}, {x['cosine_op_vs_pattern']:.6f} | {where} |")
    return "\n".join(lines)


def write_readme(path: Path = R.parent / "README.md") -> None:
    """Replace the README's marked tables (<!-- NAME --> ... <!-- /NAME -->) with fresh ones."""
    import re

    text = path.read_text()
    for name, fn in (("RESULTS_TABLE", quality), ("CROSSCHECK_TABLE", crosscheck), ("LATENCY_TABLE", latency),
                     ("H200_TABLE", h200)):
        text = re.sub(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", lambda m: m.group(1) + fn() + "\n" + m.group(2),
                      text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_readme()
    else:
        print(quality(), "", crosscheck(), "", latency(), "", h200(), sep="\n")
