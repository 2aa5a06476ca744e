// The tiny causal LM: Model concept, log-probs against a direct evaluation, causality, the
// hand-written backward against central finite differences for every parameter group, results
// bit-identical for any thread count, and configs whose sizes wrap refused before allocating.
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

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

namespace {

// A batch of `S` sequences of 3..8 tokens (max_len 8), enough rows for several chunks.
Sequences long_batch(std::size_t S, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Sequences b;
  for (std::size_t s = 0; s < S; ++s) {
    const std::size_t len = 3 + rng() % 6, p = 1 + rng() % (len - 1);
    std::vector<token_t> t(len);
    for (auto& x : t) x = static_cast<token_t>(rng() % 7);
    b.push(std::span<const token_t>(t).first(p), std::span<const token_t>(t).subspan(p));
  }
  return b;
}

template <class T>
bool same_bits(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE("TinyLm: scores and gradients are bit-identical for 1, 2 and 3 threads", T, float, double) {
#if defined(_OPENMP)
  const Sequences b = long_batch(60, 5);
  const std::size_t n = b.tokens.size();
  REQUIRE(tiny_lm::chunk_count(n, b.size()) > 2);  // several chunks: the partition matters
  std::vector<T> d(b.size());
  for (std::size_t s = 0; s < d.size(); ++s) d[s] = static_cast<T>(0.1 * static_cast<double>(s % 7) - 0.3);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    TinyLm<T> m(small_config(), 21);
    std::mt19937_64 rng(22);
    std::normal_distribution<double> nd(0, 0.4);
    for (T& p : m.parameters()) p += static_cast<T>(nd(rng));
    std::vector<T> scores(b.size());
    m.sequence_logp(b.view(), scores);
    m.zero_gradients();
    m.accumulate_gradients(b.view(), d);
    m.accumulate_gradients(b.view(), d);  // accumulating onto a non-zero gradient too
    std::vector<T> g(m.gradients().begin(), m.gradients().end());
    return std::pair{scores, g};
  };
  const int before = omp_get_max_threads();
  const auto one = run(1), two = run(2), three = run(3);
  omp_set_num_threads(before);
  CHECK(same_bits<T>(one.first, two.first));
  CHECK(same_bits<T>(one.first, three.first));
  CHECK(same_bits<T>(one.second, two.second));
  CHECK(same_bits<T>(one.second, three.second));
  double worst = 0;
  for (std::size_t k = 0; k < one.second.size(); ++k)
    worst = std::max(worst, std::abs(static_cast<double>(one.second[k]) - static_cast<double>(two.second[k])));
  INFO("max |grad(1 thread) − grad(2 threads)| = ", worst);
  CHECK(worst == 0);
#else
  MESSAGE("built without OpenMP: one thread only");
#endif
}

TEST_CASE("tiny_lm::parameter_count is make_layout's total; buffer_sizes are the closed forms") {
  for (const tiny_lm::Config c : {small_config(), tiny_lm::Config{}, tiny_lm::Config{.vocab = 1, .max_len = 2, .d_model = 1, .n_heads = 1, .n_layers = 1, .d_ff = 1},
                                  tiny_lm::Config{.vocab = 300, .max_len = 33, .d_model = 24, .n_heads = 3, .n_layers = 5, .d_ff = 7}}) {
    const auto lay = tiny_lm::make_layout(c);
    std::size_t sum = 0;
    for (const auto& g : lay.groups) {
      CHECK(g.offset == sum);
      sum += g.size();
    }
    CHECK(lay.total == sum);
    CHECK(tiny_lm::parameter_count(c) == lay.total);
    CHECK(TinyLm<float>(c).parameters().size() == lay.total);
    const std::size_t n = 13, L = c.n_layers, d = c.d_model;
    const auto z = tiny_lm::buffer_sizes(c, n, "batch");
    CHECK(z.layer_rows_d == L * n * d);
    CHECK(z.residual == (L + 1) * n * d);
    CHECK(z.qkv == L * n * 3 * d);
    CHECK(z.hidden == L * n * c.d_ff);
    CHECK(z.layer_rows == L * n);
    CHECK(z.rows_d == n * d);
    CHECK(z.rows_qkv == n * 3 * d);
    CHECK(z.rows_ff == n * c.d_ff);
    CHECK(z.logits == n * c.vocab);
    CHECK(z.attention == L * n * c.max_len * c.n_heads);
  }
}

TEST_CASE("TinyLm: a config whose sizes wrap around size_t is a named error before any allocation") {
  constexpr std::size_t big = std::size_t{1} << 32, max = std::numeric_limits<std::size_t>::max();
  struct Case {
    tiny_lm::Config c;
    const char* names;
  };
  const Case cases[] = {
      // d² = 2^64 wraps to 0: the layout would be a few elements long.
      {{.vocab = 4, .max_len = 4, .d_model = big, .n_heads = 1, .n_layers = 1, .d_ff = 1}, "parameter count"},
      // V·d = 2^31·2^33 = 2^64.
      {{.vocab = std::size_t{1} << 31, .max_len = 4, .d_model = std::size_t{1} << 33, .n_heads = 1, .n_layers = 1, .d_ff = 1}, "parameter count"},
      // n_layers · block wraps.
      {{.vocab = 4, .max_len = 4, .d_model = 2, .n_heads = 1, .n_layers = max / 8, .d_ff = 1}, "parameter count"},
      {{.vocab = 4, .max_len = 4, .d_model = 2, .n_heads = 1, .n_layers = 1, .d_ff = max / 3}, "parameter count"},
      // max_len·d for the position table.
      {{.vocab = 4, .max_len = max / 2, .d_model = 4, .n_heads = 1, .n_layers = 1, .d_ff = 1}, "parameter count"},
      // Parameters fit, the attention probabilities of one max_len sequence (max_len² = 2^64) do not.
      {{.vocab = 4, .max_len = big, .d_model = 1, .n_heads = 1, .n_layers = 1, .d_ff = 1}, "attention"},
      // Parameters fit (2^62 < 2^64), but exceed kMaxElements (2^60).
      {{.vocab = 4, .max_len = 4, .d_model = 1, .n_heads = 1, .n_layers = 1, .d_ff = std::size_t{1} << 62}, "parameter count"},
      // A vocabulary beyond what an int32 token id can name.
      {{.vocab = (std::size_t{1} << 31) + 1, .max_len = 4, .d_model = 1, .n_heads = 1, .n_layers = 1, .d_ff = 1}, "config.vocab"},
      {{.vocab = 4, .max_len = 4, .d_model = 4, .n_heads = 1, .n_layers = 1, .d_ff = 1, .init_std = std::numeric_limits<double>::infinity()},
       "config.init_std"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.names);
    CHECK_THROWS_WITH_AS(tiny_lm::validate(k.c), doctest::Contains(k.names), dftune::error);
    CHECK_THROWS_WITH_AS(TinyLm<float>(k.c), doctest::Contains(k.names), dftune::error);
    CHECK_THROWS_WITH_AS(TinyLm<double>(k.c), doctest::Contains(k.names), dftune::error);
  }
  // A batch whose buffers would wrap: checked the same way (here by buffer_sizes directly: no batch
  // that large fits in memory).
  const tiny_lm::Config c = small_config();
  CHECK_THROWS_WITH_AS(tiny_lm::buffer_sizes(c, max / 4, "batch"), doctest::Contains("batch: "), dftune::error);
  CHECK_THROWS_WITH_AS(tiny_lm::buffer_sizes(c, tiny_lm::kMaxElements / 8 + 1, "batch"), doctest::Contains("at most"), dftune::error);
}

TEST_CASE("TinyLm::generate: max_new near SIZE_MAX is a named error, the model unchanged") {
  TinyLm<float> m(small_config(), 2);
  const std::vector<token_t> tokens{1, 2, 3, 4, 0};
  const std::vector<std::int64_t> offsets{0, 2, 5};
  const Prompts prompts{.tokens = tokens, .offsets = offsets};
  const SamplingOptions o{.temperature = 0.9, .top_k = 4, .seed = 5};
  const std::vector<float> theta(m.parameters().begin(), m.parameters().end());
  const Sequences ref = m.generate(prompts, 3, o);
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  // 2 + (SIZE_MAX − 1) wraps to 0 and 5 + 2·(SIZE_MAX − 2) to 1: both passed the old length check.
  for (const std::size_t max_new : {max, max - 1, max - 2, max / 2 + 1, small_config().max_len - 1, small_config().max_len}) {
    CAPTURE(max_new);
    CHECK_THROWS_WITH_AS(m.generate(prompts, max_new, o), doctest::Contains("max_new"), dftune::error);
  }
  CHECK(same_bits<float>(m.parameters(), theta));
  const Sequences again = m.generate(prompts, 3, o);
  CHECK(again.tokens == ref.tokens);
  CHECK(again.offsets == ref.offsets);
  // Without prompts there is nothing to extend: any max_new gives an empty result.
  const std::vector<token_t> none;
  const std::vector<std::int64_t> zero{0};
  CHECK(m.generate(Prompts{.tokens = none, .offsets = zero}, max, o).size() == 0);
}
