// MonarchMatMul kernels' host API (CPU in cpu.cc, CUDA in kernel.cu). Index convention: reference.py.
//   X (rows, K), K = b*kb;  R (b, b*r, kb);  L (b, nq, b*r);  bias (N);  Y (rows, N), N = nq*b
//   Y[:, q*b+t] = sum_{j,rho} L[t, q, j*r+rho] * sum_s R[j, t*r+rho, s] * X[:, j*kb+s]  (+ bias)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../common/spa_ops.h"

namespace spa {

struct MonarchDims {
  int64_t b = 0, r = 0, kb = 0, nq = 0;
  int64_t K() const { return b * kb; }
  int64_t N() const { return nq * b; }
  int64_t br() const { return b * r; }
};

// Checks X/R/L/bias shapes; returns "" when consistent, else the error message. Fills dims/rows.
std::string monarch_check(const std::vector<int64_t>& x, const std::vector<int64_t>& r,
                          const std::vector<int64_t>& l, const std::vector<int64_t>* bias,
                          MonarchDims* dims, int64_t* rows);

// Weights repacked in float for the CPU kernel: Rt[j] = R[j]^T (kb x br), Lt[t] = L[t]^T (br x nq).
struct MonarchPackedCpu {
  MonarchDims dims;
  std::vector<float> rt, lt, bias;  // bias empty when absent
};

void monarch_pack_cpu(DType t, const void* R, const void* L, const void* bias, const MonarchDims& d,
                      MonarchPackedCpu* out);

// Y = monarch(X) on the CPU; X and Y of element type t.
void monarch_cpu(DType t, const void* X, void* Y, int64_t rows, const MonarchPackedCpu& w,
                 const Parallel& par);

#ifdef SPA_WITH_CUDA
// CUDA: one fused launch on `stream` (X, R, L, bias, Y device pointers, element type t, fp32
// accumulation). Returns the launch's cudaError_t as int (0 = success).
int monarch_cuda(DType t, const void* X, const void* R, const void* L, const void* bias, void* Y,
                 int64_t rows, const MonarchDims& d, void* stream);
// Whether the fused kernel handles these dims (its intermediate tile must fit in shared memory);
// "" when it does, else why not.
std::string monarch_cuda_supported(DType t, const MonarchDims& d);
#endif

}  // namespace spa
