// decoder::gelu_row (model/decoder/gelu.hpp), the vectorisable GELU of the decoder family: against
// the tanh form evaluated in double, in place, at its clamped tails, and the double path equal to
// tiny_lm::gelu bit for bit.
#include <dftune/model/decoder/gelu.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

using namespace dftune;

namespace {

// u/2 · (1 + tanh z) written as u / (1 + e^{-2z}): the same function, without 1 + tanh(z)'s
// cancellation for u < 0 (where double's tanh is -1 already at z = -19).
double gelu_reference(double u) { return u / (1.0 + std::exp(-2.0 * 0.7978845608028654 * (u + 0.044715 * u * u * u))); }

}  // namespace

TEST_CASE("gelu_row: float within a few ulp of the tanh form in double") {
  std::vector<float> u;
  for (int i = -40000; i <= 40000; ++i) u.push_back(static_cast<float>(i) * 5e-4f);  // [-20, 20]
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-7f, 30.0f, -30.0f, 1e4f, -1e4f}) u.push_back(v);
  std::vector<float> a(u.size());
  decoder::gelu_row(u.data(), a.data(), u.size());
  for (std::size_t i = 0; i < u.size(); ++i) {
    const double ref = gelu_reference(u[i]);
    // (8 + 2|2z|) float ulp: the argument 2z is rounded to float in a few operations, each of
    // which moves e^{-2z} by up to |2z|·ε/2 relatively (glibc's tanhf form is worse there: 1 +
    // tanh(z) cancels for u < 0); |u|·1e-38 absolute where the argument is clamped at 88 (|gelu| < |u| e^-88).
    const double z2 = 2 * 0.7978845608028654 * (u[i] + 0.044715 * u[i] * u[i] * u[i]);
    const double tol = (8.0 + 2.0 * std::abs(z2)) * std::numeric_limits<float>::epsilon() * std::abs(ref) + std::abs(static_cast<double>(u[i])) * 1e-38;
    INFO("u = " << u[i] << ", gelu = " << a[i] << ", reference " << ref);
    CHECK(std::abs(static_cast<double>(a[i]) - ref) <= tol);
  }
  CHECK(a[u.size() - 4] == 30.0f);  // gelu(u) = u to float precision for large u
  CHECK(a[u.size() - 2] == 1e4f);
  CHECK(std::abs(a[u.size() - 1]) < 1e-34f);  // and ~0 for very negative u, no inf or NaN
  CHECK(a[u.size() - 1] <= 0.0f);
}

TEST_CASE("gelu_row: in place gives the same values; the double path is tiny_lm::gelu") {
  std::vector<float> u{-3.0f, -0.5f, 0.25f, 2.0f, 7.5f}, a(u.size());
  decoder::gelu_row(u.data(), a.data(), u.size());
  decoder::gelu_row(u.data(), u.data(), u.size());
  CHECK(u == a);
  std::vector<double> d{-3.0, -0.5, 0.25, 2.0, 7.5}, b(d.size());
  decoder::gelu_row(d.data(), b.data(), d.size());
  for (std::size_t i = 0; i < d.size(); ++i) CHECK(b[i] == tiny_lm::gelu(d[i]));
}
