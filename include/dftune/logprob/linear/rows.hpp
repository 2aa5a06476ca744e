#pragma once
// The row kernels of the fused linear head (chunked.hpp), as a policy: on one row z of a chunk's
// logits (compute_t, in the workspace),
//   lse(z)              log Σ_v exp z_v
//   grad(z, y, lse, c)  c·(onehot(y) − exp(z − lse)) written over z
//   entropy(z, lse)     −Σ_v p_v log p_v = Σ_v p_v (lse − z_v),  p = exp(z − lse)
// GenericRows is the oracle (generic.hpp's log-sum-exp, double loops); FastRows runs the CPU fast
// path's vectorised kernels (cpu/rows.hpp), dispatched per CPU, and an entropy written the same way
// from their exp. The entropy sums the non-negative terms p_v (lse − z_v) rather than lse − Σ p z,
// which would cancel when the logits sit far from 0.
#include <dftune/config.hpp>
#include <dftune/logprob/generic.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#if !defined(DFTUNE_LOGPROB_GENERIC_ONLY) && __has_include(<Eigen/Core>)
#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/cpu/bf16.hpp>
#include <dftune/logprob/cpu/fast.hpp>
#include <dftune/logprob/cpu/rows.hpp>
// 1: FastRows exists (Eigen on the include path, DFTUNE_LOGPROB_GENERIC_ONLY not defined).
#define DFTUNE_LINEAR_HAS_FAST_ROWS 1
#else
// 0: only GenericRows (no Eigen on the include path, or DFTUNE_LOGPROB_GENERIC_ONLY).
#define DFTUNE_LINEAR_HAS_FAST_ROWS 0
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear::chunked {

// The oracle's row kernels: generic.hpp's log-sum-exp, the gradient and the entropy in double.
struct GenericRows {
  // log Σ_v exp z_v.
  template <class C>
  static double lse(const C* z, std::size_t V) {
    return generic::row_logsumexp(z, V);
  }
  // z ← c·(onehot(y) − exp(z − lse)).
  template <class C>
  static void grad(C* z, std::size_t V, std::size_t y, double lse, double c) {
    for (std::size_t v = 0; v < V; ++v)
      z[v] = static_cast<C>(c * ((v == y ? 1.0 : 0.0) - std::exp(static_cast<double>(z[v]) - lse)));
  }
  // Σ_v p_v (lse − z_v); a logit of −inf has p = 0 and adds nothing.
  template <class C>
  static double entropy(const C* z, std::size_t V, double lse) {
    double h = 0;
    for (std::size_t v = 0; v < V; ++v) {
      const double x = static_cast<double>(z[v]) - lse;
      if (x > -std::numeric_limits<double>::infinity()) h -= std::exp(x) * x;
    }
    return h;
  }
};

#if DFTUNE_LINEAR_HAS_FAST_ROWS
}  // namespace logprob::linear::chunked

namespace logprob::linear::detail {

// s += p·(lse − z) for one vector at x, p = exp(z − lse); below the log of the smallest normal
// number the argument is clamped there (vexp's floor), for the factor too: such a term adds at most
// 87·1.2e-38 (float), where −inf · 0 would make NaN.
template <class S, class C>
DFTUNE_ALWAYS_INLINE void add_entropy(typename S::v& s, const C* x, cpu::kernel::Split<C> lse) {
  using v = typename S::v;
  const v lo = v{} + S::lo;
  v a;
  cpu::kernel::load<S>(a, x);
  a -= lse.hi;  // z − lse in two steps: cpu::kernel::Split
  a -= lse.lo;
  a = lo > a ? lo : a;
  v p = a;
  cpu::kernel::vexp<S, true>(p);
  s -= p * a;
}

// Σ p (lse − z) over one L1 block, in lanes of C; the caller adds the blocks in double.
template <class C, std::size_t Bytes>
DFTUNE_ALWAYS_INLINE C block_entropy(const C* z, std::size_t n, cpu::kernel::Split<C> lse) {
  using S = cpu::kernel::Simd<C, Bytes>;
  using v = typename S::v;
  constexpr std::size_t L = Bytes / sizeof(C);
  v s0{}, s1{};
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {  // two chains hide the latency
    add_entropy<S>(s0, z + i, lse);
    add_entropy<S>(s1, z + i + L, lse);
  }
  for (; i + L <= n; i += L) add_entropy<S>(s0, z + i, lse);
  s0 += s1;
  C s = 0;
  for (std::size_t l = 0; l < L; ++l) s += s0[l];
  for (; i < n; ++i) {
    const C a = std::max((z[i] - lse.hi) - lse.lo, static_cast<C>(S::lo));
    s -= std::exp(a) * a;
  }
  return s;
}

template <std::size_t Bytes, class C>
DFTUNE_ALWAYS_INLINE double entropy_body(const C* z, std::size_t V, double lse) {
  double h = 0;
  const cpu::kernel::Split<C> l(lse);
  for (std::size_t b = 0; b < V; b += cpu::kernel::block)
    h += static_cast<double>(block_entropy<C, Bytes>(z + b, std::min(cpu::kernel::block, V - b), l));
  return h;
}

#if DFTUNE_CPU_DISPATCH
template <class C>
DFTUNE_TARGET_AVX2 double entropy_avx2(const C* z, std::size_t V, double lse) {
  return entropy_body<32>(z, V, lse);
}
template <class C>
DFTUNE_TARGET_AVX512 double entropy_avx512(const C* z, std::size_t V, double lse) {
  return entropy_body<64>(z, V, lse);
}
#endif

template <class C>
double entropy(const C* z, std::size_t V, double lse) {
  const dftune::cpu::Isa isa = dftune::cpu::active_isa();
  dftune::cpu::detail::note_ran(isa);
#if DFTUNE_CPU_DISPATCH
  if (isa == dftune::cpu::Isa::avx512) return entropy_avx512(z, V, lse);
  if (isa == dftune::cpu::Isa::avx2) return entropy_avx2(z, V, lse);
#endif
  return entropy_body<16>(z, V, lse);
}

}  // namespace logprob::linear::detail

namespace logprob::linear::chunked {

// The CPU fast path's row kernels (cpu/rows.hpp), dispatched per CPU; within fast.hpp's tolerance of GenericRows.
struct FastRows {
  // log Σ_v exp z_v.
  template <class C>
  static double lse(const C* z, std::size_t V) {
    return cpu::kernel::row_logsumexp(z, V);
  }
  // z ← c·(onehot(y) − exp(z − lse)).
  template <class C>
  static void grad(C* z, std::size_t V, std::size_t y, double lse, double c) {
    cpu::kernel::row_grad(z, z, V, y, lse, c);
  }
  // Σ_v p_v (lse − z_v), in lanes of C per block of cpu::kernel::block, the blocks in double.
  template <class C>
  static double entropy(const C* z, std::size_t V, double lse) {
    return detail::entropy(z, V, lse);
  }
};
#endif

}  // namespace logprob::linear::chunked

DFTUNE_NAMESPACE_END
