"""Monarch's standard-ONNX form vs one dense MatMul on ONNX Runtime CUDA (fp16), self-contained
(numpy + onnx + onnxruntime-gpu only: the GPU machine has no onnx-graphsurgeon).

The Monarch graph is the one `spa_compiler.monarch.emit` writes (form "onnx", same node sequence
and factor layouts); weights are random (latency does not depend on values). Each pair is timed in
alternation, io-binding on the GPU, medians of --runs after warm-up.

    python benchmarks/monarch/cuda_probe.py --out $OUT/monarch_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F16 = TensorProto.FLOAT16


def dense_model(n: int, k: int) -> onnx.ModelProto:
    w = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float16)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
                          [helper.make_tensor_value_info("x", F16, ["rows", k])],
                          [helper.make_tensor_value_info("y", F16, ["rows", n])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def monarch_model(n: int, k: int, b: int, r: int) -> onnx.ModelProto:
    kb, nq = k // b, n // b
    rng = np.random.default_rng(1)
    rt = (rng.standard_normal((b, kb, b * r)) / np.sqrt(kb)).astype(np.float16)
    lt = (rng.standard_normal((b, b * r, nq)) / np.sqrt(b * r)).astype(np.float16)
    c = {"s1": [-1, b, kb], "s2": [b, -1, b, r], "s3": [b, -1, b * r], "zero": [0], "m1": [-1], "n": [n]}
    inits = [numpy_helper.from_array(rt, "Rt"), numpy_helper.from_array(lt, "Lt")]
    inits += [numpy_helper.from_array(np.array(v, np.int64), key) for key, v in c.items()]
    mk = helper.make_node
    nodes = [mk("Reshape", ["x", "s1"], ["x3"]), mk("Transpose", ["x3"], ["xt"], perm=[1, 0, 2]),
             mk("MatMul", ["xt", "Rt"], ["u"]), mk("Reshape", ["u", "s2"], ["u4"]),
             mk("Transpose", ["u4"], ["ut"], perm=[2, 1, 0, 3]), mk("Reshape", ["ut", "s3"], ["v"]),
             mk("MatMul", ["v", "Lt"], ["w"]), mk("Transpose", ["w"], ["wt"], perm=[1, 2, 0]),
             mk("Shape", ["x"], ["xs"]), mk("Slice", ["xs", "zero", "m1"], ["lead"]),
             mk("Concat", ["lead", "n"], ["ys"], axis=0), mk("Reshape", ["wt", "ys"], ["y"])]
    g = helper.make_graph(nodes, "monarch", [helper.make_tensor_value_info("x", F16, ["rows", k])],
                          [helper.make_tensor_value_info("y", F16, ["rows", n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    cases = [  # (label, N, K, rows, [(b, r), ...])
        ("minilm up", 1536, 384, 512, [(4, 4), (4, 16), (16, 4)]),
        ("minilm down", 384, 1536, 512, [(4, 4), (4, 16), (16, 4)]),
        ("smollm2 up/gate", 1536, 576, 128, [(4, 4), (4, 16), (16, 4)]),
        ("smollm2 down", 576, 1536, 128, [(4, 4), (4, 16), (16, 4)]),
        ("smollm2 up/gate, 8192 rows", 1536, 576, 8192, [(4, 4), (4, 16), (16, 4)]),
        ("4096 square, 8192 rows", 4096, 4096, 8192, [(64, 1), (16, 8), (8, 32)]),
    ]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    prov = ["CUDAExecutionProvider"]
    out = {"device": None, "ort": ort.__version__, "runs": a.runs, "rows": []}
    for label, n, k, rows, variants in cases:
        x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(2).standard_normal((rows, k)).astype(np.float16),
                                             "cuda", 0)
        def make(m):
            s = ort.InferenceSession(m.SerializeToString(), so, providers=prov)
            bnd = s.io_binding()
            bnd.bind_ortvalue_input("x", x)
            bnd.bind_output("y", "cuda")
            return s, bnd
        dense = make(dense_model(n, k))
        for b, r in variants:
            mon = make(monarch_model(n, k, b, r))
            for s, bnd in (dense, mon):
                for _ in range(20):
                    s.run_with_iobinding(bnd)
            td, tm = [], []
            for _ in range(a.runs):
                for (s, bnd), acc in ((dense, td), (mon, tm)):
                    t = time.perf_counter()
                    s.run_with_iobinding(bnd)
                    bnd.synchronize_outputs()
                    acc.append(time.perf_counter() - t)
            d_ms, m_ms = statistics.median(td) * 1e3, statistics.median(tm) * 1e3
            frac = r * (b * k + b * n) / (n * k)
            out["rows"].append({"case": label, "n": n, "k": k, "rows": rows, "variant": f"b{b}r{r}",
                                "mac_fraction": round(frac, 4), "dense_ms": round(d_ms, 4),
                                "monarch_ms": round(m_ms, 4), "ratio": round(m_ms / d_ms, 3)})
            print(f"{label:28s} b{b}r{r:<3d} MACs {frac:.3f}: dense {d_ms:.4f} ms, monarch {m_ms:.4f} ms, "
                  f"ratio {m_ms / d_ms:.3f}", flush=True)
    try:
        import torch

        out["device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    with open(a.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
