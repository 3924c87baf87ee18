"""A whole N:M model on ORT CUDA: dense vs dense-pattern 2:4 vs NMSparseMatMul op form (issue 15).

Builds a BERT encoder with transformers (random weights, seed 0; `--dims minilm` = all-MiniLM-L6's
sizes, `bert-base`), exports it to ONNX (TorchScript exporter), compiles it with the CLI three times
(the dense baseline with `-p cleanup`, so that all three had the same graph cleanup),

    spa-compile export.onnx -o pattern.onnx -p "cleanup,sparsify-nm{keep=all,criterion=magnitude},cleanup"
    spa-compile export.onnx -o op.onnx -p "cleanup,sparsify-nm{keep=all,criterion=magnitude,form=op},cleanup" \
        --target ort-cuda
    (all three with --lower none --no-measure --input-shape NAME:BxS, run at once)

converts the three to fp16 (float32 I/O kept, `latency.ort_cuda.convert_float16`; the op's CUDA
kernel is fp16/bf16), then on the chosen provider with the runtime_ops custom-op library registered:
checks that every weight of the pattern model holds 2:4, which provider ran the NMSparseMatMul
nodes (ORT profile), the op form's outputs against the dense-pattern form's (same weights, so they
must agree up to fp16 rounding), and times dense, pattern and op in alternation (io-binding,
`--rounds` rounds of `--runs` runs each, the median of each round; ratios to dense per round).

    python benchmarks/nm/op_model.py --lib libspa_ort_ops_cuda.so --dims minilm --dims bert-base \
        --shape 1x128 --shape 32x128 --out result.json
    python benchmarks/nm/op_model.py --provider cpu --lib libspa_ort_ops.so --dims tiny --shape 1x16  # smoke

Writes JSON after every model (a timeout keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

DIMS = {  # hidden, layers, heads, intermediate
    "tiny": (64, 2, 2, 256),
    "minilm": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}
PIPE = "cleanup,sparsify-nm{{keep=all,criterion=magnitude{extra}}},cleanup"


def export_bert(dims: str, path: Path, seq: int) -> None:
    import torch
    import transformers

    d, layers, heads, ff = DIMS[dims]
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=ff, vocab_size=30522, attn_implementation="eager")
    model = transformers.BertModel(cfg).eval()
    ids = torch.ones((1, seq), dtype=torch.int64)

    class Wrap(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    axes = {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids", "hidden")}
    torch.onnx.export(Wrap(model), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["hidden"],
                      dynamic_axes=axes, opset_version=17)


def compile_cmd(src: Path, dst: Path, extra: str | None, target: str, shape: tuple[int, int]) -> list[str]:
    hint = "x".join(map(str, shape))
    pipe = "cleanup" if extra is None else PIPE.format(extra=extra)
    return [sys.executable, "-m", "spa_compiler", str(src), "-o", str(dst), "-p", pipe, "--lower", "none",
            "--no-measure", "--target", target, "--report", str(dst) + ".report.json",
            *(a for k in ("input_ids", "attention_mask", "token_type_ids") for a in ("--input-shape", f"{k}:{hint}"))]


def compile_all(jobs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Run the CLI compiles at once (independent processes), then read their reports."""
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k, cmd in jobs.items()}
    res: dict[str, dict[str, Any]] = {}
    for k, pr in procs.items():
        err = pr.communicate()[1]
        cmd = jobs[k]
        if pr.returncode:
            raise RuntimeError(f"{' '.join(cmd)} -> {pr.returncode}: {err[-1500:]}")
        out: dict[str, Any] = {"command": "spa-compile " + " ".join(cmd[3:]),
                               "seconds_all_at_once": round(time.perf_counter() - t0, 1)}
        rep = json.loads(Path(cmd[cmd.index("--report") + 1]).read_text())
        nm = next((p for p in rep["passes"] if p["name"] == "sparsify-nm"), None)
        if nm is not None:
            forms: dict[str, int] = {}
            for d in nm["details"]:
                if "site" in d:
                    forms[d.get("form", "dense")] = forms.get(d.get("form", "dense"), 0) + 1
            out.update({"sites": nm["stats"].get("sites"), "layers_sparsified": nm["stats"].get("layers_sparsified"),
                        "forms": forms, "skipped": nm["skipped"]})
        res[k] = out
    return res


def pattern_check(path: Path) -> dict[str, Any]:
    """Every MatMul/Gemm weight initializer of the pattern model: does it hold 2:4 along K?"""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    ok = bad = 0
    for n in m.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits:
            w = onnx.numpy_helper.to_array(inits[n.input[1]])
            if w.ndim == 2 and w.shape[0] % 4 == 0:
                good = bool(((w.T.reshape(w.shape[1], -1, 4) != 0).sum(axis=2) <= 2).all())
                ok, bad = ok + good, bad + (not good)
    return {"matmul_weights_2of4": ok, "violations": bad}


def fp16(path: Path, out: Path) -> Path:
    from spa_compiler.latency.ort_cuda import convert_float16

    onnx.save(convert_float16(onnx.load(str(path))), str(out))
    return out


def session(path: Path, lib: str | None, provider: str, profile: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if lib:
        so.register_custom_ops_library(lib)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    provs = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    s = ort.InferenceSession(str(path), sess_options=so, providers=provs)
    if provider == "cuda" and s.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"CUDA provider did not load: {s.get_providers()}")
    return s


def placement(path: Path, lib: str | None, provider: str, feeds: dict[str, np.ndarray]) -> dict[str, list[str]]:
    s = session(path, lib, provider, profile=str(path) + ".prof")
    s.run(None, feeds)
    ev = json.load(open(s.end_profiling()))
    out: dict[str, set[str]] = {}
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("kernel_time"):
            out.setdefault(e["args"].get("op_name"), set()).add(e["args"].get("provider"))
    return {k: sorted(v) for k, v in sorted(out.items())}


def runner(sess: Any, feeds: dict[str, np.ndarray], provider: str) -> Any:
    if provider != "cuda":
        return lambda: sess.run(None, feeds)
    from spa_compiler.latency.ort_cuda import iobound_runner

    return iobound_runner(sess, feeds)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def run_dims(dims: str, shapes: list[tuple[int, int]], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"dims": dict(zip(("hidden", "layers", "heads", "intermediate"), DIMS[dims]))}
    raw, dense = work / f"{dims}-export.onnx", work / f"{dims}-dense.onnx"
    t0 = time.perf_counter()
    export_bert(dims, raw, shapes[0][1])
    rec["export_seconds"] = round(time.perf_counter() - t0, 1)
    pattern, op = work / f"{dims}-pattern.onnx", work / f"{dims}-op.onnx"
    rec["compile"] = compile_all({  # dense: the same cleanup as the others
        "dense": compile_cmd(raw, dense, None, "ort-cpu", shapes[0]),
        "pattern": compile_cmd(raw, pattern, "", "ort-cpu", shapes[0]),
        "op": compile_cmd(raw, op, ",form=op", "ort-cuda", shapes[0])})
    rec["pattern_check"] = pattern_check(pattern)
    models = {k: fp16(p, work / f"{dims}-{k}-fp16.onnx") for k, p in
              (("dense", dense), ("pattern", pattern), ("op", op))}
    rng = np.random.default_rng(0)
    rec["shapes"] = {}
    for b, s in shapes:
        feeds = {"input_ids": rng.integers(0, 30522, (b, s), dtype=np.int64),
                 "attention_mask": np.ones((b, s), np.int64), "token_type_ids": np.zeros((b, s), np.int64)}
        r: dict[str, Any] = {}
        sess = {k: session(p, args.lib, args.provider) for k, p in models.items()}
        outs = {k: sess[k].run(None, feeds)[0] for k in sess}
        r["rel_err_op_vs_pattern"] = rel(outs["op"], outs["pattern"])
        r["rel_err_pattern_vs_dense"] = rel(outs["pattern"], outs["dense"])  # what 2:4 itself changes
        cos = float((outs["op"].astype(np.float64).ravel() @ outs["pattern"].astype(np.float64).ravel()) /
                    (np.linalg.norm(outs["op"]) * np.linalg.norm(outs["pattern"]) + 1e-30))
        r["cosine_op_vs_pattern"] = cos
        r["finite"] = {k: bool(np.isfinite(o).all()) for k, o in outs.items()}
        if (b, s) == shapes[0]:
            r["placement_op"] = placement(models["op"], args.lib, args.provider, feeds)
        runs = {k: runner(sess[k], feeds, args.provider) for k in sess}
        for fn in runs.values():
            for _ in range(args.warmup):
                fn()
        med: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, fn in runs.items():  # alternation: dense, pattern, op, dense, ...
                ts = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    fn()
                    ts.append((time.perf_counter() - t) * 1e3)
                med[k].append(float(np.median(ts)))
        r["median_ms_per_round"] = {k: [round(x, 4) for x in v] for k, v in med.items()}
        r["median_ms"] = {k: round(float(np.median(v)), 4) for k, v in med.items()}
        r["ratio_to_dense_per_round"] = {k: [round(x / d, 4) for x, d in zip(med[k], med["dense"])]
                                         for k in ("pattern", "op")}
        rec["shapes"][f"{b}x{s}"] = r
        del sess, runs
        print(dims, f"{b}x{s}", json.dumps({k: r[k] for k in ("median_ms", "rel_err_op_vs_pattern")}), flush=True)
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", help="runtime_ops custom-op library (CUDA build for --provider cuda)")
    p.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dims", action="append", choices=sorted(DIMS))
    p.add_argument("--shape", action="append", help="BATCHxSEQ (the first is also the export's)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import onnxruntime as ort

    shapes = [tuple(int(x) for x in s.split("x")) for s in (args.shape or ["1x128"])]
    res: dict[str, Any] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                           "provider": args.provider, "onnxruntime": ort.__version__, "python": platform.python_version(),
                           "precision": "fp16 (float32 I/O)", "weights": "random (transformers BertModel init, seed 0)",
                           "models": {}}
    try:
        import torch

        res["torch"] = torch.__version__
        if torch.cuda.is_available():
            res["device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational
        pass
    work = Path(tempfile.mkdtemp(prefix="nm_op_model_"))
    for dims in args.dims or ["minilm"]:
        try:
            res["models"][dims] = run_dims(dims, shapes, args, work)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - record and go on with the next size
            import traceback

            res["models"][dims] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            print(dims, "failed:", e, flush=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1)[-6000:])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    raise SystemExit(main())
