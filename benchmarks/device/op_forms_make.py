"""Make the op-form models that op_forms_check.py runs on the H200 (run from the repository root):
a Monarch-trained layer (torch, exported, fused into MonarchMatMul by substitute-monarch) with its
inputs and torch outputs, and tiny_bert with every eligible layer in NMSparseMatMul form.

    python -m benchmarks.device.op_forms_make OUT_DIR
"""
import os, subprocess, sys
import numpy as np, onnx, torch
sys.path.insert(0, os.getcwd())
from tests.passes.test_substitute_monarch import _torch_monarch_model
from spa_compiler.ir import ModelIR
from spa_compiler.context import CompileContext
from spa_compiler.passes.substitute_monarch import SubstituteMonarchPass
from spa_compiler import models_zoo
from spa_compiler.compile import compile_model
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
proto, net = _torch_monarch_model(rng, n=64, nblocks=8)
fused = ModelIR.from_proto(proto)
res = SubstituteMonarchPass(emit="custom-op", substitute=False).run(fused, CompileContext())
print("monarch fused:", res.stats)
x = rng.standard_normal((256, 64)).astype(np.float32)
with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
fused.save(out + "/monarch_fused.onnx", ir_version=10)
np.savez(out + "/monarch_io.npz", x=x, want=want)
# N:M op form on a zoo transformer, fp16 (the CUDA kernel's precision)
src = models_zoo.build("tiny_bert", "torchscript")
r = subprocess.run([sys.executable, "-m", "spa_compiler", src, "-o", out + "/nm_op_fp32.onnx", "-p", "sparsify-nm{keep=all,form=op,criterion=magnitude}", "--no-measure", "--target", "ort-cuda", "--input-shape", "input_ids:2x16", "--input-shape", "attention_mask:2x16", "--lower", "none"], capture_output=True, text=True)
print(r.returncode, r.stdout[-800:], r.stderr[-800:])
m = onnx.load(out + "/nm_op_fp32.onnx")
print("ops:", sorted({n.op_type for n in m.graph.node}))
