#pragma once
// The row kernels of the CPU log-prob path (cpu/fast.hpp) and of the fused linear head
// (linear/chunked.hpp): the log-sum-exp of one row of logits, and the gradient
// c·(onehot(y) − exp(z − lse)) written over it.
//
// One body, three widths. Each kernel is written once, as an always_inline template over the
// vector width in bytes, with GCC/Clang vector types (no intrinsics), and instantiated
//   - at 16 bytes with the user's flags (SSE2 on x86-64: the baseline version, the one every CPU runs),
//   - at 32 bytes inside a target("avx2,fma") wrapper, and at 64 inside a target("avx512...") one,
// so the compiler emits each width's instructions from the same source. cpu/isa.hpp picks the
// wrapper per row from cpuid (or DFTUNE_ISA / cpu::force_isa). The vectors never cross a function
// boundary by value (the helpers take references): outside the wrappers, a 32- or 64-byte vector
// argument would change the calling convention, which GCC warns of and Clang refuses.
//
// exp is vectorised here too: Cephes' exp (Eigen's pexp_float / pexp_double, the previous kernels'
// exp): n = round(x·log2 e) by adding 1.5·2^23 (2^52), whose low mantissa bits then hold n, so 2^n
// is built from those bits without a float-to-int conversion (none exists for double below
// AVX-512); r = x − n·ln 2 in two parts; exp r by the same polynomial (float) or rational
// approximant (double). Arguments are clamped below at the log of the smallest normal number, so
// −inf gives that number (not 0); NaN stays NaN.
//
// Numbers: the versions differ only in the order of the in-block sums (lanes) and, where the
// compiler contracts a·b + c into an FMA (the avx2 and avx512 wrappers under GCC's default
// -ffp-contract=fast), in rounding; every version stays within fast.hpp's documented tolerance of
// the generic oracle (tests/test_logprob_fast.cpp runs each one).
#include <dftune/config.hpp>
#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/cpu/bf16.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cpu::kernel {

// Elements per block: 8 KiB (float) or 16 KiB (double) stays in L1 between a block's passes.
inline constexpr std::size_t block = 2048;

template <class T>
compute_t<T> to_compute(const T& x) {
  return static_cast<compute_t<T>>(x);
}

// The block [src, src + n) as compute_t<T>: the storage itself for float and double, a widened
// copy in `stage` for bf16.
template <class T>
DFTUNE_ALWAYS_INLINE const compute_t<T>* staged(const T* src, compute_t<T>* stage, std::size_t n) {
  if constexpr (std::is_same_v<T, bf16>) {
    widen(src, stage, n);
    return stage;
  } else {
    (void)stage;
    (void)n;
    return src;
  }
}

// Vectors of C, `Bytes` wide, and the matching integers; exp's constants.
template <class C, std::size_t Bytes>
struct Simd;

template <std::size_t Bytes>
struct Simd<float, Bytes> {
  typedef float v __attribute__((vector_size(Bytes)));
  typedef std::int32_t vi __attribute__((vector_size(Bytes)));
  static constexpr float lo = -87.3365447505531f;  // log FLT_MIN: n ≥ −126, 2^n normal
  static constexpr float shifter = 12582912.0f;    // 1.5·2^23
  static constexpr std::int32_t shifter_bits = 0x4B400000, bias = 127, mantissa = 23;
  static constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;

  // exp r on [−ln2/2, ln2/2]: Cephes' degree-5 polynomial, two chains for ILP (as Eigen's).
  static DFTUNE_ALWAYS_INLINE void exp_reduced(v& r) {
    const v r2 = r * r, r3 = r2 * r;
    v y = r * 1.9875691500E-4f + 1.3981999507E-3f;
    v y1 = r * 4.1665795894E-2f + 1.6666665459E-1f;
    const v y2 = r + 1.0f;
    y = y * r + 8.3334519073E-3f;
    y1 = y1 * r + 5.0000001201E-1f;
    y = y * r3 + y1;
    r = y * r2 + y2;
  }
};

template <std::size_t Bytes>
struct Simd<double, Bytes> {
  typedef double v __attribute__((vector_size(Bytes)));
  typedef std::int64_t vi __attribute__((vector_size(Bytes)));
  static constexpr double lo = -708.3964185322641;  // log DBL_MIN: n ≥ −1022
  static constexpr double shifter = 6755399441055744.0;  // 1.5·2^52
  static constexpr std::int64_t shifter_bits = 0x4338000000000000, bias = 1023, mantissa = 52;
  static constexpr double log2e = 1.4426950408889634073599, ln2_hi = 0.693145751953125,
                          ln2_lo = 1.42860682030941723212e-6;

  // exp r: Cephes' rational approximant 1 + 2·p(r)/(q(r) − p(r)).
  static DFTUNE_ALWAYS_INLINE void exp_reduced(v& r) {
    const v r2 = r * r;
    v p = r2 * 1.26177193074810590878e-4 + 3.02994407707441961300e-2;
    p = (p * r2 + 9.99999999999999999910e-1) * r;
    v q = r2 * 3.00198505138664455042e-6 + 2.52448340349684104192e-3;
    q = q * r2 + 2.27265548208155028766e-1;
    q = q * r2 + 2.00000000000000000009e0;
    r = p / (q - p) * 2.0 + 1.0;
  }
};

template <class S>
DFTUNE_ALWAYS_INLINE void load(typename S::v& x, const void* p) {
  __builtin_memcpy(&x, p, sizeof x);
}

template <class S>
DFTUNE_ALWAYS_INLINE void store(void* p, const typename S::v& x) {
  __builtin_memcpy(p, &x, sizeof x);
}

// x ← exp x, lane by lane (see the top of this file). A NaN x stays NaN (the clamp below keeps
// it; no max/min instruction would). `upper`: saturate at 2^max_exp·exp r (≈ exp(hi)) instead of
// overflowing the exponent bits, by clamping n as an integer; the forward's x − max never needs it
// (x ≤ max), the gradient's x − lse does where lse is the caller's (backward's row_lse).
template <class S, bool upper>
DFTUNE_ALWAYS_INLINE void vexp(typename S::v& x) {
  using v = typename S::v;
  using vi = typename S::vi;
  const v lo = v{} + S::lo;
  x = lo > x ? lo : x;
  const v t = x * S::log2e + S::shifter;
  const v n = t - S::shifter;
  vi k = __builtin_bit_cast(vi, t) - S::shifter_bits;  // = n exactly, and monotonic in t beyond
  if constexpr (upper) {
    const vi kmax = vi{} + S::bias;
    k = k > kmax ? kmax : k;
  }
  const vi e = (k + S::bias) << S::mantissa;
  v r = x - n * S::ln2_hi;
  r = r - n * S::ln2_lo;
  S::exp_reduced(r);
  x = r * __builtin_bit_cast(v, e);
}

// s += exp(x[0, L) − m): one vector of block_sum_exp.
template <class S, class C>
DFTUNE_ALWAYS_INLINE void add_exp(typename S::v& s, const C* x, C m) {
  typename S::v a;
  load<S>(a, x);
  a -= m;
  vexp<S, false>(a);
  s += a;
}

template <class C, std::size_t Bytes>
DFTUNE_ALWAYS_INLINE C block_max(const C* x, std::size_t n) {
  using S = Simd<C, Bytes>;
  using v = typename S::v;
  constexpr std::size_t L = Bytes / sizeof(C);
  v m0 = v{} - std::numeric_limits<C>::infinity(), m1 = m0, m2 = m0, m3 = m0, a0, a1, a2, a3;
  std::size_t i = 0;
  // Four chains hide the max latency; `a > m ? a : m` is one max instruction, which drops a NaN
  // (row_logsumexp finds it).
  for (; i + 4 * L <= n; i += 4 * L) {
    load<S>(a0, x + i);
    load<S>(a1, x + i + L);
    load<S>(a2, x + i + 2 * L);
    load<S>(a3, x + i + 3 * L);
    m0 = a0 > m0 ? a0 : m0;
    m1 = a1 > m1 ? a1 : m1;
    m2 = a2 > m2 ? a2 : m2;
    m3 = a3 > m3 ? a3 : m3;
  }
  for (; i + L <= n; i += L) {
    load<S>(a0, x + i);
    m0 = a0 > m0 ? a0 : m0;
  }
  m0 = m1 > m0 ? m1 : m0;
  m2 = m3 > m2 ? m3 : m2;
  m0 = m2 > m0 ? m2 : m0;
  C r = -std::numeric_limits<C>::infinity();
  for (std::size_t l = 0; l < L; ++l) r = std::max(r, m0[l]);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

// Σ exp(x − m). While the exps run from L1, the next block's `ahead_bytes` at `ahead` are
// prefetched, two cache lines per two lines of x: without it the memory system idles during this
// pass and the forward runs at half the read bandwidth.
template <class C, std::size_t Bytes>
DFTUNE_ALWAYS_INLINE C block_sum_exp(const C* x, std::size_t n, C m, const char* ahead, std::size_t ahead_bytes) {
  using S = Simd<C, Bytes>;
  using v = typename S::v;
  constexpr std::size_t L = Bytes / sizeof(C);
  constexpr std::size_t line = 64, chunk = 2 * line / sizeof(C);  // chunk: a multiple of 2·L
  v s0{}, s1{};
  std::size_t i = 0, pf = 0;
  for (; i + chunk <= n; i += chunk) {
    if (pf < ahead_bytes) {
      __builtin_prefetch(ahead + pf);
      __builtin_prefetch(ahead + pf + line);
      pf += 2 * line;
    }
    for (std::size_t j = 0; j < chunk; j += 2 * L) {  // two chains hide the latency
      add_exp<S>(s0, x + i + j, m);
      add_exp<S>(s1, x + i + j + L, m);
    }
  }
  for (; pf < ahead_bytes; pf += line) __builtin_prefetch(ahead + pf);
  for (; i + L <= n; i += L) add_exp<S>(s0, x + i, m);
  s0 += s1;
  C s = 0;
  for (std::size_t l = 0; l < L; ++l) s += s0[l];
  for (; i < n; ++i) s += std::exp(x[i] - m);
  return s;
}

// lse as the pair hi + lo of compute_t numbers (hi = lse rounded, lo = the rest), so that x − lse
// is (x − hi) − lo: rounded to C once, lse would move every exp(x − lse) of the row by up to half
// an ulp of lse (3e-8·|lse| in float, 5e-7 at lse ≈ 16) — one error for the whole row, which the
// gradient's sums over rows and over the vocabulary do not average away.
template <class C>
struct Split {
  C hi, lo;
  explicit Split(double x) : hi(static_cast<C>(x)), lo(static_cast<C>(x - static_cast<double>(hi))) {}
};

// g = minus_c · exp(x − lse); g may be x.
template <class C, std::size_t Bytes>
DFTUNE_ALWAYS_INLINE void block_grad(const C* x, C* g, std::size_t n, Split<C> lse, C minus_c) {
  using S = Simd<C, Bytes>;
  using v = typename S::v;
  constexpr std::size_t L = Bytes / sizeof(C);
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    v a;
    load<S>(a, x + i);
    a -= lse.hi;
    a -= lse.lo;
    vexp<S, true>(a);
    a *= minus_c;
    store<S>(g + i, a);
  }
  for (; i < n; ++i) g[i] = minus_c * std::exp((x[i] - lse.hi) - lse.lo);
}

// Online log Σ exp over one row, reading it once: per L1 block a max pass, then an exp-and-sum
// pass shifted by the running max (the sum rescaled when the max grows).
template <std::size_t Bytes, class T>
DFTUNE_ALWAYS_INLINE double row_logsumexp_body(const T* z, std::size_t vocab) {
  using C = compute_t<T>;
  alignas(64) C stage[std::is_same_v<T, bf16> ? block : 1];
  double m = -std::numeric_limits<double>::infinity();
  double s = 0;
  for (std::size_t b = 0; b < vocab; b += block) {
    const std::size_t n = std::min(block, vocab - b);
    const C* x = staged(z + b, stage, n);
    const double bm = block_max<C, Bytes>(x, n);
    if (bm > m) {
      s *= std::exp(m - bm);  // rare after the first blocks
      m = bm;
    }
    if (m == -std::numeric_limits<double>::infinity()) {
      // All −inf so far — or NaN, which block_max drops: a NaN must still make the row NaN. Only
      // blocks of nothing but −inf and NaN get here, so this scan costs nothing on real logits.
      for (std::size_t i = 0; i < n; ++i)
        if (std::isnan(x[i])) return std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    const std::size_t next = std::min(block, vocab - std::min(vocab, b + block));
    s += block_sum_exp<C, Bytes>(x, n, static_cast<C>(m), reinterpret_cast<const char*>(z + b + n), next * sizeof(T));
  }
  return m + std::log(s);
}

// grad row = c · (onehot(y) − exp(z − lse)); grad may be z.
template <std::size_t Bytes, class T>
DFTUNE_ALWAYS_INLINE void row_grad_body(const T* z, T* grad, std::size_t vocab, std::size_t y, double lse, double c) {
  using C = compute_t<T>;
  alignas(64) C stage[std::is_same_v<T, bf16> ? block : 1];
  const double zy = static_cast<double>(to_compute(z[y]));  // read before an in-place write
  const Split<C> l(lse);
  for (std::size_t b = 0; b < vocab; b += block) {
    const std::size_t n = std::min(block, vocab - b);
    if constexpr (std::is_same_v<T, bf16>) {
      widen(z + b, stage, n);
      block_grad<C, Bytes>(stage, stage, n, l, static_cast<C>(-c));
      narrow(stage, grad + b, n);
    } else {
      block_grad<C, Bytes>(z + b, grad + b, n, l, static_cast<C>(-c));
    }
  }
  grad[y] = static_cast<T>(static_cast<C>(c * (1.0 - std::exp(zy - lse))));
}

#if DFTUNE_CPU_DISPATCH
template <class T>
DFTUNE_TARGET_AVX2 double row_logsumexp_avx2(const T* z, std::size_t vocab) {
  return row_logsumexp_body<32>(z, vocab);
}
template <class T>
DFTUNE_TARGET_AVX512 double row_logsumexp_avx512(const T* z, std::size_t vocab) {
  return row_logsumexp_body<64>(z, vocab);
}
template <class T>
DFTUNE_TARGET_AVX2 void row_grad_avx2(const T* z, T* grad, std::size_t vocab, std::size_t y, double lse, double c) {
  row_grad_body<32>(z, grad, vocab, y, lse, c);
}
template <class T>
DFTUNE_TARGET_AVX512 void row_grad_avx512(const T* z, T* grad, std::size_t vocab, std::size_t y, double lse, double c) {
  row_grad_body<64>(z, grad, vocab, y, lse, c);
}
#endif

// The dispatch points. cpu::active_isa() is cached after its first call, which fast.hpp and
// chunked.hpp make before their parallel regions (where a bad DFTUNE_ISA could not be thrown).
template <class T>
double row_logsumexp(const T* z, std::size_t vocab) {
  const dftune::cpu::Isa isa = dftune::cpu::active_isa();
  dftune::cpu::detail::note_ran(isa);
#if DFTUNE_CPU_DISPATCH
  if (isa == dftune::cpu::Isa::avx512) return row_logsumexp_avx512(z, vocab);
  if (isa == dftune::cpu::Isa::avx2) return row_logsumexp_avx2(z, vocab);
#endif
  return row_logsumexp_body<16>(z, vocab);
}

template <class T>
void row_grad(const T* z, T* grad, std::size_t vocab, std::size_t y, double lse, double c) {
  const dftune::cpu::Isa isa = dftune::cpu::active_isa();
  dftune::cpu::detail::note_ran(isa);
#if DFTUNE_CPU_DISPATCH
  if (isa == dftune::cpu::Isa::avx512) return row_grad_avx512(z, grad, vocab, y, lse, c);
  if (isa == dftune::cpu::Isa::avx2) return row_grad_avx2(z, grad, vocab, y, lse, c);
#endif
  row_grad_body<16>(z, grad, vocab, y, lse, c);
}

}  // namespace logprob::cpu::kernel

DFTUNE_NAMESPACE_END
