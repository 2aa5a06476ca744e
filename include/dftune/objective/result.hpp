#pragma once
// What every objective returns: the loss L and its gradient wrt each span of log-probs it read,
// named after that span — `grad` for ∂L/∂logp (one list of scores: SFT, RWR, REINFORCE / RLOO,
// Best-of-N, and Dynamic FT's per-token token_logp), `grad_pos` / `grad_neg` for ∂L/∂pos_logp /
// ∂L/∂neg_logp (a positive and m negatives per prompt: the pairwise objectives and DFT). DFT's
// result is a PreferenceResult with what only DFT has (the objective it estimates, the new log u),
// so code reading pairs (a comparison harness, the metrics) takes either.
#include <dftune/config.hpp>

#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Loss and ∂L/∂score for an objective on one list of scores (SFT, RWR, REINFORCE, Best-of-N,
// Dynamic FT).
template <class T>
struct ScoreResult {
  T loss = 0;           // L
  std::vector<T> grad;  // ∂L/∂logp[n] (Dynamic FT: ∂L/∂token_logp[n]), same layout as the input
};

// Loss and ∂L/∂score for a positive and m negatives per prompt (DPO, IPO, SimPO, ORPO; DFT's
// DftResult extends it).
template <class T>
struct PreferenceResult {
  T loss = 0;               // L
  std::vector<T> grad_pos;  // [B]   ∂L/∂pos_logp
  std::vector<T> grad_neg;  // [B·m] ∂L/∂neg_logp
};

// What dft_loss / dft_step return: L and its gradient wrt the log-probs (the PreferenceResult
// part), the estimated objective and the batch's new log u.
template <class T>
struct DftResult : PreferenceResult<T> {
  T objective = 0;       // (1/B) Σ_i (log u_i − s_i/τ): the estimated −log P_θ(y_i|x_i), for monitoring
  std::vector<T> log_u;  // [B] log u_i after this batch's update (what dft_step stores)
};

DFTUNE_NAMESPACE_END
