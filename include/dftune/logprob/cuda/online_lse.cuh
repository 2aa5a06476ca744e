#pragma once
// The online log-sum-exp the kernels are built on, as plain __host__ __device__ functions so that
// the host can check them (tests/cuda, mode "host") without a GPU.
//
// A partial state is (m, s) with m the largest logit seen and s = Σ exp(z − m), kept in natural
// units; exp(x) is computed as exp2f(x · log2 e), one MUFU.EX2 on the device. Keeping m in natural
// units makes the argument z − m exact-ish (the error grows with the distance from the max, where
// the term is tiny), rather than absolute in |z| as with a pre-scaled z · log2 e.
//
// IEEE corners, matching the generic oracle:
//   - a NaN logit makes s NaN (fmaxf ignores it, exp2f does not), so the row's lse is NaN;
//   - −inf logits contribute 0; a row of −inf only has lse = −inf (the shift is 0 while m = −inf,
//     so no −inf − (−inf));
//   - a row holding +inf has lse = +inf (s is NaN there; finish() returns m). A row holding both
//     +inf and NaN also gives +inf, where the oracle gives NaN.
// The kernels make every non-finite lse of a weighted row NaN and report it (kernels.cuh).
#include <dftune/config.hpp>

#include <math.h>

#include <cstdint>
#include <cstring>

// `#pragma unroll` for the device pass only (the host compiler warns about it under -Wall).
#if defined(__CUDA_ARCH__)
#define DFTUNE_CUDA_UNROLL _Pragma("unroll")
#else
#define DFTUNE_CUDA_UNROLL
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::detail {

inline constexpr float log2e = 1.4426950408889634f;

DFTUNE_HOST_DEVICE inline float pos_inf() { return __builtin_huge_valf(); }
DFTUNE_HOST_DEVICE inline float quiet_nan() { return __builtin_nanf(""); }

struct lse_state {
  float m;  // running max (−inf before any finite or +inf value)
  float s;  // Σ exp(z − m)
};

DFTUNE_HOST_DEVICE inline lse_state lse_empty() { return {-pos_inf(), 0.0f}; }

// The shift used for a max m: m itself, or 0 while m = −inf (every term so far is 0).
DFTUNE_HOST_DEVICE inline float lse_shift(float m) { return m == -pos_inf() ? 0.0f : m; }

DFTUNE_HOST_DEVICE inline float exp_shifted(float z, float shift) { return exp2f((z - shift) * log2e); }

// Folds K values into the state with one rescale: K + 1 exponentials for K values.
template <int K>
DFTUNE_HOST_DEVICE inline void lse_add(lse_state& st, const float (&z)[K]) {
  float cm = z[0];
DFTUNE_CUDA_UNROLL
  for (int i = 1; i < K; ++i) cm = fmaxf(cm, z[i]);
  const float m = fmaxf(st.m, cm);
  const float k = lse_shift(m);
  float s = st.s * exp_shifted(st.m, k);
DFTUNE_CUDA_UNROLL
  for (int i = 0; i < K; ++i) s += exp_shifted(z[i], k);
  st = {m, s};
}

// The bits of a state, as one number that orders states totally (any fixed order would do).
DFTUNE_HOST_DEVICE inline std::uint64_t lse_key(lse_state st) {
  std::uint32_t m, s;
#if defined(__CUDA_ARCH__)
  m = __float_as_uint(st.m);
  s = __float_as_uint(st.s);
#else
  std::memcpy(&m, &st.m, sizeof m);
  std::memcpy(&s, &st.s, sizeof s);
#endif
  return (static_cast<std::uint64_t>(m) << 32) | s;
}

// Merges two partial states; merge(a, b) and merge(b, a) have the same bits, so a butterfly gives
// every lane the same state. That takes the fixed operand order: compilers contract
// a.s·ea + b.s·eb into one multiply and one fma (nvcc does by default), which rounds the two
// products differently, so the swapped call would round differently without it.
DFTUNE_HOST_DEVICE inline lse_state lse_merge(lse_state a, lse_state b) {
  if (lse_key(b) < lse_key(a)) {
    const lse_state t = a;
    a = b;
    b = t;
  }
  const float m = fmaxf(a.m, b.m);
  const float k = lse_shift(m);
  return {m, a.s * exp_shifted(a.m, k) + b.s * exp_shifted(b.m, k)};
}

// log Σ exp(z) of the whole row.
DFTUNE_HOST_DEVICE inline float lse_finish(lse_state st) {
  if (st.m == pos_inf()) return st.m;
  return st.m + logf(st.s);
}

}  // namespace logprob::cuda::detail

DFTUNE_NAMESPACE_END
