"""On the H200: the fused Monarch graph and the N:M op-form model run on ORT CUDA with the
runtime_ops CUDA library and match their references; the profile says which provider ran each op."""
import glob, json, os, sys
import numpy as np, onnx, onnxruntime as ort
here = os.path.dirname(os.path.abspath(__file__))
lib = sys.argv[1]
sys.path.insert(0, os.path.join(here, "rt", "py"))  # the carried runtime_ops sources
from runtime_ops import decompose, register_schemas  # noqa: E402
register_schemas()
res = {"ort": ort.__version__, "providers": ort.get_available_providers()}

def session(model_bytes, cuda=True, profile=None):
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    prov = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(model_bytes, sess_options=so, providers=prov)

def placed(sess, op):
    path = sess.end_profiling()
    ev = json.load(open(path))
    return sorted({e["args"].get("provider") for e in ev if e.get("cat") == "Node" and e["args"].get("op_name") == op})

def to_fp16(m):
    from onnx import numpy_helper, TensorProto
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    return m

# 1. Monarch-trained graph fused into MonarchMatMul (fp32)
m = onnx.load(os.path.join(here, "monarch_fused.onnx"))
io = np.load(os.path.join(here, "monarch_io.npz"))
s = session(m.SerializeToString(), profile="/tmp/mon")
y = s.run(None, {"x": io["x"]})[0]
res["monarch"] = {"ops": sorted({n.op_type for n in m.graph.node}), "rel_err_vs_torch": float(np.abs(y - io["want"]).max() / np.abs(io["want"]).max()),
                  "placed": placed(s, "MonarchMatMul")}
# 2. N:M op form (NMSparseMatMul), weights in fp16 for the cuSPARSELt kernel: a one-node model per site
m = onnx.load(os.path.join(here, "nm_op_fp32.onnx"))
nodes = [n for n in m.graph.node if n.op_type == "NMSparseMatMul"]
inits = {t.name: t for t in m.graph.initializer}
errs, where = [], set()
rng = np.random.default_rng(0)
for n in nodes:
    vals = onnx.numpy_helper.to_array(inits[n.input[1]])
    k = vals.shape[-1] * 2
    g = onnx.helper
    ins = [g.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, [32, k])]
    extra = [inits[i] for i in n.input[1:] if i]
    node = g.make_node("NMSparseMatMul", ["X", *n.input[1:]], ["Y"], domain=n.domain, **{a.name: g.get_attribute_value(a) for a in n.attribute})
    one = g.make_model(g.make_graph([node], "g", ins, [g.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, None)], extra),
                       opset_imports=[g.make_opsetid("", 17), g.make_opsetid(n.domain, 1)])
    one.ir_version = 10
    one16 = to_fp16(one)
    x = rng.standard_normal((32, k)).astype(np.float16)
    s = session(one16.SerializeToString(), profile="/tmp/nm")
    y = s.run(None, {"X": x})[0].astype(np.float32)
    where.update(placed(s, "NMSparseMatMul"))
    ref = ort.InferenceSession(decompose(one).SerializeToString(), providers=["CPUExecutionProvider"]) if False else None
    dense = decompose(to_fp16(one))
    yr = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0].astype(np.float32)
    errs.append(float(np.abs(y - yr).max() / (np.abs(yr).max() + 1e-6)))
res["nm"] = {"sites": len(nodes), "max_rel_err_vs_decomposition": max(errs) if errs else None, "placed": sorted(where)}
print(json.dumps(res, indent=1))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "final_check.json"), "w"), indent=1)
