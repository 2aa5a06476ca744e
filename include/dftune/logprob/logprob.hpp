#pragma once
// The one entry point for token log-prob reductions: forward (per-sequence, per-token log-probs
// and the row log-sum-exp) and backward (the fused d_seq · w · (onehot − softmax), optionally in
// place). The semantics, shared by every backend, are written once in generic.hpp.
#include <dftune/config.hpp>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace logprob {

template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
             std::span<compute_t<T>> row_lse = {}) {
  generic::forward(in, seq_logp, token_logp, row_lse);
}

template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse = {}) {
  generic::backward(in, d_seq, grad, row_lse);
}

}  // namespace logprob

DFTUNE_NAMESPACE_END
