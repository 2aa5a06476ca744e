#pragma once
// The DFT / DFT2 objective (arXiv 2502.18679; docs/math.md) on spans of per-sequence log-probs.
// The paper's equations are cited by section and name (its equation numbers were not at hand):
//
//   likelihood  P_θ(y|x) = exp(s_θ(y,x)/τ) / Σ_{y'} exp(s_θ(y',x)/τ)          (§4, discriminative likelihood)
//   identity    Σ_{y'} exp(s_θ(y',x)/τ) = E_{y'~π_ref}[exp(s_θ(y',x)/τ − log π_ref(y'|x))]
//                                                                            (§4, importance sampling)
//
// so −log P_θ(y_i|x_i) ≈ log u_i − s_i/τ, with u_i a moving average of (1/m) Σ_j exp(d_ij) over the
// example's visits (§4, moving-average estimator; DFT2: §5). The step, line by line against the
// paper with no checks: examples/dft_reference.hpp. As dftune computes it:
//
//   score       s = log π_θ(y|x)                      (DFT)
//               s = log π_θ(y|x) / (|y| + ε)          (DFT2)
//   exponent    d_ij = s'_ij/τ − log π_ref(y'_ij|x_i) (DFT)      d_ij = s'_ij/τ   (DFT2)
//   estimator   w_i = log γ + logmeanexp_j d_ij
//               log u_i ← logaddexp(log(1−γ) + log u_i, w_i)    (before the weights are taken)
//   loss        L = (1/B) Σ_i [ −s_i + (1/m) Σ_j sg(exp(d_ij − log u_i)) · s'_ij ]
//   gradient    ∂L/∂s_i = −1/B,   ∂L/∂s'_ij = exp(d_ij − log u_i) / (B·m)
//
// dft_loss evaluates L and its gradient wrt the *log-probs* (the 1/(|y|+ε) of DFT2 included), and
// the log u_i the update would store, without touching the estimator; dft_step also stores them.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/math/log_domain.hpp>
#include <dftune/objective/checks.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/objective/sequence_scores.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

// Every check of the objective's input; runs before any computation or write. Returns B·m.
template <class T>
std::size_t validate_dft(const SequenceScores<T>& b, const Estimator<T>& est, const DftOptions& opt) {
  validate(opt);
  est.check_options(opt);
  const std::size_t B = b.batch_size();
  const std::size_t m = b.num_negatives;
  if (B == 0) fail("ids", "size 0", "at least one example");
  if (m == 0) fail("num_negatives", m, "at least 1");
  if (b.global_batch_size != 0 && b.global_batch_size < B)
    fail("global_batch_size", b.global_batch_size, "0 or at least the batch size B = " + std::to_string(B));
  check_size("pos_logp", b.pos_logp.size(), B);
  const std::size_t Bm = check_size_product("neg_logp", b.neg_logp.size(), B, m, "num_negatives (B·m)");
  for (std::size_t i = 0; i < B; ++i) est.check_id(b.ids[i], "ids", i);
  check_unique_ids(b.ids);
  check_finite("pos_logp", b.pos_logp);
  check_finite("neg_logp", b.neg_logp);
  if (opt.variant == Variant::dft) {
    if (b.ref_neg_logp.empty())
      fail("ref_neg_logp", "size 0", "size B·m = " + std::to_string(Bm) + " (DFT needs log π_ref of the negatives)");
    check_size("ref_neg_logp", b.ref_neg_logp.size(), Bm);
    check_finite("ref_neg_logp", b.ref_neg_logp);
  } else {
    check_lengths("pos_len", b.pos_len, B, "DFT2 needs completion lengths");
    check_lengths("neg_len", b.neg_len, Bm, "DFT2 needs completion lengths");
  }
  return Bm;
}

}  // namespace detail

// L, ∂L/∂log-probs and the updated log u of the batch; never mutates est.
template <class T>
DftResult<T> dft_loss(const SequenceScores<T>& b, const Estimator<T>& est, const DftOptions& opt) {
  const std::size_t Bm = detail::validate_dft(b, est, opt);
  const std::size_t B = b.batch_size();
  const std::size_t m = b.num_negatives;
  // The 1/B of L: the global batch's size when this batch is one rank's share of it.
  const double Bn = static_cast<double>(b.global_batch_size != 0 ? b.global_batch_size : B);
  const bool dft2 = opt.variant == Variant::dft2;
  // ∂s/∂log π: 1 for DFT, 1/(|y| + ε) for DFT2.
  auto dscore = [&](std::int64_t len) { return dft2 ? 1.0 / (static_cast<double>(len) + opt.eps) : 1.0; };
  const double log_gamma = std::log(opt.gamma);
  const double log_1m_gamma = std::log1p(-opt.gamma);  // -inf for γ = 1: no memory

  DftResult<T> r;
  r.grad_pos.resize(B);
  r.grad_neg.resize(Bm);
  r.log_u.resize(B);
  std::vector<double> d(m), s_neg(m);
  double loss = 0, objective = 0;
  for (std::size_t i = 0; i < B; ++i) {
    const double s_pos = b.pos_logp[i] * dscore(dft2 ? b.pos_len[i] : 1);
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t ij = i * m + j;
      s_neg[j] = b.neg_logp[ij] * dscore(dft2 ? b.neg_len[ij] : 1);
      // Name what overflowed: s/τ (τ too small for these scores), or s/τ − log π_ref (a positive
      // "log-prob" beside a very negative reference: the log-probs, not τ).
      const double scaled = s_neg[j] / opt.tau;
      if (!std::isfinite(scaled))
        detail::fail("tau", opt.tau, "a temperature for which s/τ is finite (d[" + std::to_string(ij) + "] overflowed)");
      d[j] = scaled - (dft2 ? 0.0 : static_cast<double>(b.ref_neg_logp[ij]));
      if (!std::isfinite(d[j])) {
        detail::fail_at("neg_logp", ij, b.neg_logp[ij],
                        "log-probs for which d = s/τ − log π_ref is finite (ref_neg_logp[" + std::to_string(ij) +
                            "] = " + detail::to_text(static_cast<double>(b.ref_neg_logp[ij])) + ": d[" +
                            std::to_string(ij) + "] overflowed)");
      }
    }
    const double lme = logmeanexp(std::span<const double>(d));
    double log_u = 0;
    if (est.init() == EstimatorInit::fixed)
      log_u = static_cast<double>(est.log_u0());
    else if (const std::optional<T> prior = est.prior(b.ids[i]))
      log_u = logaddexp(log_1m_gamma + static_cast<double>(*prior), log_gamma + lme);
    else
      log_u = lme;  // first visit: the batch itself initialises u_i
    double pull = 0;
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t ij = i * m + j;
      const double weight = std::exp(d[j] - log_u) / static_cast<double>(m);
      if (!std::isfinite(weight))  // only a fixed normaliser can fall this far below the d_ij
        detail::fail("log_u0", est.log_u0(),
                     "a normaliser for which exp(d − log u) is finite (d[" + std::to_string(ij) + "] = " +
                         std::to_string(d[j]) + ")");
      pull += weight * s_neg[j];
      r.grad_neg[ij] = detail::narrow_checked<T>(weight / Bn * dscore(dft2 ? b.neg_len[ij] : 1), "grad_neg");
    }
    const double pos_scaled = s_pos / opt.tau;
    if (!std::isfinite(pos_scaled))
      detail::fail("tau", opt.tau, "a temperature for which s/τ is finite (pos_logp[" + std::to_string(i) + "]/τ overflowed)");
    loss += -s_pos + pull;
    objective += log_u - pos_scaled;
    r.grad_pos[i] = detail::narrow_checked<T>(-1.0 / Bn * dscore(dft2 ? b.pos_len[i] : 1), "grad_pos");
    r.log_u[i] = detail::narrow_checked<T>(log_u, "log_u");
  }
  r.loss = detail::narrow_checked<T>(loss / Bn, "loss");
  r.objective = detail::narrow_checked<T>(objective / Bn, "objective");
  return r;
}

// The options of an estimator: its init and log_u0, every other option at its default.
template <class T>
DftOptions default_options(const Estimator<T>& est) {
  return DftOptions{.init = est.init(), .log_u0 = static_cast<double>(est.log_u0())};
}

// dft_loss with default options (DFT, τ = 1, γ = 0.85), as the other objectives default theirs.
template <class T>
DftResult<T> dft_loss(const SequenceScores<T>& b, const Estimator<T>& est) {
  return dft_loss(b, est, default_options(est));
}

// dft_loss, then stores the batch's log u in est (unless its init is fixed). Throws before any
// write, so est is unchanged after an error.
template <class T>
DftResult<T> dft_step(const SequenceScores<T>& b, Estimator<T>& est, const DftOptions& opt) {
  DftResult<T> r = dft_loss(b, est, opt);
  if (est.init() != EstimatorInit::fixed) est.set(b.ids, r.log_u);
  return r;
}

// dft_step with the estimator's own options (default_options(est)).
template <class T>
DftResult<T> dft_step(const SequenceScores<T>& b, Estimator<T>& est) {
  return dft_step(b, est, default_options(est));
}

DFTUNE_NAMESPACE_END
