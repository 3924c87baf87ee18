// MonarchMatMul for ONNX Runtime through the lite custom-op API: float and float16 kernels for the
// CPU provider and, in CUDA builds, the CUDA provider (launched on ORT's compute stream).
// Constant factors (initializers) are repacked once, at kernel creation, on the CPU.
#include <memory>
#include <mutex>

#include "../common/ort_glue.h"
#include "monarch.h"

namespace spa {
namespace {

template <typename T>
struct MonarchCpuKernel {
  MonarchCpuKernel(const OrtApi*, const OrtKernelInfo* info) {
    ConstInput r = const_input(info, 1), l = const_input(info, 2), b = const_input(info, 3);
    const bool bias_ok = !b.present || (b.constant && b.data);
    if (r.constant && r.data && l.constant && l.data && bias_ok) {
      MonarchDims d;
      int64_t rows = 0;
      std::vector<int64_t> x{r.shape.size() == 3 ? r.shape[0] * r.shape[2] : 0};
      error_ = monarch_check(x, r.shape, l.shape, b.present ? &b.shape : nullptr, &d, &rows);
      if (error_.empty()) {
        monarch_pack_cpu(OrtType<T>::dtype, r.data, l.data, b.present ? b.data : nullptr, d, &packed_);
        has_packed_ = true;
      }
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X,
                      const Ort::Custom::Tensor<T>& R, const Ort::Custom::Tensor<T>& L,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& Y) {
    if (!error_.empty()) return invalid(error_);
    const bool has_bias = bias.has_value() && *bias != nullptr;
    std::vector<int64_t> bias_shape;
    if (has_bias) bias_shape = (*bias)->Shape();
    MonarchDims d;
    int64_t rows = 0;
    std::string err = monarch_check(X.Shape(), R.Shape(), L.Shape(), has_bias ? &bias_shape : nullptr,
                                    &d, &rows);
    if (!err.empty()) return invalid(err);
    std::vector<int64_t> y_shape = X.Shape();
    y_shape.back() = d.N();
    T* y = Y.Allocate(y_shape);
    if (rows == 0) return Ort::Status(nullptr);
    const MonarchPackedCpu* w = &packed_;
    MonarchPackedCpu local;
    if (!has_packed_) {
      monarch_pack_cpu(OrtType<T>::dtype, R.Data(), L.Data(), has_bias ? (*bias)->Data() : nullptr, d,
                       &local);
      w = &local;
    }
    monarch_cpu(OrtType<T>::dtype, X.Data(), y, rows, *w, OrtParallel(ctx));
    return Ort::Status(nullptr);
  }

  std::string error_;
  bool has_packed_ = false;
  MonarchPackedCpu packed_;
};

#ifdef SPA_WITH_CUDA
template <typename T>
struct MonarchCudaKernel {
  MonarchCudaKernel(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X,
                      const Ort::Custom::Tensor<T>& R, const Ort::Custom::Tensor<T>& L,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& Y) {
    const bool has_bias = bias.has_value() && *bias != nullptr;
    std::vector<int64_t> bias_shape;
    if (has_bias) bias_shape = (*bias)->Shape();
    MonarchDims d;
    int64_t rows = 0;
    std::string err = monarch_check(X.Shape(), R.Shape(), L.Shape(), has_bias ? &bias_shape : nullptr,
                                    &d, &rows);
    if (!err.empty()) return invalid(err);
    err = monarch_cuda_supported(OrtType<T>::dtype, d);
    if (!err.empty()) return invalid(err);
    std::vector<int64_t> y_shape = X.Shape();
    y_shape.back() = d.N();
    T* y = Y.Allocate(y_shape);
    if (rows == 0) return Ort::Status(nullptr);
    void* stream = Ort::KernelContext(ctx).GetGPUComputeStream();
    const int rc = monarch_cuda(OrtType<T>::dtype, X.Data(), R.Data(), L.Data(),
                                has_bias ? (*bias)->Data() : nullptr, y, rows, d, stream);
    if (rc != 0) return runtime_error("MonarchMatMul: CUDA launch failed, cudaError " + std::to_string(rc));
    return Ort::Status(nullptr);
  }
};
#endif

std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& ops() {
  static std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> v;
  return v;
}

}  // namespace

void register_monarch(Ort::CustomOpDomain& domain) {
  static std::once_flag once;
  std::call_once(once, [] {
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<MonarchCpuKernel<float>>("MonarchMatMul",
                                                                                "CPUExecutionProvider"));
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<MonarchCpuKernel<Ort::Float16_t>>(
        "MonarchMatMul", "CPUExecutionProvider"));
#ifdef SPA_WITH_CUDA
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<MonarchCudaKernel<float>>(
        "MonarchMatMul", "CUDAExecutionProvider"));
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<MonarchCudaKernel<Ort::Float16_t>>(
        "MonarchMatMul", "CUDAExecutionProvider"));
#endif
  });
  for (auto& op : ops()) domain.Add(op.get());
}

}  // namespace spa
