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
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libspa_trt_plugins.so\n", argv[0]);
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
                    {{{{16, 64}, {48, 32}, {48, 8}}, "[16, 48]"},
                     {{{-1, 2, 64}, {48, 32}, {48, 8}}, "[?, 2, 48]"},
                     {{{16, 64}, {48, 32, 1}, {48, 8}}, "error"}},
                    {{{{16, 64}, {48, 32}, {48, 8}}, "ok"},
                     {{{16, 60}, {48, 32}, {48, 8}}, "error"},
                     {{{16, 64}, {48, 32}, {48, 4}}, "error"},
                     {{{16, 12}, {48, 6}, {48, 1}}, "error"}});
      }
      test_plugin(c, name, DataType::kHALF, {DataType::kHALF, DataType::kHALF, DataType::kUINT8, DataType::kHALF},
                  {{{{16, 64}, {48, 32}, {48, 8}, {48}}, "[16, 48]"}},
                  {{{{16, 64}, {48, 32}, {48, 8}, {48}}, "ok"}, {{{16, 64}, {48, 32}, {48, 8}, {47}}, "error"}});
    } else {
      report(name, "known creator", false, name);
    }
  }
  std::printf("{\"summary\": true, \"failed\": %d}\n", g_failed);
  return g_failed ? 1 : 0;
}
