#pragma once
// Double arithmetic whose intermediates overflow only when the result does. The objectives compute
// in double from finite inputs; a difference of two rewards near ±1.8e308, or a sum of many, can
// overflow although the quantity they feed (a mean, a difference divided by a temperature) is
// finite. Each helper takes the plain expression when it stays finite — so ordinary inputs give
// exactly the plain expression's bits — and otherwise the same expression on operands scaled by an
// exact power of two, which in the normal range rounds as the plain expression would with an
// unbounded exponent.
#include <dftune/config.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

// Whether x, computed in double, rounds to a finite T (float or double): |x| below the largest
// double that does — for float FLT_MAX + 2^103, exclusive (that midpoint to 2^128 rounds to even,
// i.e. to inf); for double every finite x. A result that fits converts without overflow.
template <class T>
bool fits(double x) {
  static_assert(std::numeric_limits<T>::is_iec559, "dftune: results are IEEE float or double");
  if constexpr (sizeof(T) >= sizeof(double)) {
    return std::isfinite(x);
  } else {
    const double half_ulp = std::ldexp(1.0, std::numeric_limits<T>::max_exponent - std::numeric_limits<T>::digits - 1);
    return std::fabs(x) < static_cast<double>(std::numeric_limits<T>::max()) + half_ulp;
  }
}

// (a − b)·s.
inline double difference_times(double a, double b, double s) {
  const double d = a - b;
  if (std::isfinite(d)) return d * s;
  return ((0.5 * a - 0.5 * b) * s) * 2;  // |a/2 − b/2| <= max: finite
}

// (a − b)/q for q > 0.
inline double difference_over(double a, double b, double q) {
  const double d = a - b;
  if (std::isfinite(d)) return d / q;
  return ((0.5 * a - 0.5 * b) / q) * 2;
}

// Σ x = sum · unscale: the plain left-to-right sum with unscale = 1 when it is finite, else the sum
// of x·scale with scale = 2^-p, 2^p > x.size(), so that no partial sum of finite terms overflows.
struct ScaledSum {
  double sum = 0;
  double scale = 1;    // what the terms were multiplied by: 1 or 2^-p
  double unscale = 1;  // 1/scale, exact
};

template <class T>
ScaledSum scaled_sum(std::span<const T> x) {
  ScaledSum r;
  for (T v : x) r.sum += static_cast<double>(v);
  if (std::isfinite(r.sum)) return r;
  const int p = static_cast<int>(std::bit_width(x.size()));
  r = {.sum = 0, .scale = std::ldexp(1.0, -p), .unscale = std::ldexp(1.0, p)};
  for (T v : x) r.sum += static_cast<double>(v) * r.scale;
  return r;
}

}  // namespace detail

DFTUNE_NAMESPACE_END
