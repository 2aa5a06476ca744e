// math/log_domain.hpp against its closed forms: logaddexp, logsumexp and logmeanexp on ordinary
// values (against a long-double evaluation of log Σ exp), and every IEEE corner — −inf (log 0),
// +inf, NaN in every position, empty spans and values near the largest finite number — against the
// limits of the closed forms, in float and double.
#include <dftune/math/log_domain.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <vector>

using dftune::logaddexp;
using dftune::logmeanexp;
using dftune::logsumexp;

namespace {

template <class T>
T lse(std::vector<T> x) {
  return logsumexp(std::span<const T>(x));
}
template <class T>
T lme(std::vector<T> x) {
  return logmeanexp(std::span<const T>(x));
}

// log Σ exp(x) in long double (64-bit mantissa, 15-bit exponent: no overflow for any double).
template <class T>
long double closed_lse(const std::vector<T>& x) {
  long double hi = -INFINITY;
  for (T v : x) hi = std::max<long double>(hi, v);
  long double s = 0;
  for (T v : x) s += std::exp(static_cast<long double>(v) - hi);
  return hi + std::log(s);
}

}  // namespace

TEST_CASE_TEMPLATE("logaddexp equals log(e^a + e^b) on ordinary and extreme finite values", T, float, double) {
  const T big = std::numeric_limits<T>::max();
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> u(-50.0, 50.0);
  for (int k = 0; k < 200; ++k) {
    const T a = static_cast<T>(u(rng)), b = static_cast<T>(k % 3 == 0 ? a : static_cast<T>(u(rng)));
    const long double want = std::log(std::exp(static_cast<long double>(a)) + std::exp(static_cast<long double>(b)));
    CAPTURE(a);
    CAPTURE(b);
    CHECK(static_cast<long double>(logaddexp(a, b)) == doctest::Approx(static_cast<double>(want)).epsilon(4 * std::numeric_limits<T>::epsilon()));
    CHECK(logaddexp(a, b) == logaddexp(b, a));
  }
  // log 2 + max rounds to max itself: log(e^max + e^max) is within half an ulp of max.
  CHECK(logaddexp(big, big) == big);
  CHECK(logaddexp(big, -big) == big);
  CHECK(logaddexp(-big, -big) == -big);
  CHECK(logaddexp(T(0), T(0)) == static_cast<T>(std::log(2.0L)));
  CHECK(logaddexp(std::numeric_limits<T>::denorm_min(), T(0)) == static_cast<T>(std::log(2.0L)));
}

TEST_CASE_TEMPLATE("logaddexp at −inf, +inf and NaN: the limits of log(e^a + e^b)", T, float, double) {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T big = std::numeric_limits<T>::max();
  CHECK(logaddexp(-inf, -inf) == -inf);  // log(0 + 0)
  for (T x : {T(-3.5), T(0), T(7), big, -big}) {
    CAPTURE(x);
    CHECK(logaddexp(-inf, x) == x);  // log(0 + e^x), exactly
    CHECK(logaddexp(x, -inf) == x);
    CHECK(logaddexp(inf, x) == inf);
    CHECK(logaddexp(x, inf) == inf);
  }
  CHECK(logaddexp(inf, inf) == inf);
  CHECK(logaddexp(inf, -inf) == inf);
  CHECK(logaddexp(-inf, inf) == inf);
  for (T x : {T(-3.5), T(0), big, -inf, inf, nan}) {
    CAPTURE(x);
    CHECK(std::isnan(logaddexp(nan, x)));
    CHECK(std::isnan(logaddexp(x, nan)));
  }
}

TEST_CASE_TEMPLATE("logsumexp and logmeanexp equal their closed forms on ordinary values", T, float, double) {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<double> u(-80.0, 80.0);
  for (std::size_t n : {1u, 2u, 3u, 10u, 1000u}) {
    std::vector<T> x(n);
    for (auto& v : x) v = static_cast<T>(u(rng));
    if (n > 2) x[1] = -std::numeric_limits<T>::infinity();  // a zero term changes nothing
    const long double want = closed_lse(x);
    CAPTURE(n);
    const double tol = 8 * std::numeric_limits<T>::epsilon();
    CHECK(static_cast<double>(lse(x)) == doctest::Approx(static_cast<double>(want)).epsilon(tol));
    CHECK(static_cast<double>(lme(x)) ==
          doctest::Approx(static_cast<double>(want - std::log(static_cast<long double>(n)))).epsilon(tol).scale(1.0));
  }
  CHECK(lse<T>({T(-2.5)}) == T(-2.5));  // one term: exactly itself
  CHECK(lme<T>({T(-2.5)}) == T(-2.5));
  CHECK(lme<T>({T(4), T(4), T(4), T(4)}) == T(4));  // a mean of equal terms: log 4 − log 4 = 0
}

TEST_CASE_TEMPLATE("logsumexp and logmeanexp at −inf, +inf, NaN, empty spans and the largest values", T, float, double) {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T big = std::numeric_limits<T>::max();
  // Empty: a sum of no terms is 0 (log 0 = −inf); a mean of no terms is undefined (NaN).
  CHECK(lse<T>({}) == -inf);
  CHECK(std::isnan(lme<T>({})));
  // All −inf: log 0.
  CHECK(lse<T>({-inf}) == -inf);
  CHECK(lse<T>({-inf, -inf, -inf}) == -inf);
  CHECK(lme<T>({-inf, -inf, -inf}) == -inf);
  // +inf anywhere: the sum is +inf, whatever else is there (−inf included).
  for (std::size_t at = 0; at < 3; ++at) {
    std::vector<T> x{T(1), -inf, T(-5)};
    x[at] = inf;
    CAPTURE(at);
    CHECK(lse(x) == inf);
    CHECK(lme(x) == inf);
  }
  CHECK(lse<T>({inf, inf}) == inf);
  // NaN anywhere gives NaN — also beside −inf and +inf, where a max-based shift would skip it.
  for (std::size_t at = 0; at < 3; ++at)
    for (T other : {T(2), -inf, inf}) {
      std::vector<T> x{other, other, other};
      x[at] = nan;
      CAPTURE(at);
      CAPTURE(other);
      CHECK(std::isnan(lse(x)));
      CHECK(std::isnan(lme(x)));
    }
  // The largest finite values: log(n·e^max) = max + log n rounds to max; no overflow.
  CHECK(lse<T>({big, big, big}) == big);
  CHECK(lme<T>({big, big, big}) == big);
  CHECK(lse<T>({big, -big}) == big);
  CHECK(lse<T>({-big, -big}) == static_cast<T>(-big + std::log(2.0L)));
  CHECK(lme<T>({-big, -big}) == -big);
}
