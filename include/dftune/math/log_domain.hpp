#pragma once
// Stable log-domain reductions. All of them accept -inf (log 0) as a value: log(1 - gamma) is
// -inf for gamma = 1, and the estimator update (docs/math.md, "The estimator") must then reduce to
// log u = w. Their IEEE corners are the limits of the closed forms (tests/test_log_domain.cpp):
//   a NaN anywhere gives NaN; +inf anywhere (and no NaN) gives +inf; only -inf gives -inf;
//   logsumexp of no terms is -inf (log 0); logmeanexp of no terms is NaN (a mean of nothing).
#include <dftune/config.hpp>

#include <cmath>
#include <limits>
#include <span>

DFTUNE_NAMESPACE_BEGIN

// log(exp(a) + exp(b)) without overflow; exact for a or b = -inf.
template <class T>
DFTUNE_HOST_DEVICE T logaddexp(T a, T b) {
  if (a != a || b != b) return a + b;  // NaN: the comparisons below would drop it
  const T hi = a > b ? a : b;
  const T lo = a > b ? b : a;
  // Both -inf, or hi = +inf: exp(lo - hi) would be exp(NaN) for -inf - (-inf) and +inf - (+inf).
  if (hi == -std::numeric_limits<T>::infinity() || hi == std::numeric_limits<T>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

// log(sum_j exp(x_j)); -inf for an empty span or one of all -inf.
template <class T>
T logsumexp(std::span<const T> x) {
  T hi = -std::numeric_limits<T>::infinity();
  for (T v : x) {
    if (v != v) return v;  // std::max_element would keep or drop a NaN depending on where it is
    if (v > hi) hi = v;
  }
  if (hi == -std::numeric_limits<T>::infinity() || hi == std::numeric_limits<T>::infinity()) return hi;
  T sum = 0;
  for (T v : x) sum += std::exp(v - hi);
  return hi + std::log(sum);
}

// log((1/n) sum_j exp(x_j)): the log of the inner mean g_i of docs/math.md, "The estimator".
template <class T>
T logmeanexp(std::span<const T> x) {
  if (x.empty()) return std::numeric_limits<T>::quiet_NaN();  // log(0/0)
  return logsumexp(x) - std::log(static_cast<T>(x.size()));
}

DFTUNE_NAMESPACE_END
