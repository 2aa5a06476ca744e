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
// is then recomputed.
//
// Non-finite logits and results (issue #12; every backend, CUDA included, must do the same):
// finite inputs give finite outputs or a dftune::error. On a weighted row every logit must be
// finite or −inf (log 0), and the target's logit finite: a NaN or +inf logit, a row of −inf or a
// −inf target is an error naming the first such logit ("logits[n·V + v]: got inf, ..."). A
// weighted log-prob or a sequence sum that compute_t<T> cannot hold (float logits near ±3e38, huge
// weights) is an error naming it ("token_logp[n]", "seq_logp[s]"). Scanning the logits before the
// pass would double its memory traffic, so the reductions detect all of this from what the pass
// computes anyway — the row's log-sum-exp and log-prob (detail::row_ok) — and throw after it:
// forward then leaves seq_logp untouched, but token_logp and row_lse (and backward's grad, which
// may be the logits) hold unspecified values. Every other check runs before any output is written.
// Backward recomputing row_lse (none given) checks the rows as forward does; given row_lse, it
// trusts it to be forward()'s for the same logits, which forward only returns for valid ones.
// A backend reports the smallest bad row's error (generic::fail_row), so every path names the same.
#include <dftune/config.hpp>
#include <dftune/logprob/checks.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::generic {

// x widened to double through compute_t<T> (bf16 and half go through float).
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

// Throws the error of weighted row r, whose logits are z[0, V), target y and weight w: a row that
// detail::row_ok refused (or, in backward, whose log-sum-exp or target logit is not finite). It
// names the first NaN or +inf logit, else the target's −inf logit, else the weighted log-prob
// compute_t<T> cannot hold, as "logits[r·V + v]" / "token_logp[r]". Every backend reports through
// this (the fused linear head too, from its chunk of logits).
template <class T>
[[noreturn]] void fail_logits_row(const T* z, std::size_t V, std::size_t y, double w, std::size_t r) {
  const std::string row = " on a weighted row (row " + std::to_string(r) + ")";
  for (std::size_t v = 0; v < V; ++v) {
    const double x = to_double(z[v]);
    if (std::isnan(x) || x == std::numeric_limits<double>::infinity())
      dftune::detail::fail_at("logits", r * V + v, x, "a finite number or −inf" + row);
  }
  if (!std::isfinite(to_double(z[y])))
    dftune::detail::fail_at("logits", r * V + y, to_double(z[y]),
                    "a finite logit for the target y = " + std::to_string(y) + row + " (its log-prob would be −inf)");
  const double token = w * (to_double(z[y]) - row_logsumexp(z, V));
  dftune::detail::fail_at("token_logp", r, token,
                  "a weighted log-prob w·(z[y] − lse) that compute_t<T> can hold (logits or weights[" +
                      std::to_string(r) + "] too extreme for this precision)");
}

// Throws the dftune::argument_error that names row r's refused logits (fail_logits_row).
template <class T>
[[noreturn]] void fail_row(const TokenLogits<T>& in, std::size_t r) {
  fail_logits_row(in.logits.data() + r * in.vocab, in.vocab, static_cast<std::size_t>(in.targets[r]),
                  static_cast<double>(in.weight(r)), r);
}

// seq_logp[s] = sum_of(s) for every sequence, once each sum is known to fit compute_t<T>: writes
// nothing when it throws. sum_of may be called twice per sequence (the fast path sums its rows
// again rather than allocate).
template <class T, class SumOf>
void store_sequences(std::span<compute_t<T>> seq_logp, const SumOf& sum_of) {
  using C = compute_t<T>;
  for (std::size_t s = 0; s < seq_logp.size(); ++s)
    if (const double acc = sum_of(s); !dftune::detail::fits<C>(acc))
      dftune::detail::fail_at("seq_logp", s, acc,
                      "a sum of weighted log-probs that compute_t<T> can hold (logits or weights too extreme for this precision)");
  for (std::size_t s = 0; s < seq_logp.size(); ++s) seq_logp[s] = static_cast<C>(sum_of(s));
}

// logprob::forward for any logit type T (one scalar loop per row, sums in double): the reference
// the fast paths are tested against. seq_logp[S] is required; token_logp[N] and row_lse[N] are
// written when given. Errors as logprob::forward, thrown before anything is written.
template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
             std::span<compute_t<T>> row_lse = {}) {
  using C = compute_t<T>;
  detail::check_forward(in, seq_logp.size(), token_logp.size(), row_lse.size());
  const std::size_t V = in.vocab;
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t bad = none;  // the first weighted row whose logits or log-prob are refused
  std::vector<double> acc(in.sequences(), 0.0);
  for (std::size_t s = 0; s < in.sequences(); ++s) {
    for (auto n = static_cast<std::size_t>(in.offsets[s]); n < static_cast<std::size_t>(in.offsets[s + 1]); ++n) {
      const double w = in.weight(n);
      double lp = 0;
      double lse = std::numeric_limits<double>::quiet_NaN();
      if (w != 0) {
        const T* z = in.logits.data() + n * V;
        lse = row_logsumexp(z, V);
        lp = w * (to_double(z[static_cast<std::size_t>(in.targets[n])]) - lse);
        if (!detail::row_ok<C>(lse, lp)) {
          if (bad == none) bad = n;
          lp = lse = std::numeric_limits<double>::quiet_NaN();  // unspecified; never converted out of range
        }
      }
      acc[s] += lp;
      if (!token_logp.empty()) token_logp[n] = static_cast<C>(lp);
      if (!row_lse.empty()) row_lse[n] = static_cast<C>(lse);
    }
  }
  if (bad != none) fail_row(in, bad);
  store_sequences<T>(seq_logp, [&](std::size_t s) { return acc[s]; });
}

// logprob::backward for any logit type T: grad[N·V] = d_seq[s] · w_r · (onehot(y_r) − softmax(z_r)),
// the log-sum-exp taken from row_lse when given (forward's) or recomputed.
template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse = {}) {
  detail::check_backward(in, d_seq, grad, row_lse);
  const std::size_t V = in.vocab;
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t bad = none;
  for (std::size_t s = 0; s < in.sequences(); ++s) {
    for (auto n = static_cast<std::size_t>(in.offsets[s]); n < static_cast<std::size_t>(in.offsets[s + 1]); ++n) {
      const T* z = in.logits.data() + n * V;
      T* g = grad.data() + n * V;  // may be z itself: each element is read before it is written
      const double c = static_cast<double>(d_seq[s]) * static_cast<double>(in.weight(n));
      if (c == 0) {
        for (std::size_t v = 0; v < V; ++v) g[v] = static_cast<T>(0.0);
        continue;
      }
      const auto y = static_cast<std::size_t>(in.targets[n]);
      const double lse = row_lse.empty() ? row_logsumexp(z, V) : static_cast<double>(row_lse[n]);
      if (row_lse.empty() && !(std::isfinite(lse) && std::isfinite(to_double(z[y])))) {
        if (bad == none) bad = n;
        continue;  // the row is left as it is; the call throws below
      }
      for (std::size_t v = 0; v < V; ++v) {
        const double p = std::exp(to_double(z[v]) - lse);
        g[v] = static_cast<T>(c * ((v == y ? 1.0 : 0.0) - p));
      }
    }
  }
  if (bad != none) fail_row(in, bad);
}

}  // namespace logprob::generic

DFTUNE_NAMESPACE_END
