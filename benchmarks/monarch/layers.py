"""One linear layer on ONNX Runtime CPU: dense vs pruned widths vs Monarch (standard ONNX and the
runtime_ops MonarchMatMul kernel), each timed in alternation with the dense layer (ratios).

    python -m benchmarks.monarch.layers --rows 512 --shape 1536x384 --shape 384x1536 \
        --threads 1 --runs 30 --out benchmarks/monarch/results/layers-minilm.json

--shape NxK is the layer's output x input width (M is N x K, Y = X M^T). Pruned rows keep a share
of the N outputs (the FFN neurons of an up projection) or of the K inputs (a down projection):
whichever side is the wider one. The Monarch variants are those `MonarchMethod` offers
(`factor.block_choices`, fraction <= --max-fraction). MonarchMatMul needs SPA_ORT_CUSTOM_OPS (the
runtime_ops CPU library); without it that column is left out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa_compiler.ir import ModelIR
from spa_compiler.latency.ort_cpu import OrtCpuProvider
from spa_compiler.monarch import emit as em
from spa_compiler.monarch import factor


def dense_layer(n: int, k: int, rows: int, rng: np.random.Generator, k_in: int | None = None) -> onnx.ModelProto:
    """Y = X W; with k_in > k the input is (rows, k_in) and its first k columns are used (a Slice:
    a pruned down projection timed with the dense layer's feeds)."""
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["xs" if k_in else "x", "w"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(w, "w")]
    if k_in:
        nodes.insert(0, helper.make_node("Slice", ["x", "st", "en", "ax"], ["xs"], name="keep"))
        inits += [numpy_helper.from_array(np.array(v, np.int64), nm) for v, nm in (([0], "st"), ([k], "en"), ([1], "ax"))]
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k_in or k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def monarch_layer(dense: onnx.ModelProto, s: factor.MonarchShape, form: str) -> ModelIR:
    model = ModelIR.from_proto(dense)
    site = em.site_of(model, model.nodes(("MatMul",))[0])
    assert not isinstance(site, str)
    rf, lf = factor.project(site.matrix(model), s.bi, s.bo, s.r)
    em.emit(model, site, rf, lf, form=form)
    model.cleanup()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--shape", action="append", required=True, help="NxK")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-fraction", type=float, default=0.5)
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    prov = OrtCpuProvider(threads=a.threads, runs=a.runs)
    have_op = bool(os.environ.get("SPA_ORT_CUSTOM_OPS"))
    rows_out = []
    x = {"x": rng.standard_normal((a.rows, 1)).astype(np.float32)}
    for spec in a.shape:
        n, k = (int(v) for v in spec.lower().split("x"))
        dense = dense_layer(n, k, a.rows, rng)
        feeds = {"x": rng.standard_normal((a.rows, k)).astype(np.float32)}
        cands: list[tuple[str, float, object]] = []
        for keep in (0.75, 0.5, 0.25):
            if n >= k:
                cands.append((f"pruned {keep:.2f} of N", keep, dense_layer(int(n * keep), k, a.rows, rng)))
            else:
                cands.append((f"pruned {keep:.2f} of K", keep, dense_layer(n, int(k * keep), a.rows, rng, k_in=k)))
        for s in factor.block_choices(n, k, max_fraction=a.max_fraction, count=a.variants):
            cands.append((f"monarch {s.key} onnx", s.fraction, monarch_layer(dense, s, "onnx")))
            if have_op and s.op_compatible:
                cands.append((f"monarch {s.key} MonarchMatMul", s.fraction, monarch_layer(dense, s, "custom-op")))
        for label, frac, m in cands:
            t_dense, t_c = prov.time_many([dense, m], feeds)
            rows_out.append({"shape": [n, k], "rows": a.rows, "candidate": label, "mac_fraction": round(frac, 5),
                             "dense_ms": round(t_dense.ms, 5), "candidate_ms": round(t_c.ms, 5),
                             "ratio": round(t_c.ms / t_dense.ms, 4)})
            print(f"{n}x{k} {label:32s} MACs {frac:6.3f}  {t_c.ms / t_dense.ms:6.3f} of dense "
                  f"({t_dense.ms:.3f} ms dense)", flush=True)
    del x
    out = {"command": "python -m benchmarks.monarch.layers " + " ".join(
        f"--shape {s}" for s in a.shape) + f" --rows {a.rows} --threads {a.threads} --runs {a.runs} "
        f"--max-fraction {a.max_fraction} --variants {a.variants}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(), "machine": platform.processor() or platform.machine(),
        "custom_op_library": os.environ.get("SPA_ORT_CUSTOM_OPS", ""), "rows": rows_out}
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
