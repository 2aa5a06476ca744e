#pragma once
// Host emulation of __nv_bfloat16 for tests/cuda/test_kernels_emulated.cpp (see cuda_runtime.h).
#include "cuda_runtime.h"

struct __nv_bfloat16 {
  std::uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b.x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const auto u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  return {static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
