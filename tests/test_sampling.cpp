// Sampling: the filtered distribution in closed form and, value by value, against an independent
// long-double computation of the temperature / top-k / top-p filter; frequencies at temperature 1
// against the model's own softmax, top-k / top-p never emitting an excluded token, greedy = argmax,
// reproducible batched generation, and every bad argument refused before anything is written.
#include <dftune/model/categorical_policy.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
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

// The filtered distribution from its definition, in long double and written independently of
// sampling.hpp: w_v = exp((z_v − max z) / T); rank tokens by w (lower index first on ties); keep
// the top_k first, then the shortest prefix of those whose mass reaches top_p of the kept mass;
// p_v = w_v / Σ_kept w. T = 0: all mass on the first argmax. Returns nothing when top_p·mass lies
// within 1e-12 (relative) of a prefix mass, where double rounding may legitimately cut either way.
std::optional<std::vector<long double>> reference(const std::vector<double>& z, const SamplingOptions& o) {
  const std::size_t V = z.size();
  std::vector<long double> p(V, 0.0L);
  const std::size_t top = static_cast<std::size_t>(std::max_element(z.begin(), z.end()) - z.begin());
  if (o.temperature == 0) {
    p[top] = 1;
    return p;
  }
  std::vector<long double> w(V);
  for (std::size_t v = 0; v < V; ++v) w[v] = std::exp((static_cast<long double>(z[v]) - z[top]) / o.temperature);
  std::vector<std::size_t> rank(V);
  for (std::size_t v = 0; v < V; ++v) rank[v] = v;
  std::stable_sort(rank.begin(), rank.end(), [&](std::size_t a, std::size_t b) { return w[a] > w[b]; });
  std::size_t keep = (o.top_k == 0 || o.top_k > V) ? V : o.top_k;
  long double mass = 0;
  for (std::size_t i = 0; i < keep; ++i) mass += w[rank[i]];
  if (o.top_p < 1) {
    const long double goal = o.top_p * mass;
    long double prefix = 0;
    for (std::size_t i = 0; i < keep; ++i) {
      prefix += w[rank[i]];
      if (std::abs(prefix - goal) <= 1e-12L * mass) return std::nullopt;
      if (prefix >= goal) {
        keep = i + 1;
        break;
      }
    }
  }
  long double kept = 0;
  for (std::size_t i = 0; i < keep; ++i) kept += w[rank[i]];
  for (std::size_t i = 0; i < keep; ++i) p[rank[i]] = w[rank[i]] / kept;
  return p;
}

// sampling_distribution against the reference, value by value: kept tokens to 1e-13 relative,
// dropped ones exactly 0.
template <class T>
void check_against_reference(const std::vector<double>& z, const SamplingOptions& o, const std::vector<long double>& ref) {
  std::vector<T> zt(z.begin(), z.end());
  std::vector<double> p(z.size(), -1.0);
  std::vector<std::int32_t> order(z.size());
  sampling_distribution<T>(zt, o, p, order);
  for (std::size_t v = 0; v < z.size(); ++v) {
    CAPTURE(v);
    if (ref[v] == 0) {
      CHECK(p[v] == 0);
    } else {
      CHECK(std::abs(p[v] - static_cast<double>(ref[v])) <= 1e-13 * static_cast<double>(ref[v]));
    }
  }
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
  CHECK(p[1] == doctest::Approx(s1[1] / (s1[1] + s1[3])).epsilon(1e-14));
  CHECK(p[3] == doctest::Approx(s1[3] / (s1[1] + s1[3])).epsilon(1e-14));
  CHECK(p[0] + p[2] + p[4] == 0);

  // top_p: the smallest most-probable-first prefix reaching the mass. s1 ≈ (0.0861, 0.6364, 0.0117,
  // 0.2341, 0.0522): the prefixes are 0.636, 0.871, 0.957, 0.988, 1.
  for (const auto& [top_p, kept] : std::vector<std::pair<double, std::vector<std::size_t>>>{
           {0.5, {1}}, {0.8, {1, 3}}, {0.9, {1, 3, 0}}, {0.96, {1, 3, 0, 4}}, {0.99, {1, 3, 0, 4, 2}}}) {
    CAPTURE(top_p);
    sampling_distribution<double>(z, {.temperature = 1.0, .top_p = top_p}, p, order);
    double mass = 0;
    for (std::size_t v : kept) mass += s1[v];
    for (std::size_t v = 0; v < 5; ++v) {
      const bool in = std::find(kept.begin(), kept.end(), v) != kept.end();
      CHECK(p[v] == doctest::Approx(in ? s1[v] / mass : 0.0).epsilon(1e-14));
    }
  }
  // The boundary: top_p·mass equal to a prefix mass, exactly (equal logits give weights of exactly
  // 1): the prefix that reaches it is kept, not one token more.
  const std::vector<double> flat{0.0, 0.0, 0.0, 0.0};
  std::vector<double> pf(4);
  std::vector<std::int32_t> of(4);
  sampling_distribution<double>(flat, {.temperature = 1.0, .top_p = 0.5}, pf, of);
  for (std::size_t v = 0; v < 4; ++v) CHECK(pf[v] == (v < 2 ? 0.5 : 0.0));
  sampling_distribution<double>(flat, {.temperature = 1.0, .top_p = 0.75}, pf, of);
  for (std::size_t v = 0; v < 4; ++v) CHECK(pf[v] == (v < 3 ? 1.0 / 3 : 0.0));

  sampling_distribution<double>(z, {.temperature = 0.0}, p, order);
  CHECK(p[1] == 1);
  // Ties: the lower index wins, in greedy and at the top-k boundary.
  const std::vector<double> tie{2.0, 5.0, 5.0, 5.0};
  sampling_distribution<double>(tie, {.temperature = 0.0}, pf, of);
  CHECK(pf == std::vector<double>{0, 1, 0, 0});
  sampling_distribution<double>(tie, {.temperature = 1.0, .top_k = 2}, pf, of);
  CHECK(pf == std::vector<double>{0, 0.5, 0.5, 0});

  // Ranked by logit, not by the rounded weights: at the largest temperature both weights round to
  // 1, yet top-1 keeps the higher logit (ranking by weight kept index 0).
  const std::vector<double> far{-999.7, 0.1};
  std::vector<double> p2(2);
  std::vector<std::int32_t> o2(2);
  sampling_distribution<double>(far, {.temperature = std::numeric_limits<double>::max(), .top_k = 1}, p2, o2);
  CHECK(p2 == std::vector<double>{0, 1});
  sampling_distribution<double>(far, {.temperature = std::numeric_limits<double>::max(), .top_p = 0.3}, p2, o2);
  CHECK(p2 == std::vector<double>{0, 1});

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

TEST_CASE("sampling_distribution: every value against an independent computation (temperature, top-k, top-p)") {
  std::mt19937_64 rng(17);
  std::normal_distribution<double> normal(0, 2.5);
  std::uniform_real_distribution<double> unit(0, 1);
  int checked = 0, ambiguous = 0, cut_by_p = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const std::size_t V = 1 + rng() % 40;
    std::vector<double> z(V);
    for (double& x : z) x = normal(rng);
    if (V > 2 && rng() % 4 == 0) z[rng() % V] = -std::numeric_limits<double>::infinity();  // a masked token
    if (V > 3 && rng() % 4 == 0) z[rng() % V] = z[rng() % V];                              // an exact tie
    SamplingOptions o;
    const auto t = rng() % 8;
    o.temperature = t == 0 ? 0.0 : t == 1 ? 0.05 + 0.2 * unit(rng) : 0.3 + 2.5 * unit(rng);
    o.top_k = rng() % 3 == 0 ? 0 : rng() % (V + 3);
    o.top_p = rng() % 3 == 0 ? 1.0 : 0.02 + 0.98 * unit(rng);
    const auto ref = reference(z, o);
    if (!ref) {
      ++ambiguous;
      continue;
    }
    CAPTURE(trial);
    CAPTURE(V);
    CAPTURE(o.temperature);
    CAPTURE(o.top_k);
    CAPTURE(o.top_p);
    check_against_reference<double>(z, o, *ref);
    ++checked;
    if (o.top_p < 1 && o.temperature > 0) {
      const std::size_t k = (o.top_k == 0 || o.top_k > V) ? V : o.top_k;
      cut_by_p += static_cast<std::size_t>(std::count_if(ref->begin(), ref->end(), [](long double x) { return x > 0; })) < std::min(k, V) ? 1 : 0;
    }
    // Float logits: the same distribution of the logits rounded to float.
    std::vector<double> zf(V);
    for (std::size_t v = 0; v < V; ++v) zf[v] = static_cast<double>(static_cast<float>(z[v]));
    if (const auto ref_f = reference(zf, o)) check_against_reference<float>(zf, o, *ref_f);
  }
  INFO("checked ", checked, ", skipped as within rounding of a top-p boundary ", ambiguous, ", cut by top-p ", cut_by_p);
  CHECK(ambiguous < 10);
  CHECK(cut_by_p > 500);  // top-p decides the kept set in many of the cases
}

TEST_CASE("sampling_distribution / sample_token: every bad argument is a named error, nothing written") {
  const std::vector<double> z{0.5, -1.0, 2.0};
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  auto refused = [&](const std::vector<double>& logits, std::size_t n_probs, std::size_t n_order, const SamplingOptions& o,
                     const char* names, double u = 0.5) {
    CAPTURE(names);
    std::vector<double> probs(n_probs, -7.0);
    std::vector<std::int32_t> order(n_order, -7);
    CHECK_THROWS_WITH_AS(sampling_distribution<double>(logits, o, probs, order), doctest::Contains(names), dftune::error);
    CHECK_THROWS_WITH_AS(sample_token<double>(logits, o, u, probs, order), doctest::Contains(names), dftune::error);
    CHECK(std::all_of(probs.begin(), probs.end(), [](double p) { return p == -7.0; }));
    CHECK(std::all_of(order.begin(), order.end(), [](std::int32_t i) { return i == -7; }));
  };
  refused({}, 0, 0, {}, "logits: got size 0");                   // empty logits: no token to draw
  refused({}, 0, 0, {.temperature = 0}, "logits: got size 0");
  refused(z, 2, 3, {}, "probs: got size 2");                      // probs shorter than V
  refused(z, 2, 3, {.temperature = 0}, "probs: got size 2");
  refused(z, 4, 3, {}, "probs: got size 4");
  refused(z, 3, 2, {.top_k = 1}, "order: got size 2");           // order shorter than V
  refused(z, 3, 0, {}, "order: got size 0");
  refused({0.5, nan, 1.0}, 3, 3, {}, "logits[1]: got nan");
  refused({0.5, inf, 1.0}, 3, 3, {.temperature = 0}, "logits[1]: got inf");
  refused({-inf, -inf}, 2, 2, {}, "every logit -inf");
  refused(z, 3, 3, {.temperature = -1}, "temperature");
  refused(z, 3, 3, {.temperature = nan}, "temperature");
  refused(z, 3, 3, {.top_p = 0}, "top_p");
  refused(z, 3, 3, {.top_p = 1.5}, "top_p");
  std::vector<double> probs(3, -7.0);
  std::vector<std::int32_t> order(3, -7);
  for (const double u : {1.0, -0.25, nan, inf}) {
    CAPTURE(u);
    CHECK_THROWS_WITH_AS(sample_token<double>(z, {}, u, probs, order), doctest::Contains("u: got"), dftune::error);
  }
  CHECK(probs == std::vector<double>(3, -7.0));
  // −inf masks a token: it is never drawn, greedy or not.
  const std::vector<double> masked{-inf, 1.0, -inf, 0.5};
  std::vector<double> pm(4);
  std::vector<std::int32_t> om(4);
  sampling_distribution<double>(masked, {.temperature = 0.7, .top_p = 0.99}, pm, om);
  CHECK(pm[0] == 0);
  CHECK(pm[2] == 0);
  CHECK(pm[1] + pm[3] == doctest::Approx(1).epsilon(1e-15));
  CHECK(sample_token<double>(masked, {.temperature = 0}, 0.3, pm, om) == 1);
  CHECK(sample_token<double>(std::vector<double>{-inf, -inf, 3.0}, {}, 0.0, std::span<double>(pm).first(3), std::span<std::int32_t>(om).first(3)) == 2);
}

TEST_CASE("CategoricalPolicy: sizes beyond int32 ids or memory are named errors, not std::length_error") {
  constexpr std::size_t ids = std::size_t{1} << 31;
  CHECK_THROWS_WITH_AS(CategoricalPolicy<double>(ids + 1, 2), doctest::Contains("num_contexts"), dftune::error);
  CHECK_THROWS_WITH_AS(CategoricalPolicy<double>(2, ids + 1), doctest::Contains("vocab"), dftune::error);
  CHECK_THROWS_WITH_AS(CategoricalPolicy<double>(ids, ids), doctest::Contains("num_contexts·vocab"), dftune::error);
  CHECK_THROWS_WITH_AS(CategoricalPolicy<float>(0, 2), doctest::Contains("num_contexts"), dftune::error);
  CategoricalPolicy<double> ok(3, 4);
  CHECK(ok.parameters().size() == 12);
}
