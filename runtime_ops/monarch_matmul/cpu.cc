// MonarchMatMul CPU kernel: per tile of rows, stage 1 (b small GEMMs X_j R_j^T), the permutation
// (a copy of the intermediate, rows x b*b*r floats), stage 2 (b small GEMMs V_t L_t^T), then the
// output permutation q*b+t and the bias. The intermediate never leaves the thread's cache-sized
// scratch. Tiles run on ORT's thread pool.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/gemm_cpu.h"
#include "monarch.h"

namespace spa {

std::string monarch_check(const std::vector<int64_t>& x, const std::vector<int64_t>& r,
                          const std::vector<int64_t>& l, const std::vector<int64_t>* bias,
                          MonarchDims* dims, int64_t* rows) {
  if (x.empty()) return "MonarchMatMul: X must have rank >= 1, got a scalar";
  if (r.size() != 3) return "MonarchMatMul: R must be rank 3 (b, b*r, kb), got " + shape_str(r);
  if (l.size() != 3) return "MonarchMatMul: L must be rank 3 (b, nq, b*r), got " + shape_str(l);
  const int64_t b = r[0], br = r[1], kb = r[2], nq = l[1];
  if (b < 1 || kb < 1 || nq < 1 || br < b || br % b != 0)
    return "MonarchMatMul: R " + shape_str(r) + " must be (b, b*r, kb) with b, r, kb >= 1";
  if (l[0] != b || l[2] != br)
    return "MonarchMatMul: L " + shape_str(l) + " does not match R " + shape_str(r) +
           " (expected (" + std::to_string(b) + ", nq, " + std::to_string(br) + "))";
  if (x.back() != b * kb)
    return "MonarchMatMul: X " + shape_str(x) + ": last axis must be b*kb = " +
           std::to_string(b * kb);
  if (bias && (bias->size() != 1 || (*bias)[0] != nq * b))
    return "MonarchMatMul: bias " + shape_str(*bias) + " must be (" + std::to_string(nq * b) + ",)";
  int64_t n_rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) n_rows *= x[i];
  dims->b = b;
  dims->r = br / b;
  dims->kb = kb;
  dims->nq = nq;
  *rows = n_rows;
  return "";
}

void monarch_pack_cpu(DType t, const void* R, const void* L, const void* bias, const MonarchDims& d,
                      MonarchPackedCpu* out) {
  const int64_t b = d.b, br = d.br(), kb = d.kb, nq = d.nq;
  out->dims = d;
  std::vector<float> rf(size_t(b * br * kb)), lf(size_t(b * nq * br));
  to_float(t, R, rf.data(), int64_t(rf.size()));
  to_float(t, L, lf.data(), int64_t(lf.size()));
  out->rt.assign(rf.size(), 0.f);
  out->lt.assign(lf.size(), 0.f);
  for (int64_t j = 0; j < b; ++j)  // Rt[j][s][c] = R[j][c][s]
    for (int64_t c = 0; c < br; ++c)
      for (int64_t s = 0; s < kb; ++s) out->rt[(j * kb + s) * br + c] = rf[(j * br + c) * kb + s];
  for (int64_t t2 = 0; t2 < b; ++t2)  // Lt[t][d][q] = L[t][q][d]
    for (int64_t q = 0; q < nq; ++q)
      for (int64_t e = 0; e < br; ++e) out->lt[(t2 * br + e) * nq + q] = lf[(t2 * nq + q) * br + e];
  out->bias.clear();
  if (bias) {
    out->bias.resize(size_t(nq * b));
    to_float(t, bias, out->bias.data(), nq * b);
  }
}

namespace {

struct Task {
  DType t;
  const void* X;
  void* Y;
  int64_t rows, tile;
  const MonarchPackedCpu* w;
};

void run_tile(void* arg, size_t index) {
  const Task& T = *static_cast<const Task*>(arg);
  const MonarchDims& d = T.w->dims;
  const int64_t b = d.b, r = d.r, br = d.br(), kb = d.kb, nq = d.nq, K = d.K(), N = d.N();
  const int64_t row0 = int64_t(index) * T.tile;
  const int64_t m = std::min(T.tile, T.rows - row0);
  const int64_t mid = b * br;  // intermediate width per row
  thread_local std::vector<float> xs, u, v, ys;
  const float* x;
  if (T.t == DType::kFloat) {
    x = static_cast<const float*>(T.X) + row0 * K;
  } else {
    xs.resize(size_t(m * K));
    to_float(T.t, static_cast<const uint16_t*>(T.X) + row0 * K, xs.data(), m * K);
    x = xs.data();
  }
  u.resize(size_t(m * mid));
  v.resize(size_t(m * mid));
  ys.resize(size_t(m * N));
  // stage 1: u[row][j][c] = sum_s X[row][j*kb+s] * R[j][c][s],  c = t*r + rho
  for (int64_t j = 0; j < b; ++j)
    gemm_f32(x + j * kb, K, T.w->rt.data() + j * kb * br, br, u.data() + j * br, mid, m, br, kb);
  // permutation: v[row][t][j*r+rho] = u[row][j][t*r+rho]
  for (int64_t i = 0; i < m; ++i) {
    const float* ui = u.data() + i * mid;
    float* vi = v.data() + i * mid;
    for (int64_t j = 0; j < b; ++j)
      for (int64_t t2 = 0; t2 < b; ++t2)
        for (int64_t p = 0; p < r; ++p) vi[t2 * br + j * r + p] = ui[j * br + t2 * r + p];
  }
  // stage 2: ys[row][t][q] = sum_e v[row][t][e] * L[t][q][e]
  for (int64_t t2 = 0; t2 < b; ++t2)
    gemm_f32(v.data() + t2 * br, mid, T.w->lt.data() + t2 * br * nq, nq, ys.data() + t2 * nq, N, m,
             nq, br);
  // output permutation o = q*b + t, bias; written straight into Y (float) or via a row buffer
  thread_local std::vector<float> row;
  row.resize(size_t(N));
  const bool has_bias = !T.w->bias.empty();
  for (int64_t i = 0; i < m; ++i) {
    float* dst = T.t == DType::kFloat ? static_cast<float*>(T.Y) + (row0 + i) * N : row.data();
    const float* yi = ys.data() + i * N;
    for (int64_t q = 0; q < nq; ++q)
      for (int64_t t2 = 0; t2 < b; ++t2) dst[q * b + t2] = yi[t2 * nq + q];
    if (has_bias)
      for (int64_t o = 0; o < N; ++o) dst[o] += T.w->bias[size_t(o)];
    if (T.t != DType::kFloat)
      from_float(T.t, dst, static_cast<uint16_t*>(T.Y) + (row0 + i) * N, N);
  }
}

}  // namespace

void monarch_cpu(DType t, const void* X, void* Y, int64_t rows, const MonarchPackedCpu& w,
                 const Parallel& par) {
  if (rows <= 0) return;
  const int64_t mid = w.dims.b * w.dims.br();
  // rows per task: keep the intermediate (u, v) of a tile near 128 KiB, 4..64 rows
  int64_t tile = std::max<int64_t>(4, std::min<int64_t>(64, (32 * 1024) / std::max<int64_t>(1, mid)));
  tile = std::min(tile, rows);
  Task task{t, X, Y, rows, tile, &w};
  const size_t n_tasks = size_t((rows + tile - 1) / tile);
  if (n_tasks == 1)
    run_tile(&task, 0);
  else
    par.run(n_tasks, run_tile, &task);
}

}  // namespace spa
