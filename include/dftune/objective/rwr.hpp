#pragma once
// Reward-weighted regression (Peters & Schaal, ICML 2007, "Reinforcement learning by reward-weighted
// regression for operational space control"; the exp(r/η)-weighted maximum likelihood of
// Tajwar et al. 2024, arXiv 2404.14367, §4 "RWR"): SFT on sampled answers weighted by exp(r/η),
// the weights normalised to sum to one —
//
//   batch (default)  w_n  = exp(r_n/η) / Σ_{n'} exp(r_{n'}/η)  over all B·k samples of the batch
//                    L    = −Σ_n w_n · s_n                          ∂L/∂s_n  = −w_n
//   group            w_ij = exp(r_ij/η) / Σ_{j'} exp(r_ij'/η)  over the k samples of prompt i
//                    L    = −(1/B) Σ_i Σ_j w_ij · s_ij              ∂L/∂s_ij = −w_ij/B
//
// The weights are constants (stop-gradient): w_n ∝ exp((r_n − r_max)/η), the max subtracted
// *before* dividing by η, so no r/η overflows — a tiny η (down to the smallest subnormal) or rewards
// near ±1e308 give the limit of the softmax (all the weight on the best rewards), not NaN.
// Batch normalisation lets prompts with better samples weigh more; group normalisation gives every
// prompt the same total weight 1/B (a soft Best-of-N: η → 0 is Best-of-N, η → ∞ is SFT on all).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/math/no_overflow.hpp>
#include <dftune/objective/baseline.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Over what RWR's weights exp(r/η) are normalised.
enum class RwrNormalization {
  batch,  // weights sum to 1 over the whole batch
  group,  // weights sum to 1 within each prompt's k samples; prompts averaged
};

// Options of rwr_loss.
struct RwrOptions {
  double eta = 1.0;  // temperature η > 0 of the weights exp(r/η)
  RwrNormalization normalization = RwrNormalization::batch;  // over what the weights sum to 1
};

// Throws dftune::error unless η > 0 and the normalization is known.
inline void validate(const RwrOptions& o) {
  detail::check_positive("eta", o.eta);
  if (o.normalization != RwrNormalization::batch && o.normalization != RwrNormalization::group)
    detail::fail("normalization", static_cast<int>(o.normalization), "RwrNormalization::batch or group");
}

// Reward-weighted regression: the negative log-likelihood of the samples weighted by the softmax
// of r/η (see the file's comment). Throws dftune::error, naming the argument, before computing anything.
template <class T>
ScoreResult<T> rwr_loss(const SampleScores<T>& s, const RwrOptions& opt = {}) {
  validate(opt);
  detail::baselines::check_samples(s, 1, "RWR");
  const std::size_t N = s.logp.size(), k = s.group_size, B = s.batch_size();
  // Softmax of r/η over each normalisation block: the whole batch, or one prompt's k samples.
  const std::size_t block = opt.normalization == RwrNormalization::batch ? N : k;
  const double share = opt.normalization == RwrNormalization::batch ? 1.0 : 1.0 / static_cast<double>(B);
  std::vector<double> c(N);
  for (std::size_t start = 0; start < N; start += block) {
    double hi = -INFINITY;
    for (std::size_t n = start; n < start + block; ++n) hi = std::max(hi, static_cast<double>(s.reward[n]));
    double z = 0;  // >= 1: the best reward's term is exp(0)
    for (std::size_t n = start; n < start + block; ++n)
      z += c[n] = std::exp(detail::difference_over(static_cast<double>(s.reward[n]), hi, opt.eta));
    for (std::size_t n = start; n < start + block; ++n) c[n] *= share / z;
  }
  return detail::baselines::weighted_nll(s.logp, c);
}

DFTUNE_NAMESPACE_END
