"""On the H200: correctness of both ops' CUDA kernels through ONNX Runtime's CUDA provider
(poisoned outputs, fresh inputs), then timings against cuBLAS dense in the same run.

    python gpu_run.py --lib /path/libspa_ort_ops_cuda.so --out DIR [--quick]

Kernel-level timings: each op called directly (the library's C entry, ctypes) and cuBLAS through
torch.matmul, both captured in a CUDA graph of 20 calls that rotate over 4 input/output sets (so
inputs do not sit in L2), replayed 10 times: median time per call. ORT-level timings: one-node
models (the op vs a dense MatMul with the same input/output), io-binding, median wall time of
run_with_iobinding, without and with ORT's CUDA graph (enable_cuda_graph). Writes gpu_results.json
(everything) and prints markdown tables last.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
import traceback
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
for cand in (os.path.join(HERE, "py"), os.path.join(HERE, "..", "..")):
    if os.path.isdir(os.path.join(cand, "runtime_ops")):
        sys.path.insert(0, os.path.abspath(cand))
        break

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import runtime_ops as ro  # noqa: E402  (the project's runtime_ops folder, as a top-level package)
from runtime_ops.monarch_matmul import reference as mref  # noqa: E402
from runtime_ops.nm_sparse_matmul import reference as nref  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = torch.device("cuda")
RESULTS: dict = {"env": {}, "correctness": [], "kernel": [], "ort": [], "errors": []}
OUT = "."

# (name, rows, K, N, b, r)
MONARCH = [
    ("MiniLM FFN up", 8192, 384, 1536, 8, 2),
    ("BERT-base attn out", 8192, 768, 768, 16, 1),
    ("BERT-base FFN up", 8192, 768, 3072, 16, 1),
    ("BERT-large FFN up", 8192, 1024, 4096, 32, 1),
    ("SmolLM2 FFN up", 8192, 576, 1536, 12, 4),
    ("LLaMA-7B FFN up", 4096, 4096, 11008, 16, 1),
    ("LLaMA-7B FFN down", 4096, 11008, 4096, 16, 1),
    ("4096 square", 8192, 4096, 4096, 64, 1),
    ("8192^3", 8192, 8192, 8192, 64, 1),
    ("decode 1", 1, 4096, 11008, 16, 1),
    ("decode 16", 16, 4096, 11008, 16, 1),
]
# (name, rows, K, N)
NM = [
    ("MiniLM FFN up", 8192, 384, 1536),
    ("BERT-base FFN up", 8192, 768, 3072),
    ("BERT-large FFN up", 8192, 1024, 4096),
    ("SmolLM2 FFN up", 8192, 576, 1536),
    ("LLaMA-7B FFN up", 4096, 4096, 11008),
    ("LLaMA-7B FFN down", 4096, 11008, 4096),
    ("8192^3", 8192, 8192, 8192),
    ("decode 1", 1, 4096, 11008),
    ("decode 16", 16, 4096, 11008),
    ("decode 64", 64, 4096, 11008),
]


def save() -> None:
    with open(os.path.join(OUT, f"gpu_results{ARGS.tag if ARGS else ''}.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def section(fn):
    def run(*a, **k):
        t0 = time.time()
        try:
            fn(*a, **k)
        except Exception as e:  # keep going: one broken section must not lose the others
            RESULTS["errors"].append(
                {"section": fn.__name__, "error": repr(e), "trace": traceback.format_exc()[-3000:]}
            )
            print(f"!! {fn.__name__} failed: {e!r}", flush=True)
        print(f"== {fn.__name__}: {time.time() - t0:.1f}s", flush=True)
        save()

    return run


# ------------------------------------------------------------------------------ helpers
class Lib:
    def __init__(self, path: str) -> None:
        self.path = path
        self.c = ctypes.CDLL(path)
        c = self.c
        c.spa_monarch_cuda.restype = ctypes.c_int
        c.spa_monarch_cuda.argtypes = (
            [ctypes.c_int]
            + [ctypes.c_void_p] * 5
            + [ctypes.c_int64] * 5
            + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        )
        c.spa_nm_cuda_create.restype = ctypes.c_void_p
        c.spa_nm_cuda_create.argtypes = [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        c.spa_nm_cuda_run.restype = ctypes.c_int
        c.spa_nm_cuda_run.argtypes = [ctypes.c_void_p] * 6 + [
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        c.spa_nm_cuda_destroy.argtypes = [ctypes.c_void_p]
        self.err = ctypes.create_string_buffer(512)

    def monarch(self, x, r, l_, bias, y, b, rr, kb, nq):
        dt = 10 if x.dtype == torch.float16 else 1
        rc = self.c.spa_monarch_cuda(
            dt,
            x.data_ptr(),
            r.data_ptr(),
            l_.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            y.data_ptr(),
            x.numel() // x.shape[-1],
            b,
            rr,
            kb,
            nq,
            torch.cuda.current_stream().cuda_stream,
            self.err,
            512,
        )
        if rc:
            raise RuntimeError(self.err.value.decode())

    def nm_runner(self, dtype, n, k):
        dt = 10 if dtype == torch.float16 else 16
        h = self.c.spa_nm_cuda_create(dt, n, k, self.err, 512)
        if not h:
            raise RuntimeError(self.err.value.decode())
        return h

    def nm(self, h, x, values, meta, bias, y):
        rc = self.c.spa_nm_cuda_run(
            h,
            x.data_ptr(),
            values.data_ptr(),
            meta.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            y.data_ptr(),
            x.numel() // x.shape[-1],
            torch.cuda.current_stream().cuda_stream,
            self.err,
            512,
        )
        if rc:
            raise RuntimeError(self.err.value.decode())


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    g = got.double()
    if not torch.isfinite(g).all():
        return float("inf")
    return float((g - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def graph_time(fn_list, reps: int = 10) -> float:
    """Median ms per call of a CUDA graph that runs the callables in fn_list once each."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fn_list[:4]:
            f()  # warm-up outside the capture (plans, handles)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fn_list:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(fn_list))
    return statistics.median(times)


def model(op_type, inputs, out_elem, out_dims, nodes=None):
    ins, inits = [], []
    for name, value, elem, dims in inputs:
        if value is None:
            ins.append(helper.make_tensor_value_info(name, elem, dims))
        else:
            inits.append(numpy_helper.from_array(value, name))
    if nodes is None:
        nodes = [
            helper.make_node(op_type, [n for n, *_ in inputs], ["Y"], domain=ro.DOMAIN, name="op")
        ]
    g = helper.make_graph(
        nodes, "g", ins, [helper.make_tensor_value_info("Y", out_elem, out_dims)], initializer=inits
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ro.DOMAIN, 1)]
    )
    m.ir_version = 9
    return m


def dense_model(w_t: np.ndarray, elem, rows_dim="B"):
    k, n = w_t.shape
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="dense")
    return model(
        None,
        [("X", None, elem, [rows_dim, k]), ("W", w_t, elem, None)],
        elem,
        [rows_dim, n],
        nodes=[node],
    )


def session(m, lib: str | None, cuda_graph: bool = False):
    so = ort.SessionOptions()
    so.add_session_config_entry(
        "session.disable_cpu_ep_fallback", "1"
    )  # every node on the GPU, or fail
    if lib:
        so.register_custom_ops_library(lib)
    opts = {"enable_cuda_graph": "1"} if cuda_graph else {}
    return ort.InferenceSession(
        m.SerializeToString(), so, providers=[("CUDAExecutionProvider", opts)]
    )


TORCH2ONNX = {
    torch.float16: TensorProto.FLOAT16,
    torch.float32: TensorProto.FLOAT,
    torch.bfloat16: TensorProto.BFLOAT16,
}


def bind_run(sess, x: torch.Tensor, y: torch.Tensor):
    """io-binding of X and Y to torch CUDA tensors (element type as an ONNX type code)."""
    b = sess.io_binding()
    b.bind_input("X", "cuda", 0, TORCH2ONNX[x.dtype], tuple(x.shape), x.data_ptr())
    b.bind_output("Y", "cuda", 0, TORCH2ONNX[y.dtype], tuple(y.shape), y.data_ptr())
    return b


def ort_time(sess, binding, runs: int = 40) -> float:
    for _ in range(5):
        sess.run_with_iobinding(binding)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def monarch_factors(b, r, k, n, dtype, gen):
    kb, nq = k // b, n // b
    scale_r, scale_l = 1 / np.sqrt(kb), 1 / np.sqrt(b * r)
    R = (torch.randn(b, b * r, kb, generator=gen, device=DEV) * scale_r).to(dtype)
    L = (torch.randn(b, nq, b * r, generator=gen, device=DEV) * scale_l).to(dtype)
    return R, L, kb, nq


def monarch_ref(x, R, L, bias):
    """reference.py's convention evaluated in float32 on the GPU (float64 oracle checked on small shapes)."""
    b, br, kb = R.shape
    r = br // b
    nq = L.shape[1]
    xr = x.float().reshape(-1, b, kb)
    rr = R.float().reshape(b, b, r, kb)
    ll = L.float().reshape(b, nq, b, r)
    u = torch.einsum("jtps,Bjs->Bjtp", rr, xr)
    y = torch.einsum("tqjp,Bjtp->Bqt", ll, u).reshape(x.shape[:-1] + (nq * b,))
    return y + bias.float() if bias is not None else y


def nm_weights(n, k, dtype, gen):
    w = (torch.randn(n, k, generator=gen) / np.sqrt(k)).float().numpy()
    w = nref.magnitude_24(w)
    v, m = nref.compress(w)
    return w, v, m


# ------------------------------------------------------------------------------ sections
@section
def env(lib: Lib) -> None:
    e = RESULTS["env"]
    e["gpu"] = torch.cuda.get_device_name()
    e["torch"] = torch.__version__
    e["onnxruntime"] = ort.__version__
    e["providers"] = ort.get_available_providers()
    p = torch.cuda.get_device_properties(0)
    e["sms"] = p.multi_processor_count
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    e["copy_GBps"] = 2 * (1 << 30) / (statistics.median(ts) * 1e-3) / 1e9  # read + write
    del x, y
    print(json.dumps(e), flush=True)


@section
def correctness_monarch_reference_small() -> None:
    """The CUDA path through ORT against reference.py (float64) itself, small shapes."""
    lib = ARGS.lib
    rng = np.random.default_rng(1)
    for dtype, elem in ((np.float16, TensorProto.FLOAT16), (np.float32, TensorProto.FLOAT)):
        for rows, b, r, kb, nq, bias in [
            (1, 4, 1, 16, 16, False),
            (37, 4, 1, 16, 16, True),
            (7, 3, 2, 5, 7, True),
            (130, 16, 1, 48, 192, True),
            (33, 24, 1, 32, 32, False),
            (2, 1, 1, 9, 5, True),
        ]:
            R = rng.standard_normal((b, b * r, kb)).astype(dtype)
            L = rng.standard_normal((b, nq, b * r)).astype(dtype)
            bv = rng.standard_normal(nq * b).astype(dtype) if bias else None
            ins = [("X", None, elem, ["B", b * kb]), ("R", R, elem, None), ("L", L, elem, None)]
            if bias:
                ins.append(("bias", bv, elem, None))
            sess = session(model("MonarchMatMul", ins, elem, ["B", nq * b]), lib)
            worst = 0.0
            for _ in range(2):  # fresh inputs each run, poisoned output
                x = rng.standard_normal((rows, b * kb)).astype(dtype)
                xt = torch.from_numpy(x).to(DEV)
                y = torch.full((rows, nq * b), float("nan"), dtype=xt.dtype, device=DEV)
                sess.run_with_iobinding(bind_run(sess, xt, y))
                torch.cuda.synchronize()
                ref = mref.monarch_matmul(x.astype(np.float64), R, L, bv)
                worst = max(worst, rel(y.cpu(), torch.from_numpy(ref)))
            tol = 3e-3 if dtype == np.float16 else 1e-5
            RESULTS["correctness"].append(
                {
                    "op": "MonarchMatMul",
                    "via": "ORT CUDA",
                    "dtype": np.dtype(dtype).name,
                    "rows": rows,
                    "b": b,
                    "r": r,
                    "kb": kb,
                    "nq": nq,
                    "bias": bias,
                    "rel_err": worst,
                    "ok": worst < tol,
                }
            )
    # a bad shape through the CUDA kernel: an ORT error, not a crash
    R = rng.standard_normal((3, 3, 4)).astype(np.float16)
    L = rng.standard_normal((3, 5, 3)).astype(np.float16)
    sess = session(
        model(
            "MonarchMatMul",
            [("X", None, TensorProto.FLOAT16, ["B", "K"]), ("R", R, 0, None), ("L", L, 0, None)],
            TensorProto.FLOAT16,
            ["B", 15],
        ),
        lib,
    )
    try:
        sess.run(None, {"X": np.ones((2, 13), np.float16)})
        RESULTS["correctness"].append(
            {"op": "MonarchMatMul", "case": "bad K on CUDA", "ok": False, "got": "no error"}
        )
    except Exception as e:
        RESULTS["correctness"].append(
            {
                "op": "MonarchMatMul",
                "case": "bad K on CUDA",
                "ok": "b*kb = 12" in str(e),
                "got": str(e)[-200:],
            }
        )


@section
def correctness_nm_reference_small() -> None:
    lib = ARGS.lib
    rng = np.random.default_rng(2)
    for dtype_name in ("float16", "bfloat16"):
        for rows, n, k, bias in [
            (1, 64, 64, False),
            (37, 96, 128, True),
            (16, 64, 256, False),
            (300, 768, 384, True),
            (5, 1536, 768, True),
        ]:
            w = nref.magnitude_24(rng.standard_normal((n, k)).astype(np.float32) / np.sqrt(k))
            v, m = nref.compress(w)
            bv = rng.standard_normal(n).astype(np.float32) if bias else None
            tdt = torch.float16 if dtype_name == "float16" else torch.bfloat16
            elem = TensorProto.FLOAT16 if dtype_name == "float16" else TensorProto.BFLOAT16
            vt = torch.from_numpy(v).to(tdt)
            v_init = helper.make_tensor(
                "values", elem, list(v.shape), vt.view(torch.int16).numpy().tobytes(), raw=True
            )
            node = helper.make_node(
                "NMSparseMatMul",
                ["X", "values", "meta"] + (["bias"] if bias else []),
                ["Y"],
                domain=ro.DOMAIN,
                name="op",
            )
            inits = [v_init, numpy_helper.from_array(m, "meta")]
            if bias:
                bt = torch.from_numpy(bv).to(tdt)
                inits.append(
                    helper.make_tensor(
                        "bias", elem, [n], bt.view(torch.int16).numpy().tobytes(), raw=True
                    )
                )
            g = helper.make_graph(
                [node],
                "g",
                [helper.make_tensor_value_info("X", elem, ["B", k])],
                [helper.make_tensor_value_info("Y", elem, ["B", n])],
                initializer=inits,
            )
            mm = helper.make_model(
                g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ro.DOMAIN, 1)]
            )
            mm.ir_version = 9
            sess = session(mm, lib)
            worst = 0.0
            for _ in range(2):
                x = torch.randn(rows, k, device=DEV).to(tdt)
                y = torch.full((rows, n), float("nan"), dtype=tdt, device=DEV)
                sess.run_with_iobinding(bind_run(sess, x, y))
                torch.cuda.synchronize()
                ref = nref.nm_sparse_matmul(
                    x.float().cpu().double().numpy(),
                    vt.float().double().numpy(),
                    m,
                    None if bv is None else torch.from_numpy(bv).to(tdt).double().numpy(),
                )
                worst = max(worst, rel(y.cpu(), torch.from_numpy(ref)))
            tol = 3e-3 if tdt == torch.float16 else 1e-2
            RESULTS["correctness"].append(
                {
                    "op": "NMSparseMatMul",
                    "via": "ORT CUDA",
                    "dtype": dtype_name,
                    "rows": rows,
                    "n": n,
                    "k": k,
                    "bias": bias,
                    "rel_err": worst,
                    "ok": worst < tol,
                }
            )


@section
def kernels_monarch(lib: Lib) -> None:
    gen = torch.Generator(device=DEV)
    gen.manual_seed(3)
    bw = RESULTS["env"].get("copy_GBps", 4300.0) * 1e9
    shapes = MONARCH[:3] + MONARCH[-2:] if ARGS.quick else MONARCH
    for name, rows, k, n, b, r in shapes:
        dtype = torch.float16
        R, L, kb, nq = monarch_factors(b, r, k, n, dtype, gen)
        bias = (torch.randn(n, generator=gen, device=DEV) * 0.1).to(dtype)
        sets = 4
        xs = [torch.randn(rows, k, generator=gen, device=DEV).to(dtype) for _ in range(sets)]
        ys = [torch.full((rows, n), float("nan"), dtype=dtype, device=DEV) for _ in range(sets)]
        lib.monarch(xs[0], R, L, bias, ys[0], b, r, kb, nq)
        torch.cuda.synchronize()
        err = rel(ys[0], monarch_ref(xs[0], R, L, bias))
        # dense weight of the same shape for cuBLAS (values irrelevant to its speed, not zeros)
        wd = (torch.randn(n, k, generator=gen, device=DEV) / np.sqrt(k)).to(dtype)
        yd = [torch.empty(rows, n, dtype=dtype, device=DEV) for _ in range(sets)]
        calls = 20
        ours = [
            partial(lib.monarch, xs[i % sets], R, L, bias, ys[i % sets], b, r, kb, nq)
            for i in range(calls)
        ]
        dense = [
            partial(torch.addmm, bias, xs[i % sets], wd.t(), out=yd[i % sets]) for i in range(calls)
        ]
        t_ours, t_dense, t_ours2 = graph_time(ours), graph_time(dense), graph_time(ours)
        nbytes = 2 * (rows * (k + n) + R.numel() + L.numel() + n)
        floor_ms = nbytes / bw * 1e3
        flops_ratio = b * r * (k + n) / (k * n)
        row = {
            "op": "MonarchMatMul",
            "shape": name,
            "rows": rows,
            "K": k,
            "N": n,
            "b": b,
            "r": r,
            "path": "wmma" if (kb % 16 == 0 and (b * r) % 16 == 0 and nq % 16 == 0) else "generic",
            "rel_err_vs_fp32": err,
            "ours_ms": t_ours,
            "ours_ms_repeat": t_ours2,
            "cublas_dense_ms": t_dense,
            "dense_over_ours": t_dense / t_ours,
            "floor_ms": floor_ms,
            "ours_over_floor": t_ours / floor_ms,
            "flops_ratio": flops_ratio,
        }
        RESULTS["kernel"].append(row)
        print(json.dumps(row), flush=True)
        del xs, ys, yd, wd, ours, dense
        torch.cuda.empty_cache()


@section
def kernels_nm(lib: Lib) -> None:
    gen = torch.Generator()
    gen.manual_seed(4)
    shapes = NM[:2] + NM[-3:] if ARGS.quick else NM
    for name, rows, k, n in shapes:
        dtype = torch.float16
        w, v, m = nm_weights(n, k, dtype, gen)
        vt = torch.from_numpy(v).to(DEV, dtype)
        mt = torch.from_numpy(m).to(DEV)
        wd = torch.from_numpy(w).to(DEV, dtype)  # the same weights, dense (2:4 zeros included)
        bias = None
        sets = 4
        xs = [torch.randn(rows, k, device=DEV).to(dtype) for _ in range(sets)]
        ys = [torch.full((rows, n), float("nan"), dtype=dtype, device=DEV) for _ in range(sets)]
        yd = [torch.empty(rows, n, dtype=dtype, device=DEV) for _ in range(sets)]
        h = lib.nm_runner(dtype, n, k)
        t0 = time.perf_counter()
        lib.nm(h, xs[0], vt, mt, bias, ys[0])  # first call: compression + plan search
        torch.cuda.synchronize()
        first_ms = (time.perf_counter() - t0) * 1e3
        err = rel(ys[0], xs[0].float() @ wd.float().t())
        calls = 20
        ours = [partial(lib.nm, h, xs[i % sets], vt, mt, bias, ys[i % sets]) for i in range(calls)]
        dense = [
            partial(torch.matmul, xs[i % sets], wd.t(), out=yd[i % sets]) for i in range(calls)
        ]
        t_ours, t_dense, t_ours2 = graph_time(ours), graph_time(dense), graph_time(ours)
        lib.c.spa_nm_cuda_destroy(h)
        row = {
            "op": "NMSparseMatMul",
            "shape": name,
            "rows": rows,
            "K": k,
            "N": n,
            "rel_err_vs_fp32": err,
            "first_call_ms": first_ms,
            "ours_ms": t_ours,
            "ours_ms_repeat": t_ours2,
            "cublas_dense_ms": t_dense,
            "dense_over_ours": t_dense / t_ours,
        }
        RESULTS["kernel"].append(row)
        print(json.dumps(row), flush=True)
        del xs, ys, yd, wd, ours, dense
        torch.cuda.empty_cache()


@section
def ort_level(lib: Lib) -> None:
    """Both ops and a dense MatMul as one-node ORT CUDA models; with and without ORT's CUDA graph."""
    gen = torch.Generator()
    gen.manual_seed(5)
    h = TensorProto.FLOAT16
    cases = []
    for name, rows, k, n in NM if not ARGS.quick else NM[:1] + NM[-2:]:
        cases.append(("NMSparseMatMul", name, rows, k, n, None))
    for name, rows, k, n, b, r in MONARCH if not ARGS.quick else MONARCH[:1] + MONARCH[-1:]:
        cases.append(("MonarchMatMul", name, rows, k, n, (b, r)))
    for op, name, rows, k, n, br in cases:
        if ARGS.ops and op not in ARGS.ops.split(","):
            continue
        try:
            x = torch.randn(rows, k, device=DEV).half()
            if op == "NMSparseMatMul":
                w, v, m = nm_weights(n, k, torch.float16, gen)
                mod = model(
                    op,
                    [
                        ("X", None, h, [rows, k]),
                        ("values", v.astype(np.float16), h, None),
                        ("meta", m, TensorProto.UINT8, None),
                    ],
                    h,
                    [rows, n],
                )
                wd_t = np.ascontiguousarray(w.T.astype(np.float16))
                ref = x.float() @ torch.from_numpy(w).to(DEV).float().t()
            else:
                b, r = br
                R, L, kb, nq = monarch_factors(
                    b, r, k, n, torch.float16, torch.Generator(device=DEV).manual_seed(6)
                )
                mod = model(
                    op,
                    [
                        ("X", None, h, [rows, k]),
                        ("R", R.cpu().numpy(), h, None),
                        ("L", L.cpu().numpy(), h, None),
                    ],
                    h,
                    [rows, n],
                )
                wd_t = np.ascontiguousarray(
                    (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(
                        np.float16
                    )
                )
                ref = monarch_ref(x, R, L, None)
            dense = dense_model(wd_t, h, rows)
            row = {"op": op, "shape": name, "rows": rows, "K": k, "N": n}
            for graph in (False, True):
                y = torch.full((rows, n), float("nan"), dtype=torch.float16, device=DEV)
                s = session(mod, ARGS.lib, cuda_graph=graph)
                bnd = bind_run(s, x, y)
                t_op = ort_time(s, bnd)
                torch.cuda.synchronize()
                row[f"rel_err{'_graph' if graph else ''}"] = rel(y, ref)
                yd = torch.empty(rows, n, dtype=torch.float16, device=DEV)
                sd = session(dense, None, cuda_graph=graph)
                t_dense = ort_time(sd, bind_run(sd, x, yd))
                key = "graph" if graph else "plain"
                row[f"op_ms_{key}"] = t_op
                row[f"dense_ms_{key}"] = t_dense
                row[f"dense_over_op_{key}"] = t_dense / t_op
                del s, sd
            RESULTS["ort"].append(row)
            print(json.dumps(row), flush=True)
        except Exception as e:
            RESULTS["errors"].append(
                {"section": "ort_level", "case": [op, name], "error": repr(e)[-600:]}
            )
            print(f"!! ort {op} {name}: {e!r}"[:600], flush=True)
        torch.cuda.empty_cache()
        save()


def tables() -> None:
    print("\n### kernels (CUDA graph of 20 calls, 4 rotating input sets; ms per call)")
    print(
        "| op | shape | rows x K -> N | ours ms | cuBLAS dense ms | dense/ours | ours/floor | rel err |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in RESULTS["kernel"]:
        floor = f"{r['ours_over_floor']:.2f}" if "ours_over_floor" in r else "-"
        print(
            f"| {r['op']} | {r['shape']} | {r['rows']}x{r['K']}->{r['N']} | {r['ours_ms']:.4f} | {r['cublas_dense_ms']:.4f} | "
            f"{r['dense_over_ours']:.2f} | {floor} | {r['rel_err_vs_fp32']:.1e} |"
        )
    print("\n### ORT CUDA (ms per run_with_iobinding; plain / with enable_cuda_graph)")
    print(
        "| op | shape | op plain | dense plain | dense/op | op graph | dense graph | dense/op graph |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in RESULTS["ort"]:
        print(
            f"| {r['op']} | {r['shape']} | {r['op_ms_plain']:.4f} | {r['dense_ms_plain']:.4f} | {r['dense_over_op_plain']:.2f} | "
            f"{r['op_ms_graph']:.4f} | {r['dense_ms_graph']:.4f} | {r['dense_over_op_graph']:.2f} |"
        )
    bad = [c for c in RESULTS["correctness"] if not c.get("ok")]
    print(f"\ncorrectness: {len(RESULTS['correctness'])} cases, {len(bad)} failed: {bad[:5]}")
    print(f"errors: {[e['section'] + ': ' + e['error'][:200] for e in RESULTS['errors']]}")


def main() -> None:
    global OUT, ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated section names")
    ap.add_argument("--ops", default="", help="ORT-level section: only these ops (comma-separated)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ARGS = ap.parse_args()
    OUT = ARGS.out
    lib = Lib(ARGS.lib)
    only = set(filter(None, ARGS.only.split(",")))
    steps = [
        ("env", lambda: env(lib)),
        ("monarch_small", correctness_monarch_reference_small),
        ("nm_small", correctness_nm_reference_small),
        ("kernels_monarch", lambda: kernels_monarch(lib)),
        ("kernels_nm", lambda: kernels_nm(lib)),
        ("ort", lambda: ort_level(lib)),
    ]
    for key, fn in steps:
        if not only or key in only or key == "env":
            fn()
    tables()
    save()


ARGS = None
if __name__ == "__main__":
    main()
