// MonarchMatMul as a TensorRT IPluginV3 (name "MonarchMatMul", version "1", namespace "").
// Inputs X (..., K), R (b, b*r, kb), L (b, nq, b*r), optional bias (N); float or half, linear.
// enqueue runs the fused CUDA kernel of kernel.cu (CUDA builds); a build without CUDA serves
// engine building only and fails enqueue with a message.
#include "../common/trt_base.h"
#include "monarch.h"

namespace spa {
namespace trt {

class MonarchPlugin : public PluginBase<MonarchPlugin> {
 public:
  static constexpr const char* kName = "MonarchMatMul";

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbIn, DimsExprs const*, int32_t, DimsExprs* out, int32_t nbOut,
                          IExprBuilder& eb) noexcept override {
    SPA_TRT_TRACE("getOutputShapes");
    if ((nbIn != 3 && nbIn != 4) || nbOut != 1 || in[0].nbDims < 1 || in[1].nbDims != 3 || in[2].nbDims != 3) {
      log_error("MonarchMatMul: expects X (..., K), R (b, b*r, kb), L (b, nq, b*r) [, bias (N)]");
      return -1;
    }
    out[0] = in[0];
    out[0].d[in[0].nbDims - 1] = eb.operation(DimensionOperation::kPROD, *in[2].d[0], *in[2].d[1]);
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbIn, int32_t nbOut) noexcept override {
    SPA_TRT_TRACE("supportsFormatCombination");
    const PluginTensorDesc& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    return d.type == io[0].desc.type;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbIn, DynamicPluginTensorDesc const*, int32_t) noexcept override {
    SPA_TRT_TRACE("configurePlugin");
    // the factor shapes must be static; X's leading dims may be dynamic
    for (int32_t i = 1; i < nbIn; ++i)
      if (!dims_static(in[i].desc.dims)) {
        log_error("MonarchMatMul: R, L and bias need static shapes");
        return -1;
      }
    std::vector<int64_t> x = to_vec(in[0].desc.dims);
    for (auto& v : x)
      if (v < 0) v = 1;
    std::vector<int64_t> bias;
    if (nbIn == 4) bias = to_vec(in[3].desc.dims);
    MonarchDims d;
    int64_t rows = 0;
    std::string err = monarch_check(x, to_vec(in[1].desc.dims), to_vec(in[2].desc.dims), nbIn == 4 ? &bias : nullptr, &d, &rows);
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
#ifdef SPA_WITH_CUDA
    const DType t = in[0].desc.type == DataType::kHALF ? DType::kFloat16 : DType::kFloat;
    err = monarch_cuda_supported(t, d);
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
#endif
    return 0;
  }

  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbIn, PluginTensorDesc const*, int32_t) noexcept override {
    SPA_TRT_TRACE("onShapeChange");
    std::vector<int64_t> bias;
    if (nbIn == 4) bias = to_vec(in[3].dims);
    std::string err = monarch_check(to_vec(in[0].dims), to_vec(in[1].dims), to_vec(in[2].dims), nbIn == 4 ? &bias : nullptr,
                                    &dims_, &rows_);
    has_bias_ = nbIn == 4;
    dtype_ = in[0].type == DataType::kHALF ? DType::kFloat16 : DType::kFloat;
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const*, PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void*,
                  cudaStream_t stream) noexcept override {
    SPA_TRT_TRACE("enqueue");
#ifdef SPA_WITH_CUDA
    if (rows_ == 0) return 0;
    const int rc = monarch_cuda(dtype_, inputs[0], inputs[1], inputs[2], has_bias_ ? inputs[3] : nullptr, outputs[0], rows_,
                                dims_, stream);
    if (rc != 0) log_error("MonarchMatMul: CUDA launch failed, cudaError " + std::to_string(rc));
    return rc == 0 ? 0 : -1;
#else
    log_error("MonarchMatMul: this plugin library was built without CUDA (build with --cuda to run engines)");
    return -1;
#endif
  }

 private:
  MonarchDims dims_;
  int64_t rows_ = 0;
  bool has_bias_ = false;
  DType dtype_ = DType::kFloat;
};

IPluginCreatorInterface* monarch_creator() {
  static Creator<MonarchPlugin> creator;
  return &creator;
}

}  // namespace trt
}  // namespace spa
