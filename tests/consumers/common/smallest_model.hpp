#pragma once
// The smallest complete dftune model (docs/backend.md shows this file): a unigram policy, one row
// of logits θ[V] shared by every completion token, whatever the prompt. log π(y|x) = Σ_t log
// softmax(θ)[y_t]. The consumer projects compile and train it, so the page cannot go stale.
#include <dftune/dftune.hpp>

#include <algorithm>
#include <span>
#include <vector>

class Unigram {
 public:
  using scalar_type = double;                      // float or double
  explicit Unigram(std::size_t vocab) : theta_(vocab, 0.0), grad_(vocab, 0.0) {}

  std::size_t vocab_size() const { return theta_.size(); }
  std::span<double> parameters() { return theta_; }   // the inner rule updates these in place
  std::span<double> gradients() { return grad_; }
  void zero_gradients() { std::fill(grad_.begin(), grad_.end(), 0.0); }

  // scores[s] = log π(completion_s | prompt_s).
  void sequence_logp(const dftune::SequenceBatch& batch, std::span<double> scores) {
    build(batch);
    dftune::logprob::forward(logits(), scores);
  }

  // gradients += Σ_s d[s] · ∂ scores[s] / ∂θ: the reduction gives ∂/∂logits per token row,
  // and every row is θ, so the rows are summed.
  void accumulate_gradients(const dftune::SequenceBatch& batch, std::span<const double> d) {
    build(batch);
    std::vector<double> g(rows_.size());
    dftune::logprob::backward(logits(), d, std::span<double>(g));
    for (std::size_t r = 0; r < g.size(); ++r) grad_[r % theta_.size()] += g[r];
  }

 private:
  // One logits row (a copy of θ) and one target per completion token; prompts are not scored.
  void build(const dftune::SequenceBatch& batch) {
    dftune::validate(batch, theta_.size());
    rows_.clear();
    targets_.clear();
    offsets_.assign(1, 0);
    for (std::size_t s = 0; s < batch.size(); ++s) {
      const auto seq = batch.sequence(s);
      for (auto t = static_cast<std::size_t>(batch.prompt_len[s]); t < seq.size(); ++t) {
        rows_.insert(rows_.end(), theta_.begin(), theta_.end());
        targets_.push_back(seq[t]);
      }
      offsets_.push_back(static_cast<std::int64_t>(targets_.size()));
    }
  }
  dftune::logprob::TokenLogits<double> logits() const {
    return {.logits = rows_, .vocab = theta_.size(), .targets = targets_, .weights = {}, .offsets = offsets_};
  }

  std::vector<double> theta_, grad_, rows_;
  std::vector<dftune::token_t> targets_;
  std::vector<std::int64_t> offsets_;
};
static_assert(dftune::check_model<Unigram>());
