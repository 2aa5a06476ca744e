#pragma once
// Direct Preference Optimization (Rafailov et al., NeurIPS 2023, arXiv 2305.18290, eq. 7):
//
//   L = −(1/(B·m)) Σ_ij log σ(β·[(s_w − r_w) − (s_l − r_l)])
//
// with s = log π_θ(y|x), r = log π_ref(y|x) (sums over completion tokens, as in the paper and TRL's
// default), one pair per (positive i, negative j). With u = β·[…] and ℓ' = −σ(−u):
//   ∂L/∂s_w = −β·σ(−u)/(B·m) summed over the pair's negatives,  ∂L/∂s_l = +β·σ(−u)/(B·m).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/pairwise.hpp>

DFTUNE_NAMESPACE_BEGIN

// Options of dpo_loss.
struct DpoOptions {
  double beta = 0.1;  // β > 0: inverse strength of the implicit KL constraint to π_ref (paper's default 0.1)
};

// Throws dftune::error unless β > 0.
inline void validate(const DpoOptions& o) { detail::check_positive("beta", o.beta); }

// L and ∂L/∂log-probs of DPO (see the file's comment); reads pos_logp, neg_logp, ref_pos_logp,
// ref_neg_logp. Throws dftune::error, naming the argument, before computing anything.
template <class T>
PreferenceResult<T> dpo_loss(const PreferenceScores<T>& b, const DpoOptions& opt = {}) {
  validate(opt);
  return pairwise_loss(b, ReferenceMargin{.scale = opt.beta, .who = "DPO"}, LogSigmoidLink{});
}

DFTUNE_NAMESPACE_END
