// NMSparseMatMul CPU kernel. Vectorised across rows, not along K, so the 2:4 gather needs no
// gather instructions: a tile of 16 rows of X is transposed into Xt[k][16] (float), and each kept
// weight w at column c adds w * Xt[c][0..15] into the 16 outputs of its row of W. K is walked in
// chunks that keep Xt's chunk in L1; tasks are (row tile, block of W rows) pairs on ORT's threads.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/gemm_cpu.h"
#include "nm.h"

namespace spa {

std::string nm_check(const std::vector<int64_t>& x, const std::vector<int64_t>& values,
                     const std::vector<int64_t>& meta, const std::vector<int64_t>* bias, NMDims* dims,
                     int64_t* rows) {
  if (x.empty()) return "NMSparseMatMul: X must have rank >= 1, got a scalar";
  if (values.size() != 2) return "NMSparseMatMul: values must be rank 2 (N, K/2), got " + shape_str(values);
  if (meta.size() != 2) return "NMSparseMatMul: meta must be rank 2 (N, K/8), got " + shape_str(meta);
  const int64_t n = values[0], k = 2 * values[1];
  if (n < 1 || k < 8 || k % 8 != 0)
    return "NMSparseMatMul: values " + shape_str(values) + ": N >= 1 and K = 2*values.shape[1] a "
           "positive multiple of 8 required";
  if (meta[0] != n || meta[1] * 8 != k)
    return "NMSparseMatMul: meta " + shape_str(meta) + " must be (" + std::to_string(n) + ", " +
           std::to_string(k / 8) + ")";
  if (x.back() != k)
    return "NMSparseMatMul: X " + shape_str(x) + ": last axis must be K = " + std::to_string(k);
  if (bias && (bias->size() != 1 || (*bias)[0] != n))
    return "NMSparseMatMul: bias " + shape_str(*bias) + " must be (" + std::to_string(n) + ",)";
  int64_t r = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) r *= x[i];
  dims->n = n;
  dims->k = k;
  *rows = r;
  return "";
}

static inline bool valid_code(unsigned c) { return (c & 3u) < (c >> 2); }

std::string nm_check_meta(const uint8_t* meta, const NMDims& d) {
  const int64_t bytes = d.k / 8;
  for (int64_t i = 0; i < d.n; ++i)
    for (int64_t j = 0; j < bytes; ++j) {
      const unsigned m = meta[i * bytes + j];
      for (int h = 0; h < 2; ++h) {
        const unsigned c = (m >> (4 * h)) & 0xFu;
        if (!valid_code(c))
          return "NMSparseMatMul: invalid 2:4 metadata code " + std::to_string(c) + " at row " +
                 std::to_string(i) + ", group " + std::to_string(2 * j + h) +
                 " (valid: 4, 8, 9, 12, 13, 14)";
      }
    }
  return "";
}

void nm_decompress_host(DType t, const void* values, const uint8_t* meta, const NMDims& d, void* w) {
  const int64_t es = dtype_size(t), half = d.k / 2, bytes = d.k / 8;
  std::memset(w, 0, size_t(d.n * d.k * es));
  const char* v = static_cast<const char*>(values);
  char* out = static_cast<char*>(w);
  for (int64_t i = 0; i < d.n; ++i)
    for (int64_t g = 0; g < d.k / 4; ++g) {
      const unsigned c = (meta[i * bytes + g / 2] >> (4 * (g % 2))) & 0xFu;
      const int64_t c0 = 4 * g + (c & 3u), c1 = 4 * g + (c >> 2);
      std::memcpy(out + (i * d.k + c0) * es, v + (i * half + 2 * g) * es, size_t(es));
      std::memcpy(out + (i * d.k + c1) * es, v + (i * half + 2 * g + 1) * es, size_t(es));
    }
}

std::string nm_pack_cpu(DType t, const void* values, const uint8_t* meta, const void* bias,
                        const NMDims& d, NMPackedCpu* out) {
  std::string err = nm_check_meta(meta, d);
  if (!err.empty()) return err;
  out->dims = d;
  out->values.resize(size_t(d.n * d.k / 2));
  to_float(t, values, out->values.data(), d.n * d.k / 2);
  out->codes.resize(size_t(d.n * d.k / 4));
  const int64_t bytes = d.k / 8;
  for (int64_t i = 0; i < d.n; ++i)
    for (int64_t g = 0; g < d.k / 4; ++g)
      out->codes[size_t(i * (d.k / 4) + g)] = (meta[i * bytes + g / 2] >> (4 * (g % 2))) & 0xFu;
  out->bias.clear();
  if (bias) {
    out->bias.resize(size_t(d.n));
    to_float(t, bias, out->bias.data(), d.n);
  }
  return "";
}

namespace {

constexpr int64_t kRowTile = 16;   // rows per task (two 8-float vectors)
constexpr int64_t kNBlock = 128;   // W rows per task
constexpr int64_t kKChunk = 512;   // columns of Xt per pass (512 * 64 B = 32 KiB)

struct Task {
  DType t;
  const void* X;
  void* Y;
  int64_t rows, row_tiles, n_blocks;
  const NMPackedCpu* w;
};

void run_task(void* arg, size_t index) {
  const Task& T = *static_cast<const Task*>(arg);
  const NMDims& d = T.w->dims;
  const int64_t K = d.k, N = d.n, G = K / 4;
  const int64_t rt = int64_t(index) % T.row_tiles, nb = int64_t(index) / T.row_tiles;
  const int64_t row0 = rt * kRowTile, m = std::min(kRowTile, T.rows - row0);
  const int64_t n0 = nb * kNBlock, n1 = std::min(N, n0 + kNBlock);
  thread_local std::vector<float> xt, acc, xrow;
  xt.assign(size_t(K * kRowTile), 0.f);  // rows >= m stay zero
  xrow.resize(size_t(K));
  for (int64_t i = 0; i < m; ++i) {
    const float* src;
    if (T.t == DType::kFloat) {
      src = static_cast<const float*>(T.X) + (row0 + i) * K;
    } else {
      to_float(T.t, static_cast<const uint16_t*>(T.X) + (row0 + i) * K, xrow.data(), K);
      src = xrow.data();
    }
    for (int64_t c = 0; c < K; ++c) xt[size_t(c * kRowTile + i)] = src[c];
  }
  acc.assign(size_t((n1 - n0) * kRowTile), 0.f);
  for (int64_t g0 = 0; g0 < G; g0 += kKChunk / 4) {
    const int64_t g1 = std::min(G, g0 + kKChunk / 4);
    for (int64_t n = n0; n < n1; ++n) {
      const float* vals = T.w->values.data() + n * (K / 2);
      const uint8_t* codes = T.w->codes.data() + n * G;
      // eight independent accumulator chains (two groups per step, the two kept weights of a
      // group apart): FMA latency hidden, the loop bound by its loads
      v8f a0 = load8(&acc[size_t((n - n0) * kRowTile)]);
      v8f a1 = load8(&acc[size_t((n - n0) * kRowTile + 8)]);
      v8f b0 = splat8(0.f), b1 = b0, c0 = b0, c1 = b0, d0 = b0, d1 = b0;
      int64_t g = g0;
      for (; g + 2 <= g1; g += 2) {
        const unsigned ca = codes[g], cb = codes[g + 1];
        const float* xa0 = &xt[size_t((4 * g + (ca & 3u)) * kRowTile)];
        const float* xa1 = &xt[size_t((4 * g + (ca >> 2)) * kRowTile)];
        const float* xb0 = &xt[size_t((4 * g + 4 + (cb & 3u)) * kRowTile)];
        const float* xb1 = &xt[size_t((4 * g + 4 + (cb >> 2)) * kRowTile)];
        const v8f wa0 = splat8(vals[2 * g]), wa1 = splat8(vals[2 * g + 1]);
        const v8f wb0 = splat8(vals[2 * g + 2]), wb1 = splat8(vals[2 * g + 3]);
        a0 += wa0 * load8(xa0);
        a1 += wa0 * load8(xa0 + 8);
        b0 += wa1 * load8(xa1);
        b1 += wa1 * load8(xa1 + 8);
        c0 += wb0 * load8(xb0);
        c1 += wb0 * load8(xb0 + 8);
        d0 += wb1 * load8(xb1);
        d1 += wb1 * load8(xb1 + 8);
      }
      for (; g < g1; ++g) {
        const unsigned c = codes[g];
        const float* x0 = &xt[size_t((4 * g + (c & 3u)) * kRowTile)];
        const float* x1 = &xt[size_t((4 * g + (c >> 2)) * kRowTile)];
        const v8f w0 = splat8(vals[2 * g]), w1 = splat8(vals[2 * g + 1]);
        a0 += w0 * load8(x0);
        a1 += w0 * load8(x0 + 8);
        b0 += w1 * load8(x1);
        b1 += w1 * load8(x1 + 8);
      }
      a0 += (b0 + c0) + d0;
      a1 += (b1 + c1) + d1;
      store8(&acc[size_t((n - n0) * kRowTile)], a0);
      store8(&acc[size_t((n - n0) * kRowTile + 8)], a1);
    }
  }
  const bool has_bias = !T.w->bias.empty();
  thread_local std::vector<float> out;
  out.resize(size_t(n1 - n0));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t n = n0; n < n1; ++n)
      out[size_t(n - n0)] = acc[size_t((n - n0) * kRowTile + i)] + (has_bias ? T.w->bias[size_t(n)] : 0.f);
    if (T.t == DType::kFloat)
      std::memcpy(static_cast<float*>(T.Y) + (row0 + i) * N + n0, out.data(), size_t(n1 - n0) * 4);
    else
      from_float(T.t, out.data(), static_cast<uint16_t*>(T.Y) + (row0 + i) * N + n0, n1 - n0);
  }
}

}  // namespace

void nm_cpu(DType t, const void* X, void* Y, int64_t rows, const NMPackedCpu& w, const Parallel& par) {
  if (rows <= 0) return;
  const int64_t row_tiles = (rows + kRowTile - 1) / kRowTile;
  const int64_t n_blocks = (w.dims.n + kNBlock - 1) / kNBlock;
  Task task{t, X, Y, rows, row_tiles, n_blocks, &w};
  const size_t total = size_t(row_tiles * n_blocks);
  if (total == 1)
    run_task(&task, 0);
  else
    par.run(total, run_task, &task);
}

}  // namespace spa
