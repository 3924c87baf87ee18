// A small float GEMM for the CPU kernels: C (M x N) = A (M x K, row stride lda) * B (K x N, row
// stride ldb), C overwritten (row stride ldc). Register-blocked 4 x 16 micro-kernel written with
// GCC/Clang vector extensions, so it compiles to AVX2/AVX-512 FMAs with -march=native and to SSE
// pairs without it. Meant for the small, cache-resident blocks of the structured ops (K and N in
// the tens to hundreds), not as a general BLAS.
#pragma once

#include <cstdint>
#include <cstring>

namespace spa {

typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
static inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
static inline v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }

template <int MR>
static inline void gemm_micro16(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                                int64_t ldc, int64_t K) {
  v8f acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = splat8(0.f);
  for (int64_t k = 0; k < K; ++k) {
    const v8f b0 = load8(B + k * ldb), b1 = load8(B + k * ldb + 8);
    for (int m = 0; m < MR; ++m) {
      const v8f a = splat8(A[m * lda + k]);
      acc[m][0] += a * b0;
      acc[m][1] += a * b1;
    }
  }
  for (int m = 0; m < MR; ++m) {
    store8(C + m * ldc, acc[m][0]);
    store8(C + m * ldc + 8, acc[m][1]);
  }
}

template <int MR>
static inline void gemm_micro8(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                               int64_t ldc, int64_t K) {
  v8f acc[MR];
  for (int m = 0; m < MR; ++m) acc[m] = splat8(0.f);
  for (int64_t k = 0; k < K; ++k) {
    const v8f b0 = load8(B + k * ldb);
    for (int m = 0; m < MR; ++m) acc[m] += splat8(A[m * lda + k]) * b0;
  }
  for (int m = 0; m < MR; ++m) store8(C + m * ldc, acc[m]);
}

template <int MR>
static inline void gemm_micro_tail(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                                   int64_t ldc, int64_t K, int64_t nc) {
  float acc[MR][8] = {};
  for (int64_t k = 0; k < K; ++k) {
    for (int m = 0; m < MR; ++m) {
      const float a = A[m * lda + k];
      for (int64_t j = 0; j < nc; ++j) acc[m][j] += a * B[k * ldb + j];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int64_t j = 0; j < nc; ++j) C[m * ldc + j] = acc[m][j];
}

template <int MR>
static inline void gemm_rows(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                             int64_t ldc, int64_t N, int64_t K) {
  int64_t j = 0;
  for (; j + 16 <= N; j += 16) gemm_micro16<MR>(A, lda, B + j, ldb, C + j, ldc, K);
  if (j + 8 <= N) {
    gemm_micro8<MR>(A, lda, B + j, ldb, C + j, ldc, K);
    j += 8;
  }
  if (j < N) gemm_micro_tail<MR>(A, lda, B + j, ldb, C + j, ldc, K, N - j);
}

static inline void gemm_f32(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                            int64_t ldc, int64_t M, int64_t N, int64_t K) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) gemm_rows<4>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, N, K);
  switch (M - i) {
    case 3: gemm_rows<3>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, N, K); break;
    case 2: gemm_rows<2>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, N, K); break;
    case 1: gemm_rows<1>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, N, K); break;
    default: break;
  }
}

}  // namespace spa
