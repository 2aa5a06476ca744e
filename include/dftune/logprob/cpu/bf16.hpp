#pragma once
// bf16 storage for the CPU log-prob path: Eigen's bfloat16 (round-to-nearest-even, NaN kept), plus
// block conversions written as plain integer loops so that the compiler vectorises them (a widening
// shift one way, a rounding add the other) without per-element calls or branches, at the width of the row kernel they are inlined into.
#include <dftune/config.hpp>
#include <dftune/cpu/isa.hpp>

#include <Eigen/Core>

#include <bit>
#include <cstddef>
#include <cstdint>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cpu {

// bfloat16 logits (8-bit exponent, 7-bit mantissa): Eigen's type, computed in float.
using bf16 = Eigen::bfloat16;

// bf16 is the top half of a float, so widening is exact.
DFTUNE_ALWAYS_INLINE void widen(const bf16* src, float* dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(src[i].value) << 16);
}

// Round to nearest even; NaN stays a quiet NaN (the rounding add could carry it into ±inf or 0).
DFTUNE_ALWAYS_INLINE void narrow(const float* src, bf16* dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto u = std::bit_cast<std::uint32_t>(src[i]);
    const auto rounded = static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    dst[i].value = nan ? static_cast<std::uint16_t>((u >> 16) | 0x40u) : rounded;
  }
}

}  // namespace logprob::cpu

DFTUNE_NAMESPACE_END
