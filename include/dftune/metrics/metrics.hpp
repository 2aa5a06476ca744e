#pragma once
// Per-step training metrics, under the names people read in TRL's logs where TRL has one
// (docs/math.md, "Metrics"):
//
//   reward_metrics   rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies of a batch
//                    of preference pairs (B chosen answers, m rejected ones each): the means of
//                    r_w,i, of r_l,ij, of r_w,i − r_l,ij and of [r_w,i > r_l,ij] over the B·m pairs
//                    (with m = 1, exactly TRL's per-row means);
//   log_ratio_rewards         r = β·(log π_θ − log π_ref)   (TRL's DPOTrainer; DPO, IPO)
//   length_normalized_rewards r = β·log π_θ / |y|          (TRL's CPOTrainer for SimPO, ORPOTrainer)
//   dft_metrics      what the DFT estimator did on a step (objective/dft.hpp): log u_i of the batch
//                    (mean, min, max); per example, the normalised importance weights
//                    w̃_ij = exp(d_ij) / Σ_j' exp(d_ij'), their effective sample size
//                    ESS_i = 1 / Σ_j w̃_ij² ∈ [1, m] (mean over the batch) and the largest w̃_ij of the
//                    batch; and the total weight the loss puts on an example's negatives,
//                    (1/m) Σ_j exp(d_ij − log u_i) (mean over the batch), which self-normalisation by
//                    u keeps near 1 however improbable the negatives get.
// dft_metrics reads only the DftResult of the step: the weight of negative (i, j) is
// B·∂L/∂s'_ij / (∂s/∂log π) (docs/math.md, eq. of the gradient), so nothing is recomputed.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/checks.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/simpo.hpp>
#include <dftune/objective/sequence_scores.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The reward of each chosen (B) and rejected (B·m, row-major [i][j]) answer of a preference batch.
struct PairRewards {
  std::vector<double> chosen;     // [B] r_w of each chosen answer
  std::vector<double> rejected;   // [B·m] r_l of each rejected answer, row-major [i][j]
  std::size_t num_negatives = 1;  // m: rejected answers per chosen one
};

// TRL's rewards/* metrics of a preference batch (DPO, IPO, SimPO, ORPO), from PairRewards.
struct RewardMetrics {
  double chosen = 0;      // rewards/chosen
  double rejected = 0;    // rewards/rejected
  double margins = 0;     // rewards/margins
  double accuracies = 0;  // rewards/accuracies: share of pairs with r_w > r_l (strictly, as TRL)
};

// The estimator's metrics of a DFT / DFT2 step (dft/* in the JSON Lines log; docs/math.md, "Metrics").
struct DftMetrics {
  double log_u_mean = 0;  // dft/log_u_mean: mean of log u_i after the step's update
  double log_u_min = 0;   // dft/log_u_min
  double log_u_max = 0;   // dft/log_u_max
  double ess = 0;         // mean over examples of 1/Σ_j w̃_ij², in [1, m]; NaN if every weight underflowed
  double max_weight = 0;  // largest normalised weight w̃_ij of the batch, in [1/m, 1]
  double weight_sum = 0;  // mean over examples of (1/m) Σ_j exp(d_ij − log u_i)
};

namespace detail {

inline void check_beta(double beta) {
  if (!std::isfinite(beta)) fail("beta", beta, "a finite number");
}

}  // namespace detail

namespace detail {
template <class T>
PairRewards log_ratio_rewards(const PreferenceScores<T>& b, double beta);
template <class T>
PairRewards length_normalized_rewards(const PreferenceScores<T>& b, double beta);
}  // namespace detail

// r_w,i = β·(s_i − r_i), r_l,ij = β·(s'_ij − r'_ij), with the objective's β (TRL's DPOTrainer).
template <class T>
PairRewards log_ratio_rewards(const PreferenceScores<T>& b, const DpoOptions& opt) {
  validate(opt);
  return detail::log_ratio_rewards(b, opt.beta);
}
// r = β·(s − s_ref) with IPO's β.
template <class T>
PairRewards log_ratio_rewards(const PreferenceScores<T>& b, const IpoOptions& opt) {
  validate(opt);
  return detail::log_ratio_rewards(b, opt.beta);
}

// r = β·s/|y| for every answer, with SimPO's β (TRL's CPOTrainer), or ORPO's λ as β (TRL's ORPOTrainer).
template <class T>
PairRewards length_normalized_rewards(const PreferenceScores<T>& b, const SimpoOptions& opt) {
  validate(opt);
  return detail::length_normalized_rewards(b, opt.beta);
}
// r = λ·s/|y| with ORPO's λ as β (TRL's ORPOTrainer).
template <class T>
PairRewards length_normalized_rewards(const PreferenceScores<T>& b, const OrpoOptions& opt) {
  validate(opt);
  return detail::length_normalized_rewards(b, opt.lambda);
}

// The raw-β forms of 0.x; removed in the next release.
template <class T>
[[deprecated("pass the objective's options: log_ratio_rewards(b, DpoOptions{.beta = ...})")]]
PairRewards log_ratio_rewards(const PreferenceScores<T>& b, double beta) {
  return detail::log_ratio_rewards(b, beta);
}
// Deprecated: length_normalized_rewards(b, SimpoOptions{.beta = beta}).
template <class T>
[[deprecated("pass the objective's options: length_normalized_rewards(b, SimpoOptions{.beta = ...})")]]
PairRewards length_normalized_rewards(const PreferenceScores<T>& b, double beta) {
  return detail::length_normalized_rewards(b, beta);
}

// r_w,i = β·(s_i − r_i), r_l,ij = β·(s'_ij − r'_ij).
template <class T>
PairRewards detail::log_ratio_rewards(const PreferenceScores<T>& b, double beta) {
  detail::check_beta(beta);
  detail::baselines::check_preferences(b);
  detail::baselines::check_references(b, "a log-ratio reward");
  PairRewards r{.chosen = {}, .rejected = {}, .num_negatives = b.num_negatives};
  for (std::size_t i = 0; i < b.pos_logp.size(); ++i)
    r.chosen.push_back(beta * (static_cast<double>(b.pos_logp[i]) - static_cast<double>(b.ref_pos_logp[i])));
  for (std::size_t k = 0; k < b.neg_logp.size(); ++k)
    r.rejected.push_back(beta * (static_cast<double>(b.neg_logp[k]) - static_cast<double>(b.ref_neg_logp[k])));
  return r;
}

// r = β·s/|y| for every answer.
template <class T>
PairRewards detail::length_normalized_rewards(const PreferenceScores<T>& b, double beta) {
  detail::check_beta(beta);
  detail::baselines::check_preferences(b);
  detail::baselines::check_preference_lengths(b, "a length-normalised reward");
  PairRewards r{.chosen = {}, .rejected = {}, .num_negatives = b.num_negatives};
  for (std::size_t i = 0; i < b.pos_logp.size(); ++i)
    r.chosen.push_back(beta * static_cast<double>(b.pos_logp[i]) / static_cast<double>(b.pos_len[i]));
  for (std::size_t k = 0; k < b.neg_logp.size(); ++k)
    r.rejected.push_back(beta * static_cast<double>(b.neg_logp[k]) / static_cast<double>(b.neg_len[k]));
  return r;
}

// Means of the chosen and rejected rewards, of their margins r_w − r_l over the B·m pairs, and the
// share of pairs with r_w > r_l.
inline RewardMetrics reward_metrics(const PairRewards& r) {
  const std::size_t B = r.chosen.size(), m = r.num_negatives;
  if (B == 0) detail::fail("chosen", "size 0", "at least one pair");
  if (m == 0) detail::fail("num_negatives", m, "at least 1");
  detail::check_size_product("rejected", r.rejected.size(), B, m, "num_negatives (B·m)");
  detail::check_finite("chosen", std::span<const double>(r.chosen));
  detail::check_finite("rejected", std::span<const double>(r.rejected));
  RewardMetrics out;
  const double pairs = static_cast<double>(B * m);
  for (std::size_t i = 0; i < B; ++i) {
    out.chosen += r.chosen[i] / static_cast<double>(B);
    for (std::size_t j = 0; j < m; ++j) {
      const double l = r.rejected[i * m + j];
      out.rejected += l / pairs;
      out.margins += (r.chosen[i] - l) / pairs;
      out.accuracies += (r.chosen[i] > l ? 1.0 : 0.0) / pairs;
    }
  }
  return out;
}

// The estimator's numbers of one step from its DftResult; m negatives per example; neg_len [B·m]
// (DFT2 only: its weights are recovered through ∂s/∂log π = 1/(|y| + ε)).
template <class T>
DftMetrics dft_metrics(const DftResult<T>& r, std::size_t num_negatives, const DftOptions& opt,
                       std::span<const std::int64_t> neg_len = {}) {
  validate(opt);
  const std::size_t B = r.log_u.size(), m = num_negatives;
  if (B == 0) detail::fail("log_u", "size 0", "at least one example");
  if (m == 0) detail::fail("num_negatives", m, "at least 1");
  const std::size_t Bm = detail::check_size_product("grad_neg", r.grad_neg.size(), B, m, "num_negatives (B·m)");
  const bool dft2 = opt.variant == Variant::dft2;
  if (dft2) detail::check_lengths("neg_len", neg_len, Bm, "DFT2's weights are recovered through 1/(|y| + eps)");
  detail::check_finite("log_u", std::span<const T>(r.log_u));
  detail::check_finite("grad_neg", std::span<const T>(r.grad_neg));
  for (std::size_t k = 0; k < Bm; ++k)
    if (r.grad_neg[k] < T(0)) detail::fail_at("grad_neg", k, r.grad_neg[k], "a DFT weight >= 0");
  DftMetrics out;
  out.log_u_min = std::numeric_limits<double>::infinity();
  out.log_u_max = -out.log_u_min;
  double ess_sum = 0;
  std::size_t ess_n = 0;
  std::vector<double> a(m);
  for (std::size_t i = 0; i < B; ++i) {
    const double lu = static_cast<double>(r.log_u[i]);
    out.log_u_mean += lu / static_cast<double>(B);
    out.log_u_min = std::min(out.log_u_min, lu);
    out.log_u_max = std::max(out.log_u_max, lu);
    double sum = 0, sum2 = 0, top = 0;
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t ij = i * m + j;
      // a_ij = (1/m) exp(d_ij − log u_i) = B · ∂L/∂s'_ij / (∂s/∂log π)
      const double ds = dft2 ? 1.0 / (static_cast<double>(neg_len[ij]) + opt.eps) : 1.0;
      a[j] = static_cast<double>(r.grad_neg[ij]) * static_cast<double>(B) / ds;
      sum += a[j];
      top = std::max(top, a[j]);
    }
    out.weight_sum += sum / static_cast<double>(B);
    if (!(sum > 0)) continue;  // every weight of this example underflowed: no normalised weights
    for (std::size_t j = 0; j < m; ++j) sum2 += (a[j] / sum) * (a[j] / sum);
    ess_sum += 1.0 / sum2;
    ++ess_n;
    out.max_weight = std::max(out.max_weight, top / sum);
  }
  out.ess = ess_n == 0 ? std::numeric_limits<double>::quiet_NaN() : ess_sum / static_cast<double>(ess_n);
  if (ess_n == 0) out.max_weight = std::numeric_limits<double>::quiet_NaN();
  return out;
}

DFTUNE_NAMESPACE_END
