// TensorRT IPluginV3 scaffolding shared by the ops' trt_plugin.cpp. A plugin derives from
// PluginBase<Self> and implements the shape/format/enqueue methods; the creator is
// Creator<Self>, whose name/version/namespace are the ONNX node's op_type, plugin_version ("1")
// and plugin_namespace ("") as TensorRT's ONNX parser looks them up. No TensorRT library is
// linked: everything used here is inline in the headers.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace spa {
namespace trt {

using namespace nvinfer1;

inline void log_error(const std::string& msg) { std::fprintf(stderr, "[spa.ops TensorRT plugin] %s\n", msg.c_str()); }

// SPA_TRT_TRACE=1: print every plugin method TensorRT calls (to stderr), for debugging builds.
inline bool trace_on() {
  static const bool on = [] {
    const char* v = std::getenv("SPA_TRT_TRACE");
    return v && *v && *v != '0';
  }();
  return on;
}
#define SPA_TRT_TRACE(what) \
  do {                      \
    if (::spa::trt::trace_on()) std::fprintf(stderr, "[spa.ops trace] %s\n", what); \
  } while (0)

template <typename Self>
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    SPA_TRT_TRACE("getCapabilityInterface");
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override {
    SPA_TRT_TRACE("clone");
    try {
      return new Self(static_cast<const Self&>(*this));
    } catch (...) {
      return nullptr;
    }
  }
  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return Self::kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return "1"; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }
  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in, int32_t nbInputs) const noexcept override {
    SPA_TRT_TRACE("getOutputDataTypes");
    if (nbOutputs != 1 || nbInputs < 1) return -1;
    out[0] = in[0];
    return 0;
  }
  // IPluginV3OneRuntime
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    static PluginFieldCollection empty{0, nullptr};
    return &empty;  // everything the plugin needs is in its input shapes
  }
};

template <typename Plugin>
class Creator : public IPluginCreatorV3One {
 public:
  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override {
    SPA_TRT_TRACE("createPlugin");
    try {
      return new Plugin();
    } catch (...) {
      return nullptr;
    }
  }
  PluginFieldCollection const* getFieldNames() noexcept override {
    static PluginFieldCollection none{0, nullptr};
    return &none;  // plugin_version / plugin_namespace are consumed by the parser
  }
  AsciiChar const* getPluginName() const noexcept override { return Plugin::kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return "1"; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }
};

inline bool dims_static(Dims const& d) {
  for (int32_t i = 0; i < d.nbDims; ++i)
    if (d.d[i] < 0) return false;
  return true;
}

inline std::vector<int64_t> to_vec(Dims const& d) { return std::vector<int64_t>(d.d, d.d + d.nbDims); }

}  // namespace trt
}  // namespace spa
