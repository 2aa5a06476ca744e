#pragma once
// The CPU fast path of the token log-prob reduction: same semantics, checks and outputs as
// generic.hpp (read that first), for float, double and bf16 storage.
//
// How it goes fast:
// - Rows are independent, so OpenMP splits rows across threads (dynamic: masked rows cost
//   nothing, so static chunks would be uneven). Every row is computed by one thread from the
//   same instructions, so results do not depend on the thread count.
// - The forward reads each logit from memory once. A row is cut into L1-sized blocks; for each
//   block a max pass (from memory) then an exp-and-sum pass (from L1) shifted by the running max,
//   rescaling the running sum when the max grows: the online log-sum-exp, one exp per logit.
//   While a block's exps run from L1, the next block is prefetched, one cache line per packet,
//   so the memory system never idles (without it the forward ran at half the read bandwidth).
// - The backward is fused: one read and one write per logit (in place if grad is the logits),
//   grad = −c·exp(z − lse), then the target entry is set to c·(1 − p_y) from the saved z_y.
// - SIMD: the row kernels of cpu/rows.hpp, one body built at three vector widths (baseline,
//   AVX2+FMA, AVX-512) with a vectorised exp; the widest this CPU runs is picked at run time
//   (cpu/isa.hpp), whatever flags the user compiles with.
// - bf16 blocks are widened into an fp32 stack buffer and narrowed back; all arithmetic is fp32.
// - Accumulation: fp32 packets within a block (≤ 2048 terms), then double across blocks and
//   across the tokens of a sequence.
// - No allocation: per-token log-probs go to token_logp, or to the caller's workspace
//   (workspace_size()) when token_logp is not wanted, and are summed per sequence afterwards.
//
// - Non-finite logits (generic.hpp's rules) cost no extra pass: a weighted row is checked from its
//   log-sum-exp and log-prob (detail::row_ok), one test per row; the smallest refused row is
//   found with an OpenMP min-reduction and reported through generic::fail_row after the pass.
//
// Tolerance against the generic path on the same storage type (tests/test_logprob_fast.cpp):
// float/bf16 per-token log-probs within 2e-6·|w|·(1 + |lse|), lse within 2e-6·(1 + |lse|),
// gradients within 4e-6·|c|·(1 + |lse|) with c = d_seq·w (+ one bf16 rounding of the gradient,
// 2^-8 relative); double within 1e-12 relative in the same forms.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/checks.hpp>
#include <dftune/cpu/isa.hpp>
#include <dftune/logprob/cpu/bf16.hpp>
#include <dftune/logprob/cpu/rows.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cpu {

// The logit types the fast path takes (float, double, bf16); others go to logprob::generic.
template <class T>
inline constexpr bool supported = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>;

// Bytes forward() needs in `workspace` when token_logp is empty (none otherwise); backward needs none.
template <class T>
std::size_t workspace_size(const TokenLogits<T>& in) {
  return dftune::detail::checked_mul("workspace_size (rows·sizeof(compute_t<T>))", in.rows(), sizeof(compute_t<T>));
}

namespace kernel {

// Below this many logits a parallel region costs more than it saves.
inline constexpr std::size_t parallel_min = std::size_t{1} << 16;

}  // namespace kernel

// logprob::forward on the dispatched row kernels (OpenMP over rows): the same arguments, checks and
// errors; without token_logp it needs workspace_size(in) bytes of `workspace`, aligned for
// compute_t<T> (dftune::argument_error otherwise). logprob::forward calls it for these types.
template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp,
             std::span<compute_t<T>> row_lse, std::span<std::byte> workspace) {
  static_assert(supported<T>, "the CPU fast path takes float, double or bf16 logits; use logprob::generic");
  using C = compute_t<T>;
  detail::check_forward(in, seq_logp.size(), token_logp.size(), row_lse.size());
  (void)dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not inside the parallel loop
  C* token = token_logp.data();
  if (token_logp.empty()) {
    if (workspace.size() < cpu::workspace_size(in))
      dftune::detail::fail("workspace", "size " + std::to_string(workspace.size()),
                   "at least workspace_size(in) = " + std::to_string(cpu::workspace_size(in)) + " bytes");
    if (reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(C) != 0)
      dftune::detail::fail("workspace", "a misaligned buffer", "alignment " + std::to_string(alignof(C)));
    token = reinterpret_cast<C*>(workspace.data());
  }
  const std::size_t V = in.vocab;
  const auto N = static_cast<std::ptrdiff_t>(in.rows());
  const bool threaded = in.logits.size() >= kernel::parallel_min;
  (void)threaded;
  std::size_t bad = std::numeric_limits<std::size_t>::max();  // the smallest refused row
  DFTUNE_OMP(parallel for schedule(dynamic, 1) if (threaded) reduction(min : bad))
  for (std::ptrdiff_t n = 0; n < N; ++n) {
    const auto r = static_cast<std::size_t>(n);
    const double w = in.weight(r);
    if (w == 0) {
      token[r] = 0;
      if (!row_lse.empty()) row_lse[r] = std::numeric_limits<C>::quiet_NaN();
      continue;
    }
    const T* z = in.logits.data() + r * V;
    const double lse = kernel::row_logsumexp(z, V);
    const auto y = static_cast<std::size_t>(in.targets[r]);
    const double lp = w * (static_cast<double>(kernel::to_compute(z[y])) - lse);
    const bool ok = detail::row_ok<C>(lse, lp);
    if (!ok) bad = std::min(bad, r);
    token[r] = ok ? static_cast<C>(lp) : std::numeric_limits<C>::quiet_NaN();
    if (!row_lse.empty()) row_lse[r] = ok ? static_cast<C>(lse) : std::numeric_limits<C>::quiet_NaN();
  }
  if (bad != std::numeric_limits<std::size_t>::max()) generic::fail_row(in, bad);
  generic::store_sequences<T>(seq_logp, [&](std::size_t s) {
    double acc = 0;
    for (auto r = static_cast<std::size_t>(in.offsets[s]); r < static_cast<std::size_t>(in.offsets[s + 1]); ++r)
      acc += token[r];
    return acc;
  });
}

// logprob::backward on the dispatched row kernels: grad = d_seq[s] · w · (onehot(y) − softmax(z)) per
// row; the same arguments, checks and errors.
template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse = {}) {
  static_assert(supported<T>, "the CPU fast path takes float, double or bf16 logits; use logprob::generic");
  detail::check_backward(in, d_seq, grad, row_lse);
  (void)dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not inside the parallel loop
  const std::size_t V = in.vocab;
  const auto N = static_cast<std::ptrdiff_t>(in.rows());
  const bool threaded = in.logits.size() >= kernel::parallel_min;
  (void)threaded;
  std::size_t bad = std::numeric_limits<std::size_t>::max();  // the smallest refused row (row_lse recomputed)
  DFTUNE_OMP(parallel for schedule(dynamic, 1) if (threaded) reduction(min : bad))
  for (std::ptrdiff_t n = 0; n < N; ++n) {
    const auto r = static_cast<std::size_t>(n);
    // The sequence of row r: the last s with offsets[s] <= r (empty sequences are skipped over).
    const auto s = static_cast<std::size_t>(
        std::upper_bound(in.offsets.begin(), in.offsets.end(), static_cast<std::int64_t>(r)) - in.offsets.begin() - 1);
    const double c = static_cast<double>(d_seq[s]) * static_cast<double>(in.weight(r));
    const T* z = in.logits.data() + r * V;
    T* g = grad.data() + r * V;
    if (c == 0) {
      std::fill(g, g + V, T(0.0f));
      continue;
    }
    const auto y = static_cast<std::size_t>(in.targets[r]);
    const double lse = row_lse.empty() ? kernel::row_logsumexp(z, V) : static_cast<double>(row_lse[r]);
    if (row_lse.empty() && !(std::isfinite(lse) && std::isfinite(static_cast<double>(kernel::to_compute(z[y]))))) {
      bad = std::min(bad, r);
      continue;  // the row is left as it is; the call throws below
    }
    kernel::row_grad(z, g, V, y, lse, c);
  }
  if (bad != std::numeric_limits<std::size_t>::max()) generic::fail_row(in, bad);
}

}  // namespace logprob::cpu

DFTUNE_NAMESPACE_END
