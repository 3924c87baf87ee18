// NMSparseMatMul on CUDA through cuSPARSELt.
//
//   Y (M x N, row-major) = X (M x K) W^T (+ bias)  <=>  D = Y^T (N x M, col-major) = A op(B)
//   A = W (N x K, row-major, 2:4 along K: cuSPARSELt's structured operand), B = X (M x K, row-major),
//   op(B) = B^T: the layout PyTorch's cuSPARSELt binding uses for linear layers.
//
// First run of a runner: our (values, meta) are expanded on the GPU into the dense W (metadata
// codes checked there), compressed once into cuSPARSELt's format (cusparseLtSpMMACompress2) and
// the dense copy freed. Per distinct row count M (rounded up to 16, cuSPARSELt's alignment): one
// plan with cuSPARSELt's default algorithm for that shape (or, with SPA_NM_SEARCH=1, the one
// cusparseLtMatmulSearch picks), its workspace and padding buffers allocated once. After that a call is a cache lookup and one cusparseLtMatmul on the caller's
// stream (plus two device copies when M is not a multiple of 16): no allocation, no
// synchronisation, so the op can be captured in a CUDA graph once each M has been seen.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "nm.h"

namespace spa {
namespace {

std::string cuda_msg(const char* what, cudaError_t e) {
  return std::string("NMSparseMatMul: ") + what + ": " + cudaGetErrorString(e);
}
std::string cslt_msg(const char* what, cusparseStatus_t s) {
  return std::string("NMSparseMatMul: ") + what + " failed: cuSPARSELt status " + std::to_string(int(s));
}

#define CSLT_TRY(call, what)                             \
  do {                                                   \
    cusparseStatus_t s_ = (call);                        \
    if (s_ != CUSPARSE_STATUS_SUCCESS) return cslt_msg(what, s_); \
  } while (0)
#define CUDA_TRY(call, what)                       \
  do {                                             \
    cudaError_t e_ = (call);                       \
    if (e_ != cudaSuccess) return cuda_msg(what, e_); \
  } while (0)

// Expand (values, meta) to dense W (N x K) of 16-bit elements; *bad = 1 on an invalid code.
template <typename M>
__global__ void nm_expand(const uint16_t* __restrict__ values, const M* __restrict__ meta, uint16_t* __restrict__ w,
                          int64_t n, int64_t k, int* bad) {
  const int64_t groups = n * (k / 4);
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = g / (k / 4), gi = g % (k / 4);
    const unsigned code = (unsigned(meta[row * (k / 8) + gi / 2]) >> (4 * (gi % 2))) & 0xFu;
    const unsigned i0 = code & 3u, i1 = code >> 2;
    uint16_t out[4] = {0, 0, 0, 0};
    if (i0 >= i1) {
      atomicExch(bad, 1);
    } else {
      out[i0] = values[row * (k / 2) + 2 * gi];
      out[i1] = values[row * (k / 2) + 2 * gi + 1];
    }
    uint16_t* dst = w + row * k + 4 * gi;
    for (int e = 0; e < 4; ++e) dst[e] = out[e];
  }
}

struct Handle {
  cusparseLtHandle_t h;
  bool ok = false;
};

// One cuSPARSELt handle per device for the process.
cusparseLtHandle_t* global_handle(std::string* err) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<Handle>> handles;
  int dev = 0;
  cudaGetDevice(&dev);
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = handles[dev];
  if (!slot) {
    slot = std::make_unique<Handle>();
    const cusparseStatus_t s = cusparseLtInit(&slot->h);
    slot->ok = s == CUSPARSE_STATUS_SUCCESS;
    if (!slot->ok) *err = cslt_msg("cusparseLtInit", s);
  }
  return slot->ok ? &slot->h : nullptr;
}

cudaDataType cuda_type(DType t) { return t == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F; }

}  // namespace

struct NMCudaRunner::Impl {
  DType t;
  NMDims d;
  std::mutex mu;
  cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t mat_a;
  bool mat_a_ok = false;
  void* compressed = nullptr;
  bool ready = false;
  std::string init_error;

  struct Plan {
    int64_t m = 0;  // padded rows
    cusparseLtMatDescriptor_t mat_b, mat_c;
    cusparseLtMatmulDescriptor_t matmul;
    cusparseLtMatmulAlgSelection_t alg;
    cusparseLtMatmulPlan_t plan;
    void* workspace = nullptr;
    void* x_pad = nullptr;  // only when rows % 16 != 0
    void* y_pad = nullptr;
    bool bias = false;
    int alg_id = -1;
  };
  std::map<std::pair<int64_t, const void*>, std::unique_ptr<Plan>> plans;  // (rows, bias pointer)

  ~Impl() {
    for (auto& kv : plans) {
      Plan& p = *kv.second;
      cusparseLtMatmulPlanDestroy(&p.plan);
      cusparseLtMatmulAlgSelectionDestroy(&p.alg);
      cusparseLtMatDescriptorDestroy(&p.mat_b);
      cusparseLtMatDescriptorDestroy(&p.mat_c);
      cudaFree(p.workspace);
      cudaFree(p.x_pad);
      cudaFree(p.y_pad);
    }
    if (mat_a_ok) cusparseLtMatDescriptorDestroy(&mat_a);
    cudaFree(compressed);
  }

  std::string init(const void* values, const void* meta, bool meta_int32, cudaStream_t stream) {
    std::string err;
    handle = global_handle(&err);
    if (!handle) return err;
    const int64_t n = d.n, k = d.k;
    CSLT_TRY(cusparseLtStructuredDescriptorInit(handle, &mat_a, n, k, k, 16, cuda_type(t), CUSPARSE_ORDER_ROW,
                                                CUSPARSELT_SPARSITY_50_PERCENT),
             "structured descriptor");
    mat_a_ok = true;
    size_t csize = 0, cbuf = 0;
    CSLT_TRY(cusparseLtSpMMACompressedSize2(handle, &mat_a, &csize, &cbuf), "cusparseLtSpMMACompressedSize2");
    void* dense = nullptr;
    void* cbuffer = nullptr;
    int* bad = nullptr;
    CUDA_TRY(cudaMalloc(&compressed, csize), "cudaMalloc (compressed weights)");
    CUDA_TRY(cudaMalloc(&dense, size_t(n * k * 2)), "cudaMalloc (dense weights, temporary)");
    if (cbuf) CUDA_TRY(cudaMalloc(&cbuffer, cbuf), "cudaMalloc (compression buffer)");
    CUDA_TRY(cudaMalloc(&bad, sizeof(int)), "cudaMalloc");
    CUDA_TRY(cudaMemsetAsync(bad, 0, sizeof(int), stream), "cudaMemsetAsync");
    const int64_t groups = n * (k / 4);
    const int blocks = int(std::min<int64_t>((groups + 255) / 256, 65535));
    if (meta_int32)
      nm_expand<int32_t><<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(values), static_cast<const int32_t*>(meta),
                                                     static_cast<uint16_t*>(dense), n, k, bad);
    else
      nm_expand<uint8_t><<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(values), static_cast<const uint8_t*>(meta),
                                                     static_cast<uint16_t*>(dense), n, k, bad);
    CUDA_TRY(cudaGetLastError(), "expand kernel launch");
    const cusparseStatus_t cs = cusparseLtSpMMACompress2(handle, &mat_a, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, dense,
                                                         compressed, cbuffer, stream);
    int host_bad = 0;
    const cudaError_t ce = cudaMemcpyAsync(&host_bad, bad, sizeof(int), cudaMemcpyDeviceToHost, stream);
    const cudaError_t se = cudaStreamSynchronize(stream);  // once per runner, at first use
    cudaFree(dense);
    cudaFree(cbuffer);
    cudaFree(bad);
    if (cs != CUSPARSE_STATUS_SUCCESS) return cslt_msg("cusparseLtSpMMACompress2", cs);
    CUDA_TRY(ce, "cudaMemcpyAsync");
    CUDA_TRY(se, "compressing the weights");
    if (host_bad) return "NMSparseMatMul: invalid 2:4 metadata code in meta (valid codes: 4, 8, 9, 12, 13, 14)";
    return "";
  }

  std::string make_plan(int64_t rows, bool has_bias, const void* X, const void* bias, void* Y, cudaStream_t stream,
                        Plan** out) {
    auto p = std::make_unique<Plan>();
    const int64_t n = d.n, k = d.k, m = (rows + 15) / 16 * 16;
    p->m = m;
    const cudaDataType ct = cuda_type(t);
    CSLT_TRY(cusparseLtDenseDescriptorInit(handle, &p->mat_b, m, k, k, 16, ct, CUSPARSE_ORDER_ROW), "dense descriptor (X)");
    CSLT_TRY(cusparseLtDenseDescriptorInit(handle, &p->mat_c, n, m, n, 16, ct, CUSPARSE_ORDER_COL), "dense descriptor (Y)");
    CSLT_TRY(cusparseLtMatmulDescriptorInit(handle, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_TRANSPOSE, &mat_a, &p->mat_b, &p->mat_c, &p->mat_c,
                                            CUSPARSE_COMPUTE_32F),
             "matmul descriptor");
    // the compressed operand's address, as PyTorch's binding sets it (Hopper kernels read it)
    const void* sparse_ptr = compressed;
    CSLT_TRY(cusparseLtMatmulDescSetAttribute(handle, &p->matmul, CUSPARSELT_MATMUL_SPARSE_MAT_POINTER, &sparse_ptr,
                                              sizeof(sparse_ptr)),
             "sparse matrix pointer");
    if (has_bias) {
      CSLT_TRY(cusparseLtMatmulDescSetAttribute(handle, &p->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)),
               "bias pointer");
      p->bias = true;
    }
    CSLT_TRY(cusparseLtMatmulAlgSelectionInit(handle, &p->alg, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT), "algorithm selection");
    CSLT_TRY(cusparseLtMatmulPlanInit(handle, &p->plan, &p->matmul, &p->alg), "plan");
    const bool pad = m != rows;
    if (pad) {
      CUDA_TRY(cudaMalloc(&p->x_pad, size_t(m * k * 2)), "cudaMalloc (padded X)");
      CUDA_TRY(cudaMalloc(&p->y_pad, size_t(m * n * 2)), "cudaMalloc (padded Y)");
      CUDA_TRY(cudaMemsetAsync(p->x_pad, 0, size_t(m * k * 2), stream), "cudaMemsetAsync");
    }
    // algorithm search once, on scratch output (it runs the kernel several times)
    size_t ws = 0;
    CSLT_TRY(cusparseLtMatmulGetWorkspace(handle, &p->plan, &ws), "workspace size");
    void* search_ws = nullptr;
    if (ws) CUDA_TRY(cudaMalloc(&search_ws, ws), "cudaMalloc (workspace)");
    void* x_s = pad ? p->x_pad : const_cast<void*>(X);
    void* y_s = pad ? p->y_pad : Y;
    if (pad) CUDA_TRY(cudaMemcpyAsync(p->x_pad, X, size_t(rows * k * 2), cudaMemcpyDeviceToDevice, stream), "copy X");
    const float alpha = 1.f, beta = 0.f;
    cudaStream_t s = stream;
    // cusparseLtMatmulSearch is opt-in (SPA_NM_SEARCH=1): on the H200 with cuSPARSELt 0.8 it failed
    // (status 7, then "illegal instruction", which poisons the CUDA context) on every shape tried,
    // while cuSPARSELt's default choice for the plan ran correctly (benchmarks/runtime_ops/README.md).
    const char* search = std::getenv("SPA_NM_SEARCH");
    if (search && std::string(search) == "1")
      CSLT_TRY(cusparseLtMatmulSearch(handle, &p->plan, &alpha, compressed, x_s, &beta, y_s, y_s, search_ws, &s, 1),
               "cusparseLtMatmulSearch");
    cudaFree(search_ws);
    cusparseLtMatmulAlgGetAttribute(handle, &p->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &p->alg_id, sizeof(p->alg_id));
    // the search may change the algorithm and so the workspace: size it for the chosen one
    CSLT_TRY(cusparseLtMatmulGetWorkspace(handle, &p->plan, &ws), "workspace size");
    if (ws) CUDA_TRY(cudaMalloc(&p->workspace, ws), "cudaMalloc (workspace)");
    CUDA_TRY(cudaStreamSynchronize(stream), "plan search");
    *out = p.get();
    plans[{rows, bias}] = std::move(p);
    return "";
  }
};

NMCudaRunner::NMCudaRunner(DType t, NMDims d) : impl_(new Impl) {
  impl_->t = t;
  impl_->d = d;
}

NMCudaRunner::~NMCudaRunner() { delete impl_; }

std::string NMCudaRunner::supported(DType t, const NMDims& d) {
  if (t != DType::kFloat16 && t != DType::kBFloat16) return "NMSparseMatMul CUDA: float16 or bfloat16 only";
  // cuSPARSELt's 16-bit structured operand: rows a multiple of 32, columns of 64 (PyTorch's
  // semi-structured constraints for the same library)
  if (d.n % 32 || d.k % 64)
    return "NMSparseMatMul CUDA: N (" + std::to_string(d.n) + ") must be a multiple of 32 and K (" +
           std::to_string(d.k) + ") of 64 for cuSPARSELt";
  return "";
}

std::string NMCudaRunner::run(const void* X, const void* values, const void* meta, const void* bias, void* Y, int64_t rows,
                              void* stream_, bool meta_int32) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_);
  Impl& I = *impl_;
  Impl::Plan* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(I.mu);
    if (!I.ready) {
      if (!I.init_error.empty()) return I.init_error;
      I.init_error = I.init(values, meta, meta_int32, stream);
      if (!I.init_error.empty()) return I.init_error;
      I.ready = true;
    }
    auto it = I.plans.find({rows, bias});
    if (it != I.plans.end()) {
      p = it->second.get();
    } else {
      std::string err = I.make_plan(rows, bias != nullptr, X, bias, Y, stream, &p);
      if (!err.empty()) return err;
    }
  }
  const int64_t n = I.d.n, k = I.d.k;
  const bool pad = p->m != rows;
  const float alpha = 1.f, beta = 0.f;
  if (pad) CUDA_TRY(cudaMemcpyAsync(p->x_pad, X, size_t(rows * k * 2), cudaMemcpyDeviceToDevice, stream), "copy X");
  cudaStream_t s = stream;
  CSLT_TRY(cusparseLtMatmul(I.handle, &p->plan, &alpha, I.compressed, pad ? p->x_pad : X, &beta, pad ? p->y_pad : Y,
                            pad ? p->y_pad : Y, p->workspace, &s, 1),
           "cusparseLtMatmul");
  if (pad) CUDA_TRY(cudaMemcpyAsync(Y, p->y_pad, size_t(rows * n * 2), cudaMemcpyDeviceToDevice, stream), "copy Y");
  return "";
}

}  // namespace spa
