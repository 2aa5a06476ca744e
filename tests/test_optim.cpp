// Inner update rules and schedules against their published formulas, each written out again here
// (in long double, from the papers / PyTorch's algorithm boxes, not from the headers), hand-worked
// sequences, and every error with parameters and state left bit-identical.
#include <dftune/estimator/estimator.hpp>
#include <dftune/io/checkpoint.hpp>
#include <dftune/model/categorical_policy.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/clip.hpp>
#include <dftune/optim/rule.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

using namespace dftune;

namespace {

using L = long double;

const std::vector<double> theta0{0.5, -1.25, 2.0, 0.0, -0.03};
// One gradient per step; mixed signs and scales, a zero, and a sign flip between steps.
const std::vector<std::vector<double>> grads{
    {0.1, -2.0, 0.5, 1e-3, 0.0},
    {-0.3, -1.0, 0.7, 2e-3, 4.0},
    {0.2, 0.5, -0.1, -1e-3, -4.0},
    {0.05, 3.0, 0.0, 5e-3, 1.0},
};

template <class T>
bool bit_equal(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// torch.optim.SGD's algorithm box.
struct SgdOracle {
  L lr, mu, damp, lambda;
  bool nesterov;
  std::vector<L> theta, buf;
  int t = 0;
  void step(const std::vector<double>& g_in) {
    ++t;
    if (buf.empty()) buf.assign(theta.size(), 0);
    for (std::size_t k = 0; k < theta.size(); ++k) {
      L g = L(g_in[k]) + lambda * theta[k];
      if (mu != 0) {
        buf[k] = t == 1 ? g : mu * buf[k] + (1 - damp) * g;
        g = nesterov ? g + mu * buf[k] : buf[k];
      }
      theta[k] -= lr * g;
    }
  }
};

// Kingma & Ba 2015, Algorithm 1, with ε outside √v̂ (PyTorch); coupled L2 or decoupled decay.
struct AdamOracle {
  L lr, b1, b2, eps, lambda;
  bool decoupled;
  std::vector<L> theta, m, v;
  int t = 0;
  void step(const std::vector<double>& g_in) {
    ++t;
    if (m.empty()) m.assign(theta.size(), 0), v.assign(theta.size(), 0);
    for (std::size_t k = 0; k < theta.size(); ++k) {
      const L g = L(g_in[k]) + (decoupled ? 0 : lambda * theta[k]);
      if (decoupled) theta[k] -= lr * lambda * theta[k];
      m[k] = b1 * m[k] + (1 - b1) * g;
      v[k] = b2 * v[k] + (1 - b2) * g * g;
      const L mhat = m[k] / (1 - std::pow(b1, L(t)));
      const L vhat = v[k] / (1 - std::pow(b2, L(t)));
      theta[k] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<L> widen(const std::vector<double>& x) { return {x.begin(), x.end()}; }

void check_close(std::span<const double> got, const std::vector<L>& want, double rel = 1e-14, double abs = 1e-15) {
  REQUIRE(got.size() == want.size());
  for (std::size_t k = 0; k < got.size(); ++k) {
    CAPTURE(k);
    CHECK(std::abs(L(got[k]) - want[k]) <= abs + rel * std::abs(want[k]));
  }
}

}  // namespace

TEST_CASE("the rules and schedules satisfy their concepts; other types do not") {
  static_assert(check_update_rule<Sgd<double>, double>());
  static_assert(check_update_rule<Adam<float>, float>());
  static_assert(check_update_rule<AdamW<long double>, long double>());
  static_assert(!UpdateRule<Sgd<double>, float>);  // a rule of double cannot step float spans
  struct NoSteps {
    void step(std::span<double>, std::span<const double>, double) {}
  };
  static_assert(!UpdateRule<NoSteps, double>);
  static_assert(LearningRateSchedule<ConstantSchedule>);
  static_assert(LearningRateSchedule<CosineSchedule>);
  static_assert(!LearningRateSchedule<double>);
  static_assert(WeightDecayPolicy<CoupledWeightDecay, double>);
  static_assert(WeightDecayPolicy<DecoupledWeightDecay, float>);
}

TEST_CASE("SGD: plain, with coupled L2, momentum, dampening and Nesterov, against torch.optim.SGD's formulas") {
  struct Setup {
    SgdOptions o;
    double lr;
  };
  const Setup setups[] = {
      {{}, 0.1},
      {{.weight_decay = 0.01}, 0.3},
      {{.momentum = 0.9}, 0.05},
      {{.momentum = 0.5, .dampening = 0.2, .weight_decay = 0.1}, 0.2},
      {{.momentum = 0.9, .nesterov = true}, 0.05},
      {{.momentum = 0.7, .weight_decay = 0.05, .nesterov = true}, 0.1},
  };
  for (const Setup& s : setups) {
    CAPTURE(s.o.momentum);
    CAPTURE(s.o.nesterov);
    CAPTURE(s.o.weight_decay);
    Sgd<double> rule(s.o);
    SgdOracle oracle{.lr = s.lr, .mu = s.o.momentum, .damp = s.o.dampening, .lambda = s.o.weight_decay,
                     .nesterov = s.o.nesterov, .theta = widen(theta0), .buf = {}};
    std::vector<double> theta = theta0;
    for (const auto& g : grads) {
      rule.step(theta, g, s.lr);
      oracle.step(g);
      check_close(theta, oracle.theta);
      if (s.o.momentum != 0) check_close(rule.momentum_buffer(), oracle.buf);
    }
    CHECK(rule.steps() == grads.size());
    CHECK(rule.num_parameters() == theta0.size());
    CHECK(rule.momentum_buffer().size() == (s.o.momentum != 0 ? theta0.size() : 0));
  }
}

TEST_CASE("SGD momentum and Nesterov: hand-worked sequences with θ0 = 1, g ≡ 1, lr = 0.1, μ = 0.9") {
  // Heavy ball: b = 1, 1.9, 2.71;  θ = 0.9, 0.71, 0.439.
  Sgd<double> heavy(SgdOptions{.momentum = 0.9});
  std::vector<double> theta{1.0};
  const std::vector<double> g{1.0};
  for (double want : {0.9, 0.71, 0.439}) {
    heavy.step(theta, g, 0.1);
    CHECK(theta[0] == doctest::Approx(want).epsilon(1e-15));
  }
  CHECK(heavy.momentum_buffer()[0] == doctest::Approx(2.71).epsilon(1e-15));
  // Nesterov: g + μ·b = 1.9, 2.71, 3.439;  θ = 0.81, 0.539, 0.1951.
  Sgd<double> nag(SgdOptions{.momentum = 0.9, .nesterov = true});
  theta = {1.0};
  for (double want : {0.81, 0.539, 0.1951}) {
    nag.step(theta, g, 0.1);
    CHECK(theta[0] == doctest::Approx(want).epsilon(1e-15));
  }
  // Plain SGD with L2: g + λθ = 1 + 0.5·1 = 1.5 → θ = 1 − 0.1·1.5 = 0.85.
  Sgd<double> l2(SgdOptions{.weight_decay = 0.5});
  theta = {1.0};
  l2.step(theta, g, 0.1);
  CHECK(theta[0] == doctest::Approx(0.85).epsilon(1e-15));
}

TEST_CASE("Adam: the first step is θ − lr·g/(|g| + ε) ≈ θ − lr·sign(g); later steps are bias-corrected") {
  const double lr = 1e-2;
  Adam<double> rule;
  std::vector<double> theta = theta0;
  rule.step(theta, grads[0], lr);
  for (std::size_t k = 0; k < theta.size(); ++k) {
    const double g = grads[0][k];
    CAPTURE(k);
    // m̂_1 = g, v̂_1 = g² exactly: the closed form of the first step.
    CHECK(theta[k] == doctest::Approx(theta0[k] - lr * g / (std::abs(g) + 1e-8)).epsilon(1e-15));
    const double sign = g > 0 ? 1.0 : g < 0 ? -1.0 : 0.0;
    // |g|/(|g| + ε) differs from 1 by ε/|g| <= 1e-5 for the smallest nonzero |g| = 1e-3.
    CHECK(std::abs(theta[k] - (theta0[k] - lr * sign)) <= lr * 1e-5 + 1e-16);
  }
  CHECK(rule.first_moment()[1] == doctest::Approx(0.1 * -2.0).epsilon(1e-15));   // (1 − β1)·g
  CHECK(rule.second_moment()[1] == doctest::Approx(0.001 * 4.0).epsilon(1e-13)); // (1 − β2)·g²

  // Steps 2..4 against Algorithm 1 with its bias corrections, from the same start.
  AdamOracle oracle{.lr = lr, .b1 = 0.9, .b2 = 0.999, .eps = 1e-8, .lambda = 0, .decoupled = false,
                    .theta = widen(theta0), .m = {}, .v = {}};
  oracle.step(grads[0]);
  for (std::size_t t = 1; t < grads.size(); ++t) {
    rule.step(theta, grads[t], lr);
    oracle.step(grads[t]);
    check_close(theta, oracle.theta, 1e-13);
    check_close(rule.first_moment(), oracle.m, 1e-13);
    check_close(rule.second_moment(), oracle.v, 1e-13);
  }
  CHECK(rule.steps() == grads.size());
}

TEST_CASE("Adam and AdamW with non-default options and weight decay against their papers' formulas") {
  const AdamOptions opts[] = {
      {.beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1},
      {.beta1 = 0.0, .beta2 = 0.5, .eps = 1e-3, .weight_decay = 0.02},
      {.beta1 = 0.95, .beta2 = 0.0, .eps = 1e-8, .weight_decay = 0},
  };
  for (const AdamOptions& o : opts) {
    CAPTURE(o.beta1);
    const double lr = 0.05;
    Adam<double> adam(o);
    AdamW<double> adamw(o);
    AdamOracle coupled{.lr = lr, .b1 = o.beta1, .b2 = o.beta2, .eps = o.eps, .lambda = o.weight_decay,
                       .decoupled = false, .theta = widen(theta0), .m = {}, .v = {}};
    AdamOracle decoupled = coupled;
    decoupled.decoupled = true;
    std::vector<double> ta = theta0, tw = theta0;
    for (const auto& g : grads) {
      adam.step(ta, g, lr);
      adamw.step(tw, g, lr);
      coupled.step(g);
      decoupled.step(g);
      check_close(ta, coupled.theta, 1e-13);
      check_close(tw, decoupled.theta, 1e-13);
    }
  }
}

TEST_CASE("AdamW(λ) and Adam(λ = 0) see the same moments and differ exactly by the decoupled term −lr·λ·θ") {
  const double lr = 0.03, lambda = 0.2;
  AdamW<double> adamw(AdamOptions{.weight_decay = lambda});
  Adam<double> adam0;
  std::vector<double> tw = theta0;
  for (const auto& g : grads) {
    // Step Adam(0) from AdamW's current point: its displacement is the pure Adam step Δ.
    std::vector<double> ta = tw;
    const std::vector<double> before = tw;
    Adam<double> probe = adam0;
    probe.step(ta, g, lr);
    adam0 = probe;
    adamw.step(tw, g, lr);
    for (std::size_t k = 0; k < tw.size(); ++k) {
      const double adam_delta = ta[k] - before[k];
      CHECK(tw[k] == doctest::Approx(before[k] - lr * lambda * before[k] + adam_delta).epsilon(1e-14));
    }
    CHECK(bit_equal(adamw.first_moment(), adam0.first_moment()));
    CHECK(bit_equal(adamw.second_moment(), adam0.second_moment()));
  }
  // Coupled Adam(λ) is a different rule: λθ enters the moments.
  Adam<double> coupled(AdamOptions{.weight_decay = lambda});
  std::vector<double> tc = theta0;
  coupled.step(tc, grads[0], lr);
  CHECK(coupled.first_moment()[0] == doctest::Approx(0.1 * (grads[0][0] + lambda * theta0[0])).epsilon(1e-15));
}

TEST_CASE("Adam in float follows the double computation") {
  AdamW<float> f(AdamOptions{.weight_decay = 0.01});
  AdamW<double> d(AdamOptions{.weight_decay = 0.01});
  std::vector<float> tf(theta0.begin(), theta0.end());
  std::vector<double> td = theta0;
  for (const auto& g : grads) {
    const std::vector<float> gf(g.begin(), g.end());
    f.step(tf, gf, 0.01f);
    d.step(td, g, 0.01);
  }
  for (std::size_t k = 0; k < td.size(); ++k) CHECK(tf[k] == doctest::Approx(td[k]).epsilon(1e-5));
}

TEST_CASE("CosineSchedule: warm-up (t + 1)/W, cosine to min_lr at total_steps, HF's formula after warm-up") {
  const CosineSchedule s{.base_lr = 1e-3, .min_lr = 1e-5, .warmup_steps = 10, .total_steps = 110};
  CHECK(s.lr(0) == doctest::Approx(1e-4).epsilon(1e-15));   // base · 1/W
  CHECK(s.lr(4) == doctest::Approx(5e-4).epsilon(1e-15));
  CHECK(s.lr(9) == doctest::Approx(1e-3).epsilon(1e-15));   // t = W − 1: the peak
  CHECK(s.lr(10) == doctest::Approx(1e-3).epsilon(1e-15));  // t = W: cos(0) = 1
  CHECK(s.lr(60) == doctest::Approx((1e-3 + 1e-5) / 2).epsilon(1e-15));  // mid-decay: cos(π/2) = 0
  CHECK(s.lr(110) == 1e-5);                                  // t = N
  CHECK(s.lr(1000) == 1e-5);                                 // held after N
  // HF transformers, get_cosine_with_min_lr_schedule_with_warmup's λ for W <= t < N.
  for (std::size_t t = 10; t < 110; ++t) {
    const double progress = double(t - 10) / double(std::max<std::size_t>(1, 110 - 10));
    const double factor = 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress));
    const double hf = 1e-3 * (factor * (1 - 1e-5 / 1e-3) + 1e-5 / 1e-3);
    CHECK(s.lr(t) == doctest::Approx(hf).epsilon(1e-13));
  }
  // Monotone: up during warm-up, down after.
  for (std::size_t t = 0; t + 1 < 10; ++t) CHECK(s.lr(t) < s.lr(t + 1));
  for (std::size_t t = 10; t < 110; ++t) CHECK(s.lr(t) > s.lr(t + 1));

  const CosineSchedule no_warmup{.base_lr = 2.0, .total_steps = 4};
  CHECK(no_warmup.lr(0) == 2.0);
  CHECK(no_warmup.lr(2) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(no_warmup.lr(4) == 0.0);
  const CosineSchedule all_warmup{.base_lr = 1.0, .warmup_steps = 4, .total_steps = 4};
  CHECK(all_warmup.lr(0) == 0.25);
  CHECK(all_warmup.lr(3) == 1.0);
  CHECK(all_warmup.lr(4) == 0.0);
}

TEST_CASE("ConstantSchedule: one rate for every step") {
  ConstantSchedule s{.base_lr = 0.05};
  CHECK(s.lr(0) == 0.05);
  CHECK(s.lr(123456) == 0.05);
  s.base_lr = 0.2;
  CHECK(s.lr(7) == 0.2);
  CHECK(ConstantSchedule{}.lr(0) == 0.0);
}

// A checkpoint of CategoricalPolicy<double>(2, 3), Estimator(3), Sgd, ConstantSchedule{.rate = 0.1},
// no step taken, written by io::encode before the field was renamed base_lr (the headers of commit
// a9f0313). The format stores the schedule as its tag and one f64, no field name.
const unsigned char kRateCheckpoint[] = {
    0x44, 0x46, 0x54, 0x55, 0x4e, 0x45, 0x43, 0x4b, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0xf4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0d, 0xaf, 0xc8, 0x65, 0x10, 0x37, 0x94, 0x36,
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x3f, 0x33,
    0x33, 0x33, 0x33, 0x33, 0x33, 0xeb, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x3a, 0x8c, 0x30, 0xe2, 0x8e, 0x79, 0x45, 0x3e, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xf0, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x9a, 0x99, 0x99, 0x99,
    0x99, 0x99, 0xb9, 0x3f
};

TEST_CASE("ConstantSchedule: a checkpoint written when the field was called rate loads, and is written alike") {
  const std::vector<std::byte> old(reinterpret_cast<const std::byte*>(kRateCheckpoint),
                                   reinterpret_cast<const std::byte*>(kRateCheckpoint) + sizeof kRateCheckpoint);
  auto build_and_decode = [&](double base_lr) {
    CategoricalPolicy<double> model(2, 3);
    Estimator<double> est(3, DftOptions{});
    DftOptimizer opt(model, est, DftOptions{}, Sgd<double>{}, ConstantSchedule{.base_lr = base_lr});
    io::decode(old, opt);
    return io::encode(opt);
  };
  CHECK(build_and_decode(0.1) == old);
  CHECK_THROWS_WITH_AS(build_and_decode(0.2), doctest::Contains("schedule base_lr: got 0.10000000000000001 in the file"), error);
}

TEST_CASE("invalid options and schedules throw dftune::error naming the argument") {
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.momentum = 1.0}), doctest::Contains("momentum"), error);
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.momentum = -0.1}), doctest::Contains("momentum"), error);
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.momentum = 0.9, .dampening = 1.5}), doctest::Contains("dampening"), error);
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.weight_decay = -1e-3}), doctest::Contains("weight_decay"), error);
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.nesterov = true}), doctest::Contains("nesterov"), error);
  CHECK_THROWS_WITH_AS(Sgd<double>(SgdOptions{.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                       doctest::Contains("nesterov"), error);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(Adam<double>(AdamOptions{.beta1 = 1.0}), doctest::Contains("beta1: got 1"), error);
  CHECK_THROWS_WITH_AS(Adam<double>(AdamOptions{.beta1 = nan}), doctest::Contains("beta1"), error);
  CHECK_THROWS_WITH_AS(AdamW<double>(AdamOptions{.beta2 = -0.5}), doctest::Contains("beta2"), error);
  CHECK_THROWS_WITH_AS(AdamW<double>(AdamOptions{.eps = 0}), doctest::Contains("eps: got 0, expected a finite number > 0"),
                       error);
  CHECK_THROWS_WITH_AS(AdamW<double>(AdamOptions{.eps = inf}), doctest::Contains("eps"), error);
  CHECK_THROWS_WITH_AS(AdamW<double>(AdamOptions{.weight_decay = nan}), doctest::Contains("weight_decay"), error);

  CHECK_THROWS_WITH_AS((CosineSchedule{.base_lr = 1, .total_steps = 0}.lr(0)), doctest::Contains("total_steps"), error);
  CHECK_THROWS_WITH_AS((CosineSchedule{.base_lr = 1, .warmup_steps = 5, .total_steps = 4}.lr(0)),
                       doctest::Contains("warmup_steps: got 5, expected at most total_steps = 4"), error);
  CHECK_THROWS_WITH_AS((CosineSchedule{.base_lr = 1, .min_lr = 2, .total_steps = 4}.lr(0)), doctest::Contains("min_lr"), error);
  CHECK_THROWS_WITH_AS((CosineSchedule{.base_lr = -1, .total_steps = 4}.lr(0)), doctest::Contains("base_lr"), error);
  CHECK_THROWS_WITH_AS((CosineSchedule{.base_lr = nan, .total_steps = 4}.lr(0)), doctest::Contains("base_lr"), error);
  CHECK_THROWS_WITH_AS(validate(CosineSchedule{.base_lr = inf}), doctest::Contains("base_lr"), error);
  CHECK_THROWS_WITH_AS(ConstantSchedule{.base_lr = -0.1}.lr(0), doctest::Contains("base_lr: got -0.1"), error);
  CHECK_THROWS_WITH_AS(validate(ConstantSchedule{.base_lr = nan}), doctest::Contains("base_lr"), error);
}

TEST_CASE_TEMPLATE("a failing step leaves parameters, state and the step count bit-identical", Rule, Sgd<double>,
                   Adam<double>, AdamW<double>) {
  auto make = [] {
    if constexpr (std::is_same_v<Rule, Sgd<double>>)
      return Rule(SgdOptions{.momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
    else
      return Rule(AdamOptions{.weight_decay = 0.1});
  };
  auto state = [](const Rule& r) {
    std::vector<std::vector<double>> s;
    if constexpr (std::is_same_v<Rule, Sgd<double>>) {
      s.emplace_back(r.momentum_buffer().begin(), r.momentum_buffer().end());
    } else {
      s.emplace_back(r.first_moment().begin(), r.first_moment().end());
      s.emplace_back(r.second_moment().begin(), r.second_moment().end());
    }
    return s;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();

  // A failure on the very first step leaves the rule unsized: a later good step of any size works.
  {
    Rule r = make();
    std::vector<double> theta = theta0;
    std::vector<double> bad = grads[0];
    bad[2] = nan;
    CHECK_THROWS_WITH_AS(r.step(theta, bad, 0.1), doctest::Contains("grads[2]"), error);
    CHECK(bit_equal<double>(theta, theta0));
    CHECK(r.steps() == 0);
    CHECK(r.num_parameters() == 0);
    for (const auto& s : state(r)) CHECK(s.empty());
    std::vector<double> three{1.0, 2.0, 3.0};
    r.step(three, std::vector<double>{0.1, 0.2, 0.3}, 0.1);
    CHECK(r.num_parameters() == 3);
  }

  Rule r = make();
  std::vector<double> theta = theta0;
  r.step(theta, grads[0], 0.1);
  r.step(theta, grads[1], 0.1);
  const std::vector<double> theta_before = theta;
  const auto state_before = state(r);
  auto unchanged = [&] {
    CHECK(r.steps() == 2);
    CHECK(r.num_parameters() == theta0.size());
    CHECK(bit_equal<double>(theta, theta_before));
    const auto now = state(r);
    REQUIRE(now.size() == state_before.size());
    for (std::size_t i = 0; i < now.size(); ++i) CHECK(bit_equal<double>(now[i], state_before[i]));
  };
  auto with = [&](std::size_t k, double x) {
    std::vector<double> g = grads[2];
    g[k] = x;
    return g;
  };
  // The bad gradient sits last, so a rule that wrote while checking would have changed the others.
  CHECK_THROWS_WITH_AS(r.step(theta, with(4, nan), 0.1), doctest::Contains("grads[4]: got nan"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(r.step(theta, with(4, inf), 0.1), doctest::Contains("grads[4]: got inf, expected a finite number"),
                       error);
  unchanged();
  CHECK_THROWS_WITH_AS(r.step(theta, with(0, -inf), 0.1), doctest::Contains("grads[0]"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(r.step(theta, grads[2], nan), doctest::Contains("lr"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(r.step(theta, grads[2], -1e-3), doctest::Contains("lr: got -0.001"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(r.step(theta, grads[2], inf), doctest::Contains("lr"), error);
  unchanged();
  {  // grads of the wrong size
    std::vector<double> g = grads[2];
    g.pop_back();
    CHECK_THROWS_WITH_AS(r.step(theta, g, 0.1), doctest::Contains("grads: got size 4, expected size 5"), error);
    unchanged();
  }
  {  // a parameter span of another size than the first step's
    std::vector<double> more = theta;
    more.push_back(1.0);
    std::vector<double> g = grads[2];
    g.push_back(0.5);
    CHECK_THROWS_WITH_AS(r.step(more, g, 0.1), doctest::Contains("params: got size 6, expected size 5"), error);
    unchanged();
    CHECK(more[0] == theta_before[0]);
  }
  {  // no parameters at all
    std::vector<double> none;
    CHECK_THROWS_WITH_AS(r.step(none, none, 0.1), doctest::Contains("params"), error);
    unchanged();
  }
  // And the rule goes on as if nothing had happened.
  Rule twin = make();
  std::vector<double> theta_twin = theta0;
  twin.step(theta_twin, grads[0], 0.1);
  twin.step(theta_twin, grads[1], 0.1);
  twin.step(theta_twin, grads[2], 0.1);
  r.step(theta, grads[2], 0.1);
  CHECK(bit_equal<double>(theta, theta_twin));
}

TEST_CASE("clip_grad_norm: torch.nn.utils.clip_grad_norm_'s rule, g · max/(‖g‖ + 1e-6) above max, in double") {
  std::vector<double> g{3, -4, 0};
  CHECK(clip_grad_norm(std::span<double>(g), 10.0) == 5.0);  // below the bound: untouched
  CHECK(g == std::vector<double>{3, -4, 0});
  CHECK(clip_grad_norm(std::span<double>(g), 1.0) == 5.0);
  const double c = 1.0 / (5.0 + 1e-6);
  CHECK(g == std::vector<double>{3 * c, -4 * c, 0});
  CHECK(global_grad_norm(std::span<const double>(g)) == doctest::Approx(1.0 - 2e-7).epsilon(1e-12));
  // An independent long-double norm on values whose plain Σ g² overflows double.
  std::vector<double> big{1e200, -3e200, 2e199, 5e-300};
  long double ss = 0;
  for (double x : big) ss += static_cast<long double>(x / 1e200) * static_cast<long double>(x / 1e200);
  CHECK(global_grad_norm(std::span<const double>(big)) ==
        doctest::Approx(static_cast<double>(std::sqrt(ss)) * 1e200).epsilon(1e-15));
  // float gradients, double norm: no loss of digits over many elements.
  std::vector<float> f(1 << 20, 1e-3f);
  CHECK(global_grad_norm(std::span<const float>(f)) ==
        doctest::Approx(std::sqrt(double(1 << 20)) * double(1e-3f)).epsilon(1e-12));
  std::vector<double> keep{1, 2};
  CHECK(clip_grad_norm(std::span<double>(keep), std::numeric_limits<double>::infinity()) == doctest::Approx(std::sqrt(5.0)));
  CHECK(keep == std::vector<double>{1, 2});
  // Errors name the argument and write nothing.
  std::vector<double> bad{1e300, std::nan(""), 2};
  const std::vector<double> before = {1e300, 0, 2};
  CHECK_THROWS_WITH_AS(clip_grad_norm(std::span<double>(bad), 1.0), "grads[1]: got nan, expected a finite gradient", error);
  CHECK(bad[0] == before[0]);
  CHECK(bad[2] == before[2]);
  for (double m : {0.0, -1.0, std::nan("")})
    CHECK_THROWS_WITH_AS(clip_grad_norm(std::span<double>(keep), m), doctest::Contains("max_norm: got"), error);
  CHECK(keep == std::vector<double>{1, 2});
}

// ---- results that would not be finite (issue: a step that overflows must change nothing) ------

namespace {

// Every piece of state a rule shows, for bit comparisons.
template <class Rule>
auto rule_state(const Rule& r) {
  using T = typename Rule::scalar_type;
  std::vector<std::vector<T>> s;
  if constexpr (requires { r.momentum_buffer(); }) {
    s.emplace_back(r.momentum_buffer().begin(), r.momentum_buffer().end());
  } else {
    s.emplace_back(r.first_moment().begin(), r.first_moment().end());
    s.emplace_back(r.second_moment().begin(), r.second_moment().end());
  }
  return s;
}

// Runs r.step(theta, g, lr), which must throw an error containing `message`, and checks that
// theta, the rule's state and its step count are bit-identical afterwards.
template <class Rule, class T = typename Rule::scalar_type>
void refuses(Rule& r, std::vector<T>& theta, const std::vector<T>& g, T lr, const char* message) {
  const std::vector<T> theta_before = theta;
  const auto state_before = rule_state(r);
  const std::size_t steps_before = r.steps(), n_before = r.num_parameters();
  CHECK_THROWS_WITH_AS(r.step(theta, g, lr), doctest::Contains(message), error);
  CHECK(bit_equal<T>(theta, theta_before));
  CHECK(r.steps() == steps_before);
  CHECK(r.num_parameters() == n_before);
  const auto now = rule_state(r);
  REQUIRE(now.size() == state_before.size());
  for (std::size_t i = 0; i < now.size(); ++i) CHECK(bit_equal<T>(now[i], state_before[i]));
}

}  // namespace

TEST_CASE("SGD: a step whose parameters or momentum would overflow throws and changes nothing") {
  const double big = 1e300;
  {  // the case: lr 1e10 on a gradient 1e300; the overflow sits in the last element, after
     // elements that a one-pass update would already have written
    Sgd<double> r;
    std::vector<double> theta{1.0, 2.0, 3.0};
    r.step(theta, std::vector<double>{0.1, 0.2, 0.3}, 0.5);
    refuses(r, theta, {1.0, 1.0, big}, 1e10, "params[2]: got -inf");
    r.step(theta, std::vector<double>{1.0, 1.0, 1.0}, 0.5);  // and it goes on
    CHECK(r.steps() == 2);
  }
  {  // on the very first step too: the rule stays unsized
    Sgd<double> r(SgdOptions{.momentum = 0.9});
    std::vector<double> theta{1.0, 2.0};
    refuses(r, theta, {1.0, big}, 1e10, "params[1]");
    CHECK(r.momentum_buffer().empty());
  }
  {  // the momentum buffer overflows (b = μ·b + g past the largest double) while θ would not see it yet
    Sgd<double> r(SgdOptions{.momentum = 0.9});
    std::vector<double> theta{0.0, 0.0};
    r.step(theta, std::vector<double>{1.0, 1.7e308}, 0.0);  // lr 0: θ stays, the buffer holds g
    refuses(r, theta, {1.0, 1.7e308}, 0.0, "momentum_buffer[1]: got inf");
  }
  {  // coupled weight decay overflows the gradient it forms, in float
    Sgd<float> r(SgdOptions{.weight_decay = 1e30});
    std::vector<float> theta{1.0f, 1e10f};
    refuses(r, theta, {0.0f, 0.0f}, 1.0f, "params[1]");
  }
}

TEST_CASE("Adam/AdamW: a step whose parameters or moments would not be finite throws and changes nothing") {
  {  // g² past the largest double: v = +inf (θ itself would stay finite: m/√v → 0)
    Adam<double> r;
    std::vector<double> theta{0.5, -0.5, 1.0};
    r.step(theta, std::vector<double>{0.1, 0.2, 0.3}, 1e-3);
    refuses(r, theta, {0.1, 0.2, 1e160}, 1e-3, "second_moment[2]: got inf");
  }
  {  // the same in float at 1e22 (the second moment of the AdamW<float> checkpoint)
    AdamW<float> r;
    std::vector<float> theta{0.5f, -0.5f};
    r.step(theta, std::vector<float>{1.0f, 1.0f}, 1e-3f);
    refuses(r, theta, {1.0f, 1e22f}, 1e-3f, "second_moment[1]: got inf");
  }
  {  // AdamW with an extreme decoupled λ: 1 − lr·λ ≈ −1e308 scales θ = 2 to −inf (θ = 0.5 stays finite)
    AdamW<double> r(AdamOptions{.weight_decay = 1e307});
    std::vector<double> theta{0.5, 2.0};
    refuses(r, theta, {0.1, 0.1}, 10.0, "params[1]: got -inf");
    CHECK(r.first_moment().empty());  // a failed first step leaves the rule unsized
  }
  {  // Adam with an extreme coupled λ: g + λθ overflows the first moment's input
    Adam<double> r(AdamOptions{.weight_decay = 1e308});
    std::vector<double> theta{0.0, 10.0};
    refuses(r, theta, {0.1, 0.1}, 1e-3, "[1]: got");
  }
  {  // a step size lr/(1 − β1^t) past float's range: θ' = θ − inf·(m/denom)
    Adam<float> r(AdamOptions{.beta1 = 0.999999});
    std::vector<float> theta{1.0f};
    refuses(r, theta, {1.0f}, 1e33f, "params[0]");
  }
}

TEST_CASE("Adam at a step count near 2^64 (from a checkpoint): finite steps, then a named error, never garbage") {
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  AdamW<double> r(AdamOptions{.weight_decay = 0.01});
  std::vector<double> m{0.1, -0.2}, v{0.04, 0.09};
  r.restore(max - 1, 2, std::vector<double>(m), std::vector<double>(v));
  std::vector<double> theta{1.0, -1.0};
  const std::vector<double> g{0.3, 0.4};
  const double lr = 1e-3;
  r.step(theta, g, lr);
  CHECK(r.steps() == max);
  // At t = 2^64 both bias corrections are 1 − β^t = 1: the plain update, written out.
  for (std::size_t k = 0; k < 2; ++k) {
    const double mk = m[k] + (1 - 0.9) * (g[k] - m[k]);
    const double vk = 0.999 * v[k] + (1 - 0.999) * g[k] * g[k];
    const double want = (k == 0 ? 1.0 : -1.0) * (1 - lr * 0.01) - lr * (mk / (std::sqrt(vk) + 1e-8));
    CHECK(std::isfinite(theta[k]));
    CHECK(theta[k] == doctest::Approx(want).epsilon(1e-15));
    CHECK(r.first_moment()[k] == mk);
  }
  // One more step would wrap the count to 0 ("no step yet": bias corrections 0, θ non-finite).
  refuses(r, theta, g, lr, "steps: got 18446744073709551615");
  Sgd<double> s(SgdOptions{.momentum = 0.5});
  s.restore(max, 2, std::vector<double>{0.1, 0.1});
  refuses(s, theta, g, lr, "steps: got 18446744073709551615");
}

TEST_CASE("a step the cheap screen cannot clear but whose exact result is finite goes through, exactly") {
  // ε = 1e-300 makes the screen's bound lr·|m'|/ε overflow; the exact step at t = 1 is
  // θ − lr·g/(|g| + ε) = θ − lr·sign(g), far from any overflow.
  Adam<double> r(AdamOptions{.eps = 1e-300});
  std::vector<double> theta{0.5, -0.25, 2.0};
  const std::vector<double> g{1e150, -3e149, 1.0};
  r.step(theta, g, 0.5);  // (bias corrections 1 − β: m̂ = g and v̂ = g² up to rounding)
  CHECK(std::abs(theta[0]) < 1e-15);
  CHECK(theta[1] == doctest::Approx(0.25).epsilon(1e-15));
  CHECK(theta[2] == doctest::Approx(1.5).epsilon(1e-15));
  CHECK(r.steps() == 1);
  AdamW<float> f(AdamOptions{.eps = 1e-40});  // a subnormal ε in float
  std::vector<float> tf{1.0f, 1.0f};
  f.step(tf, std::vector<float>{1e18f, -1e18f}, 0.25f);
  CHECK(tf[0] == doctest::Approx(0.75).epsilon(1e-6));
  CHECK(tf[1] == doctest::Approx(1.25).epsilon(1e-6));
}
