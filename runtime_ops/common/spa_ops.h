// Shared C++ glue for the runtime_ops kernels: element types, half/bfloat16 conversion, shape
// checks, the kernels' host-side entry points. No dependency on ONNX Runtime or TensorRT here:
// ort_op.cc and trt_plugin.cpp adapt these functions to their runtime.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace spa {

// Element types the kernels handle (values match ONNX TensorProto.DataType).
enum class DType : int32_t { kFloat = 1, kFloat16 = 10, kBFloat16 = 16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

inline int dtype_size(DType t) { return t == DType::kFloat ? 4 : 2; }

// IEEE half <-> float, portable (no F16C needed; the compiler vectorises the loops that use it).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow -> inf
  if (ax < 0x38800000u) {                                   // subnormal or zero
    if (ax < 0x33000000u) return uint16_t(sign);
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 .. 24
    uint32_t h = m >> (shift);
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = ((ax >> 13) - ((127 - 15) << 10));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

// Convert n elements of type t at src into floats.
inline void to_float(DType t, const void* src, float* dst, int64_t n) {
  if (t == DType::kFloat) {
    std::memcpy(dst, src, size_t(n) * 4);
  } else if (t == DType::kFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
  }
}

inline void from_float(DType t, const float* src, void* dst, int64_t n) {
  if (t == DType::kFloat) {
    std::memcpy(dst, src, size_t(n) * 4);
  } else if (t == DType::kFloat16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_half(src[i]);
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
  }
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// How a CPU kernel spreads independent tasks 0..total-1 over threads: fn(arg, i) for each i.
// The ORT binding runs them on ORT's intra-op thread pool (KernelContext::ParallelFor).
struct Parallel {
  virtual ~Parallel() = default;
  virtual void run(size_t total, void (*fn)(void*, size_t), void* arg) const {
    for (size_t i = 0; i < total; ++i) fn(arg, i);
  }
};

}  // namespace spa
