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

#include <cmath>

DFTUNE_NAMESPACE_BEGIN

// Options of ipo_loss.
struct IpoOptions {
  double beta = 0.1;  // β = τ > 0: the regression target of the margin is 1/(2β)
};

// Throws dftune::error unless β > 0 with a finite target margin 1/(2β).
inline void validate(const IpoOptions& o) {
  detail::check_positive("beta", o.beta);
  if (!std::isfinite(1 / (2 * o.beta)))  // a subnormal β: the target margin overflows
    detail::fail("beta", o.beta, "a number > 0 whose target margin 1/(2β) is finite (β >= 2.8e-309)");
}

// ℓ(h) = (h − target)², ℓ'(h) = 2(h − target), weighted by w without an intermediate overflow:
// e·(e·w) for |e| >= 1 (e·w <= |e|·w is at most the result's size), (e·e)·w for |e| < 1 (e² < 1),
// so w·e² overflows only when it is larger than the largest double; likewise 2·e·w.
struct SquaredLink {
  double target = 0;  // the margin the loss regresses h to, 1/(2β)
  // ℓ(h).
  double value(double h) const { return (h - target) * (h - target); }
  // ℓ'(h).
  double derivative(double h) const { return 2 * (h - target); }
  // w·ℓ(h), without an intermediate overflow.
  double value(double h, double w) const {
    const double e = h - target;
    return std::fabs(e) >= 1 ? e * (e * w) : (e * e) * w;
  }
  // w·ℓ'(h), without an intermediate overflow.
  double derivative(double h, double w) const {
    const double e = h - target;
    return std::fabs(e) >= 1 ? (e * w) * 2 : (2 * e) * w;
  }
};

// L and ∂L/∂log-probs of IPO (see the file's comment); reads pos_logp, neg_logp, ref_pos_logp,
// ref_neg_logp. Throws dftune::error, naming the argument, before computing anything.
template <class T>
PreferenceResult<T> ipo_loss(const PreferenceScores<T>& b, const IpoOptions& opt = {}) {
  validate(opt);
  return pairwise_loss(b, ReferenceMargin{.scale = 1.0, .who = "IPO"}, SquaredLink{.target = 1 / (2 * opt.beta)});
}

DFTUNE_NAMESPACE_END
