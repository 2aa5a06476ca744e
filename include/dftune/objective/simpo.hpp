#pragma once
// Simple Preference Optimization (Meng, Xia & Chen, NeurIPS 2024, arXiv 2405.14734, eq. 6):
// reference-free, with the length-normalised reward β·log π_θ(y|x)/|y| and a target margin γ:
//
//   L = −(1/(B·m)) Σ_ij log σ(β·s_w/|y_w| − β·s_l/|y_l| − γ)
//   ∂L/∂s_w = −σ(−h)·β/(|y_w|·B·m) summed over the pair's negatives,  ∂L/∂s_l = +σ(−h)·β/(|y_l|·B·m).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/pairwise.hpp>

#include <cmath>
#include <cstddef>
#include <string>

DFTUNE_NAMESPACE_BEGIN

// Options of simpo_loss.
struct SimpoOptions {
  double beta = 2.0;   // β > 0: reward scale (the paper tunes β in [2, 10])
  double gamma = 0.5;  // γ >= 0: target reward margin (the paper tunes γ in [0.3, 1.6]; TRL's default 0.5)
};

// Throws dftune::error unless β > 0 and γ >= 0.
inline void validate(const SimpoOptions& o) {
  detail::check_positive("beta", o.beta);
  detail::check_nonnegative("gamma", o.gamma);
}

// h = β·s_w/|y_w| − β·s_l/|y_l| − γ.
struct LengthNormalizedMargin {
  double beta = 1;  // β: reward scale
  double gamma = 0;  // γ: target reward margin

  // Throws dftune::error unless pos_len and neg_len are given and positive.
  template <class T>
  void validate(const PreferenceScores<T>& b) const {
    detail::baselines::check_preference_lengths(b, "SimPO");
  }
  // h and its derivatives for the pair (positive i, negative ij).
  template <class T>
  PairMargin operator()(const PreferenceScores<T>& b, std::size_t i, std::size_t ij) const {
    const double aw = beta / static_cast<double>(b.pos_len[i]);
    const double al = beta / static_cast<double>(b.neg_len[ij]);
    const double rw = aw * static_cast<double>(b.pos_logp[i]), rl = al * static_cast<double>(b.neg_logp[ij]);
    // Name what overflowed: a reward β·s/|y|, or the margin of two finite rewards less γ.
    if (!std::isfinite(rw) || !std::isfinite(rl))
      detail::fail("beta", beta,
                   "a value for which the rewards β·s/|y| are finite (the pair of neg_logp[" + std::to_string(ij) + "])");
    if (std::isfinite(rw - rl) && !std::isfinite(rw - rl - gamma))
      detail::fail("gamma", gamma,
                   "a value for which the margin β·s_w/|y_w| − β·s_l/|y_l| − γ is finite (the pair of neg_logp[" +
                       std::to_string(ij) + "]: reward margin = " + detail::to_text(rw - rl) + ")");
    return {.h = rw - rl - gamma, .dh_dpos = aw, .dh_dneg = -al};
  }
};

// L and ∂L/∂log-probs of SimPO (see the file's comment); reads pos_logp, neg_logp, pos_len,
// neg_len. Throws dftune::error, naming the argument, before computing anything.
template <class T>
PreferenceResult<T> simpo_loss(const PreferenceScores<T>& b, const SimpoOptions& opt = {}) {
  validate(opt);
  return pairwise_loss(b, LengthNormalizedMargin{.beta = opt.beta, .gamma = opt.gamma}, LogSigmoidLink{});
}

DFTUNE_NAMESPACE_END
