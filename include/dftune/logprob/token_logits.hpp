#pragma once
// The input of every token log-prob reduction (docs/math.md, "Data flow", arrow "model → per-token log-probs →
// per-sequence scores"): a [N, V] block of logits, one target per row, a per-token weight (0 masks
// prompt and padding) and the sequence boundaries. Views only; the caller owns every buffer.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

// A token id: an index into the vocabulary (int32, as PyTorch's and tokenizers' ids fit).
using token_t = std::int32_t;

namespace logprob {

// The type in which a storage type's log-probs are accumulated and returned: float for float (and,
// later, bf16/fp16), double for double.
template <class T>
using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The input of a token log-prob reduction: N rows of V logits, the target token of each row, an
// optional weight per row (0 masks prompts and padding) and the rows of each of S sequences.
template <class T>
struct TokenLogits {
  std::span<const T> logits = {};               // [N, V] row-major
  std::size_t vocab = 0;                   // V
  std::span<const token_t> targets = {};        // [N]; read only where the weight is non-zero
  std::span<const compute_t<T>> weights = {};   // [N]; empty means every token has weight 1
  std::span<const std::int64_t> offsets = {};   // [S + 1]: sequence s is rows [offsets[s], offsets[s+1])

  // N, the number of logit rows.
  std::size_t rows() const { return vocab == 0 ? 0 : logits.size() / vocab; }
  // S, the number of sequences.
  std::size_t sequences() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  // The weight of a row: weights[row], or 1 when no weights are given.
  compute_t<T> weight(std::size_t row) const { return weights.empty() ? compute_t<T>(1) : weights[row]; }
};

// The checks every token reduction shares, on the rows alone (the fused linear head, which has no
// logits, runs them too): targets [n], weights [n] or empty, offsets [S + 1] from 0 to n, finite
// weights, and targets in [0, vocab) on weighted rows. Throws dftune::error naming the argument.
template <class W>
void validate_rows(std::size_t n, std::size_t vocab, std::span<const token_t> targets, std::span<const W> weights,
                   std::span<const std::int64_t> offsets) {
  dftune::detail::check_size("targets", targets.size(), n);
  if (!weights.empty()) dftune::detail::check_size("weights", weights.size(), n);
  if (offsets.empty()) dftune::detail::fail("offsets", "size 0", "size S + 1 >= 1");
  if (offsets.front() != 0) dftune::detail::fail_at("offsets", 0, offsets.front(), "0");
  for (std::size_t s = 1; s < offsets.size(); ++s)
    if (offsets[s] < offsets[s - 1])
      dftune::detail::fail_at("offsets", s, offsets[s], ">= offsets[" + std::to_string(s - 1) + "] (non-decreasing)");
  if (offsets.back() != static_cast<std::int64_t>(n))
    dftune::detail::fail_at("offsets", offsets.size() - 1, offsets.back(), "N = " + std::to_string(n));
  for (std::size_t r = 0; r < n; ++r) {
    const W w = weights.empty() ? W(1) : weights[r];
    if (!std::isfinite(w)) dftune::detail::fail_at("weights", r, w, "a finite number");
    if (w != 0 && (targets[r] < 0 || static_cast<std::size_t>(targets[r]) >= vocab))
      dftune::detail::fail_at("targets", r, targets[r], "in [0, vocab = " + std::to_string(vocab) + ")");
  }
}

// Checks shapes, offsets, weights and the targets of weighted rows; throws dftune::error naming
// the argument. Logits are not scanned here (that would double the memory traffic): the reductions
// refuse non-finite logits from the pass that reads them (logprob/generic.hpp).
template <class T>
void validate(const TokenLogits<T>& in) {
  if (in.vocab == 0) dftune::detail::fail("vocab", in.vocab, "at least 1");
  if (in.logits.size() % in.vocab != 0)
    dftune::detail::fail("logits", "size " + std::to_string(in.logits.size()),
                 "a multiple of vocab = " + std::to_string(in.vocab));
  validate_rows(in.rows(), in.vocab, in.targets, in.weights, in.offsets);
}

}  // namespace logprob

DFTUNE_NAMESPACE_END
