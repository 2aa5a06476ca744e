#pragma once
// The argument checks shared by every log-prob backend, so that the generic oracle and the fast
// paths accept and reject exactly the same calls. Each runs before any output is written — except
// the logits' own check (row_ok), which the reductions fold into the pass that reads them.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>
#include <dftune/math/no_overflow.hpp>

#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::detail {

template <class T>
void check_forward(const TokenLogits<T>& in, std::size_t seq_logp, std::size_t token_logp, std::size_t row_lse) {
  validate(in);
  dftune::detail::check_size("seq_logp", seq_logp, in.sequences());
  if (token_logp != 0) dftune::detail::check_size("token_logp", token_logp, in.rows());
  if (row_lse != 0) dftune::detail::check_size("row_lse", row_lse, in.rows());
}

// grad may be the logits themselves (in place) or a disjoint buffer; a partial overlap would make
// the result depend on the order in which rows are written, so it is refused.
template <class T>
void check_backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
                    std::span<const compute_t<T>> row_lse) {
  validate(in);
  dftune::detail::check_size("d_seq", d_seq.size(), in.sequences());
  for (std::size_t s = 0; s < d_seq.size(); ++s)
    if (!std::isfinite(d_seq[s])) dftune::detail::fail_at("d_seq", s, d_seq[s], "a finite number");
  dftune::detail::check_size("grad", grad.size(), in.logits.size());
  const T* z0 = in.logits.data();
  const T* z1 = z0 + in.logits.size();
  const T* g0 = grad.data();
  const T* g1 = g0 + grad.size();
  const std::less<const T*> before;
  if (g0 != z0 && before(g0, z1) && before(z0, g1))
    dftune::detail::fail("grad", "a buffer overlapping the logits without starting at logits.data()",
                 "the logits themselves (in place) or a buffer disjoint from them");
  // |grad[n, v]| <= |c_n|·p with p = exp(z − lse) <= 1 (up to the rounding of a vectorised exp), so
  // a scale c_n = d_seq[s]·w_n of at most half of T's largest value keeps every entry finite.
  using C = compute_t<T>;
  const double c_max = 0.5 * (std::numeric_limits<T>::is_specialized
                                  ? static_cast<double>(static_cast<C>(std::numeric_limits<T>::max()))
                                  : static_cast<double>(std::numeric_limits<C>::max()));
  for (std::size_t s = 0; s < d_seq.size(); ++s)
    for (auto r = static_cast<std::size_t>(in.offsets[s]); r < static_cast<std::size_t>(in.offsets[s + 1]); ++r)
      if (!(std::fabs(static_cast<double>(d_seq[s]) * static_cast<double>(in.weight(r))) <= c_max))
        dftune::detail::fail_at("d_seq", s, d_seq[s],
                        "a value for which |d_seq[s]·weights[r]| is at most half the largest gradient value (row " +
                            std::to_string(r) + ")");
  if (!row_lse.empty()) {
    dftune::detail::check_size("row_lse", row_lse.size(), in.rows());
    // Masked rows carry NaN from forward() and are never read.
    for (std::size_t r = 0; r < row_lse.size(); ++r)
      if (in.weight(r) != 0 && !std::isfinite(row_lse[r]))
        dftune::detail::fail_at("row_lse", r, row_lse[r], "a finite number on a weighted row");
  }
}

// The logits' check, on a weighted row, once a reduction has its log-sum-exp and weighted log-prob:
// both must be finite, the log-prob in compute_t<T>. It fails for a NaN or +inf logit (lse NaN or
// +inf), a row of −inf or a −inf target logit (lse or log-prob −inf: log 0), and a log-prob too
// large for compute_t<T> (e.g. float logits ±3e38). generic::fail_row names the culprit.
template <class C>
bool row_ok(double lse, double token) {
  return std::isfinite(lse) && dftune::detail::fits<C>(token);
}

}  // namespace logprob::detail

DFTUNE_NAMESPACE_END
