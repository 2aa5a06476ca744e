#pragma once
/// @file
/// GPT-2's GELU (tanh form) over a row, in a form the compiler vectorises: the decoder family's
/// forward (decoder.hpp) and cached generation (kv_decoder.hpp) call this one function, so both give
/// the same bits.
///
/// gelu(u) = u/2 · (1 + tanh(z)), z = c (u + 0.044715 u³), c = sqrt(2/π), and 1 + tanh(z) =
/// 2 / (1 + e^{-2z}), so
///     gelu(u) = u / (1 + e^{-2z}).
/// In float, e^x is computed inline (x = n ln2 + r, |r| ≤ ln2/2, Cephes' degree-6 polynomial for e^r,
/// 2^n written into the exponent bits): within (8 + 2|2z|) float ulp of the function evaluated in double
/// (tests/test_decoder_gelu.cpp; the |2z| from rounding the argument), and no libm call per value — glibc's scalar tanhf was 14 % of a GPT-2 124M decode step at batch 32.
/// Other types take tiny_lm::gelu (std::tanh): the double path stays the reference.
#include <dftune/config.hpp>
#include <dftune/model/tiny_lm/layers.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

/// e^x for x in [-87, 88] (the caller clamps), branch-free so that a loop over it vectorises.
inline float exp_bounded(float x) {
  constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  constexpr float round = 12582912.0f;  // 1.5 · 2^23: adding and subtracting it rounds to an integer
  const float n = (x * log2e + round) - round;
  const float r = (x - n * ln2_hi) - n * ln2_lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const auto scale = std::bit_cast<float>(static_cast<std::int32_t>((static_cast<std::int32_t>(n) + 127) * (1 << 23)));
  return e * scale;
}

}  // namespace detail

namespace decoder {

/// a[j] = gelu(u[j]) for j < n, the tanh form (GPT-2's gelu_new); a may equal u.
template <class T>
void gelu_row(const T* u, T* a, std::size_t n) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr float c2 = -2.0f * 0.7978845608028654f, k = 0.044715f;
    for (std::size_t j = 0; j < n; ++j) {
      const float x = u[j];
      // e^{-2z}; beyond 88 it would overflow, and gelu(u) there is -0 to float precision anyway.
      const float m = std::clamp(c2 * (x + k * x * x * x), -87.0f, 88.0f);
      a[j] = x / (1.0f + detail::exp_bounded(m));
    }
  } else {
    for (std::size_t j = 0; j < n; ++j) a[j] = tiny_lm::gelu(u[j]);
  }
}

}  // namespace decoder

DFTUNE_NAMESPACE_END
