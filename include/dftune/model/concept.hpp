#pragma once
// The Model concept (docs/backend.md): the least a backend must give dftune. A model scores the
// completions of a batch of sequences and, given d loss / d score, accumulates parameter gradients;
// the inner optimizer then sees parameters and gradients as flat spans of equal size.
#include <dftune/config.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

DFTUNE_NAMESPACE_BEGIN

template <class M>
concept Model = requires(M& m, const SequenceBatch& batch, std::span<typename M::scalar_type> scores,
                         std::span<const typename M::scalar_type> d_scores, std::uint64_t seed) {
  typename M::scalar_type;
  requires std::floating_point<typename M::scalar_type>;
  // scores[s] = log π(completion_s | prompt_s), summed over completion tokens.
  { m.sequence_logp(batch, scores) } -> std::same_as<void>;
  // gradients += Σ_s d_scores[s] · ∂ scores[s] / ∂θ.
  { m.accumulate_gradients(batch, d_scores) } -> std::same_as<void>;
  { m.zero_gradients() } -> std::same_as<void>;
  { m.parameters() } -> std::convertible_to<std::span<typename M::scalar_type>>;
  { m.gradients() } -> std::convertible_to<std::span<typename M::scalar_type>>;
  { m.vocab_size() } -> std::convertible_to<std::size_t>;
};

// Optional: a model that can keep, from the scoring pass, what the backward of the same batch
// needs (docs/backend.md). `m.sequence_logp(batch, scores, keep_for_backward)` writes the same
// scores as `m.sequence_logp(batch, scores)` and may keep the batch's activations, within a memory
// bound the model's user sets, so that the next `accumulate_gradients` on an equal batch, with the
// parameters unchanged, skips its forward; the gradients are the same bits either way. It returns
// whether it kept them. A trainer that scores a batch and then back-propagates it calls
// score_for_backward, which uses the member when the model has one.
struct KeepForBackward {
  explicit KeepForBackward() = default;
};
// The tag's value: model.sequence_logp(batch, scores, keep_for_backward).
inline constexpr KeepForBackward keep_for_backward{};

template <class M>
concept KeepsActivations = Model<M> && requires(M& m, const SequenceBatch& batch, std::span<typename M::scalar_type> scores) {
  { m.sequence_logp(batch, scores, keep_for_backward) } -> std::same_as<bool>;
};

// Scores `batch` that the caller will back-propagate next (the same batch, parameters unchanged).
template <Model M>
void score_for_backward(M& m, const SequenceBatch& batch, std::span<typename M::scalar_type> scores) {
  if constexpr (KeepsActivations<M>)
    (void)m.sequence_logp(batch, scores, keep_for_backward);
  else
    m.sequence_logp(batch, scores);
}

// Optional: a model that can sample completions (for on-policy negatives). tokens receives, for
// each prompt, the prompt followed by up to max_new tokens, as a SequenceBatch layout.
struct SamplingOptions {
  // T > 0: logits divided by T before the softmax
  double temperature = 1.0;
  std::size_t top_k = 0;  // 0: no top-k cut
  // in (0, 1]: keep the smallest set of tokens whose probability reaches top_p (1: no cut)
  double top_p = 1.0;
  // seed of the sampler's random stream
  std::uint64_t seed = 0;
};

// Static checks with a message per missing piece, for a readable error at the point of use
// (the concept alone only says "constraints not satisfied").
template <class M>
constexpr bool check_model() {
  static_assert(requires { typename M::scalar_type; },
                "dftune::Model: the type needs `using scalar_type = float or double;`");
  if constexpr (requires { typename M::scalar_type; }) {
    using T = typename M::scalar_type;
    static_assert(requires(M& m, const SequenceBatch& b, std::span<T> s) { m.sequence_logp(b, s); },
                  "dftune::Model: the type needs `void sequence_logp(const SequenceBatch&, std::span<scalar_type>)`");
    static_assert(requires(M& m, const SequenceBatch& b, std::span<const T> d) { m.accumulate_gradients(b, d); },
                  "dftune::Model: the type needs `void accumulate_gradients(const SequenceBatch&, "
                  "std::span<const scalar_type>)`");
    static_assert(requires(M& m) { m.zero_gradients(); }, "dftune::Model: the type needs `void zero_gradients()`");
    static_assert(requires(M& m) { { m.parameters() } -> std::convertible_to<std::span<T>>; },
                  "dftune::Model: the type needs `std::span<scalar_type> parameters()`");
    static_assert(requires(M& m) { { m.gradients() } -> std::convertible_to<std::span<T>>; },
                  "dftune::Model: the type needs `std::span<scalar_type> gradients()`");
    static_assert(requires(M& m) { { m.vocab_size() } -> std::convertible_to<std::size_t>; },
                  "dftune::Model: the type needs `std::size_t vocab_size() const`");
  }
  return Model<M>;
}

DFTUNE_NAMESPACE_END
