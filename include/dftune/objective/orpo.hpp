#pragma once
// Odds Ratio Preference Optimization (Hong, Lee & Thorne, EMNLP 2024, arXiv 2403.07691, eqs. 6–7):
// SFT on the chosen answers plus λ times a Bradley–Terry loss on the log odds ratio, no reference:
//
//   L     = L_SFT(s_w) + λ · (1/(B·m)) Σ_ij −log σ(lo(y_w) − lo(y_l))
//   lo(y) = log odds_θ(y|x) = p − log(1 − e^p),   p = s/|y|  (the paper's length-averaged
//           P_θ(y|x) = exp((1/|y|) Σ_t log π_θ(y_t|x, y_<t)); odds = P/(1 − P))
//   ∂lo/∂s = 1/(|y|·(1 − e^p)) = −1/(|y|·expm1(p))
//
// The odds need P < 1, so every log-prob must be < 0 (an answer of probability 1 has infinite odds).
// L_SFT defaults to the token mean −Σ_i s_w,i / Σ_i |y_w,i| over the chosen answers' completion
// tokens. The official code and TRL's ORPOTrainer take the causal-LM loss over the whole chosen
// sequence, prompt tokens included (only padding is masked), so their L_SFT also fits the prompt
// and averages over more tokens; dftune averages over completion tokens only. Any NllReduction
// can be chosen.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/pairwise.hpp>

#include <cmath>
#include <cstddef>
#include <numbers>
#include <numeric>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Options of orpo_loss.
struct OrpoOptions {
  double lambda = 0.1;                                   // λ >= 0, weight of the odds-ratio term
  NllReduction sft_reduction = NllReduction::token_mean;  // how L_SFT averages over the chosen answers
};

// Throws dftune::error unless λ >= 0 and the reduction is an NllReduction.
inline void validate(const OrpoOptions& o) {
  detail::check_nonnegative("lambda", o.lambda);
  detail::baselines::check_reduction(o.sft_reduction);
}

namespace detail::baselines {

// log(1 − e^p) for p < 0, accurate at both ends (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").
inline double log1mexp(double p) { return p > -std::numbers::ln2 ? std::log(-std::expm1(p)) : std::log1p(-std::exp(p)); }

template <class T>
void check_below_zero(std::string_view argument, std::span<const T> x) {
  for (std::size_t k = 0; k < x.size(); ++k)
    if (!(x[k] < 0)) fail_at(argument, k, x[k], "a log-prob < 0 (ORPO's odds P/(1 − P) need P < 1)");
}

}  // namespace detail::baselines

// h = lo(y_w) − lo(y_l) with lo of the length-averaged log-prob.
struct LogOddsMargin {
  // Throws dftune::error unless the lengths are given and every log-prob is < 0.
  template <class T>
  void validate(const PreferenceScores<T>& b) const {
    detail::baselines::check_preference_lengths(b, "ORPO");
    detail::baselines::check_below_zero("pos_logp", b.pos_logp);
    detail::baselines::check_below_zero("neg_logp", b.neg_logp);
  }
  // h and its derivatives for the pair (positive i, negative ij).
  template <class T>
  PairMargin operator()(const PreferenceScores<T>& b, std::size_t i, std::size_t ij) const {
    const double nw = static_cast<double>(b.pos_len[i]), nl = static_cast<double>(b.neg_len[ij]);
    const double pw = static_cast<double>(b.pos_logp[i]) / nw, pl = static_cast<double>(b.neg_logp[ij]) / nl;
    using detail::baselines::log1mexp;
    return {.h = (pw - log1mexp(pw)) - (pl - log1mexp(pl)),
            .dh_dpos = -1 / (nw * std::expm1(pw)),
            .dh_dneg = 1 / (nl * std::expm1(pl))};
  }
};

// L and ∂L/∂log-probs of ORPO, the SFT term plus λ times the odds-ratio term (see the file's
// comment); reads pos_logp, neg_logp, pos_len, neg_len. Throws dftune::error before computing anything.
template <class T>
PreferenceResult<T> orpo_loss(const PreferenceScores<T>& b, const OrpoOptions& opt = {}) {
  validate(opt);
  // The odds-ratio term checks the whole batch (sizes, NaN/Inf, lengths, P < 1) before any SFT work;
  // it comes weighted by λ, and the SFT term is added in double, so the result is narrowed once.
  detail::baselines::PairwiseTerms t = detail::baselines::pairwise_terms(b, LogOddsMargin{}, LogSigmoidLink{}, opt.lambda);
  const std::size_t B = b.batch_size();
  std::vector<std::size_t> rows(B);
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  std::vector<double> c(B, 0.0);
  detail::baselines::add_nll_coefficients(opt.sft_reduction, rows, b.pos_len, 1.0, c);
  t.loss = detail::baselines::nll_loss(b.pos_logp, c) + t.loss;
  for (std::size_t i = 0; i < B; ++i) t.grad_pos[i] = -c[i] + t.grad_pos[i];
  return detail::baselines::narrow_preferences<T>(t);
}

DFTUNE_NAMESPACE_END
