#pragma once
// A Model on xtensor: the contextual categorical policy of model/categorical_policy.hpp with its
// logits θ held in an xt::xtensor<T, 2> [contexts, vocab], rows gathered with xt::view and the
// reductions of backend/xtensor/logprob.hpp. It gives the same numbers as the Eigen-path
// dftune::CategoricalPolicy, bit for bit (same reductions, same summation order), and shows how a
// framework that owns its tensors plugs in: parameters() and gradients() are spans over the
// tensors' own memory, so the inner optimizer updates θ in place.
#include <dftune/backend/xtensor/logprob.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/context_tokens.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <xtensor/xadapt.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace backend::xtensor {

// dftune::CategoricalPolicy (model/categorical_policy.hpp) with θ and its gradient held as
// xtensor tensors and scored through the xtensor log-prob reduction (logprob.hpp): the same model,
// the same checks and errors, to show a Model written on another tensor library.
template <class T>
class CategoricalPolicy {
 public:
  using scalar_type = T;  // the parameters' type (Model)

  // θ = 0: every context starts uniform over the vocabulary.
  CategoricalPolicy(std::size_t num_contexts, std::size_t vocab) {
    if (num_contexts == 0) dftune::detail::fail("num_contexts", num_contexts, "at least 1");
    if (vocab == 0) dftune::detail::fail("vocab", vocab, "at least 1");
    theta_ = ::xt::zeros<T>({num_contexts, vocab});
    grad_ = ::xt::zeros<T>({num_contexts, vocab});
  }

  // V.
  std::size_t vocab_size() const { return theta_.shape()[1]; }
  // The number of contexts (rows of θ).
  std::size_t num_contexts() const { return theta_.shape()[0]; }
  // The tensors themselves: θ [contexts, vocab] and its gradient.
  ::xt::xtensor<T, 2>& theta() { return theta_; }
  // The gradient, [contexts, vocab].
  const ::xt::xtensor<T, 2>& grad() const { return grad_; }
  // θ, flat (row-major).
  std::span<T> parameters() { return {theta_.data(), theta_.size()}; }
  // The gradient, flat, in parameters() order.
  std::span<T> gradients() { return {grad_.data(), grad_.size()}; }
  // Sets every gradient to 0.
  void zero_gradients() { grad_.fill(T(0)); }

  // scores[s] = log π(completion_s | prompt_s) = Σ_t log softmax(θ_c)[y_t] over the completion's
  // tokens, c each token's context. A bad batch or scores size is a dftune::argument_error.
  void sequence_logp(const SequenceBatch& batch, std::span<T> scores) {
    gather(batch);
    dftune::detail::check_size("scores", scores.size(), batch.size());
    // Rows of θ picked by context: an index view, evaluated once by the reduction.
    const auto out = xtensor::forward(::xt::view(theta_, ::xt::keep(row_context_), ::xt::all()), targets_, offsets_);
    std::copy(out.begin(), out.end(), scores.begin());
  }

  // ∂ log π / ∂θ_c = Σ_t (onehot(y_t) − softmax(θ_c)), summed into the row of each token's context.
  void accumulate_gradients(const SequenceBatch& batch, std::span<const T> d_scores) {
    gather(batch);
    dftune::detail::check_size("d_scores", d_scores.size(), batch.size());
    const auto d = ::xt::adapt(d_scores.data(), d_scores.size(), ::xt::no_ownership(),
                               std::array<std::size_t, 1>{d_scores.size()});
    const ::xt::xtensor<T, 2> g =
        xtensor::backward(::xt::view(theta_, ::xt::keep(row_context_), ::xt::all()), targets_, offsets_, d);
    for (std::size_t r = 0; r < row_context_.size(); ++r)
      ::xt::view(grad_, row_context_[r], ::xt::all()) += ::xt::view(g, r, ::xt::all());
  }

 private:
  // One target and one context per completion token (the prompt is not scored), with the checks
  // of dftune::CategoricalPolicy.
  void gather(const SequenceBatch& batch) {
    std::vector<token_t> targets;
    std::vector<std::size_t> row_context;
    std::vector<std::int64_t> offsets{0};
    dftune::detail::for_each_context_token(
        batch, num_contexts(), vocab_size(),
        [&](std::size_t c, token_t y) {
          targets.push_back(y);
          row_context.push_back(c);
        },
        [&] { offsets.push_back(static_cast<std::int64_t>(targets.size())); });
    targets_ = ::xt::xtensor<token_t, 1>::from_shape({targets.size()});
    std::copy(targets.begin(), targets.end(), targets_.begin());
    offsets_ = ::xt::xtensor<std::int64_t, 1>::from_shape({offsets.size()});
    std::copy(offsets.begin(), offsets.end(), offsets_.begin());
    row_context_ = std::move(row_context);
  }

  ::xt::xtensor<T, 2> theta_, grad_;
  ::xt::xtensor<token_t, 1> targets_;
  ::xt::xtensor<std::int64_t, 1> offsets_;
  std::vector<std::size_t> row_context_;
};

static_assert(Model<CategoricalPolicy<double>> && Model<CategoricalPolicy<float>>);

}  // namespace backend::xtensor

DFTUNE_NAMESPACE_END
