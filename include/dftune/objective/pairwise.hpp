#pragma once
// The pairwise preference loss shared by DPO, IPO, SimPO and ORPO's odds-ratio term, as one
// template over two policies (ensmallen style):
//
//   L = (1/(B·m)) Σ_i Σ_j ℓ(h_ij),   h_ij = Margin(s_w = pos_logp[i], s_l = neg_logp[ij], …)
//   ∂L/∂pos_logp[i]  = (1/(B·m)) Σ_j ℓ'(h_ij) · ∂h_ij/∂s_w
//   ∂L/∂neg_logp[ij] = (1/(B·m))     ℓ'(h_ij) · ∂h_ij/∂s_l
//
//   objective  margin h                                            link ℓ(h)
//   DPO        β·[(s_w − r_w) − (s_l − r_l)]                        −log σ(h)
//   IPO        (s_w − r_w) − (s_l − r_l)                            (h − 1/(2β))²
//   SimPO      β·s_w/|y_w| − β·s_l/|y_l| − γ                        −log σ(h)
//   ORPO (OR)  log odds(s_w/|y_w|) − log odds(s_l/|y_l|)             −log σ(h)
//
// A Margin policy has
//   template <class T> void validate(const PreferenceScores<T>&) const    checks the inputs it reads
//   template <class T> PairMargin operator()(const PreferenceScores<T>&, std::size_t i, std::size_t ij) const
// and a Link policy has  double value(double h, double w) const = w·ℓ(h)  and
// double derivative(double h, double w) const = w·ℓ'(h), each computed so that it overflows only
// when the product does: every pair's term is weighted by w = scale/(B·m) *before* the sum, so a
// loss whose pairs overflow one by one but whose mean fits (IPO's square at margins ≳ 1e154) is
// still computed. A margin or derivative that is not finite is an error naming the input.
// The loss and gradients are computed in double and stored as T through detail::narrow_checked:
// finite inputs give a finite result or a dftune::error, never inf or NaN.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/checks.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// A pair's margin h and its partial derivatives wrt the two policy scores.
struct PairMargin {
  double h = 0;  // the margin
  double dh_dpos = 0;  // ∂h/∂s_w
  double dh_dneg = 0;  // ∂h/∂s_l
};

// What pairwise_loss needs of a Margin policy (see the file's comment).
template <class M, class T>
concept PairMarginPolicy = requires(const M& m, const PreferenceScores<T>& b, std::size_t k) {
  m.validate(b);
  { m(b, k, k) } -> std::convertible_to<PairMargin>;
};

// What pairwise_loss needs of a Link policy (see the file's comment).
template <class L>
concept PairLinkPolicy = requires(const L& l, double h, double w) {
  { l.value(h, w) } -> std::convertible_to<double>;
  { l.derivative(h, w) } -> std::convertible_to<double>;
};

// ℓ(h) = −log σ(h) = log(1 + e^{−h}), ℓ'(h) = −σ(−h) = −1/(1 + e^{h}); both without overflow for
// any finite h (the Bradley–Terry likelihood of DPO, SimPO and ORPO's odds-ratio term). ℓ(h) <=
// |h| + log 2 and |ℓ'| <= 1, so w·ℓ overflows only when the product does.
struct LogSigmoidLink {
  // ℓ(h).
  double value(double h) const { return h >= 0 ? std::log1p(std::exp(-h)) : -h + std::log1p(std::exp(h)); }
  // ℓ'(h).
  double derivative(double h) const {
    if (h >= 0) {
      const double e = std::exp(-h);
      return -e / (1 + e);
    }
    return -1 / (1 + std::exp(h));
  }
  // w·ℓ(h).
  double value(double h, double w) const { return w * value(h); }
  // w·ℓ'(h).
  double derivative(double h, double w) const { return w * derivative(h); }
};

// h = scale · [(s_w − r_w) − (s_l − r_l)]: the reference-anchored log-ratio margin of DPO (scale β)
// and IPO (scale 1). `who` names the objective in error messages.
struct ReferenceMargin {
  double scale = 1;  // β for DPO, 1 for IPO
  std::string_view who = "this objective";  // the objective's name, for error messages
  std::string_view scale_name = "beta";  // the option `scale` comes from, for error messages

  // Throws dftune::error unless ref_pos_logp and ref_neg_logp are given, of the right sizes, finite.
  template <class T>
  void validate(const PreferenceScores<T>& b) const {
    detail::baselines::check_references(b, who);
  }
  // h and its derivatives for the pair (positive i, negative ij).
  template <class T>
  PairMargin operator()(const PreferenceScores<T>& b, std::size_t i, std::size_t ij) const {
    // Name what overflowed: one answer's log-ratio s − r, or β times a finite margin. (Log-probs are
    // <= 0, so s − r only overflows for a positive "log-prob" beside a very negative one.)
    const double rw = static_cast<double>(b.pos_logp[i]) - static_cast<double>(b.ref_pos_logp[i]);
    const double rl = static_cast<double>(b.neg_logp[ij]) - static_cast<double>(b.ref_neg_logp[ij]);
    if (!std::isfinite(rw))
      detail::fail_at("pos_logp", i, b.pos_logp[i],
                      "log-probs for which s_w − log π_ref(y_w) is finite (ref_pos_logp[" + std::to_string(i) +
                          "] = " + detail::to_text(static_cast<double>(b.ref_pos_logp[i])) + ")");
    if (!std::isfinite(rl))
      detail::fail_at("neg_logp", ij, b.neg_logp[ij],
                      "log-probs for which s_l − log π_ref(y_l) is finite (ref_neg_logp[" + std::to_string(ij) +
                          "] = " + detail::to_text(static_cast<double>(b.ref_neg_logp[ij])) + ")");
    const double h = rw - rl;
    if (std::isfinite(h) && !std::isfinite(scale * h))
      detail::fail(scale_name, scale,
                   std::string("a value for which ") + std::string(scale_name) + "·margin is finite (the pair of neg_logp[" +
                       std::to_string(ij) + "]: margin = " + detail::to_text(h) + ")");
    return {.h = scale * h, .dh_dpos = scale, .dh_dneg = -scale};
  }
};

namespace detail::baselines {

// A pair's margin h and its derivatives must be finite: names the score they came from.
template <class T>
void check_margin(const PreferenceScores<T>& b, std::size_t i, std::size_t j, std::size_t ij, const PairMargin& p) {
  if (std::isfinite(p.h) && std::isfinite(p.dh_dpos) && std::isfinite(p.dh_dneg)) return;
  const std::string pair = "pair " + std::to_string(i) + ", " + std::to_string(j) + ": ";
  if (!std::isfinite(p.dh_dpos))
    fail_at("pos_logp", i, b.pos_logp[i],
            "scores whose pair margin and its derivatives are finite (" + pair + "∂h/∂s_w = " + to_text(p.dh_dpos) + ")");
  if (!std::isfinite(p.dh_dneg))
    fail_at("neg_logp", ij, b.neg_logp[ij],
            "scores whose pair margin and its derivatives are finite (" + pair + "∂h/∂s_l = " + to_text(p.dh_dneg) + ")");
  fail_at("neg_logp", ij, b.neg_logp[ij],
          "scores whose pair margin and its derivatives are finite (" + pair + "h = " + to_text(p.h) + ")");
}

// The loss and gradients in double, each pair's term weighted by scale/(B·m) before it is summed:
// what pairwise_loss stores as T, and what ORPO adds its SFT term to before it does.
struct PairwiseTerms {
  double loss = 0;
  std::vector<double> grad_pos;  // [B]
  std::vector<double> grad_neg;  // [B·m]
};

template <class T, class Margin, class Link>
PairwiseTerms pairwise_terms(const PreferenceScores<T>& b, const Margin& margin, const Link& link, double scale) {
  static_assert(PairMarginPolicy<Margin, T>,
                "dftune::pairwise_loss: Margin needs `void validate(const PreferenceScores<T>&) const` and "
                "`PairMargin operator()(const PreferenceScores<T>&, std::size_t i, std::size_t ij) const`");
  static_assert(PairLinkPolicy<Link>,
                "dftune::pairwise_loss: Link needs `double value(double h, double w) const` and "
                "`double derivative(double h, double w) const`");
  const std::size_t Bm = check_preferences(b);
  margin.validate(b);
  const std::size_t B = b.batch_size(), m = b.num_negatives;
  const double w = scale / static_cast<double>(Bm);
  PairwiseTerms r;
  r.grad_pos.assign(B, 0.0);
  r.grad_neg.resize(Bm);
  for (std::size_t i = 0; i < B; ++i) {
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t ij = i * m + j;
      const PairMargin p = margin(b, i, ij);
      check_margin(b, i, j, ij, p);
      const double dl = link.derivative(p.h, w);
      r.loss += link.value(p.h, w);
      r.grad_pos[i] += dl * p.dh_dpos;
      r.grad_neg[ij] = dl * p.dh_dneg;
    }
  }
  return r;
}

template <class T>
PreferenceResult<T> narrow_preferences(const PairwiseTerms& t) {
  PreferenceResult<T> r;
  r.loss = narrow_checked<T>(t.loss, "loss");
  r.grad_pos.resize(t.grad_pos.size());
  r.grad_neg.resize(t.grad_neg.size());
  for (std::size_t i = 0; i < t.grad_pos.size(); ++i) r.grad_pos[i] = narrow_checked_at<T>(t.grad_pos[i], "grad_pos", i);
  for (std::size_t k = 0; k < t.grad_neg.size(); ++k) r.grad_neg[k] = narrow_checked_at<T>(t.grad_neg[k], "grad_neg", k);
  return r;
}

}  // namespace detail::baselines

// L = (1/(B·m)) Σ_ij ℓ(h_ij) and its gradient for any Margin and Link policy (see the file's
// comment): DPO, IPO, SimPO and ORPO's odds-ratio term are this with their own policies.
template <class T, class Margin, class Link>
PreferenceResult<T> pairwise_loss(const PreferenceScores<T>& b, const Margin& margin, const Link& link) {
  return detail::baselines::narrow_preferences<T>(detail::baselines::pairwise_terms(b, margin, link, 1.0));
}

DFTUNE_NAMESPACE_END
