// NMSparseMatMul for ONNX Runtime through the lite custom-op API. CPU: float, float16, bfloat16
// (constant weights repacked once at kernel creation). CUDA builds: float16 and bfloat16 through
// cuSPARSELt on ORT's compute stream; values and meta must be initializers there (they are
// compressed into cuSPARSELt's format on the first run and kept).
#include <memory>
#include <mutex>

#include "../common/ort_glue.h"
#include "nm.h"

namespace spa {
namespace {

template <typename T>
struct NMCpuKernel {
  NMCpuKernel(const OrtApi*, const OrtKernelInfo* info) {
    ConstInput v = const_input(info, 1), m = const_input(info, 2), b = const_input(info, 3);
    const bool bias_ok = !b.present || (b.constant && b.data);
    if (v.constant && v.data && m.constant && m.data && bias_ok) {
      NMDims d;
      int64_t rows = 0;
      std::vector<int64_t> x{v.shape.size() == 2 ? 2 * v.shape[1] : 0};
      error_ = nm_check(x, v.shape, m.shape, b.present ? &b.shape : nullptr, &d, &rows);
      if (error_.empty())
        error_ = nm_pack_cpu(OrtType<T>::dtype, v.data, static_cast<const uint8_t*>(m.data),
                             b.present ? b.data : nullptr, d, &packed_);
      has_packed_ = error_.empty();
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X,
                      const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& meta,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& Y) {
    if (!error_.empty()) return invalid(error_);
    const bool has_bias = bias.has_value() && *bias != nullptr;
    std::vector<int64_t> bias_shape;
    if (has_bias) bias_shape = (*bias)->Shape();
    NMDims d;
    int64_t rows = 0;
    std::string err = nm_check(X.Shape(), values.Shape(), meta.Shape(),
                               has_bias ? &bias_shape : nullptr, &d, &rows);
    if (!err.empty()) return invalid(err);
    const NMPackedCpu* w = &packed_;
    NMPackedCpu local;
    if (!has_packed_) {
      err = nm_pack_cpu(OrtType<T>::dtype, values.Data(), meta.Data(),
                        has_bias ? (*bias)->Data() : nullptr, d, &local);
      if (!err.empty()) return invalid(err);
      w = &local;
    }
    std::vector<int64_t> y_shape = X.Shape();
    y_shape.back() = d.n;
    T* y = Y.Allocate(y_shape);
    nm_cpu(OrtType<T>::dtype, X.Data(), y, rows, *w, OrtParallel(ctx));
    return Ort::Status(nullptr);
  }

  std::string error_;
  bool has_packed_ = false;
  NMPackedCpu packed_;
};

#ifdef SPA_WITH_CUDA
template <typename T>
struct NMCudaKernel {
  NMCudaKernel(const OrtApi*, const OrtKernelInfo* info) {
    ConstInput v = const_input(info, 1), m = const_input(info, 2);
    if (!v.constant || !m.constant)
      error_ = "NMSparseMatMul on CUDA: values and meta must be initializers (constant weights), "
               "they are compressed once into cuSPARSELt's format";
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X,
                      const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& meta,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& Y) {
    if (!error_.empty()) return invalid(error_);
    const bool has_bias = bias.has_value() && *bias != nullptr;
    std::vector<int64_t> bias_shape;
    if (has_bias) bias_shape = (*bias)->Shape();
    NMDims d;
    int64_t rows = 0;
    std::string err = nm_check(X.Shape(), values.Shape(), meta.Shape(),
                               has_bias ? &bias_shape : nullptr, &d, &rows);
    if (!err.empty()) return invalid(err);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!runner_) {
        err = NMCudaRunner::supported(OrtType<T>::dtype, d);
        if (!err.empty()) return invalid(err);
        runner_ = std::make_unique<NMCudaRunner>(OrtType<T>::dtype, d);
      }
    }
    std::vector<int64_t> y_shape = X.Shape();
    y_shape.back() = d.n;
    T* y = Y.Allocate(y_shape);
    if (rows == 0) return Ort::Status(nullptr);
    err = runner_->run(X.Data(), values.Data(), meta.Data(), has_bias ? (*bias)->Data() : nullptr, y,
                       rows, Ort::KernelContext(ctx).GetGPUComputeStream());
    if (!err.empty()) return runtime_error(err);
    return Ort::Status(nullptr);
  }

  std::string error_;
  std::mutex mu_;
  std::unique_ptr<NMCudaRunner> runner_;
};
#endif

std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& ops() {
  static std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> v;
  return v;
}

}  // namespace

void register_nm(Ort::CustomOpDomain& domain) {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* cpu = "CPUExecutionProvider";
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<NMCpuKernel<float>>("NMSparseMatMul", cpu));
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<NMCpuKernel<Ort::Float16_t>>("NMSparseMatMul", cpu));
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<NMCpuKernel<Ort::BFloat16_t>>("NMSparseMatMul", cpu));
#ifdef SPA_WITH_CUDA
    const char* cuda = "CUDAExecutionProvider";
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<NMCudaKernel<Ort::Float16_t>>("NMSparseMatMul", cuda));
    ops().emplace_back(Ort::Custom::CreateLiteCustomOp<NMCudaKernel<Ort::BFloat16_t>>("NMSparseMatMul", cuda));
#endif
  });
  for (auto& op : ops()) domain.Add(op.get());
}

}  // namespace spa
