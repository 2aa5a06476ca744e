#pragma once
// The argument checks shared by every log-prob backend, so that the generic oracle and the fast
// paths accept and reject exactly the same calls. Each runs before any output is written.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cmath>
#include <cstddef>
#include <functional>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::internal {

template <class T>
void check_forward(const TokenLogits<T>& in, std::size_t seq_logp, std::size_t token_logp, std::size_t row_lse) {
  validate(in);
  detail::check_size("seq_logp", seq_logp, in.sequences());
  if (token_logp != 0) detail::check_size("token_logp", token_logp, in.rows());
  if (row_lse != 0) detail::check_size("row_lse", row_lse, in.rows());
}

// grad may be the logits themselves (in place) or a disjoint buffer; a partial overlap would make
// the result depend on the order in which rows are written, so it is refused.
template <class T>
void check_backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
                    std::span<const compute_t<T>> row_lse) {
  validate(in);
  detail::check_size("d_seq", d_seq.size(), in.sequences());
  for (std::size_t s = 0; s < d_seq.size(); ++s)
    if (!std::isfinite(d_seq[s])) detail::fail_at("d_seq", s, d_seq[s], "a finite number");
  detail::check_size("grad", grad.size(), in.logits.size());
  const T* z0 = in.logits.data();
  const T* z1 = z0 + in.logits.size();
  const T* g0 = grad.data();
  const T* g1 = g0 + grad.size();
  const std::less<const T*> before;
  if (g0 != z0 && before(g0, z1) && before(z0, g1))
    detail::fail("grad", "a buffer overlapping the logits without starting at logits.data()",
                 "the logits themselves (in place) or a buffer disjoint from them");
  if (!row_lse.empty()) {
    detail::check_size("row_lse", row_lse.size(), in.rows());
    // Masked rows carry NaN from forward() and are never read.
    for (std::size_t r = 0; r < row_lse.size(); ++r)
      if (in.weight(r) != 0 && !std::isfinite(row_lse[r]))
        detail::fail_at("row_lse", r, row_lse[r], "a finite number on a weighted row");
  }
}

}  // namespace logprob::internal

DFTUNE_NAMESPACE_END
