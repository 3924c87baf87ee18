// A plain C entry to the CUDA kernels of libspa_ort_ops_cuda.so, for tests and benchmarks that
// call the kernels directly (ctypes, device pointers from any framework) to time them without a
// runtime around them. Not part of the ops' interface: ONNX Runtime and TensorRT use ort_op.cc and
// trt_plugin.cpp.
#include <cstring>
#include <string>

#include "../monarch_matmul/monarch.h"
#include "../nm_sparse_matmul/nm.h"

namespace {
void copy_err(const std::string& e, char* err, int len) {
  if (err && len > 0) {
    std::strncpy(err, e.c_str(), size_t(len - 1));
    err[len - 1] = 0;
  }
}
}  // namespace

extern "C" {

// dtype: 1 float32, 10 float16, 16 bfloat16 (ONNX TensorProto codes). Returns 0 on success.
__attribute__((visibility("default"))) int spa_monarch_cuda(int dtype, const void* X, const void* R, const void* L,
                                                            const void* bias, void* Y, int64_t rows, int64_t b, int64_t r,
                                                            int64_t kb, int64_t nq, void* stream, char* err, int errlen) {
  spa::MonarchDims d;
  d.b = b;
  d.r = r;
  d.kb = kb;
  d.nq = nq;
  const std::string why = spa::monarch_cuda_supported(spa::DType(dtype), d);
  if (!why.empty()) {
    copy_err(why, err, errlen);
    return -1;
  }
  const int rc = spa::monarch_cuda(spa::DType(dtype), X, R, L, bias, Y, rows, d, stream);
  if (rc) copy_err("CUDA error " + std::to_string(rc), err, errlen);
  return rc;
}

__attribute__((visibility("default"))) void* spa_nm_cuda_create(int dtype, int64_t n, int64_t k, char* err, int errlen) {
  spa::NMDims d;
  d.n = n;
  d.k = k;
  const std::string why = spa::NMCudaRunner::supported(spa::DType(dtype), d);
  if (!why.empty()) {
    copy_err(why, err, errlen);
    return nullptr;
  }
  return new spa::NMCudaRunner(spa::DType(dtype), d);
}

__attribute__((visibility("default"))) int spa_nm_cuda_run(void* runner, const void* X, const void* values, const void* meta,
                                                           const void* bias, void* Y, int64_t rows, void* stream, char* err,
                                                           int errlen) {
  const std::string e = static_cast<spa::NMCudaRunner*>(runner)->run(X, values, meta, bias, Y, rows, stream);
  copy_err(e, err, errlen);
  return e.empty() ? 0 : -1;
}

__attribute__((visibility("default"))) void spa_nm_cuda_destroy(void* runner) {
  delete static_cast<spa::NMCudaRunner*>(runner);
}
}
