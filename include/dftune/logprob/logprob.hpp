#pragma once
// The one entry point for token log-prob reductions: forward (per-sequence, per-token log-probs
// and the row log-sum-exp) and backward (the fused d_seq · w · (onehot − softmax), optionally in
// place). The semantics, shared by every backend, are written once in generic.hpp.
//
// Dispatch: float, double and bf16 logits in host memory go to the CPU fast path (cpu/fast.hpp)
// when Eigen is on the include path, unless DFTUNE_LOGPROB_GENERIC_ONLY is defined; anything else
// goes to the generic path, which stays as the oracle (generic::forward / generic::backward).
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <span>
#include <vector>

#if !defined(DFTUNE_LOGPROB_GENERIC_ONLY) && __has_include(<Eigen/Core>)
#include <dftune/logprob/cpu/fast.hpp>
// 1 when logprob::forward / backward dispatch to the CPU fast path (cpu/fast.hpp), else 0.
#define DFTUNE_HAS_CPU_FAST_PATH 1
#else
// 1 when logprob::forward / backward dispatch to the CPU fast path (cpu/fast.hpp), else 0.
#define DFTUNE_HAS_CPU_FAST_PATH 0
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob {

// The dispatch differs with DFTUNE_HAS_CPU_FAST_PATH; a namespace per variant keeps two
// translation units built with and without Eigen from violating the one-definition rule.
#if DFTUNE_HAS_CPU_FAST_PATH
inline namespace dispatch_cpu_fast {
#else
inline namespace dispatch_generic {
#endif

// Bytes of `workspace` forward() needs to run without allocating when token_logp is empty.
template <class T>
std::size_t workspace_size(const TokenLogits<T>& in) {
  return dftune::detail::checked_mul("workspace_size (rows·sizeof(compute_t<T>))", in.rows(), sizeof(compute_t<T>));
}

// seq_logp [S] is required; token_logp [N] and row_lse [N] are written when non-empty. Without
// token_logp, a workspace of workspace_size(in) bytes keeps the call allocation-free; when it is
// too small, the call allocates one itself.
template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
             std::span<compute_t<T>> row_lse = {}, std::span<std::byte> workspace = {}) {
#if DFTUNE_HAS_CPU_FAST_PATH
  if constexpr (cpu::supported<T>) {
    if (token_logp.empty() && workspace.size() < workspace_size(in)) {
      std::vector<compute_t<T>> own(in.rows());
      cpu::forward(in, seq_logp, std::span<compute_t<T>>(own), row_lse, {});
      // cpu::forward wrote token_logp into `own`, which the caller did not ask for.
      return;
    }
    cpu::forward(in, seq_logp, token_logp, row_lse, workspace);
    return;
  }
#endif
  (void)workspace;
  generic::forward(in, seq_logp, token_logp, row_lse);
}

// d_seq [S] = ∂loss/∂seq_logp; grad [N·V] is the logits themselves (in place) or disjoint from
// them; row_lse from forward() saves a pass over the logits, and may be empty.
template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse = {}) {
#if DFTUNE_HAS_CPU_FAST_PATH
  if constexpr (cpu::supported<T>) {
    cpu::backward(in, d_seq, grad, row_lse);
    return;
  }
#endif
  generic::backward(in, d_seq, grad, row_lse);
}

}  // inline namespace dispatch_*

}  // namespace logprob

DFTUNE_NAMESPACE_END
