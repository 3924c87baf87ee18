"""ONNX Runtime CUDA sessions of ModelProtos whose large weights go to ONNX Runtime as shared
external initializers (`spa_compiler.ort.split_weights` / `share_weights`, made for the CPU
provider and used by `latency.ort_cuda.make_cuda_session` too): their outputs against a session of
the serialized model, in fp32 and fp16, and the lowering's measured choice on ort-cuda (which times
its variants on shared weights). Prints JSON; exits 1 when an output disagrees.

    source .device/prelude.sh; python benchmarks/device/shared_weights_check.py --out $OUT/check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import numpy as np
import onnx


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def main() -> int:
    import onnxruntime as ort

    from spa_compiler import models_zoo
    from spa_compiler.ir import ModelIR
    from spa_compiler.latency.ort_cuda import OrtCudaProvider, convert_float16, make_cuda_session
    from spa_compiler.lowering.select import choose
    from spa_compiler.ort import random_feeds, share_weights

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out: dict = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "models": {}}
    ok = True
    for name, exporter in (("tiny_llama", "dynamo"), ("tiny_bert", "torchscript")):
        rec: dict = {}
        try:
            proto = onnx.load(models_zoo.build(name, exporter))
            shapes = models_zoo.DEFAULT_SHAPES[name]
            feeds = random_feeds(ModelIR.from_proto(proto), shapes)
            cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            ref = ort.InferenceSession(proto.SerializeToString(), providers=cuda).run(None, feeds)
            own = make_cuda_session(proto)
            held: list = []
            light = share_weights(proto, held)
            shared = make_cuda_session(light)
            rec["external_initializers"] = len(getattr(own, "_spa_initializers"))
            rec["fp32_rel_err"] = max(_rel(a, b) for a, b in zip(own.run(None, feeds), ref))
            rec["fp32_shared_rel_err"] = max(_rel(a, b) for a, b in zip(shared.run(None, feeds), ref))
            f16 = make_cuda_session(convert_float16(proto))
            rec["fp16_rel_err"] = max(_rel(a, b) for a, b in zip(f16.run(None, feeds), ref))
            for precision in ("fp32", "fp16"):
                d = choose(proto, target="ort-cuda", precision=precision, fp16_io=False, mode="auto",
                           input_shapes=shapes, feeds=feeds, provider=OrtCudaProvider(runs=20, min_seconds=0.0))
                rec[f"lowering_{precision}"] = {"families": list(d.lowering.families), "timings": d.timings,
                                                "notes": d.notes}
            ok &= rec["fp32_rel_err"] < 1e-4 and rec["fp32_shared_rel_err"] < 1e-4 and rec["fp16_rel_err"] < 3e-2
        except Exception:
            rec["error"] = traceback.format_exc()[-2000:]
            ok = False
        out["models"][name] = rec
    out["ok"] = bool(ok)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
