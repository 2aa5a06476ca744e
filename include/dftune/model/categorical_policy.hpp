#pragma once
// The reference model: a contextual categorical policy. The last prompt token names a context c,
// and each completion token is drawn independently from softmax(θ_c), so
//   log π(y|x) = Σ_t log softmax(θ_c)[y_t].
// It satisfies the Model concept with one logit row per context and runs the whole DFT loop
// without any neural network; its log-probs go through the library's token reductions.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/context_tokens.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The reference model (see the file's comment): θ holds one row of logits per context; it
// satisfies the Model concept, and T (float or double) is the type of its scores and parameters.
template <class T>
class CategoricalPolicy {
 public:
  using scalar_type = T;  // the type of scores, parameters and gradients

  // θ = 0: every context starts uniform over the vocabulary. num_contexts·vocab is checked before
  // it sizes θ (a wrapped product would size it too small for the rows it indexes).
  CategoricalPolicy(std::size_t num_contexts, std::size_t vocab) : contexts_(num_contexts), vocab_(vocab) {
    constexpr auto max_ids = static_cast<std::size_t>(std::numeric_limits<token_t>::max()) + 1;
    if (num_contexts == 0 || num_contexts > max_ids)
      detail::fail("num_contexts", num_contexts, "in [1, " + std::to_string(max_ids) + "] (context ids are int32 tokens)");
    if (vocab == 0 || vocab > max_ids) detail::fail("vocab", vocab, "in [1, " + std::to_string(max_ids) + "] (token ids are int32)");
    const std::size_t size = detail::checked_mul("num_contexts·vocab", num_contexts, vocab);
    if (size > theta_.max_size()) detail::fail("num_contexts·vocab", size, "at most " + std::to_string(theta_.max_size()) + " parameters");
    theta_.assign(size, T(0));
    grad_.assign(theta_.size(), T(0));
  }

  // V, the number of tokens a completion may use.
  std::size_t vocab_size() const { return vocab_; }
  // The number of contexts (rows of θ).
  std::size_t num_contexts() const { return contexts_; }
  // θ, flat [num_contexts · vocab]: the inner rule updates it in place.
  std::span<T> parameters() { return theta_; }
  // The gradient buffer, the size of parameters().
  std::span<T> gradients() { return grad_; }
  // Sets every gradient to 0.
  void zero_gradients() { std::fill(grad_.begin(), grad_.end(), T(0)); }
  // θ_c, e.g. to start from a reference distribution: logits(c)[a] = log π_ref(a|c).
  std::span<T> logits(std::size_t context) {
    if (context >= contexts_) detail::fail("context", context, "in [0, num_contexts = " + std::to_string(contexts_) + ")");
    return std::span<T>(theta_).subspan(context * vocab_, vocab_);
  }

  // scores[s] = log π(completion_s | prompt_s) for every sequence of the batch. Throws
  // dftune::error for a malformed batch, a context or token out of range, or scores of the wrong size.
  void sequence_logp(const SequenceBatch& batch, std::span<T> scores) {
    gather(batch);
    detail::check_size("scores", scores.size(), batch.size());
    logprob::forward(view(), scores);
  }

  // ∂ log π / ∂θ_c = Σ_t (onehot(y_t) − softmax(θ_c)): the reduction's backward gives one row per
  // token, which is summed into the row of its context.
  void accumulate_gradients(const SequenceBatch& batch, std::span<const T> d_scores) {
    gather(batch);
    detail::check_size("d_scores", d_scores.size(), batch.size());
    token_grad_.resize(rows_.size());
    logprob::backward(view(), d_scores, std::span<T>(token_grad_));
    for (std::size_t r = 0; r < row_context_.size(); ++r) {
      T* g = grad_.data() + row_context_[r] * vocab_;
      const T* t = token_grad_.data() + r * vocab_;
      for (std::size_t v = 0; v < vocab_; ++v) g[v] += t[v];
    }
  }

  // `length` completion tokens for one context, drawn independently with sample_token's filter
  // (temperature, top-k, top-p) over θ_c.
  std::vector<token_t> sample(std::size_t context, std::size_t length, std::mt19937_64& rng,
                              const SamplingOptions& options = {}) const {
    if (context >= contexts_) detail::fail("context", context, "in [0, num_contexts = " + std::to_string(contexts_) + ")");
    validate(options);
    const std::span<const T> row(theta_.data() + context * vocab_, vocab_);
    std::vector<double> probs(vocab_);
    std::vector<std::int32_t> order(vocab_);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<token_t> out(length);
    for (auto& y : out) y = sample_token(row, options, u(rng), std::span<double>(probs), std::span<std::int32_t>(order));
    return out;
  }

 private:
  // One logits row (a copy of θ_c) and one target per completion token; the prompt is not scored.
  void gather(const SequenceBatch& batch) {
    validate(batch, std::max(vocab_, contexts_));
    std::size_t completion_tokens = 0;  // <= batch.tokens.size(): no overflow
    for (std::size_t s = 0; s < batch.size(); ++s) completion_tokens += static_cast<std::size_t>(batch.completion_length(s));
    const std::size_t n_logits = detail::checked_mul("batch completion tokens·vocab", completion_tokens, vocab_);
    if (n_logits > rows_.max_size()) detail::fail("batch completion tokens·vocab", n_logits, "at most " + std::to_string(rows_.max_size()) + " logits");
    rows_.clear();
    rows_.reserve(n_logits);
    targets_.clear();
    row_context_.clear();
    offsets_.assign(1, 0);
    detail::for_each_context_token(
        batch, contexts_, vocab_,
        [&](std::size_t c, token_t y) {
          rows_.insert(rows_.end(), theta_.begin() + static_cast<std::ptrdiff_t>(c * vocab_),
                       theta_.begin() + static_cast<std::ptrdiff_t>((c + 1) * vocab_));
          targets_.push_back(y);
          row_context_.push_back(c);
        },
        [&] { offsets_.push_back(static_cast<std::int64_t>(targets_.size())); });
  }
  logprob::TokenLogits<T> view() const {
    return {.logits = rows_, .vocab = vocab_, .targets = targets_, .weights = {}, .offsets = offsets_};
  }

  std::size_t contexts_, vocab_;
  std::vector<T> theta_, grad_;
  std::vector<T> rows_, token_grad_;
  std::vector<token_t> targets_;
  std::vector<std::size_t> row_context_;
  std::vector<std::int64_t> offsets_;
};

DFTUNE_NAMESPACE_END
