#pragma once
// Best-of-N fine-tuning (rejection-sampling fine-tuning: Touvron et al. 2023, Llama 2,
// arXiv 2307.09288 §3.2.3; RAFT, Dong et al. 2023, arXiv 2304.06767, Algorithm 1): draw N answers
// per prompt, keep the one of highest reward, and do SFT on it:
//
//   j*_i = argmax_j r_ij   (ties: the lowest j)
//   L = NLL of { y_ij*_i } with the chosen reduction, e.g. −(1/B) Σ_i log π_θ(y_ij*_i|x_i)
//   ∂L/∂s_ij = −1/B at j = j*_i, 0 elsewhere (sequence_mean)
//
// The selection is a constant (stop-gradient), as rewards do not depend on θ through the scores.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>

#include <cstddef>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Options of best_of_n_loss.
struct BestOfNOptions {
  NllReduction reduction = NllReduction::sequence_mean;  // token_mean / length_normalized read s.len
};

// Throws dftune::error for a reduction that is not an NllReduction.
inline void validate(const BestOfNOptions& o) { detail::baselines::check_reduction(o.reduction); }

// Index into s.logp of the best sample of each prompt.
template <class T>
std::vector<std::size_t> best_of_n_indices(const SampleScores<T>& s) {
  detail::baselines::check_samples(s, 1, "Best-of-N");
  const std::size_t k = s.group_size;
  std::vector<std::size_t> best;
  best.reserve(s.batch_size());
  for (std::size_t start = 0; start < s.reward.size(); start += k) {
    std::size_t arg = start;
    for (std::size_t n = start + 1; n < start + k; ++n)
      if (s.reward[n] > s.reward[arg]) arg = n;
    best.push_back(arg);
  }
  return best;
}

// Best-of-N SFT: the negative log-likelihood (reduced as opt says) of the highest-reward sample of
// each prompt (the first on a tie); the other samples get zero gradient.
template <class T>
ScoreResult<T> best_of_n_loss(const SampleScores<T>& s, const BestOfNOptions& opt = {}) {
  validate(opt);
  const std::vector<std::size_t> best = best_of_n_indices(s);
  detail::baselines::check_nll_lengths(opt.reduction, s.len, s.logp.size(), "Best-of-N");
  std::vector<double> c(s.logp.size(), 0.0);
  detail::baselines::add_nll_coefficients(opt.reduction, best, s.len, 1.0, c);
  return detail::baselines::weighted_nll(s.logp, c);
}

DFTUNE_NAMESPACE_END
