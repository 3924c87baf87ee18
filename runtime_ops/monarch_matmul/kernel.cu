// MonarchMatMul CUDA kernels: both block-diagonal products and the permutations fused in one
// launch; the intermediate (rows x b*b*r) stays in shared memory.
//
// Two kernels, chosen per shape (monarch_cuda):
//  * monarch_wmma (fp16, kb, b*r and nq multiples of 16): tensor cores through WMMA 16x16x16,
//    fp32 accumulation. A CTA owns TM rows (16 or 32). Stage 1: for every block j and 16-column
//    tile of R_j^T, fragments of X (global, L1/L2) and R (global, L2) -> U, converted to half and
//    written permuted into shared memory as V[row][t][j*r+rho]. Stage 2: for every chunk of 16
//    output rows q of L and every block t, V_t (shared) x L_t^T (global) -> a staging tile that
//    holds the contiguous output columns [q0*b, (q0+16)*b) of the CTA's rows, then one coalesced
//    write (+ bias).
//  * monarch_generic (any shape, fp32 or fp16): the same two stages on CUDA cores, one output
//    per thread per step; the fallback for shapes the tensor-core path cannot tile.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <string>

#include "monarch.h"

namespace spa {
namespace {

using namespace nvcuda;

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// ------------------------------------------------------------------------------ generic kernel
template <typename T>
__global__ void monarch_generic(const T* __restrict__ X, const T* __restrict__ R, const T* __restrict__ L,
                                const T* __restrict__ bias, T* __restrict__ Y, int64_t rows, int b, int r, int kb,
                                int nq, int tm) {
  extern __shared__ float vsm[];  // [tm][b][b*r] permuted intermediate
  const int br = b * r, K = b * kb, N = nq * b, mid = b * br;
  const int64_t row0 = int64_t(blockIdx.x) * tm;
  const int m = int(rows - row0 < int64_t(tm) ? rows - row0 : int64_t(tm));
  // stage 1: u[row][j][c] = sum_s X[row][j*kb+s] R[j][c][s]; stored at v[row][t][j*r+rho], c = t*r+rho
  for (int idx = threadIdx.x; idx < m * mid; idx += blockDim.x) {
    const int row = idx / mid, jc = idx % mid, j = jc / br, c = jc % br;
    const T* x = X + (row0 + row) * K + int64_t(j) * kb;
    const T* w = R + (int64_t(j) * br + c) * kb;
    float acc = 0.f;
    for (int s = 0; s < kb; ++s) acc += to_f(x[s]) * to_f(w[s]);
    const int t = c / r, rho = c % r;
    vsm[row * mid + t * br + j * r + rho] = acc;
  }
  __syncthreads();
  // stage 2: Y[row][q*b+t] = sum_e v[row][t][e] L[t][q][e] (+ bias); consecutive threads -> consecutive o
  for (int idx = threadIdx.x; idx < m * N; idx += blockDim.x) {
    const int row = idx / N, o = idx % N, q = o / b, t = o % b;
    const float* v = vsm + row * mid + t * br;
    const T* w = L + (int64_t(t) * nq + q) * br;
    float acc = bias ? to_f(bias[o]) : 0.f;
    for (int e = 0; e < br; ++e) acc += v[e] * to_f(w[e]);
    Y[(row0 + row) * N + o] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------------------ tensor-core kernel
constexpr int kWarps = 16;

template <int TM>
__global__ void __launch_bounds__(kWarps * 32) monarch_wmma(const __half* __restrict__ X, const __half* __restrict__ R,
                                                            const __half* __restrict__ L, const __half* __restrict__ bias,
                                                            __half* __restrict__ Y, int64_t rows, int b, int r, int kb,
                                                            int nq, int qc) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int br = b * r, K = b * kb, N = nq * b, mid = b * br;
  const int ldv = mid + 8;       // padded row stride of V (halves), keeps 16-byte alignment
  const int lds = qc * 16 * b + 4;  // padded row stride of the output staging (floats)
  __half* vsm = reinterpret_cast<__half*>(smem);                              // [TM][ldv]
  float* stage = reinterpret_cast<float*>(smem + size_t(TM) * ldv * 2);       // [TM][lds]
  float* scratch = stage + size_t(TM) * lds;                                   // [kWarps][16*16]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* wscr = scratch + warp * 256;
  const int64_t row0 = int64_t(blockIdx.x) * TM;
  const int m = int(rows - row0 < int64_t(TM) ? rows - row0 : int64_t(TM));
  const bool full = m == TM;

  // Rows past the end of X (last CTA): read row 0 instead (harmless), never written back.
  // stage 1 ------------------------------------------------------------------------------
  const int ctiles = br / 16, mtiles = TM / 16;
  for (int task = warp; task < b * ctiles * mtiles; task += kWarps) {
    const int mt = task % mtiles, jc = task / mtiles, j = jc / ctiles, ct = jc % ctiles;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.f);
    const int64_t xr = full ? row0 + mt * 16 : row0;  // partial tile: handled below
#pragma unroll 4
    for (int s0 = 0; s0 < kb; s0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bf;
      if (full) {
        wmma::load_matrix_sync(a, X + xr * K + int64_t(j) * kb + s0, K);
      } else {  // gather the valid rows into the warp's scratch as half, zero the rest
        __half* hs = reinterpret_cast<__half*>(wscr);
        for (int e = lane; e < 256; e += 32) {
          const int rr = mt * 16 + e / 16, ss = e % 16;
          hs[e] = rr < m ? X[(row0 + rr) * K + int64_t(j) * kb + s0 + ss] : __float2half(0.f);
        }
        __syncwarp();
        wmma::load_matrix_sync(a, hs, 16);
        __syncwarp();
      }
      // R_j^T (kb x br) col-major = R_j (br x kb) row-major: element (s, c) at R[j][c][s]
      wmma::load_matrix_sync(bf, R + (int64_t(j) * br + ct * 16) * kb + s0, kb);
      wmma::mma_sync(acc, a, bf, acc);
    }
    wmma::store_matrix_sync(wscr, acc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int rr = mt * 16 + e / 16, c = ct * 16 + e % 16, t = c / r, rho = c % r;
      vsm[rr * ldv + t * br + j * r + rho] = __float2half(wscr[e]);
    }
    __syncwarp();
  }
  __syncthreads();

  // stage 2 ------------------------------------------------------------------------------
  // qc chunks of 16 rows q of L per round (more independent warp tasks per barrier); CTAs along
  // gridDim.y split the rounds (few row tiles, e.g. decode: each recomputes the cheap stage 1).
  const int qstep = 16 * qc;
  for (int q0 = int(blockIdx.y) * qstep; q0 < nq; q0 += qstep * int(gridDim.y)) {
    const int nchunks = min(qc, (nq - q0) / 16);
    for (int task = warp; task < b * mtiles * nchunks; task += kWarps) {
      const int mt = task % mtiles, rest = task / mtiles, t = rest % b, c = rest / b;
      const int qb = q0 + c * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll 4
      for (int e0 = 0; e0 < br; e0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bf;
        wmma::load_matrix_sync(a, vsm + (mt * 16) * ldv + t * br + e0, ldv);
        // L_t^T (br x nq) col-major = L_t (nq x br) row-major: element (e, q) at L[t][q][e]
        wmma::load_matrix_sync(bf, L + (int64_t(t) * nq + qb) * br + e0, br);
        wmma::mma_sync(acc, a, bf, acc);
      }
      wmma::store_matrix_sync(wscr, acc, 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int rr = mt * 16 + e / 16, qq = e % 16;
        stage[rr * lds + (c * 16 + qq) * b + t] = wscr[e];  // output column (qb+qq)*b + t, relative to q0*b
      }
      __syncwarp();
    }
    __syncthreads();
    const int width = nchunks * 16 * b;
    for (int e = threadIdx.x; e < m * width; e += blockDim.x) {
      const int rr = e / width, col = e % width, o = q0 * b + col;
      float v = stage[rr * lds + col];
      if (bias) v += __half2float(bias[o]);
      Y[(row0 + rr) * N + o] = __float2half_rn(v);
    }
    __syncthreads();
  }
}

size_t wmma_smem(int tm, const MonarchDims& d, int qc = 1) {
  const size_t mid = size_t(d.b * d.br());
  return size_t(tm) * (mid + 8) * 2 + size_t(tm) * (size_t(qc) * 16 * d.b + 4) * 4 + size_t(kWarps) * 256 * 4;
}

int sm_count() {
  static int v = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 1;
  }();
  return v;
}

bool wmma_shape_ok(DType t, const MonarchDims& d) {
  return t == DType::kFloat16 && d.kb % 16 == 0 && d.br() % 16 == 0 && d.nq % 16 == 0;
}

int max_smem() {
  static int v = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return n;
  }();
  return v;
}

// Raise a kernel's dynamic shared-memory limit to the device's opt-in maximum, once per kernel
// (not per launch: no host API on the hot path besides the launch itself).
template <auto Kernel>
void allow_max_smem() {
  static const bool done = [] {
    cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem());
    return true;
  }();
  (void)done;
}

int generic_tm(const MonarchDims& d) {
  const size_t per_row = size_t(d.b * d.br()) * 4;
  const size_t cap = std::min<size_t>(size_t(max_smem()), 96 * 1024);
  return int(std::max<size_t>(0, std::min<size_t>(32, cap / per_row)));
}

}  // namespace

std::string monarch_cuda_supported(DType t, const MonarchDims& d) {
  if (t != DType::kFloat && t != DType::kFloat16) return "MonarchMatMul CUDA: float32 or float16 only";
  if (max_smem() <= 0) return "MonarchMatMul CUDA: no CUDA device visible";
  if (wmma_shape_ok(t, d) && wmma_smem(16, d) <= size_t(max_smem())) return "";
  if (generic_tm(d) >= 1) return "";
  return "MonarchMatMul CUDA: the intermediate of one row (b*b*r = " + std::to_string(d.b * d.br()) +
         " floats) does not fit in shared memory; use fewer blocks or the decomposition";
}

int monarch_cuda(DType t, const void* X, const void* R, const void* L, const void* bias, void* Y, int64_t rows,
                 const MonarchDims& d, void* stream_) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_);
  if (rows <= 0) return 0;
  const int b = int(d.b), r = int(d.r), kb = int(d.kb), nq = int(d.nq);
  if (wmma_shape_ok(t, d)) {
    // 32 rows per CTA when the shared memory allows and there are enough rows to fill the GPU
    const bool use32 = wmma_smem(32, d) <= size_t(max_smem()) && rows >= 32 * sm_count() * 2;
    const int tm = use32 ? 32 : 16;
    if (wmma_smem(tm, d) <= size_t(max_smem())) {
      // q-chunks per round: enough warp tasks per barrier, within shared memory
      int qc = 1;
      for (int cand : {8, 4, 2}) {
        if (cand <= d.nq / 16 && wmma_smem(tm, d, cand) <= size_t(max_smem()) &&
            d.b * (tm / 16) * (cand / 2) < 2 * kWarps) {
          qc = cand;
          break;
        }
      }
      const size_t smem = wmma_smem(tm, d, qc);
      const int64_t row_tiles = (rows + tm - 1) / tm;
      const int rounds = int((d.nq / 16 + qc - 1) / qc);
      int splits = 1;  // few row tiles (decode): spread the rounds of stage 2 over more CTAs
      if (row_tiles < 2 * sm_count()) splits = int(std::min<int64_t>(rounds, (2 * sm_count() + row_tiles - 1) / row_tiles));
      const dim3 grid{unsigned(row_tiles), unsigned(splits), 1u};
      auto* xh = static_cast<const __half*>(X);
      auto* rh = static_cast<const __half*>(R);
      auto* lh = static_cast<const __half*>(L);
      auto* bh = static_cast<const __half*>(bias);
      auto* yh = static_cast<__half*>(Y);
      if (use32) {
        allow_max_smem<monarch_wmma<32>>();
        monarch_wmma<32><<<grid, kWarps * 32, smem, stream>>>(xh, rh, lh, bh, yh, rows, b, r, kb, nq, qc);
      } else {
        allow_max_smem<monarch_wmma<16>>();
        monarch_wmma<16><<<grid, kWarps * 32, smem, stream>>>(xh, rh, lh, bh, yh, rows, b, r, kb, nq, qc);
      }
      return int(cudaGetLastError());
    }
  }
  const int tm = generic_tm(d);
  if (tm < 1) return int(cudaErrorInvalidConfiguration);
  const size_t smem = size_t(tm) * size_t(d.b * d.br()) * 4;
  const unsigned grid = unsigned((rows + tm - 1) / tm);
  if (t == DType::kFloat) {
    allow_max_smem<monarch_generic<float>>();
    monarch_generic<float><<<grid, 256, smem, stream>>>(static_cast<const float*>(X), static_cast<const float*>(R),
                                                        static_cast<const float*>(L), static_cast<const float*>(bias),
                                                        static_cast<float*>(Y), rows, b, r, kb, nq, tm);
  } else {
    allow_max_smem<monarch_generic<__half>>();
    monarch_generic<__half><<<grid, 256, smem, stream>>>(
        static_cast<const __half*>(X), static_cast<const __half*>(R), static_cast<const __half*>(L),
        static_cast<const __half*>(bias), static_cast<__half*>(Y), rows, b, r, kb, nq, tm);
  }
  return int(cudaGetLastError());
}

}  // namespace spa
