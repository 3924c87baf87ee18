"""An independent SparseGPT, to check the compiler's per-layer N:M errors on the same layers and data.

Nothing here is imported from spa_compiler: the layer inputs are captured with plain ONNX Runtime
(the layers' activation inputs added as graph outputs), the Hessian is H = 2/n X^T X accumulated in
float64, SparseGPT's N:M branch is transcribed from IST-DASLab/sparsegpt (`SparseGPT.fasterprune`:
dead inputs zeroed, percdamp on the mean diagonal, Cholesky of H^-1 in upper form, blocks of 128,
mask per group of m by w^2 / d^2 at the group's first column, errors pushed left to right) in
torch, and the error of a layer is measured from the captured activations directly:
sum ||X (W - W')^T||^2 / sum ||X W^T||^2.

    python -m benchmarks.nm.crosscheck --model dense.onnx --report report.json \
        --calib benchmarks/quality/evaluate.py:smollm2_calibration --calib-n 16 --sites 0,14,29 \
        --out benchmarks/nm/results/crosscheck-smollm2.json

`--report` is the compiler's report of `sparsify-nm{criterion=sparsegpt,keep=all}` compiled with
the same calibration feeds; the output lists, per layer, both errors and their relative difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper


def sparsegpt_nm_reference(w: torch.Tensor, h: torch.Tensor, prunen: int, prunem: int, *,
                           blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT.fasterprune's N:M path (prunen of every prunem weights removed), float64."""
    W = w.clone().double()
    H = h.clone().double()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w_col = W1[:, i]
            d = Hinv1[i, i]
            if i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w_col.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w_col - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _feeds(spec: str, n: int | None) -> list[dict[str, np.ndarray]]:
    if Path(spec).is_dir():  # a folder of .npz feeds (benchmarks.quality.run --write-calib)
        files = sorted(Path(spec).glob("*.npz"))[: n or None]
        return [dict(np.load(f)) for f in files]
    path, _, fn = spec.rpartition(":")
    sp = importlib.util.spec_from_file_location("calib_mod", path)
    mod = importlib.util.module_from_spec(sp)  # type: ignore[arg-type]
    sys.modules["calib_mod"] = mod
    sp.loader.exec_module(mod)  # type: ignore[union-attr]
    gen = getattr(mod, fn)(n) if n else getattr(mod, fn)()
    return list(gen)


def _layers(model: onnx.ModelProto, sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per compiler site: node, activation input, weight tensor name and orientation.

    A weight is an initializer, or (exporters that keep ``Transpose(W)`` in the graph, e.g. torch's
    dynamo exporter, where the compiler folds it into a constant) a tensor computed from one: its
    value is then captured from ONNX Runtime like the activations (`_weights`)."""
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for s in sites:
        node = nodes.get(s["node"])
        if node is None or len(node.input) < 2 or node.input[1] != s["site"]:
            continue
        if node.op_type == "MatMul":
            transpose = True  # X @ W, W (K, N)
        elif node.op_type == "Gemm":
            transpose = not any(a.name == "transB" and a.i for a in node.attribute)
        else:
            continue  # this check covers activations-on-the-left MatMul/Gemm only
        out.append({"site": s["site"], "node": s["node"], "input": node.input[0], "transpose": transpose,
                    "compiler_error": s["error"]})
    return out


def _weights(layers: list[dict[str, Any]], inits: dict[str, Any], computed: dict[str, np.ndarray]) -> None:
    """Each layer's weight as float64 (rows = outputs, cols = K)."""
    for l in layers:
        name = l["site"]
        w = numpy_helper.to_array(inits[name]) if name in inits else computed[name]
        w = np.asarray(w, dtype=np.float64)
        l["w"] = w.T if l.pop("transpose") else w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--calib", required=True, help="file.py:function yielding feeds, or a folder of .npz feeds")
    p.add_argument("--calib-n", type=int)
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--sites", default="", help="regex: only sites whose node name matches (default all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.time()
    report = json.loads(Path(a.report).read_text())
    nm = next(x for x in report["passes"] if x["name"] == "sparsify-nm")
    sites = [{"site": d["site"], "node": d["node"], "error": d["error"][a.pattern]}
             for d in nm["details"] if "site" in d and a.pattern in d.get("error", {})]
    if a.sites:
        rx = re.compile(a.sites)
        sites = [s for s in sites if rx.search(s["node"])]
    model = onnx.load(a.model)
    layers = _layers(model, sites)
    if not layers:
        raise SystemExit(f"crosscheck: no compiler site of {a.report} matches --sites {a.sites!r} in {a.model}")
    names = sorted({l["input"] for l in layers})
    inits = {t.name: t for t in model.graph.initializer}
    computed_w = sorted({l["site"] for l in layers} - set(inits))
    # capture: the layers' inputs (and weights computed in the graph) as extra graph outputs
    known = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for nme in names + computed_w:
        vi = onnx.ValueInfoProto()
        vi.name = nme
        if nme in known:
            vi.type.tensor_type.elem_type = known[nme].type.tensor_type.elem_type
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        model.graph.output.append(vi)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    feeds = _feeds(a.calib, a.calib_n)
    first = sess.run(computed_w, {k: np.asarray(feeds[0][k]) for k in inputs}) if computed_w else []
    _weights(layers, inits, dict(zip(computed_w, first)))
    k_of = {l["input"]: l["w"].shape[1] for l in layers}
    xtx = {nme: np.zeros((k_of[nme], k_of[nme])) for nme in names}
    count = dict.fromkeys(names, 0)
    stash: dict[str, list[np.ndarray]] = {nme: [] for nme in names}
    for f in feeds:
        vals = sess.run(names, {k: np.asarray(f[k]) for k in inputs})
        for nme, v in zip(names, vals):
            x = np.asarray(v, dtype=np.float64).reshape(-1, k_of[nme])
            xtx[nme] += x.T @ x
            count[nme] += x.shape[0]
            stash[nme].append(x.astype(np.float32))
    n, m = (int(v) for v in a.pattern.split(":"))
    rows = []
    for l in layers:
        h = torch.from_numpy(2.0 * xtx[l["input"]] / count[l["input"]])
        w = torch.from_numpy(l["w"])
        wn = sparsegpt_nm_reference(w, h, m - n, m).numpy()
        num = den = 0.0
        for x in stash[l["input"]]:
            x64 = x.astype(np.float64)
            num += float(((x64 @ (l["w"] - wn).T) ** 2).sum())
            den += float(((x64 @ l["w"].T) ** 2).sum())
        ref = num / den
        rows.append({"site": l["site"], "node": l["node"], "reference_error": ref,
                     "compiler_error": l["compiler_error"],
                     "relative_difference": abs(l["compiler_error"] - ref) / ref if ref else 0.0})
    worst = max((r["relative_difference"] for r in rows), default=0.0)
    out = {"command": " ".join(["python -m benchmarks.nm.crosscheck", *(argv or sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "pattern": a.pattern, "layers": len(rows), "feeds": len(feeds),
           "max_relative_difference": worst,
           "mean_relative_difference": float(np.mean([r["relative_difference"] for r in rows])) if rows else 0.0,
           "seconds": round(time.time() - t0, 1), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(rows)} layers, max relative difference {worst:.3%} -> {a.out}")
    return 0 if worst <= 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
