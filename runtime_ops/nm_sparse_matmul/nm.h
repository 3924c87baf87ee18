// NMSparseMatMul kernels' host API (CPU in cpu.cc, CUDA/cuSPARSELt in kernel.cu).
// Format (reference.py): values (N, K/2), meta (N, K/8) uint8, group g's 4-bit code in byte g/2
// (low nibble for even g) = i0 | i1 << 2 (i0 < i1: kept columns 4g+i0, 4g+i1).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../common/spa_ops.h"

namespace spa {

struct NMDims {
  int64_t n = 0, k = 0;  // W is (n, k)
};

// Checks shapes; "" when consistent, else the message. Fills dims and rows (product of X's
// leading axes).
std::string nm_check(const std::vector<int64_t>& x, const std::vector<int64_t>& values,
                     const std::vector<int64_t>& meta, const std::vector<int64_t>* bias, NMDims* dims,
                     int64_t* rows);

// Checks every metadata code; "" when all are valid, else the first bad one (row, group, code).
std::string nm_check_meta(const uint8_t* meta, const NMDims& d);

// Expand (values, meta) into the dense W (n x k) of element type t (host memory).
void nm_decompress_host(DType t, const void* values, const uint8_t* meta, const NMDims& d, void* w);

// Weights repacked for the CPU kernel: float values, one code byte per group.
struct NMPackedCpu {
  NMDims dims;
  std::vector<float> values;  // (n, k/2)
  std::vector<uint8_t> codes; // (n, k/4): i0 | i1 << 2
  std::vector<float> bias;    // empty when absent
};

// Fails (returns the message) on invalid metadata.
std::string nm_pack_cpu(DType t, const void* values, const uint8_t* meta, const void* bias,
                        const NMDims& d, NMPackedCpu* out);

void nm_cpu(DType t, const void* X, void* Y, int64_t rows, const NMPackedCpu& w, const Parallel& par);

#ifdef SPA_WITH_CUDA
// cuSPARSELt: the compressed operand and one plan (algorithm chosen once) per row count,
// created on first use and reused; after that a call is one cusparseLtMatmul on the stream plus,
// when rows is not a multiple of 16, a padded copy of X and Y. Thread-safe; CUDA-graph-safe once
// every row count it will see has been run once.
class NMCudaRunner {
 public:
  NMCudaRunner(DType t, NMDims d);
  ~NMCudaRunner();
  NMCudaRunner(const NMCudaRunner&) = delete;
  NMCudaRunner& operator=(const NMCudaRunner&) = delete;
  // First call (per runner): compresses values/meta (device pointers) into cuSPARSELt's format.
  // meta is uint8 (N, K/8), or int32 holding one byte each when meta_int32 (TensorRT's parser).
  // Returns "" on success, else the error.
  std::string run(const void* X, const void* values, const void* meta, const void* bias, void* Y,
                  int64_t rows, void* stream, bool meta_int32 = false);
  // Whether this build and device can run the op ("" if yes).
  static std::string supported(DType t, const NMDims& d);

 private:
  struct Impl;
  Impl* impl_;
};
#endif

}  // namespace spa
