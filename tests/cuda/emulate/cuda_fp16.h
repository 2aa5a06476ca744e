#pragma once
// Host emulation of __half for tests/cuda/test_kernels_emulated.cpp (see cuda_runtime.h), through
// GCC's _Float16 (IEEE binary16, round to nearest even).
#include "cuda_runtime.h"

struct __half {
  std::uint16_t x;
};
struct __half2 {
  __half x, y;
};
inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.x)); }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline __half __float2half_rn(float f) { return {std::bit_cast<std::uint16_t>(static_cast<_Float16>(f))}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
