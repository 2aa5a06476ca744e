#pragma once
// The generic token log-prob reduction: plain loops, accumulation in double, one row at a time.
// It is the oracle every fast path is tested against, and the fallback for any storage type T
// that converts to compute_t<T> (explicitly is enough).
//
// Forward, for row n of sequence s with weight w_n and target y_n:
//   row_lse[n]    = log Σ_v exp(z_n[v])                  (max-shifted; NaN on masked rows)
//   token_logp[n] = w_n · (z_n[y_n] − row_lse[n])        (weighted; exactly 0 on masked rows)
//   seq_logp[s]   = Σ_{n in s} token_logp[n]             (0 for an empty sequence)
// Masked rows (w_n = 0) are never read, so their targets and logits may be anything.
// Backward, given d_seq[s] = ∂loss/∂seq_logp[s]:
//   grad[n, v] = d_seq[s] · w_n · (onehot(y_n)[v] − exp(z_n[v] − row_lse[n]))   (0 on masked rows)
// grad may be the logits themselves (in place) or disjoint from them. row_lse may be empty, and
// is then recomputed. Every check runs before any output is written: a throwing call writes nothing.
#include <dftune/config.hpp>
#include <dftune/logprob/checks.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::generic {

template <class T>
double to_double(const T& x) {
  return static_cast<double>(static_cast<compute_t<T>>(x));
}

// log Σ exp(z[v]) in double; NaN in, NaN out; −inf for a row of −inf.
template <class T>
double row_logsumexp(const T* z, std::size_t vocab) {
  double hi = -std::numeric_limits<double>::infinity();
  for (std::size_t v = 0; v < vocab; ++v) {
    const double x = to_double(z[v]);
    if (x > hi || std::isnan(x)) hi = x;
    if (std::isnan(hi)) return hi;
  }
  if (std::isinf(hi)) return hi;
  double sum = 0;
  for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(to_double(z[v]) - hi);
  return hi + std::log(sum);
}

template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
             std::span<compute_t<T>> row_lse = {}) {
  using C = compute_t<T>;
  internal::check_forward(in, seq_logp.size(), token_logp.size(), row_lse.size());
  const std::size_t V = in.vocab;
  for (std::size_t s = 0; s < in.sequences(); ++s) {
    double acc = 0;
    for (auto n = static_cast<std::size_t>(in.offsets[s]); n < static_cast<std::size_t>(in.offsets[s + 1]); ++n) {
      const double w = in.weight(n);
      double lp = 0;
      double lse = std::numeric_limits<double>::quiet_NaN();
      if (w != 0) {
        const T* z = in.logits.data() + n * V;
        lse = row_logsumexp(z, V);
        lp = w * (to_double(z[static_cast<std::size_t>(in.targets[n])]) - lse);
      }
      acc += lp;
      if (!token_logp.empty()) token_logp[n] = static_cast<C>(lp);
      if (!row_lse.empty()) row_lse[n] = static_cast<C>(lse);
    }
    seq_logp[s] = static_cast<C>(acc);
  }
}

template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse = {}) {
  internal::check_backward(in, d_seq, grad, row_lse);
  const std::size_t V = in.vocab;
  for (std::size_t s = 0; s < in.sequences(); ++s) {
    for (auto n = static_cast<std::size_t>(in.offsets[s]); n < static_cast<std::size_t>(in.offsets[s + 1]); ++n) {
      const T* z = in.logits.data() + n * V;
      T* g = grad.data() + n * V;  // may be z itself: each element is read before it is written
      const double c = static_cast<double>(d_seq[s]) * static_cast<double>(in.weight(n));
      if (c == 0) {
        for (std::size_t v = 0; v < V; ++v) g[v] = static_cast<T>(0.0);
        continue;
      }
      const double lse = row_lse.empty() ? row_logsumexp(z, V) : static_cast<double>(row_lse[n]);
      const auto y = static_cast<std::size_t>(in.targets[n]);
      for (std::size_t v = 0; v < V; ++v) {
        const double p = std::exp(to_double(z[v]) - lse);
        g[v] = static_cast<T>(c * ((v == y ? 1.0 : 0.0) - p));
      }
    }
  }
}

}  // namespace logprob::generic

DFTUNE_NAMESPACE_END
