// NMSparseMatMul as a TensorRT IPluginV3 (name "NMSparseMatMul", version "1", namespace "").
// Inputs X (..., K), values (N, K/2), meta (N, K/8) uint8 (or int32, one per byte, as TensorRT's
// ONNX parser delivers uint8 initializers), optional bias (N); X/values/bias half
// or bfloat16 (cuSPARSELt), linear. enqueue runs cuSPARSELt (CUDA builds): the first enqueue of
// an execution context compresses the weights into cuSPARSELt's format and plans each row count
// once. Without CUDA the plugin serves engine building only.
//
// TensorRT's own alternative is dense weights with the 2:4 zero pattern plus
// BuilderFlag::kSPARSE_WEIGHTS; this plugin exists for models stored in the compressed form.
#include <memory>

#include "../common/trt_base.h"
#include "nm.h"

namespace spa {
namespace trt {

class NMPlugin : public PluginBase<NMPlugin> {
 public:
  static constexpr const char* kName = "NMSparseMatMul";

  NMPlugin() = default;
  NMPlugin(const NMPlugin& o) : dims_(o.dims_), rows_(o.rows_), has_bias_(o.has_bias_), dtype_(o.dtype_) {}

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbIn, DimsExprs const*, int32_t, DimsExprs* out, int32_t nbOut,
                          IExprBuilder&) noexcept override {
    SPA_TRT_TRACE("getOutputShapes");
    if ((nbIn != 3 && nbIn != 4) || nbOut != 1 || in[0].nbDims < 1 || in[1].nbDims != 2 || in[2].nbDims != 2) {
      log_error("NMSparseMatMul: expects X (..., K), values (N, K/2), meta (N, K/8) [, bias (N)]");
      return -1;
    }
    out[0] = in[0];
    out[0].d[in[0].nbDims - 1] = in[1].d[0];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbIn, int32_t nbOut) noexcept override {
    SPA_TRT_TRACE("supportsFormatCombination");
    const PluginTensorDesc& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    // TensorRT's ONNX parser turns uint8 initializers into int32 ("UINT8 data ... is being
    // converted to INT32"): meta arrives as one int32 per byte then.
    if (pos == 2) return d.type == DataType::kUINT8 || d.type == DataType::kINT32;
    if (pos == 0) return d.type == DataType::kHALF || d.type == DataType::kBF16;
    return d.type == io[0].desc.type;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbIn, DynamicPluginTensorDesc const*, int32_t) noexcept override {
    SPA_TRT_TRACE("configurePlugin");
    for (int32_t i = 1; i < nbIn; ++i)
      if (!dims_static(in[i].desc.dims)) {
        log_error("NMSparseMatMul: values, meta and bias need static shapes");
        return -1;
      }
    std::vector<int64_t> x = to_vec(in[0].desc.dims);
    for (auto& v : x)
      if (v < 0) v = 1;
    std::vector<int64_t> bias;
    if (nbIn == 4) bias = to_vec(in[3].desc.dims);
    NMDims d;
    int64_t rows = 0;
    std::string err = nm_check(x, to_vec(in[1].desc.dims), to_vec(in[2].desc.dims), nbIn == 4 ? &bias : nullptr, &d, &rows);
#ifdef SPA_WITH_CUDA
    if (err.empty())  // refuse at build time what cuSPARSELt cannot run
      err = NMCudaRunner::supported(in[0].desc.type == DataType::kBF16 ? DType::kBFloat16 : DType::kFloat16, d);
#endif
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
    return 0;
  }

  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbIn, PluginTensorDesc const*, int32_t) noexcept override {
    SPA_TRT_TRACE("onShapeChange");
    std::vector<int64_t> bias;
    if (nbIn == 4) bias = to_vec(in[3].dims);
    std::string err = nm_check(to_vec(in[0].dims), to_vec(in[1].dims), to_vec(in[2].dims), nbIn == 4 ? &bias : nullptr, &dims_, &rows_);
    has_bias_ = nbIn == 4;
    dtype_ = in[0].type == DataType::kBF16 ? DType::kBFloat16 : DType::kFloat16;
    meta_int32_ = in[2].type == DataType::kINT32;
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
    try {
      if (!runner_ || runner_dims_.n != dims_.n || runner_dims_.k != dims_.k || runner_dtype_ != dtype_) {
        std::string err = NMCudaRunner::supported(dtype_, dims_);
        if (!err.empty()) {
          log_error(err);
          return -1;
        }
        runner_ = std::make_shared<NMCudaRunner>(dtype_, dims_);
        runner_dims_ = dims_;
        runner_dtype_ = dtype_;
      }
    } catch (...) {
      return -1;
    }
    std::string err = runner_->run(inputs[0], inputs[1], inputs[2], has_bias_ ? inputs[3] : nullptr, outputs[0], rows_, stream,
                                   meta_int32_);
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
    return 0;
#else
    log_error("NMSparseMatMul: this plugin library was built without CUDA (build with --cuda to run engines)");
    return -1;
#endif
  }

 private:
  NMDims dims_;
  int64_t rows_ = 0;
  bool has_bias_ = false;
  DType dtype_ = DType::kFloat16;
  bool meta_int32_ = false;
#ifdef SPA_WITH_CUDA
  std::shared_ptr<NMCudaRunner> runner_;
  NMDims runner_dims_;
  DType runner_dtype_ = DType::kFloat16;
#endif
};

IPluginCreatorInterface* nm_creator() {
  static Creator<NMPlugin> creator;
  return &creator;
}

}  // namespace trt
}  // namespace spa
