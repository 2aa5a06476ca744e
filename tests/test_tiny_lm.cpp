// The tiny causal LM: Model concept, log-probs against a direct evaluation, causality, and the
// hand-written backward against central finite differences for every parameter group.
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace dftune;

namespace {

tiny_lm::Config small_config() {
  return {.vocab = 7, .max_len = 8, .d_model = 8, .n_heads = 2, .n_layers = 2, .d_ff = 12, .init_std = 0.5};
}

// Random parameters everywhere (gains and biases too), so no term of the backward hides behind a
// zero or a one.
void randomize(TinyLm<double>& m, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, 0.4);
  for (double& p : m.parameters()) p += n(rng);
}

Sequences batch() {
  Sequences s;
  s.push(std::vector<token_t>{1, 2, 3}, std::vector<token_t>{4, 0, 6});
  s.push(std::vector<token_t>{5}, std::vector<token_t>{2});
  s.push(std::vector<token_t>{0, 6, 6, 1, 2}, std::vector<token_t>{3, 3, 5});  // length = max_len
  return s;
}

double weighted_score(TinyLm<double>& m, const SequenceBatch& b, const std::vector<double>& d) {
  std::vector<double> s(b.size());
  m.sequence_logp(b, s);
  double f = 0;
  for (std::size_t i = 0; i < s.size(); ++i) f += d[i] * s[i];
  return f;
}

}  // namespace

TEST_CASE("TinyLm satisfies Model and SamplingModel") {
  static_assert(check_model<TinyLm<double>>());
  static_assert(Model<TinyLm<float>>);
  static_assert(SamplingModel<TinyLm<float>>);
  static_assert(SamplingModel<TinyLm<double>>);
}

TEST_CASE("TinyLm: log-probs are normalised, causal and per-sequence") {
  TinyLm<double> m(small_config(), 3);
  randomize(m, 4);
  // Σ_y π(y|x) over every one-token completion is 1.
  Sequences all;
  for (token_t y = 0; y < 7; ++y) all.push(std::vector<token_t>{2, 5}, std::vector<token_t>{y});
  std::vector<double> lp(7);
  m.sequence_logp(all.view(), lp);
  double total = 0;
  for (double v : lp) total += std::exp(v);
  CHECK(total == doctest::Approx(1).epsilon(1e-12));

  // A sequence's score does not depend on the other sequences of the batch.
  const Sequences b = batch();
  std::vector<double> together(3), alone(1);
  m.sequence_logp(b.view(), together);
  for (std::size_t s = 0; s < 3; ++s) {
    Sequences one;
    const auto seq = b.view().sequence(s);
    const auto p = static_cast<std::size_t>(b.prompt_len[s]);
    one.push(seq.first(p), seq.subspan(p));
    m.sequence_logp(one.view(), alone);
    CHECK(alone[0] == doctest::Approx(together[s]).epsilon(1e-12));
  }

  // Causality: log π(y_1 | x) does not change when a later token changes.
  Sequences a, c;
  a.push(std::vector<token_t>{1, 2}, std::vector<token_t>{3});
  c.push(std::vector<token_t>{1, 2}, std::vector<token_t>{3, 4});
  Sequences c2;
  c2.push(std::vector<token_t>{1, 2}, std::vector<token_t>{3, 6});
  std::vector<double> la(1), lc(1), lc2(1);
  m.sequence_logp(a.view(), la);
  m.sequence_logp(c.view(), lc);
  m.sequence_logp(c2.view(), lc2);
  // log π(3,4) − log π(3,6) = log π(4|..3) − log π(6|..3): both share log π(3|x) = la.
  Sequences t4, t6;
  t4.push(std::vector<token_t>{1, 2, 3}, std::vector<token_t>{4});
  t6.push(std::vector<token_t>{1, 2, 3}, std::vector<token_t>{6});
  std::vector<double> l4(1), l6(1);
  m.sequence_logp(t4.view(), l4);
  m.sequence_logp(t6.view(), l6);
  CHECK(lc[0] == doctest::Approx(la[0] + l4[0]).epsilon(1e-12));
  CHECK(lc2[0] == doctest::Approx(la[0] + l6[0]).epsilon(1e-12));
}

TEST_CASE("TinyLm: gradients against central finite differences, per parameter group") {
  TinyLm<double> m(small_config(), 11);
  randomize(m, 12);
  const Sequences b = batch();
  const std::vector<double> d{0.7, -1.3, 0.4};
  m.zero_gradients();
  m.accumulate_gradients(b.view(), d);
  // accumulate_gradients adds: a second call doubles.
  const std::vector<double> g(m.gradients().begin(), m.gradients().end());
  m.accumulate_gradients(b.view(), d);
  for (std::size_t k = 0; k < g.size(); k += 37) CHECK(m.gradients()[k] == doctest::Approx(2 * g[k]).epsilon(1e-12));

  const double h = 1e-5;
  auto theta = m.parameters();
  for (const auto& grp : m.layout().groups) {
    double worst = 0, scale = 0;
    for (std::size_t k = grp.offset; k < grp.offset + grp.size(); ++k) {
      const double keep = theta[k];
      theta[k] = keep + h;
      const double up = weighted_score(m, b.view(), d);
      theta[k] = keep - h;
      const double down = weighted_score(m, b.view(), d);
      theta[k] = keep;
      const double fd = (up - down) / (2 * h);
      worst = std::max(worst, std::abs(fd - g[k]));
      scale = std::max(scale, std::abs(fd));
    }
    INFO("group ", grp.name, ": max |fd − analytic| = ", worst, ", max |fd| = ", scale);
    CHECK(scale > 0);  // every group matters in this batch (w/ pos_emb rows beyond length 8 absent)
    CHECK(worst <= 1e-7 * std::max(1.0, scale));
  }
}

TEST_CASE("TinyLm: errors name the argument") {
  TinyLm<double> m(small_config());
  Sequences too_long;
  too_long.push(std::vector<token_t>{1, 2, 3, 4, 5}, std::vector<token_t>{1, 2, 3, 4});
  std::vector<double> s(1);
  CHECK_THROWS_WITH_AS(m.sequence_logp(too_long.view(), s), doctest::Contains("max_len"), dftune::error);
  Sequences bad;
  bad.push(std::vector<token_t>{1}, std::vector<token_t>{9});
  CHECK_THROWS_AS(m.sequence_logp(bad.view(), s), dftune::error);
  std::vector<double> wrong(2);
  Sequences ok;
  ok.push(std::vector<token_t>{1}, std::vector<token_t>{2});
  CHECK_THROWS_WITH_AS(m.sequence_logp(ok.view(), wrong), doctest::Contains("scores"), dftune::error);
  CHECK_THROWS_WITH_AS(TinyLm<double>(tiny_lm::Config{.d_model = 10, .n_heads = 4}), doctest::Contains("n_heads"), dftune::error);
}
