#pragma once
// A vectorised float tanh, and the element-wise driver that runs such lane-wise kernels at the
// CPU's widest ISA (cpu/isa.hpp): the tiny LM's and GPT-2's GELU (model/tiny_lm/gelu.hpp) spent
// ~40 % of the demo's CPU in glibc's scalar tanhf.
//
// tanh is Cephes' tanhf, branch-free: with a = |x|,
//   a < 0.625:  a + a³·p(a²), p of degree 4 (Cephes' minimax polynomial);
//   a ≥ 0.625:  1 − 2 / (exp(2a) + 1), exp the row kernels' Cephes exp (logprob/cpu/rows.hpp);
// both are computed and one is selected per lane, then x's sign bit is put back (so tanh(−0) = −0
// and tanh(−x) = −tanh(x) exactly). a is clamped to 10 first: tanh(10) rounds to 1, and exp(2a)
// then never overflows (±Inf give ±1). A NaN passes the clamp and the polynomial as a NaN.
// Accuracy (tests/test_tanh.cpp, every ISA): within 2 ulp of the correctly rounded tanh, and
// within 3 ulp of glibc's tanhf, over sampled floats of the whole range and the special values.
//
// Same bits wherever an element sits: the kernels are lane-wise (no lane reads another), and the
// tail of an array that does not fill a vector runs the same vector code on a zero-padded copy.
// So a result does not depend on the array's length, its start, or how a caller splits rows over
// threads. It does depend on the ISA: the avx2 and avx512 versions may contract a·b + c into an
// FMA (GCC's -ffp-contract=fast), the baseline version (the user's flags) may not.
#include <dftune/config.hpp>
#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/cpu/rows.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

DFTUNE_NAMESPACE_BEGIN

namespace cpu {

namespace kernel {

// `Bytes` wide vectors of float, and of its bits.
template <std::size_t Bytes>
using vfloat = typename logprob::cpu::kernel::Simd<float, Bytes>::v;
template <std::size_t Bytes>
using vbits = typename logprob::cpu::kernel::Simd<float, Bytes>::vi;

// x ← tanh x, lane by lane (see the top of this file).
template <std::size_t Bytes>
DFTUNE_ALWAYS_INLINE void tanh_lanes(vfloat<Bytes>& x) {
  using S = logprob::cpu::kernel::Simd<float, Bytes>;
  using v = vfloat<Bytes>;
  using vi = vbits<Bytes>;
  const vi sign = __builtin_bit_cast(vi, x) & static_cast<std::int32_t>(0x80000000u);
  v a = __builtin_bit_cast(v, __builtin_bit_cast(vi, x) ^ sign);
  const v hi = v{} + 10.0f;
  a = a > hi ? hi : a;  // a NaN compares false and stays
  const v z = a * a;
  v p = z * -5.70498872745E-3f + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  const v small = p * z * a + a;
  v e = a + a;
  logprob::cpu::kernel::vexp<S, false>(e);
  const v large = 1.0f - 2.0f / (e + 1.0f);
  const v r = a >= 0.625f ? large : small;
  x = __builtin_bit_cast(v, __builtin_bit_cast(vi, r) | sign);
}

// out_k[i] = Op(in_0[i], …)_k for i < n: Op is a struct with `inputs` and `outputs` counts and a
// static, always-inline `template <std::size_t Bytes> lanes(const vfloat<Bytes>* in, vfloat<Bytes>* out)`.
// An output may be an input (each vector is loaded before it is stored).
template <class Op, std::size_t Bytes>
DFTUNE_ALWAYS_INLINE void map_body(const float* const* in, float* const* out, std::size_t n) {
  using v = vfloat<Bytes>;
  constexpr std::size_t L = Bytes / sizeof(float), I = Op::inputs, O = Op::outputs;
  v a[I], b[O];
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    for (std::size_t k = 0; k < I; ++k) __builtin_memcpy(&a[k], in[k] + i, sizeof(v));
    Op::template lanes<Bytes>(a, b);
    for (std::size_t k = 0; k < O; ++k) __builtin_memcpy(out[k] + i, &b[k], sizeof(v));
  }
  if (i == n) return;
  // The tail through the same vector code, on a zero-padded copy: the bits the body would give.
  const std::size_t m = n - i;
  for (std::size_t k = 0; k < I; ++k) {
    float pad[L] = {};
    __builtin_memcpy(pad, in[k] + i, m * sizeof(float));
    __builtin_memcpy(&a[k], pad, sizeof(v));
  }
  Op::template lanes<Bytes>(a, b);
  for (std::size_t k = 0; k < O; ++k) __builtin_memcpy(out[k] + i, &b[k], m * sizeof(float));
}

#if DFTUNE_CPU_DISPATCH
template <class Op>
DFTUNE_TARGET_AVX2 void map_avx2(const float* const* in, float* const* out, std::size_t n) {
  map_body<Op, 32>(in, out, n);
}
template <class Op>
DFTUNE_TARGET_AVX512 void map_avx512(const float* const* in, float* const* out, std::size_t n) {
  map_body<Op, 64>(in, out, n);
}
#endif

// map_body at cpu::active_isa()'s width. Callers inside a parallel region call active_isa() once
// before it (a bad DFTUNE_ISA throws there, not in a worker thread).
template <class Op>
void map(const float* const* in, float* const* out, std::size_t n) {
  const Isa isa = active_isa();
  detail::note_ran(isa);
#if DFTUNE_CPU_DISPATCH
  if (isa == Isa::avx512) return map_avx512<Op>(in, out, n);
  if (isa == Isa::avx2) return map_avx2<Op>(in, out, n);
#endif
  map_body<Op, 16>(in, out, n);
}

struct Tanh {
  static constexpr std::size_t inputs = 1, outputs = 1;
  template <std::size_t Bytes>
  static DFTUNE_ALWAYS_INLINE void lanes(const vfloat<Bytes>* in, vfloat<Bytes>* out) {
    out[0] = in[0];
    tanh_lanes<Bytes>(out[0]);
  }
};

}  // namespace kernel

/// y[i] = tanh(x[i]) for i < n, vectorised at cpu::active_isa()'s width; within 2 ulp of the
/// correctly rounded value, and the same bits for an element wherever it sits in x (see the top
/// of cpu/tanh.hpp). y may be x.
inline void tanh(const float* x, float* y, std::size_t n) {
  const float* in[1] = {x};
  float* out[1] = {y};
  kernel::map<kernel::Tanh>(in, out, n);
}

/// y[i] = std::tanh(x[i]) (double has no vector version). y may be x.
inline void tanh(const double* x, double* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

}  // namespace cpu

DFTUNE_NAMESPACE_END
