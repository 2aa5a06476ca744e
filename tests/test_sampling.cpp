// Sampling: the filtered distribution in closed form, frequencies at temperature 1 against the
// model's own softmax, top-k / top-p never emitting an excluded token, greedy = argmax, and
// reproducible batched generation.
#include <dftune/model/sampling.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

using namespace dftune;

namespace {

std::vector<double> softmax(const std::vector<double>& z, double temp) {
  std::vector<double> p(z.size());
  double sum = 0;
  for (std::size_t v = 0; v < z.size(); ++v) sum += (p[v] = std::exp(z[v] / temp));
  for (double& x : p) x /= sum;
  return p;
}

Prompts view(const std::vector<token_t>& tokens, const std::vector<std::int64_t>& offsets) {
  return {.tokens = tokens, .offsets = offsets};
}

}  // namespace

TEST_CASE("sampling_distribution: temperature, top-k, top-p and greedy in closed form") {
  const std::vector<double> z{1.0, 3.0, -1.0, 2.0, 0.5};  // order by prob: 1, 3, 0, 4, 2
  std::vector<double> p(5);
  std::vector<std::int32_t> order(5);
  sampling_distribution<double>(z, {.temperature = 0.7}, p, order);
  const auto ref = softmax(z, 0.7);
  for (std::size_t v = 0; v < 5; ++v) CHECK(p[v] == doctest::Approx(ref[v]).epsilon(1e-12));

  sampling_distribution<double>(z, {.temperature = 1.0, .top_k = 2}, p, order);
  const auto s1 = softmax(z, 1.0);
  CHECK(p[1] == doctest::Approx(s1[1] / (s1[1] + s1[3])));
  CHECK(p[3] == doctest::Approx(s1[3] / (s1[1] + s1[3])));
  CHECK(p[0] + p[2] + p[4] == 0);

  // top_p: the smallest most-probable-first prefix reaching the mass; s1[1] ≈ 0.61 < 0.8 <= s1[1] + s1[3].
  sampling_distribution<double>(z, {.temperature = 1.0, .top_p = 0.8}, p, order);
  CHECK(p[1] + p[3] == doctest::Approx(1));
  CHECK(p[0] + p[2] + p[4] == 0);
  sampling_distribution<double>(z, {.temperature = 1.0, .top_p = 0.5}, p, order);
  CHECK(p[1] == 1);

  sampling_distribution<double>(z, {.temperature = 0.0}, p, order);
  CHECK(p[1] == 1);
  // Ties: the lower index wins, in greedy and at the top-k boundary.
  const std::vector<double> tie{2.0, 5.0, 5.0, 5.0};
  sampling_distribution<double>(tie, {.temperature = 0.0}, p, order);
  CHECK(p[1] == 1);
  sampling_distribution<double>(tie, {.temperature = 1.0, .top_k = 2}, p, order);
  CHECK(p[1] == doctest::Approx(0.5));
  CHECK(p[2] == doctest::Approx(0.5));
  CHECK(p[3] == 0);

  CHECK_THROWS_WITH_AS(validate(SamplingOptions{.top_p = 0}), doctest::Contains("top_p"), dftune::error);
  CHECK_THROWS_WITH_AS(validate(SamplingOptions{.temperature = -1}), doctest::Contains("temperature"), dftune::error);
}

TEST_CASE("sample_token: frequencies match the distribution; top-k / top-p never emit excluded tokens") {
  const std::vector<double> z{0.2, 1.5, -0.7, 1.1, 0.0, -2.0};
  std::vector<double> p(6);
  std::vector<std::int32_t> order(6);
  SplitMix64 rng(42);
  const int n = 200000;
  std::vector<int> count(6, 0);
  for (int i = 0; i < n; ++i) ++count[static_cast<std::size_t>(sample_token<double>(z, {}, rng.uniform(), p, order))];
  const auto ref = softmax(z, 1.0);
  for (std::size_t v = 0; v < 6; ++v) {
    const double se = std::sqrt(ref[v] * (1 - ref[v]) / n);
    CHECK(std::abs(count[v] / double(n) - ref[v]) < 5 * se);
  }
  for (const SamplingOptions o : {SamplingOptions{.temperature = 0.7, .top_k = 3}, SamplingOptions{.temperature = 1.3, .top_p = 0.7},
                                  SamplingOptions{.temperature = 2.0, .top_k = 4, .top_p = 0.9}}) {
    sampling_distribution<double>(z, o, p, order);
    const std::vector<double> allowed = p;
    for (int i = 0; i < 20000; ++i) {
      const token_t y = sample_token<double>(z, o, rng.uniform(), p, order);
      REQUIRE(allowed[static_cast<std::size_t>(y)] > 0);
    }
  }
}

TEST_CASE("TinyLm::generate: temperature-1 frequencies match exp(log π); reproducible; greedy; eos") {
  TinyLm<double> m({.vocab = 5, .max_len = 6, .d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 8, .init_std = 1.0}, 7);
  const std::vector<token_t> tokens{1, 2, 3, 4, 0};
  const std::vector<std::int64_t> offsets{0, 2, 5};
  const int n = 40000;
  // n copies of prompt 0: first-token frequencies against the model's own probabilities.
  std::vector<token_t> many;
  std::vector<std::int64_t> many_off{0};
  for (int i = 0; i < n; ++i) {
    many.insert(many.end(), {1, 2});
    many_off.push_back(static_cast<std::int64_t>(many.size()));
  }
  const Sequences out = m.generate(view(many, many_off), 1, {.temperature = 1.0, .seed = 3});
  REQUIRE(out.size() == static_cast<std::size_t>(n));
  std::vector<int> count(5, 0);
  for (std::size_t s = 0; s < out.size(); ++s) ++count[static_cast<std::size_t>(out.view().sequence(s)[2])];
  Sequences all;
  for (token_t y = 0; y < 5; ++y) all.push(std::vector<token_t>{1, 2}, std::vector<token_t>{y});
  std::vector<double> lp(5);
  m.sequence_logp(all.view(), lp);
  for (std::size_t v = 0; v < 5; ++v) {
    const double q = std::exp(lp[v]), se = std::sqrt(q * (1 - q) / n);
    CHECK(std::abs(count[v] / double(n) - q) < 5 * se + 1e-12);
  }

  // Same seed, same tokens; a prompt's completion does not depend on the rest of the batch.
  const SamplingOptions o{.temperature = 0.7, .top_k = 3, .seed = 9};
  const Sequences a = m.generate(view(tokens, offsets), 3, o), b = m.generate(view(tokens, offsets), 3, o);
  CHECK(a.tokens == b.tokens);
  const std::vector<token_t> first{1, 2};
  const std::vector<std::int64_t> first_off{0, 2};
  const Sequences alone = m.generate(view(first, first_off), 3, o);
  CHECK(std::vector<token_t>(alone.tokens.begin(), alone.tokens.end()) ==
        std::vector<token_t>(a.tokens.begin(), a.tokens.begin() + 5));
  CHECK(a.prompt_len == std::vector<std::int64_t>{2, 3});

  // Greedy: every completion token is the argmax of the model's next-token distribution.
  const Sequences g = m.generate(view(tokens, offsets), 3, {.temperature = 0.0});
  for (std::size_t s = 0; s < g.size(); ++s) {
    const auto seq = g.view().sequence(s);
    for (std::size_t t = static_cast<std::size_t>(g.prompt_len[s]); t < seq.size(); ++t) {
      Sequences cand;
      for (token_t y = 0; y < 5; ++y) cand.push(seq.first(t), std::vector<token_t>{y});
      m.sequence_logp(cand.view(), lp);
      CHECK(seq[t] == static_cast<token_t>(std::max_element(lp.begin(), lp.end()) - lp.begin()));
    }
  }

  // eos ends a completion (it is kept as the last token): no earlier completion token is eos.
  for (token_t e = 0; e < 5; ++e) {
    const Sequences s = m.generate(view(tokens, offsets), 3, {.temperature = 0.0}, e);
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto c = s.view().sequence(i).subspan(static_cast<std::size_t>(s.prompt_len[i]));
      for (std::size_t t = 0; t + 1 < c.size(); ++t) CHECK(c[t] != e);
    }
  }
  CHECK_THROWS_WITH_AS(m.generate(view(tokens, offsets), 4, o), doctest::Contains("max_len"), dftune::error);
}
