"""ORT CPU: the spa.ops CPU kernels against ONNX Runtime's dense MatMul of the same shape (and
against the ops' standard-ONNX decompositions), float32, one-node models.

    python benchmarks/runtime_ops/cpu_bench.py [--threads 1,2] [--out results/cpu.json]

The five sessions of a shape (dense MatMul, Monarch kernel, Monarch decomposed, 2:4 kernel, 2:4
decomposed) run in turn, round robin, after warm-up, one intra-op thread; each `*_ms` number is
the median CPU time of the calling thread per run (ORT computes there with one thread), each
`*_wall_ms` the median wall time. The dense MatMul has the same X and output shape with a dense random
weight. The load average is recorded: on a shared 2-core machine, absolute numbers move with the
load, the ratios (measured side by side) much less. Builds the library first if needed (python -m spa_compiler.runtime_ops.build).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from spa_compiler import runtime_ops
from spa_compiler.runtime_ops.build import build
from spa_compiler.runtime_ops.nm_sparse_matmul import reference as nref

F = TensorProto.FLOAT
# (name, rows, K, N, b, r) -- the H200 table's widths, fewer rows (one CPU core)
SHAPES = [
    ("MiniLM FFN up", 256, 384, 1536, 8, 2),
    ("BERT-base attn out", 256, 768, 768, 16, 1),
    ("BERT-base FFN up", 256, 768, 3072, 16, 1),
    ("BERT-large FFN up", 256, 1024, 4096, 32, 1),
    ("SmolLM2 FFN up", 256, 576, 1536, 12, 4),
    ("LLaMA-7B FFN up", 64, 4096, 11008, 16, 1),
    ("LLaMA-7B FFN down", 64, 11008, 4096, 16, 1),
    ("4096 square", 128, 4096, 4096, 64, 1),
    ("8192^3 (64 rows)", 64, 8192, 8192, 64, 1),
    ("decode 1", 1, 4096, 11008, 16, 1),
    ("decode 16", 16, 4096, 11008, 16, 1),
]


def graph(node, inits, k, n, rows):
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", F, [rows, k])],
        [helper.make_tensor_value_info("Y", F, [rows, n])], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(runtime_ops.DOMAIN, 1)]
    )
    m.ir_version = 9
    return m


def session(model, threads, lib=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if lib:
        so.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def timed_alternating(
    sessions: dict, x, min_s: float = 0.6, max_runs: int = 100
) -> dict[str, float]:
    """Per session: median wall ms and median CPU ms of the calling thread per run, the sessions
    run in turn (round robin). With one intra-op thread ORT computes on the calling thread, so
    the CPU time is the work itself even while other processes hold the cores."""
    feed = {"X": x}
    for s in sessions.values():
        for _ in range(2):
            s.run(None, feed)
    wall: dict[str, list[float]] = {k: [] for k in sessions}
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    start = time.thread_time()
    while min(len(v) for v in wall.values()) < 5 or (
        time.thread_time() - start < min_s * len(sessions)
        and min(len(v) for v in wall.values()) < max_runs
    ):
        for k, s in sessions.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            s.run(None, feed)
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.thread_time() - c0) * 1e3)
    out = {k: statistics.median(v) for k, v in cpu.items()}
    out.update({k.replace("_ms", "_wall_ms"): statistics.median(v) for k, v in wall.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu.json"))
    a = ap.parse_args()
    lib = build(trt=False)[runtime_ops.ORT_LIBRARY]
    rng = np.random.default_rng(0)
    rows_out = []
    for name, rows, k, n, b, r in SHAPES:
        x = rng.standard_normal((rows, k)).astype(np.float32)
        wd = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        dense = graph(
            helper.make_node("MatMul", ["X", "W"], ["Y"]),
            [numpy_helper.from_array(wd, "W")],
            k,
            n,
            rows,
        )
        kb, nq = k // b, n // b
        R = rng.standard_normal((b, b * r, kb)).astype(np.float32)
        L = rng.standard_normal((b, nq, b * r)).astype(np.float32)
        mon = graph(
            helper.make_node("MonarchMatMul", ["X", "R", "L"], ["Y"], domain=runtime_ops.DOMAIN),
            [numpy_helper.from_array(R, "R"), numpy_helper.from_array(L, "L")], k, n, rows,
        )  # fmt: skip
        v, m = nref.compress(nref.magnitude_24(wd.T.copy()))
        nm = graph(
            helper.make_node("NMSparseMatMul", ["X", "values", "meta"], ["Y"], domain=runtime_ops.DOMAIN),
            [numpy_helper.from_array(v, "values"), numpy_helper.from_array(m, "meta")], k, n, rows,
        )  # fmt: skip
        for threads in (int(t) for t in a.threads.split(",")):
            row = {"shape": name, "rows": rows, "K": k, "N": n, "b": b, "r": r, "threads": threads}
            sessions = {
                "dense_ms": session(dense, threads),
                "monarch_ms": session(mon, threads, lib),
                "monarch_decomposed_ms": session(runtime_ops.decompose(mon), threads),
                "nm_ms": session(nm, threads, lib),
                "nm_decomposed_ms": session(runtime_ops.decompose(nm), threads),
            }
            row.update(timed_alternating(sessions, x))
            row["load_average_1min"] = os.getloadavg()[0]
            row["monarch_flops_ratio"] = b * r * (k + n) / (k * n)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({"ort": ort.__version__, "rows": rows_out}, indent=1))
    print(
        "\n(CPU ms of the computing thread, medians)\n| shape | rows x K -> N | threads | dense ms | Monarch ms (dense/it) | Monarch decomposed ms | 2:4 ms (dense/it) | 2:4 decomposed ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows_out:
        print(
            f"| {r['shape']} | {r['rows']}x{r['K']}->{r['N']} | {r['threads']} | {r['dense_ms']:.3f} | "
            f"{r['monarch_ms']:.3f} ({r['dense_ms'] / r['monarch_ms']:.2f}) | {r['monarch_decomposed_ms']:.3f} | "
            f"{r['nm_ms']:.3f} ({r['dense_ms'] / r['nm_ms']:.2f}) | {r['nm_decomposed_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
