// The vector tanh (cpu/tanh.hpp) and the GELU built on it (model/tiny_lm/gelu.hpp), once per
// kernel version this CPU runs: ulp error against the correctly rounded tanh (std::tanh in double,
// rounded) and against std::tanh in float over sampled floats of the whole range, a dense sweep of
// where tanh is not yet ±1, and the special values; the same bits for an element wherever it sits
// (start, length, tail, in place); the GELU forward, value and backward against the scalar oracle
// of layers.hpp, and its backward against a finite difference.
#include "support/isa.hpp"

#include <dftune/cpu/tanh.hpp>
#include <dftune/model/tiny_lm/gelu.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

namespace cpu = dftune::cpu;
namespace tl = dftune::tiny_lm;

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

float from_bits(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Floats in order as integers (−0 and +0 both 0): |ordered(a) − ordered(b)| is the ulp distance.
std::int64_t ordered(float x) {
  const std::uint32_t b = bits(x);
  return (b & 0x80000000u) ? -static_cast<std::int64_t>(b & 0x7fffffffu) : static_cast<std::int64_t>(b);
}

std::int64_t ulp_distance(float a, float b) {
  const std::int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

// Every 61st float in [0, 10] (where tanh is not yet 1) with both signs, and 2^20 random bit
// patterns (all exponents, subnormals, ±Inf and NaNs among them).
std::vector<float> sample_floats() {
  std::vector<float> x;
  for (std::uint32_t b = 0; b <= bits(10.0f); b += 61) {
    x.push_back(from_bits(b));
    x.push_back(-from_bits(b));
  }
  std::mt19937 rng(20);
  for (int i = 0; i < (1 << 20); ++i) x.push_back(from_bits(static_cast<std::uint32_t>(rng())));
  return x;
}

}  // namespace

// memcmp of the bytes; 0 bytes compare equal without calling memcmp, whose pointers must not be
// null even for 0 bytes, and an empty vector's data() may be null (UBSan).
inline bool same_bytes(const float* a, const float* b, std::size_t bytes) { return bytes == 0 || std::memcmp(a, b, bytes) == 0; }

TEST_CASE("cpu::tanh: within 2 ulp of the correctly rounded tanh and 3 of std::tanh, every ISA") {
  const std::vector<float> x = sample_floats();
  std::vector<float> y(x.size());
  test::for_each_isa([&](cpu::Isa) {
    cpu::tanh(x.data(), y.data(), x.size());
    std::int64_t worst_exact = 0, worst_libm = 0;
    float at_exact = 0, at_libm = 0;
    std::size_t nan_wrong = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) {
        nan_wrong += !std::isnan(y[i]);
        continue;
      }
      const float exact = static_cast<float>(std::tanh(static_cast<double>(x[i])));
      if (const auto d = ulp_distance(y[i], exact); d > worst_exact) worst_exact = d, at_exact = x[i];
      if (const auto d = ulp_distance(y[i], std::tanh(x[i])); d > worst_libm) worst_libm = d, at_libm = x[i];
    }
    INFO("worst vs exact at x = " << at_exact << ", vs std::tanh at x = " << at_libm);
    MESSAGE("max ulp: " << worst_exact << " vs the correctly rounded tanh, " << worst_libm << " vs std::tanh (float)");
    CHECK(worst_exact <= 2);
    CHECK(worst_libm <= 3);
    CHECK(nan_wrong == 0);
  });
}

TEST_CASE("cpu::tanh: special values, every ISA") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float tiny = std::numeric_limits<float>::denorm_min(), small = std::numeric_limits<float>::min();
  const std::vector<float> x = {0.0f, -0.0f, tiny, -tiny, small, -small, 1e-20f, -1e-20f, 10.0f, -10.0f, 20.0f, -20.0f,
                                std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), inf, -inf,
                                std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> y(x.size());
  test::for_each_isa([&](cpu::Isa) {
    cpu::tanh(x.data(), y.data(), x.size());
    for (std::size_t i = 0; i < 8; ++i) {  // ±0, subnormal, FLT_MIN, 1e-20: tanh x = x, sign included
      INFO("x = " << x[i]);
      CHECK(bits(y[i]) == bits(x[i]));
    }
    for (std::size_t i = 8; i < 16; ++i) {
      INFO("x = " << x[i]);
      CHECK(y[i] == std::copysign(1.0f, x[i]));
    }
    CHECK(std::isnan(y[16]));
    CHECK(std::isnan(y[17]));
  });
}

TEST_CASE("cpu::tanh and the GELU kernels: the same bits wherever an element sits") {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> x(203), g(x.size());
  for (auto& v : x) v = d(rng);
  for (auto& v : g) v = d(rng);
  test::for_each_isa([&](cpu::Isa) {
    std::vector<float> whole(x.size()), t(x.size()), a(x.size()), du(x.size());
    cpu::tanh(x.data(), whole.data(), x.size());
    tl::gelu_forward(x.data(), t.data(), a.data(), x.size());
    tl::gelu_backward(x.data(), g.data(), du.data(), x.size());
    // Every start and every length up to 70 (tails of 0..63 lanes at each width, split anywhere).
    for (std::size_t s = 0; s < 70; ++s)
      for (std::size_t n = 0; n <= 70; ++n) {
        std::vector<float> part(n), pt(n), pa(n), pv(n), pd(n);
        cpu::tanh(x.data() + s, part.data(), n);
        tl::gelu_forward(x.data() + s, pt.data(), pa.data(), n);
        tl::gelu_values(x.data() + s, pv.data(), n);
        tl::gelu_backward(x.data() + s, g.data() + s, pd.data(), n);
        CHECK(same_bytes(part.data(), whole.data() + s, n * sizeof(float)));
        CHECK(same_bytes(pt.data(), t.data() + s, n * sizeof(float)));
        CHECK(same_bytes(pa.data(), a.data() + s, n * sizeof(float)));
        CHECK(same_bytes(pv.data(), a.data() + s, n * sizeof(float)));
        CHECK(same_bytes(pd.data(), du.data() + s, n * sizeof(float)));
      }
    std::vector<float> in_place = x, gd = g;
    cpu::tanh(in_place.data(), in_place.data(), in_place.size());
    CHECK(same_bytes(in_place.data(), whole.data(), x.size() * sizeof(float)));
    in_place = x;
    tl::gelu_values(in_place.data(), in_place.data(), in_place.size());
    CHECK(same_bytes(in_place.data(), a.data(), x.size() * sizeof(float)));
    tl::gelu_backward(x.data(), gd.data(), gd.data(), gd.size());
    CHECK(same_bytes(gd.data(), du.data(), x.size() * sizeof(float)));
  });
}

TEST_CASE("GELU kernels against the scalar oracle (layers.hpp) and a finite difference, every ISA") {
  std::vector<float> u, g;
  for (int i = -4000; i <= 4000; ++i) u.push_back(static_cast<float>(i) * 0.0025f);  // [−10, 10]
  for (float v : {-1e4f, -30.0f, 30.0f, 1e4f, 0.0f, -0.0f}) u.push_back(v);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  for (std::size_t i = 0; i < u.size(); ++i) g.push_back(d(rng));
  test::for_each_isa([&](cpu::Isa) {
    std::vector<float> t(u.size()), a(u.size()), du(u.size());
    tl::gelu_forward(u.data(), t.data(), a.data(), u.size());
    tl::gelu_backward(u.data(), g.data(), du.data(), u.size());
    double worst_t = 0, worst_a = 0, worst_du = 0, worst_fd = 0;
    for (std::size_t i = 0; i < u.size(); ++i) {
      const double ud = u[i];
      // The oracle in double from the same float u: the vector path's only differences are float
      // rounding in the argument (~2 ulp), tanh (≤ 2 ulp) and the products.
      worst_t = std::max(worst_t, std::abs(t[i] - tl::gelu_tanh(ud)));
      worst_a = std::max(worst_a, std::abs(a[i] - tl::gelu(ud)) / std::max(1.0, std::abs(ud)));
      worst_du = std::max(worst_du, std::abs(du[i] - g[i] * tl::gelu_grad(ud)) / std::max(1.0, std::abs(ud)));
      if (std::abs(ud) <= 10) {
        const double h = 1e-4, fd = (tl::gelu(ud + h) - tl::gelu(ud - h)) / (2 * h);
        worst_fd = std::max(worst_fd, std::abs(du[i] - g[i] * fd));
      }
    }
    MESSAGE("max error: t " << worst_t << ", gelu " << worst_a << " (relative to max(1, |u|)), g·gelu' " << worst_du
                            << ", against a central difference " << worst_fd);
    CHECK(worst_t <= 4e-7);
    CHECK(worst_a <= 5e-7);
    CHECK(worst_du <= 2e-6);
    CHECK(worst_fd <= 2e-6);
  });
}

TEST_CASE("double GELU kernels are the scalar functions bit for bit") {
  std::vector<double> u = {-7.5, -1.0, -0.25, 0.0, 0.3, 2.0, 9.0}, t(u.size()), a(u.size()), v(u.size()), du(u.size()),
                      g = {1.0, -2.0, 0.5, 3.0, -1.5, 0.25, 1.0};
  tl::gelu_forward(u.data(), t.data(), a.data(), u.size());
  tl::gelu_values(u.data(), v.data(), u.size());
  tl::gelu_backward(u.data(), g.data(), du.data(), u.size());
  for (std::size_t i = 0; i < u.size(); ++i) {
    CHECK(t[i] == tl::gelu_tanh(u[i]));
    CHECK(a[i] == tl::gelu(u[i]));
    CHECK(v[i] == tl::gelu(u[i]));
    CHECK(du[i] == g[i] * tl::gelu_grad(u[i]));
  }
}
