#pragma once
// Identity Preference Optimization (Azar et al., AISTATS 2024, arXiv 2310.12036, §5.2: the sampled
// IPO loss, whose minimiser is h* = τ⁻¹/2; here β plays τ, as in TRL's loss_type="ipo"):
//
//   L = (1/(B·m)) Σ_ij (h_ij − 1/(2β))²,   h = (s_w − r_w) − (s_l − r_l)
//   ∂L/∂s_w = 2(h − 1/(2β))/(B·m) summed over the pair's negatives,  ∂L/∂s_l = −2(h − 1/(2β))/(B·m).
//
// s and r are sequence sums of token log-probs, as in the paper's h_π (TRL averages over tokens
// for IPO instead; pass s/|y| and r/|y| to get that).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/pairwise.hpp>

DFTUNE_NAMESPACE_BEGIN

struct IpoOptions {
  double beta = 0.1;  // β = τ > 0: the regression target of the margin is 1/(2β)
};

inline void validate(const IpoOptions& o) { detail::check_positive("beta", o.beta); }

// ℓ(h) = (h − target)², ℓ'(h) = 2(h − target).
struct SquaredLink {
  double target = 0;
  double value(double h) const { return (h - target) * (h - target); }
  double derivative(double h) const { return 2 * (h - target); }
};

template <class T>
PreferenceResult<T> ipo_loss(const PreferenceScores<T>& b, const IpoOptions& opt = {}) {
  validate(opt);
  return pairwise_loss(b, ReferenceMargin{.scale = 1.0, .who = "IPO"}, SquaredLink{.target = 1 / (2 * opt.beta)});
}

DFTUNE_NAMESPACE_END
