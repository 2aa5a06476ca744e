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
// and a Link policy has  double value(double h) const,  double derivative(double h) const.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// A pair's margin h and its partial derivatives wrt the two policy scores.
struct PairMargin {
  double h = 0;
  double dh_dpos = 0;  // ∂h/∂s_w
  double dh_dneg = 0;  // ∂h/∂s_l
};

template <class M, class T>
concept PairMarginPolicy = requires(const M& m, const PreferenceScores<T>& b, std::size_t k) {
  m.validate(b);
  { m(b, k, k) } -> std::convertible_to<PairMargin>;
};

template <class L>
concept PairLinkPolicy = requires(const L& l, double h) {
  { l.value(h) } -> std::convertible_to<double>;
  { l.derivative(h) } -> std::convertible_to<double>;
};

// ℓ(h) = −log σ(h) = log(1 + e^{−h}), ℓ'(h) = −σ(−h) = −1/(1 + e^{h}); both without overflow for
// any finite h (the Bradley–Terry likelihood of DPO, SimPO and ORPO's odds-ratio term).
struct LogSigmoidLink {
  double value(double h) const { return h >= 0 ? std::log1p(std::exp(-h)) : -h + std::log1p(std::exp(h)); }
  double derivative(double h) const {
    if (h >= 0) {
      const double e = std::exp(-h);
      return -e / (1 + e);
    }
    return -1 / (1 + std::exp(h));
  }
};

// h = scale · [(s_w − r_w) − (s_l − r_l)]: the reference-anchored log-ratio margin of DPO (scale β)
// and IPO (scale 1). `who` names the objective in error messages.
struct ReferenceMargin {
  double scale = 1;
  std::string_view who = "this objective";

  template <class T>
  void validate(const PreferenceScores<T>& b) const {
    detail::baselines::check_references(b, who);
  }
  template <class T>
  PairMargin operator()(const PreferenceScores<T>& b, std::size_t i, std::size_t ij) const {
    const double h = (static_cast<double>(b.pos_logp[i]) - static_cast<double>(b.ref_pos_logp[i])) -
                     (static_cast<double>(b.neg_logp[ij]) - static_cast<double>(b.ref_neg_logp[ij]));
    return {.h = scale * h, .dh_dpos = scale, .dh_dneg = -scale};
  }
};

template <class T, class Margin, class Link>
PreferenceResult<T> pairwise_loss(const PreferenceScores<T>& b, const Margin& margin, const Link& link) {
  static_assert(PairMarginPolicy<Margin, T>,
                "dftune::pairwise_loss: Margin needs `void validate(const PreferenceScores<T>&) const` and "
                "`PairMargin operator()(const PreferenceScores<T>&, std::size_t i, std::size_t ij) const`");
  static_assert(PairLinkPolicy<Link>,
                "dftune::pairwise_loss: Link needs `double value(double) const` and `double derivative(double) const`");
  detail::baselines::check_preferences(b);
  margin.validate(b);
  const std::size_t B = b.batch_size(), m = b.num_negatives;
  const double inv_pairs = 1.0 / static_cast<double>(B * m);
  PreferenceResult<T> r;
  r.grad_pos.resize(B);
  r.grad_neg.resize(B * m);
  double loss = 0;
  for (std::size_t i = 0; i < B; ++i) {
    double grad_pos = 0;
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t ij = i * m + j;
      const PairMargin p = margin(b, i, ij);
      if (!std::isfinite(p.h) || !std::isfinite(p.dh_dpos) || !std::isfinite(p.dh_dneg))
        detail::fail("neg_logp[" + std::to_string(ij) + "]", b.neg_logp[ij],
                     "scores whose pair margin and its derivatives are finite (pair " + std::to_string(i) + ", " +
                         std::to_string(j) + ": h = " + std::to_string(p.h) + ")");
      const double dl = link.derivative(p.h);
      loss += link.value(p.h);
      grad_pos += dl * p.dh_dpos;
      r.grad_neg[ij] = static_cast<T>(dl * p.dh_dneg * inv_pairs);
    }
    r.grad_pos[i] = static_cast<T>(grad_pos * inv_pairs);
  }
  r.loss = static_cast<T>(loss * inv_pairs);
  return r;
}

DFTUNE_NAMESPACE_END
