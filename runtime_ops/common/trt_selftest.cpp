// spa_trt_selftest PLUGIN_LIBRARY: loads the plugin library the way TensorRT does (dlopen +
// getCreators) and exercises the build-time interface of every plugin without TensorRT itself:
// creator fields, capability interfaces, output types and shapes (through a stand-in
// IExprBuilder), format combinations, configurePlugin on good and bad shapes, onShapeChange,
// clone. Prints one JSON object per check; exit status 1 if any check failed.
//
// Exists because TensorRT-RTX 1.7 (the TensorRT that builds engines on a machine without a GPU)
// has no plugin layers: its ONNX parser creates our plugin, then aborts (see the op READMEs).
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../monarch_matmul/monarch.h"
#include "../nm_sparse_matmul/nm.h"

using namespace nvinfer1;

namespace {

struct DimImpl : apiv::VDimensionExpr {
  int64_t v = -1;
  bool isConstant() const override { return v >= 0; }
  int64_t getConstantValue() const override { return v; }
  bool isSizeTensor() const override { return false; }
};
struct Dim : IDimensionExpr {
  DimImpl impl;
  explicit Dim(int64_t v) {
    impl.v = v;
    mImpl = &impl;
  }
  ~Dim() noexcept override = default;
};
struct BuilderImpl : apiv::VExprBuilder {
  std::vector<std::unique_ptr<Dim>> pool;
  IDimensionExpr const* make(int64_t v) {
    pool.push_back(std::make_unique<Dim>(v));
    return pool.back().get();
  }
  IDimensionExpr const* constant(int64_t value) override { return make(value); }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    if (!a.isConstant() || !b.isConstant()) return make(-1);
    const int64_t x = a.getConstantValue(), y = b.getConstantValue();
    switch (op) {
      case DimensionOperation::kSUM: return make(x + y);
      case DimensionOperation::kPROD: return make(x * y);
      case DimensionOperation::kMAX: return make(x > y ? x : y);
      case DimensionOperation::kMIN: return make(x < y ? x : y);
      case DimensionOperation::kSUB: return make(x - y);
      case DimensionOperation::kFLOOR_DIV: return make(y ? x / y : -1);
      case DimensionOperation::kCEIL_DIV: return make(y ? (x + y - 1) / y : -1);
      default: return make(-1);
    }
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override { return make(-1); }
};
struct Builder : IExprBuilder {
  BuilderImpl impl;
  Builder() { mImpl = &impl; }
  ~Builder() noexcept override = default;
};

int g_failed = 0;

void report(const std::string& op, const std::string& check, bool ok, const std::string& got) {
  if (!ok) ++g_failed;
  std::printf("{\"op\": \"%s\", \"check\": \"%s\", \"ok\": %s, \"got\": \"%s\"}\n", op.c_str(), check.c_str(),
              ok ? "true" : "false", got.c_str());
  std::fflush(stdout);
}

std::string dims_str(const DimsExprs& d) {
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims; ++i) {
    if (i) s += ", ";
    s += d.d[i]->isConstant() ? std::to_string(d.d[i]->getConstantValue()) : std::string("?");
  }
  return s + "]";
}

DimsExprs exprs(Builder& b, std::vector<int64_t> v) {
  DimsExprs d;
  d.nbDims = int32_t(v.size());
  for (size_t i = 0; i < v.size(); ++i) d.d[i] = b.impl.make(v[i]);
  return d;
}

DynamicPluginTensorDesc desc(std::vector<int64_t> v, DataType t) {
  DynamicPluginTensorDesc d{};
  d.desc.dims.nbDims = int32_t(v.size());
  d.min.nbDims = d.max.nbDims = d.opt.nbDims = int32_t(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    d.desc.dims.d[i] = v[i];
    d.min.d[i] = d.max.d[i] = d.opt.d[i] = v[i] < 0 ? 1 : v[i];
  }
  d.desc.type = t;
  d.desc.format = TensorFormat::kLINEAR;
  d.desc.scale = -1.f;
  return d;
}

struct Case {
  std::vector<std::vector<int64_t>> in;
  std::string expect;  // output dims, or "error"
};

void test_plugin(IPluginCreatorV3One* c, const std::string& op, DataType t, const std::vector<DataType>& types,
                 const std::vector<Case>& shape_cases, const std::vector<Case>& config_cases) {
  PluginFieldCollection fc{0, nullptr};
  IPluginV3* p = c->createPlugin(op.c_str(), &fc, TensorRTPhase::kBUILD);
  report(op, "createPlugin", p != nullptr, "");
  if (!p) return;
  auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  report(op, "capabilities", core && build && rt, "");
  if (!core || !build || !rt) return;
  report(op, "core interface kind", std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE", core->getInterfaceInfo().kind);
  report(op, "build interface kind", std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD", build->getInterfaceInfo().kind);
  report(op, "runtime interface kind", std::string(rt->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME", rt->getInterfaceInfo().kind);
  report(op, "plugin name/version/namespace",
         op == core->getPluginName() && std::string("1") == core->getPluginVersion() && std::string("") == core->getPluginNamespace(),
         std::string(core->getPluginName()) + "/" + core->getPluginVersion() + "/" + core->getPluginNamespace());
  report(op, "getNbOutputs", build->getNbOutputs() == 1, std::to_string(build->getNbOutputs()));
  std::vector<DataType> in_types = types;
  DataType out_t = DataType::kINT32;
  const int32_t rc = build->getOutputDataTypes(&out_t, 1, in_types.data(), int32_t(in_types.size()));
  report(op, "getOutputDataTypes", rc == 0 && out_t == t, std::to_string(int(out_t)));
  for (const Case& cs : shape_cases) {
    Builder eb;
    std::vector<DimsExprs> ins;
    for (auto& v : cs.in) ins.push_back(exprs(eb, v));
    DimsExprs out{};
    const int32_t r = build->getOutputShapes(ins.data(), int32_t(ins.size()), nullptr, 0, &out, 1, eb);
    const std::string got = r == 0 ? dims_str(out) : "error";
    report(op, "getOutputShapes " + cs.expect, got == cs.expect, got);
  }
  for (const Case& cs : config_cases) {
    std::vector<DynamicPluginTensorDesc> ins;
    for (size_t i = 0; i < cs.in.size(); ++i) ins.push_back(desc(cs.in[i], types[i]));
    DynamicPluginTensorDesc out = desc({1}, t);
    const int32_t r = build->configurePlugin(ins.data(), int32_t(ins.size()), &out, 1);
    report(op, "configurePlugin expect " + cs.expect, (r == 0) == (cs.expect == "ok"), std::to_string(r));
  }
  // format combinations: every position, the supported type and two others
  {
    std::vector<DynamicPluginTensorDesc> io;
    for (size_t i = 0; i < types.size(); ++i) io.push_back(desc({4}, types[i]));
    io.push_back(desc({4}, t));
    const int32_t nb_in = int32_t(types.size());
    for (int32_t pos = 0; pos <= nb_in; ++pos) {
      report(op, "supportsFormatCombination accepts pos " + std::to_string(pos),
             build->supportsFormatCombination(pos, io.data(), nb_in, 1), "");
      DynamicPluginTensorDesc saved = io[size_t(pos)];
      const bool int_input = types[size_t(std::min<int32_t>(pos, nb_in - 1))] == DataType::kUINT8 && pos < nb_in;
      io[size_t(pos)].desc.type = int_input ? DataType::kFLOAT : DataType::kINT32;
      if (int_input) {  // uint8 metadata: int32 is how TensorRT's parser delivers it, also accepted
        DynamicPluginTensorDesc as_i32 = saved;
        as_i32.desc.type = DataType::kINT32;
        std::swap(io[size_t(pos)], as_i32);
        report(op, "supportsFormatCombination accepts int32 metadata at pos " + std::to_string(pos),
               build->supportsFormatCombination(pos, io.data(), nb_in, 1), "");
        std::swap(io[size_t(pos)], as_i32);
      }
      report(op, "supportsFormatCombination rejects a wrong type at pos " + std::to_string(pos),
             !build->supportsFormatCombination(pos, io.data(), nb_in, 1), "");
      io[size_t(pos)] = saved;
      io[size_t(pos)].desc.format = TensorFormat::kCHW32;
      report(op, "supportsFormatCombination rejects CHW32 at pos " + std::to_string(pos),
             !build->supportsFormatCombination(pos, io.data(), nb_in, 1), "");
      io[size_t(pos)] = saved;
    }
  }
  IPluginV3* cl = p->clone();
  report(op, "clone", cl != nullptr, "");
  delete cl;
  const PluginFieldCollection* ser = rt->getFieldsToSerialize();
  report(op, "getFieldsToSerialize", ser != nullptr && ser->nbFields == 0, "");
  delete p;
}


#ifdef SPA_WITH_CUDA
// ------------------------------------------------------------------------------ --enqueue (GPU)
uint32_t g_seed = 12345;
float frand() {  // uniform in [-1, 1)
  g_seed = g_seed * 1664525u + 1013904223u;
  return float(g_seed >> 8) / float(1u << 23) - 1.f;
}

struct DevBuf {
  void* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t bytes) : n(bytes) { cudaMalloc(&p, bytes); }
  ~DevBuf() { cudaFree(p); }
};

PluginTensorDesc pdesc(std::vector<int64_t> dims, DataType t) {
  PluginTensorDesc d{};
  d.dims.nbDims = int32_t(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.dims.d[i] = dims[i];
  d.type = t;
  d.format = TensorFormat::kLINEAR;
  d.scale = -1.f;
  return d;
}

// host data of element type t from floats (and the floats it rounds to)
std::vector<uint8_t> host_data(spa::DType t, std::vector<float>& f) {
  std::vector<uint8_t> out(f.size() * size_t(spa::dtype_size(t)));
  spa::from_float(t, f.data(), out.data(), int64_t(f.size()));
  spa::to_float(t, out.data(), f.data(), int64_t(f.size()));
  return out;
}

double rel_error(const std::vector<float>& got, const std::vector<float>& ref, bool* finite) {
  double num = 0, den = 0;
  *finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) *finite = false;
    num += double(got[i] - ref[i]) * double(got[i] - ref[i]);
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

void enqueue_monarch(IPluginCreatorV3One* c, spa::DType t, int64_t rows, int64_t b, int64_t r, int64_t kb, int64_t nq, bool bias) {
  const DataType tt = t == spa::DType::kFloat ? DataType::kFLOAT : DataType::kHALF;
  const int64_t K = b * kb, N = nq * b, br = b * r;
  std::vector<float> x(size_t(rows * K)), rf(size_t(b * br * kb)), lf(size_t(b * nq * br)), bf(static_cast<size_t>(N));
  for (auto* v : {&x, &rf, &lf, &bf})
    for (auto& e : *v) e = frand();
  auto hx = host_data(t, x), hr = host_data(t, rf), hl = host_data(t, lf), hb = host_data(t, bf);
  spa::MonarchDims d{b, r, kb, nq};
  spa::MonarchPackedCpu w;
  spa::monarch_pack_cpu(spa::DType::kFloat, rf.data(), lf.data(), bias ? bf.data() : nullptr, d, &w);
  std::vector<float> ref(size_t(rows * N));
  spa::monarch_cpu(spa::DType::kFloat, x.data(), ref.data(), rows, w, spa::Parallel());
  PluginFieldCollection fc{0, nullptr};
  IPluginV3* p = c->createPlugin("MonarchMatMul", &fc, TensorRTPhase::kRUNTIME);
  auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::vector<PluginTensorDesc> in = {pdesc({rows, K}, tt), pdesc({b, br, kb}, tt), pdesc({b, nq, br}, tt)};
  if (bias) in.push_back(pdesc({N}, tt));
  PluginTensorDesc out = pdesc({rows, N}, tt);
  const int32_t sc = rt->onShapeChange(in.data(), int32_t(in.size()), &out, 1);
  const size_t es = size_t(spa::dtype_size(t));
  DevBuf dx(hx.size()), dr(hr.size()), dl(hl.size()), db(hb.size()), dy(size_t(rows * N) * es);
  cudaMemcpy(dx.p, hx.data(), hx.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dr.p, hr.data(), hr.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dl.p, hl.data(), hl.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(db.p, hb.data(), hb.size(), cudaMemcpyHostToDevice);
  cudaMemset(dy.p, 0xFF, dy.n);  // poison: NaN in float and half
  const void* ins[4] = {dx.p, dr.p, dl.p, db.p};
  void* outs[1] = {dy.p};
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  const int32_t rc = rt->enqueue(in.data(), &out, ins, outs, nullptr, stream);
  const cudaError_t ce = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  std::vector<uint8_t> hy(dy.n);
  cudaMemcpy(hy.data(), dy.p, dy.n, cudaMemcpyDeviceToHost);
  std::vector<float> got(size_t(rows * N));
  spa::to_float(t, hy.data(), got.data(), rows * N);
  bool finite = false;
  const double err = rel_error(got, ref, &finite);
  const double tol = t == spa::DType::kFloat ? 1e-5 : 3e-3;
  char what[200];
  std::snprintf(what, sizeof(what), "enqueue %s rows=%lld b=%lld r=%lld kb=%lld nq=%lld bias=%d", spa::dtype_name(t),
                (long long)rows, (long long)b, (long long)r, (long long)kb, (long long)nq, int(bias));
  report("MonarchMatMul", what, sc == 0 && rc == 0 && ce == cudaSuccess && finite && err < tol,
         "rel_err=" + std::to_string(err) + (finite ? "" : " non-finite"));
  delete p;
}

void enqueue_nm(IPluginCreatorV3One* c, spa::DType t, int64_t rows, int64_t n, int64_t k, bool bias, bool meta_i32) {
  const DataType tt = t == spa::DType::kBFloat16 ? DataType::kBF16 : DataType::kHALF;
  std::vector<float> x(size_t(rows * k)), v(size_t(n * k / 2)), bf(static_cast<size_t>(n));
  for (auto* a : {&x, &v, &bf})
    for (auto& e : *a) e = frand();
  static const uint8_t codes[6] = {4, 8, 12, 9, 13, 14};
  std::vector<uint8_t> meta(size_t(n * k / 8));
  for (auto& m : meta) {
    g_seed = g_seed * 1664525u + 1013904223u;
    m = uint8_t(codes[(g_seed >> 10) % 6] | (codes[(g_seed >> 20) % 6] << 4));
  }
  auto hx = host_data(t, x), hv = host_data(t, v), hb = host_data(t, bf);
  spa::NMDims d{n, k};
  spa::NMPackedCpu w;
  spa::nm_pack_cpu(spa::DType::kFloat, v.data(), meta.data(), bias ? bf.data() : nullptr, d, &w);
  std::vector<float> ref(size_t(rows * n));
  spa::nm_cpu(spa::DType::kFloat, x.data(), ref.data(), rows, w, spa::Parallel());
  std::vector<int32_t> meta32(meta.begin(), meta.end());
  PluginFieldCollection fc{0, nullptr};
  IPluginV3* p = c->createPlugin("NMSparseMatMul", &fc, TensorRTPhase::kRUNTIME);
  auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::vector<PluginTensorDesc> in = {pdesc({rows, k}, tt), pdesc({n, k / 2}, tt),
                                      pdesc({n, k / 8}, meta_i32 ? DataType::kINT32 : DataType::kUINT8)};
  if (bias) in.push_back(pdesc({n}, tt));
  PluginTensorDesc out = pdesc({rows, n}, tt);
  const int32_t sc = rt->onShapeChange(in.data(), int32_t(in.size()), &out, 1);
  DevBuf dx(hx.size()), dv(hv.size()), dm(meta32.size() * 4), db(hb.size()), dy(size_t(rows * n) * 2);
  cudaMemcpy(dx.p, hx.data(), hx.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dv.p, hv.data(), hv.size(), cudaMemcpyHostToDevice);
  if (meta_i32)
    cudaMemcpy(dm.p, meta32.data(), meta32.size() * 4, cudaMemcpyHostToDevice);
  else
    cudaMemcpy(dm.p, meta.data(), meta.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(db.p, hb.data(), hb.size(), cudaMemcpyHostToDevice);
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  bool all_ok = sc == 0;
  double worst = 0;
  bool finite_all = true;
  for (int rep = 0; rep < 2; ++rep) {  // second run: cached compression and plan
    cudaMemset(dy.p, 0xFF, dy.n);
    const void* ins[4] = {dx.p, dv.p, dm.p, db.p};
    void* outs[1] = {dy.p};
    const int32_t rc = rt->enqueue(in.data(), &out, ins, outs, nullptr, stream);
    const cudaError_t ce = cudaStreamSynchronize(stream);
    std::vector<uint8_t> hy(dy.n);
    cudaMemcpy(hy.data(), dy.p, dy.n, cudaMemcpyDeviceToHost);
    std::vector<float> got(size_t(rows * n));
    spa::to_float(t, hy.data(), got.data(), rows * n);
    bool finite = false;
    const double err = rel_error(got, ref, &finite);
    worst = std::max(worst, err);
    finite_all = finite_all && finite;
    all_ok = all_ok && rc == 0 && ce == cudaSuccess;
  }
  cudaStreamDestroy(stream);
  const double tol = t == spa::DType::kBFloat16 ? 1e-2 : 3e-3;
  char what[200];
  std::snprintf(what, sizeof(what), "enqueue %s rows=%lld n=%lld k=%lld bias=%d meta=%s", spa::dtype_name(t), (long long)rows,
                (long long)n, (long long)k, int(bias), meta_i32 ? "int32" : "uint8");
  report("NMSparseMatMul", what, all_ok && finite_all && worst < tol,
         "rel_err=" + std::to_string(worst) + (finite_all ? "" : " non-finite"));
  delete p;
}
#endif
}  // namespace

int main(int argc, char** argv) {
  const bool enqueue = argc == 3 && std::string(argv[2]) == "--enqueue";
  if (argc != 2 && !enqueue) {
    std::fprintf(stderr, "usage: %s libspa_trt_plugins.so [--enqueue]\n", argv[0]);
    return 2;
  }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 2;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto get = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
  report("library", "getCreators exported", get != nullptr, "");
  report("library", "setLoggerFinder exported", dlsym(h, "setLoggerFinder") != nullptr, "");
  if (!get) return 1;
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = get(n);
  report("library", "two creators", n == 2, std::to_string(n));
  for (int32_t i = 0; i < n; ++i) {
    IPluginCreatorInterface* ci = creators[i];
    const std::string kind = ci->getInterfaceInfo().kind;
    report("library", "creator kind", kind == "PLUGIN CREATOR_V3ONE", kind);
    auto* c = static_cast<IPluginCreatorV3One*>(ci);
    const std::string name = c->getPluginName();
    report(name, "creator version/namespace", std::string("1") == c->getPluginVersion() && std::string("") == c->getPluginNamespace(),
           std::string(c->getPluginVersion()) + "/" + c->getPluginNamespace());
    report(name, "creator field names", c->getFieldNames() != nullptr && c->getFieldNames()->nbFields == 0, "");
    if (name == "MonarchMatMul") {
      for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
        test_plugin(c, name, t, {t, t, t},
                    {{{{8, 64}, {4, 4, 16}, {4, 16, 4}}, "[8, 64]"},
                     {{{-1, 3, 21}, {3, 6, 7}, {3, 5, 6}}, "[?, 3, 15]"},
                     {{{8, 64}, {4, 16}, {4, 16, 4}}, "error"}},
                    {{{{8, 64}, {4, 4, 16}, {4, 16, 4}}, "ok"},
                     {{{-1, 21}, {3, 6, 7}, {3, 5, 6}}, "ok"},
                     {{{8, 60}, {4, 4, 16}, {4, 16, 4}}, "error"},
                     {{{8, 64}, {4, 4, 16}, {4, 16, 8}}, "error"},
                     {{{8, 64}, {-1, 4, 16}, {4, 16, 4}}, "error"}});
      }
      test_plugin(c, name, DataType::kHALF, {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF},
                  {{{{8, 64}, {4, 4, 16}, {4, 16, 4}, {64}}, "[8, 64]"}},
                  {{{{8, 64}, {4, 4, 16}, {4, 16, 4}, {64}}, "ok"}, {{{8, 64}, {4, 4, 16}, {4, 16, 4}, {63}}, "error"}});
    } else if (name == "NMSparseMatMul") {
      for (DataType t : {DataType::kHALF, DataType::kBF16}) {
        test_plugin(c, name, t, {t, t, DataType::kUINT8},
                    {{{{16, 64}, {64, 32}, {64, 8}}, "[16, 64]"},
                     {{{-1, 2, 64}, {32, 32}, {32, 8}}, "[?, 2, 32]"},
                     {{{16, 64}, {64, 32, 1}, {64, 8}}, "error"}},
                    {{{{16, 64}, {64, 32}, {64, 8}}, "ok"},
                     {{{16, 60}, {64, 32}, {64, 8}}, "error"},
                     {{{16, 64}, {64, 32}, {64, 4}}, "error"},
                     {{{16, 12}, {64, 6}, {64, 1}}, "error"}});
      }
      test_plugin(c, name, DataType::kHALF, {DataType::kHALF, DataType::kHALF, DataType::kUINT8, DataType::kHALF},
                  {{{{16, 64}, {64, 32}, {64, 8}, {64}}, "[16, 64]"}},
                  {{{{16, 64}, {64, 32}, {64, 8}, {64}}, "ok"}, {{{16, 64}, {64, 32}, {64, 8}, {63}}, "error"}});
    } else {
      report(name, "known creator", false, name);
    }
#ifdef SPA_WITH_CUDA
    if (enqueue && name == "MonarchMatMul") {
      for (bool bias : {false, true}) {
        enqueue_monarch(c, spa::DType::kFloat16, 37, 4, 1, 16, 16, bias);   // tensor-core path
        enqueue_monarch(c, spa::DType::kFloat16, 300, 16, 1, 48, 192, bias);
        enqueue_monarch(c, spa::DType::kFloat16, 5, 3, 2, 5, 7, bias);     // generic path
        enqueue_monarch(c, spa::DType::kFloat, 37, 4, 1, 16, 16, bias);
      }
    }
    if (enqueue && name == "NMSparseMatMul") {
      enqueue_nm(c, spa::DType::kFloat16, 37, 64, 64, true, false);
      enqueue_nm(c, spa::DType::kFloat16, 16, 64, 128, false, true);
      enqueue_nm(c, spa::DType::kBFloat16, 1, 32, 64, true, true);
      enqueue_nm(c, spa::DType::kFloat16, 1000, 768, 384, true, false);
    }
#else
    if (enqueue) report(name, "enqueue (needs a CUDA build)", false, "");
#endif
  }
  std::printf("{\"summary\": true, \"failed\": %d}\n", g_failed);
  return g_failed ? 1 : 0;
}
