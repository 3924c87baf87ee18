// ONNX Runtime glue shared by the ops' ort_op.cc: the API headers (manual init: the library is
// not linked to libonnxruntime; RegisterCustomOps gets the API from the session that loads it),
// element-type traits, ORT's thread pool as a spa::Parallel, constant-input access.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>
#undef ORT_API_MANUAL_INIT

#include <optional>
#include <string>
#include <vector>

#include "spa_ops.h"

namespace spa {

template <typename T>
struct OrtType;
template <>
struct OrtType<float> {
  static constexpr DType dtype = DType::kFloat;
};
template <>
struct OrtType<Ort::Float16_t> {
  static constexpr DType dtype = DType::kFloat16;
};
template <>
struct OrtType<Ort::BFloat16_t> {
  static constexpr DType dtype = DType::kBFloat16;
};

inline Ort::Status invalid(const std::string& msg) {
  return Ort::Status(msg.c_str(), ORT_INVALID_ARGUMENT);
}
inline Ort::Status runtime_error(const std::string& msg) { return Ort::Status(msg.c_str(), ORT_FAIL); }

// ORT's intra-op thread pool (KernelContext::ParallelFor, ORT >= 1.17).
class OrtParallel : public Parallel {
 public:
  explicit OrtParallel(OrtKernelContext* ctx) : ctx_(ctx) {}
  void run(size_t total, void (*fn)(void*, size_t), void* arg) const override {
    Ort::KernelContext(ctx_).ParallelFor(fn, total, 0, arg);
  }

 private:
  OrtKernelContext* ctx_;
};

// A constant (initializer) input seen at kernel creation: shape and host data pointer. `data` is
// null when the input is not constant or its data is not host-readable (then `shape` is empty).
struct ConstInput {
  bool present = false;
  bool constant = false;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

inline ConstInput const_input(const OrtKernelInfo* info, size_t index) {
  ConstInput out;
  try {
    Ort::ConstKernelInfo ki(info);
    if (index >= ki.GetInputCount()) return out;
    out.present = true;
    int is_const = 0;
    Ort::ConstValue v = ki.GetTensorConstantInput(index, &is_const);
    if (!is_const || v == nullptr) return out;
    out.constant = true;
    auto info_shape = v.GetTensorTypeAndShapeInfo();
    out.shape = info_shape.GetShape();
    out.data = v.GetTensorRawData();
  } catch (const Ort::Exception&) {
    out.constant = false;
  }
  return out;
}

}  // namespace spa
