#pragma once
// Stable log-domain reductions. All of them accept -inf (log 0) as a value: log(1 - gamma) is
// -inf for gamma = 1, and the estimator update (docs/math.md, "The estimator") must then reduce to log u = w.
#include <dftune/config.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

DFTUNE_NAMESPACE_BEGIN

// log(exp(a) + exp(b)) without overflow; exact for a or b = -inf.
template <class T>
DFTUNE_HOST_DEVICE T logaddexp(T a, T b) {
  const T hi = a > b ? a : b;
  const T lo = a > b ? b : a;
  if (hi == -std::numeric_limits<T>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

// log(sum_j exp(x_j)); -inf for an empty span or one of all -inf.
template <class T>
T logsumexp(std::span<const T> x) {
  if (x.empty()) return -std::numeric_limits<T>::infinity();
  const T hi = *std::max_element(x.begin(), x.end());
  if (hi == -std::numeric_limits<T>::infinity()) return hi;
  T sum = 0;
  for (T v : x) sum += std::exp(v - hi);
  return hi + std::log(sum);
}

// log((1/n) sum_j exp(x_j)): the log of the inner mean g_i of docs/math.md, "The estimator".
template <class T>
T logmeanexp(std::span<const T> x) {
  return logsumexp(x) - std::log(static_cast<T>(x.size()));
}

DFTUNE_NAMESPACE_END
