// Dynamic Fine-Tuning (objective/dynamic_ft.hpp): the loss and its gradient against closed forms
// written out again in long double, the whole path logits → token reduction → loss → backward
// through the reduction with per-token weights against central finite differences of the
// stop-gradient surrogate, and every input error.
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/objective/dynamic_ft.hpp>

#include <doctest/doctest.h>

#include "support/testing.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace dftune;

namespace {

using L = long double;

// Three sequences; row 2 is masked (a prompt row) and holds junk that must never be read.
struct Tokens {
  std::vector<double> logp{std::log(0.5), std::log(0.25), std::numeric_limits<double>::quiet_NaN(), std::log(0.8),
                           std::log(0.125), std::log(0.9)};
  std::vector<double> weights{1, 1, 0, 1, 1, 1};
  std::vector<std::int64_t> offsets{0, 2, 4, 6};  // sequence 0: rows 0–1, 1: rows 2–3 (one token), 2: rows 4–5
  TokenScores<double> view() const { return {.token_logp = logp, .weights = weights, .offsets = offsets}; }
};

// −Σ_n c_n p_n log p_n and −c_n p_n, with c_n of the reduction, in long double.
void expect_closed_form(const Tokens& t, NllReduction red) {
  const L p[] = {0.5L, 0.25L, 0, 0.8L, 0.125L, 0.9L};
  const int seq[] = {0, 0, 1, 1, 2, 2};
  const L len[] = {2, 1, 2};
  L loss = 0;
  std::vector<L> grad(6, 0);
  for (int n = 0; n < 6; ++n) {
    if (t.weights[static_cast<std::size_t>(n)] == 0) continue;
    const L c = red == NllReduction::token_mean ? 1.0L / 5 : red == NllReduction::sequence_mean ? 1.0L / 3 : 1 / (3 * len[seq[n]]);
    loss -= c * p[n] * std::log(p[n]);
    grad[static_cast<std::size_t>(n)] = -c * p[n];
  }
  const ScoreResult<double> r = dynamic_ft_loss(t.view(), {.reduction = red});
  CHECK(r.loss == doctest::Approx(static_cast<double>(loss)).epsilon(1e-15));
  REQUIRE(r.grad.size() == 6);
  for (std::size_t n = 0; n < 6; ++n) CHECK(r.grad[n] == doctest::Approx(static_cast<double>(grad[n])).epsilon(1e-15));
  CHECK(r.grad[2] == 0.0);  // masked row
}

}  // namespace

TEST_CASE("dynamic_ft_loss: loss and gradient against the closed form for every reduction") {
  const Tokens t;
  expect_closed_form(t, NllReduction::token_mean);
  expect_closed_form(t, NllReduction::sequence_mean);
  expect_closed_form(t, NllReduction::length_normalized);
  // token_mean by hand: TRL's (Σ −p log p over completion tokens) / (number of them).
  const ScoreResult<double> r = dynamic_ft_loss(t.view());
  const double by_hand = -(0.5 * std::log(0.5) + 0.25 * std::log(0.25) + 0.8 * std::log(0.8) + 0.125 * std::log(0.125) +
                           0.9 * std::log(0.9)) / 5;
  CHECK(r.loss == doctest::Approx(by_hand).epsilon(1e-15));
  // The weight is the token's probability: a certain token (p = 1) gets SFT's full gradient −c,
  // an improbable one almost none (SFT gives every token −c).
  const std::vector<double> lp{0.0, std::log(1e-6)};
  const std::vector<std::int64_t> off{0, 2};
  const ScoreResult<double> w = dynamic_ft_loss(TokenScores<double>{.token_logp = lp, .weights = {}, .offsets = off});
  CHECK(w.grad[0] == -0.5);
  CHECK(w.grad[1] == doctest::Approx(-0.5e-6).epsilon(1e-12));
  CHECK(w.loss == doctest::Approx(-0.5 * 1e-6 * std::log(1e-6)).epsilon(1e-12));
}

TEST_CASE("dynamic_ft_loss: through the token reduction, backward with per-token weights = central differences") {
  // logits → logprob::forward (token_logp) → dynamic_ft_loss → logprob::backward with weights = grad.
  // The surrogate whose gradient this is: F(z) = Σ_n g_n · log p_n(z), with g_n = −c_n·sg(p_n) frozen
  // at the base point.
  const std::size_t V = 7, N = 9;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<double> z(N * V);
  for (double& x : z) x = normal(rng);
  const std::vector<token_t> targets{3, 0, 6, 1, 1, 5, 2, 4, 0};
  const std::vector<double> mask{0, 1, 1, 0, 1, 1, 1, 0, 1};
  const std::vector<std::int64_t> offsets{0, 3, 7, 9};
  auto view = [&](const std::vector<double>& logits, const std::vector<double>& w) {
    return logprob::TokenLogits<double>{.logits = logits, .vocab = V, .targets = targets, .weights = w, .offsets = offsets};
  };
  for (NllReduction red : {NllReduction::token_mean, NllReduction::sequence_mean, NllReduction::length_normalized}) {
    CAPTURE(static_cast<int>(red));
    std::vector<double> seq(3), tok(N);
    logprob::generic::forward(view(z, mask), std::span<double>(seq), std::span<double>(tok));
    const ScoreResult<double> r = dynamic_ft_loss(TokenScores<double>{.token_logp = tok, .weights = mask, .offsets = offsets},
                                                  {.reduction = red});
    const std::vector<double> ones(3, 1.0);
    std::vector<double> g(N * V), g_fast(N * V);
    logprob::generic::backward(view(z, r.grad), std::span<const double>(ones), std::span<double>(g));
    logprob::backward(view(z, r.grad), std::span<const double>(ones), std::span<double>(g_fast));  // the dispatched path
    auto F = [&](const std::vector<double>& logits) {
      std::vector<double> s(3), t(N);
      logprob::generic::forward(view(logits, mask), std::span<double>(s), std::span<double>(t));
      L f = 0;
      for (std::size_t n = 0; n < N; ++n) f += static_cast<L>(r.grad[n]) * t[n];
      return f;
    };
    const double h = 1e-6;
    for (std::size_t k = 0; k < N * V; ++k) {
      const double fd = test::central_difference(z, k, h, F);
      CAPTURE(k);
      CHECK(g[k] == doctest::Approx(fd).epsilon(1e-6).scale(1e-3));
      CHECK(g_fast[k] == doctest::Approx(g[k]).epsilon(1e-12).scale(1e-12));
      if (mask[k / V] == 0) CHECK(g[k] == 0.0);
    }
    // The surrogate's value at the base point is the loss: Σ_n −c_n p_n log p_n.
    CHECK(static_cast<double>(F(z)) == doctest::Approx(static_cast<double>(r.loss)).epsilon(1e-14));
  }
}

TEST_CASE("dynamic_ft_loss: float inputs, stored as float") {
  const std::vector<float> lp{std::log(0.5f), std::log(0.25f)};
  const std::vector<std::int64_t> off{0, 1, 2};
  const ScoreResult<float> r = dynamic_ft_loss(TokenScores<float>{.token_logp = lp, .weights = {}, .offsets = off});
  CHECK(r.grad[0] == doctest::Approx(-0.25).epsilon(1e-7));
  CHECK(r.grad[1] == doctest::Approx(-0.125).epsilon(1e-7));
}

TEST_CASE("dynamic_ft_loss: input errors name the argument and what was expected") {
  auto message = [](const auto& f) {
    try {
      f();
    } catch (const dftune::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Tokens t;
  CHECK(message([&] { (void)dynamic_ft_loss(t.view(), {.reduction = static_cast<NllReduction>(9)}); }).starts_with("reduction: got 9"));
  {
    Tokens u = t;
    u.weights[1] = 0.5;
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }) == "weights[1]: got 0.5, expected 0 or 1 (a completion mask)");
  }
  {
    Tokens u = t;
    u.logp[4] = std::numeric_limits<double>::infinity();
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }) == "token_logp[4]: got inf, expected a finite log-prob");
  }
  {
    Tokens u = t;
    u.weights.pop_back();
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }) == "weights: got size 5, expected size 6");
  }
  {
    Tokens u = t;
    u.offsets = {0, 4, 2, 6};
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }).starts_with("offsets[2]: got 2, expected >= offsets[1]"));
    u.offsets = {1, 2, 6};
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }) == "offsets[0]: got 1, expected 0");
    u.offsets = {0, 2, 5};
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }).starts_with("offsets[2]: got 5, expected N = 6"));
    u.offsets = {0};
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }).starts_with("offsets: got size 1, expected size S + 1 >= 2"));
  }
  {
    Tokens u = t;
    u.weights = {0, 0, 0, 0, 0, 0};
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }).starts_with("weights: got no completion token"));
  }
  {
    Tokens u = t;
    u.weights[3] = 0;  // sequence 1 has no completion token left
    CHECK(message([&] { (void)dynamic_ft_loss(u.view()); }) == "no error");                    // token_mean: fine
    CHECK(message([&] { (void)dynamic_ft_loss(u.view(), {.reduction = NllReduction::sequence_mean}); }) == "no error");
    CHECK(message([&] { (void)dynamic_ft_loss(u.view(), {.reduction = NllReduction::length_normalized}); })
              .starts_with("offsets[1]: got a sequence without completion tokens"));
  }
}
