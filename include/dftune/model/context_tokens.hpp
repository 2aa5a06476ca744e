#pragma once
// The token walk of the categorical policies (model/categorical_policy.hpp and its xtensor twin,
// backend/xtensor/categorical_policy.hpp): the last prompt token of each sequence names its
// context c, and each completion token y_t is scored against row c. One loop, with the checks, so
// the two policies read a batch the same way.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <algorithm>
#include <cstddef>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

// Validates `batch`, then calls token(c, y_t) for every completion token in order and
// sequence_end() after each sequence; every context id must be < contexts and every completion
// token < vocab (dftune::error naming the flat token index otherwise, before that token is seen).
template <class Token, class SequenceEnd>
void for_each_context_token(const SequenceBatch& batch, std::size_t contexts, std::size_t vocab, Token&& token,
                            SequenceEnd&& sequence_end) {
  validate(batch, std::max(vocab, contexts));
  for (std::size_t s = 0; s < batch.size(); ++s) {
    const auto seq = batch.sequence(s);
    const auto p = static_cast<std::size_t>(batch.prompt_len[s]);
    const token_t c = seq[p - 1];
    if (static_cast<std::size_t>(c) >= contexts)
      fail_at("batch.tokens", static_cast<std::size_t>(batch.offsets[s]) + p - 1, c,
              "a context id (last prompt token) in [0, num_contexts = " + std::to_string(contexts) + ")");
    for (std::size_t t = p; t < seq.size(); ++t) {
      if (static_cast<std::size_t>(seq[t]) >= vocab)
        fail_at("batch.tokens", static_cast<std::size_t>(batch.offsets[s]) + t, seq[t],
                "a completion token in [0, vocab = " + std::to_string(vocab) + ")");
      token(static_cast<std::size_t>(c), seq[t]);
    }
    sequence_end();
  }
}

}  // namespace detail

DFTUNE_NAMESPACE_END
