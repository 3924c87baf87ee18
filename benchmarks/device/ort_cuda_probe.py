"""Time ONNX models on ONNX Runtime's CUDA provider (fp32 and fp16) with io-binding; print JSON.

On the lent GPU machine (see ../shared/device/README.md), from the project's root:

    ../shared/device/stage        # once, here: fills .device/ (ignored by git)
    # device tool: carry [".device"], command:
    source .device/prelude.sh; python benchmarks/device/ort_cuda_probe.py model.onnx --out
    $OUT/probe.json

Models that are too large to travel can be generated there instead:

    python benchmarks/device/ort_cuda_probe.py --synthetic ffn:d=768,ff=3072,layers=6,tokens=8192 \
        --synthetic ffn:d=768,ff=1536,layers=6,tokens=8192

Each model is timed in every precision asked for (medians of `--runs` runs after `--warmup`), and
with `--check` its CUDA outputs are compared with ONNX Runtime CPU fp32 (relative max error). A
failure of one model or precision is recorded in the JSON and the others still run. `--provider
cpu` runs the same flow on the CPU provider (a smoke test for machines without a GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from spa_compiler.compile import parse_input_shapes  # noqa: E402
from spa_compiler.latency.ort_cuda import (  # noqa: E402
    convert_float16,
    make_cuda_session,
    measure_ort_cuda,
)
from spa_compiler.latency.timing import measure_ort  # noqa: E402
from spa_compiler.ort import make_session, random_feeds  # noqa: E402
from spa_compiler.stats import model_stats  # noqa: E402


def synthetic_ffn(d: int, ff: int, layers: int, tokens: int, seed: int = 0) -> onnx.ModelProto:
    """A transformer FFN stack: x(tokens, d) -> layers x [x + Relu(LN(x) @ W1) @ W2]."""
    rng = np.random.default_rng(seed)
    f = np.float32
    nodes, inits = [], []
    cur = "x"
    for i in range(layers):
        w1 = (rng.standard_normal((d, ff)) / np.sqrt(d)).astype(f)
        w2 = (rng.standard_normal((ff, d)) / np.sqrt(ff)).astype(f)
        inits += [
            numpy_helper.from_array(w1, f"w1_{i}"),
            numpy_helper.from_array(w2, f"w2_{i}"),
            numpy_helper.from_array(np.ones(d, f), f"g_{i}"),
            numpy_helper.from_array(np.zeros(d, f), f"b_{i}"),
        ]
        nodes += [
            helper.make_node(
                "LayerNormalization", [cur, f"g_{i}", f"b_{i}"], [f"n_{i}"], axis=-1, name=f"ln_{i}"
            ),
            helper.make_node("MatMul", [f"n_{i}", f"w1_{i}"], [f"h_{i}"], name=f"up_{i}"),
            helper.make_node("Relu", [f"h_{i}"], [f"a_{i}"], name=f"act_{i}"),
            helper.make_node("MatMul", [f"a_{i}", f"w2_{i}"], [f"o_{i}"], name=f"down_{i}"),
            helper.make_node("Add", [cur, f"o_{i}"], [f"r_{i}"], name=f"res_{i}"),
        ]
        cur = f"r_{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        f"ffn_d{d}_ff{ff}_l{layers}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def parse_synthetic(spec: str) -> tuple[str, onnx.ModelProto]:
    kind, _, args = spec.partition(":")
    if kind != "ffn":
        raise SystemExit(f"unknown synthetic model {kind!r} (known: ffn)")
    kv = dict(item.split("=", 1) for item in args.split(",") if item)
    try:
        p = {
            k: int(kv.pop(k, dflt))
            for k, dflt in (("d", 768), ("ff", 3072), ("layers", 6), ("tokens", 8192))
        }
    except ValueError as e:
        raise SystemExit(f"--synthetic {spec!r}: {e}") from e
    if kv:
        raise SystemExit(
            f"--synthetic {spec!r}: unknown keys {sorted(kv)} (use d, ff, layers, tokens)"
        )
    return f"ffn-d{p['d']}-ff{p['ff']}-l{p['layers']}-t{p['tokens']}", synthetic_ffn(**p)


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:
        pass
    return platform.processor() or platform.machine()


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    return float(np.abs(ref64 - got64).max() / max(np.abs(ref64).max(), 1e-30))


def probe_model(
    name: str,
    model: onnx.ModelProto,
    path: str,
    args: argparse.Namespace,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "path": path}
    from spa_compiler.ir import ModelIR

    ir = ModelIR.from_proto(model)
    feeds = random_feeds(ir, shapes, seed=0)
    entry["input_shapes"] = {k: list(v.shape) for k, v in feeds.items()}
    entry["macs"] = model_stats(ir, shapes).get("macs")
    entry["sha256"] = hashlib.sha256(model.SerializeToString()).hexdigest()
    ref = None
    if args.check:
        ref = make_session(model, optimize=False).run(None, feeds)
    entry["results"] = {}
    for precision in args.precision:
        res: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            fp16 = precision == "fp16"
            if args.provider == "cuda":
                m = measure_ort_cuda(
                    model,
                    feeds,
                    fp16=fp16,
                    warmup=args.warmup,
                    runs=args.runs,
                    min_seconds=args.min_seconds,
                    device_id=args.device_id,
                )
            else:
                m = measure_ort(
                    convert_float16(model) if fp16 else model,
                    feeds,
                    warmup=args.warmup,
                    runs=args.runs,
                    min_seconds=args.min_seconds,
                    threads=args.threads,
                )
            res.update(m.to_dict())
            if ref is not None:
                run_model = convert_float16(model) if fp16 else model
                sess = (
                    make_cuda_session(run_model, device_id=args.device_id)
                    if args.provider == "cuda"
                    else make_session(run_model)
                )
                outs = sess.run(None, feeds)
                res["rel_err_vs_cpu_fp32"] = max(
                    rel_err(r, o) for r, o in zip(ref, outs, strict=True)
                )
            res["seconds"] = round(time.perf_counter() - t0, 3)
        except Exception as e:  # keep going: one failure must not lose the other numbers
            res["error"] = f"{type(e).__name__}: {e}"
            res["traceback"] = traceback.format_exc(limit=4)
        entry["results"][precision] = res
        print(
            f"{name} {precision}: "
            + (f"{res['median_ms']:.3f} ms" if "median_ms" in res else res["error"]),
            file=sys.stderr,
            flush=True,
        )
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="ONNX files")
    ap.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="SPEC",
        help="generate a model here, e.g. ffn:d=768,ff=3072,layers=6,tokens=8192 (repeatable)",
    )
    ap.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DxD",
        help="shape for a symbolic input (repeatable)",
    )
    ap.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32, fp16")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU provider only")
    ap.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--check", action="store_true", help="compare outputs with ORT CPU fp32")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args(argv)
    args.precision = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = sorted(set(args.precision) - {"fp32", "fp16"})
    if bad:
        ap.error(f"unknown precisions {bad}")
    if not args.models and not args.synthetic:
        ap.error("give ONNX files or --synthetic specs")
    shapes = parse_input_shapes(args.input_shape)

    import onnxruntime as ort

    report: dict[str, Any] = {
        "device": device_name(),
        "provider": args.provider,
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "python": platform.python_version(),
        "runs": args.runs,
        "warmup": args.warmup,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": [],
    }
    for path in args.models:
        try:
            model = onnx.load(path)
            report["models"].append(probe_model(Path(path).name, model, path, args, shapes))
        except Exception as e:
            report["models"].append(
                {"name": Path(path).name, "path": path, "error": f"{type(e).__name__}: {e}"}
            )
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.synthetic:
            name, model = parse_synthetic(spec)
            try:
                report["models"].append(
                    probe_model(name, model, str(Path(tmp) / f"{name}.onnx"), args, shapes)
                )
            except Exception as e:
                report["models"].append({"name": name, "error": f"{type(e).__name__}: {e}"})
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
