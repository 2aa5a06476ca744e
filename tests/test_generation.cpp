// Cached generation (model/generation/, tiny_lm/kv_decoder.hpp): token for token equal to the
// uncached generation that recomputes every prefix (TinyLm::generate_uncached), over seeds,
// temperatures, top-k / top-p, eos, batch compositions and 1 or 2 threads; the fused head's logits()
// against a direct product; and every bad request refused by name before the decoder is touched.
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/attention.hpp>
#include <dftune/model/generation/generate.hpp>
#include <dftune/model/generation/kv_cache.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include "support/generation.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <utility>
#include <vector>

using namespace dftune;

namespace {

using test::Batch;
using test::completion;
using test::random_prompts;
using test::set_threads;

// Non-trivial gains and biases, so the cached path must get every parameter right.
template <class T>
void randomize(TinyLm<T>& m, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 0.3);
  for (const auto& g : m.layout().groups)
    if (g.rows == 1)
      for (std::size_t k = 0; k < g.size(); ++k) m.parameters()[g.offset + k] += static_cast<T>(normal(rng));
}

const SamplingOptions kOptions[] = {
    {.temperature = 0.0},
    {.temperature = 0.7, .top_k = 50, .seed = 1},  // the finetune pipeline's negatives
    {.temperature = 1.0, .seed = 2},
    {.temperature = 1.3, .top_k = 5, .seed = 3},
    {.temperature = 0.9, .top_p = 0.8, .seed = 4},
    {.temperature = 2.0, .top_k = 7, .top_p = 0.6, .seed = 5},
};

template <class T>
void check_equal_to_uncached(const tiny_lm::Config& c, std::size_t prompts, std::size_t max_new, std::uint64_t seed, token_t eos_token) {
  TinyLm<T> m(c, seed);
  randomize(m, seed + 1);
  const Batch b = random_prompts(prompts, c.max_len - max_new, c.vocab, seed + 2);
  for (const auto& o : kOptions)
    for (const std::optional<token_t> eos : {std::optional<token_t>{}, std::optional<token_t>{eos_token}})
      for (int threads : {1, 2}) {
        CAPTURE(o.temperature);
        CAPTURE(o.top_k);
        CAPTURE(o.top_p);
        CAPTURE(threads);
        CAPTURE(eos.has_value());
        set_threads(threads);
        const Sequences cached = m.generate(b.view(), max_new, o, eos);
        const Sequences uncached = m.generate_uncached(b.view(), max_new, o, eos);
        CHECK(cached.tokens == uncached.tokens);
        CHECK(cached.offsets == uncached.offsets);
        CHECK(cached.prompt_len == uncached.prompt_len);
      }
  set_threads(2);
}

}  // namespace

TEST_CASE("cached generation: token for token the uncached generation, small shape (double and float, threads 1 and 2)") {
  const tiny_lm::Config small{.vocab = 12, .max_len = 14, .d_model = 16, .n_heads = 2, .n_layers = 2, .d_ff = 32, .init_std = 0.5};
  check_equal_to_uncached<double>(small, 9, 6, 11, 3);
  check_equal_to_uncached<float>(small, 9, 6, 12, 3);
}

// Several column tiles per GEMM and two vocabulary tiles in the head, and a prefill large enough
// to run its GEMMs and attention on both threads.
TEST_CASE("cached generation: token for token the uncached generation, tiled shape (double, threads 1 and 2)") {
  const tiny_lm::Config wide{.vocab = 300, .max_len = 24, .d_model = 64, .n_heads = 4, .n_layers = 2, .d_ff = 256, .init_std = 0.5};
  check_equal_to_uncached<double>(wide, 24, 8, 21, 7);
}

TEST_CASE("cached generation: token for token the uncached generation, tiled shape (float, threads 1 and 2)") {
  const tiny_lm::Config wide{.vocab = 300, .max_len = 24, .d_model = 64, .n_heads = 4, .n_layers = 2, .d_ff = 256, .init_std = 0.5};
  check_equal_to_uncached<float>(wide, 24, 8, 22, 7);
}

TEST_CASE("cached generation: a prompt's tokens do not depend on the rest of the batch or on the thread count") {
  const tiny_lm::Config c{.vocab = 300, .max_len = 24, .d_model = 64, .n_heads = 4, .n_layers = 2, .d_ff = 256, .init_std = 0.5};
  test::check_prompt_independence(TinyLm<double>(c, 5), 32, 12, c.vocab);
}

// heads_forward (a row's heads together, position by position: the cached decoders) against
// row_forward (a head at a time: the uncached forwards): the same bits for every block of heads,
// grouped-query heads, and head dimensions that leave a tail after the 16 lanes and 32-column blocks.
TEST_CASE_TEMPLATE("attention::heads_forward: row_forward's bits for any block of heads, grouped queries and tails", T, float, double) {
  std::mt19937 gen(11);
  std::normal_distribution<double> nd(0.0, 1.5);
  for (const std::size_t dh : {std::size_t{8}, std::size_t{40}, std::size_t{64}, std::size_t{70}})
    for (const std::size_t group : {std::size_t{1}, std::size_t{3}}) {
      const std::size_t H = 6, G = H / group, ld_kv = G * dh + 5, L = 19;  // ld_kv: cache rows wider than the heads
      std::vector<T> q(H * dh), k(L * ld_kv), v(L * ld_kv);
      for (auto* x : {&q, &k, &v})
        for (auto& e : *x) e = static_cast<T>(nd(gen));
      const T scale = T(1) / std::sqrt(static_cast<T>(dh));
      for (std::size_t last = 0; last < L; last += 6) {
        std::vector<T> want(H * dh), a(L);
        for (std::size_t h = 0; h < H; ++h)
          attention::row_forward(q.data() + h * dh, k.data() + h / group * dh, v.data() + h / group * dh, ld_kv, last, dh, scale, a.data(),
                                 want.data() + h * dh);
        for (const auto& block : {std::pair<std::size_t, std::size_t>{0, H}, {0, 1}, {2, 5}, {5, 6}}) {
          const std::size_t h0 = block.first, h1 = block.second;
          std::vector<T> got(H * dh, T(-7)), w((h1 - h0) * (last + 1));
          attention::heads_forward(q.data(), k.data(), v.data(), ld_kv, last, dh, h0, h1, group, scale, w.data(), got.data());
          INFO("dh ", dh, " group ", group, " last ", last, " heads [", h0, ", ", h1, ")");
          CHECK(std::memcmp(got.data() + h0 * dh, want.data() + h0 * dh, (h1 - h0) * dh * sizeof(T)) == 0);
          for (std::size_t e = 0; e < H * dh; ++e)
            if (e < h0 * dh || e >= h1 * dh) REQUIRE(got[e] == T(-7));  // other heads untouched
          // A softmax row sums to 1, and the output is a convex combination of the values.
          T sum = 0;
          for (std::size_t j = 0; j <= last; ++j) sum += w[j];
          CHECK(static_cast<double>(sum) == doctest::Approx(1.0).epsilon(1e-6));
        }
      }
    }
}

TEST_CASE("logprob::linear::logits: z = H W + b for both layouts, independent of the thread count") {
  const std::size_t N = 5, d = 33, V = 700;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0, 1);
  std::vector<double> H(N * d), W(V * d), b(V);
  for (auto* v : {&H, &W, &b})
    for (double& x : *v) x = normal(rng);
  for (const auto layout : {logprob::linear::Layout::vocab_major, logprob::linear::Layout::dim_major}) {
    const bool vm = layout == logprob::linear::Layout::vocab_major;
    const logprob::linear::LinearLogits<double> in{.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V, .layout = layout};
    std::vector<double> z1(N * V), z2(N * V);
    const logprob::linear::LinearOptions one{.vocab_tile = 256, .threads = 1}, two{.vocab_tile = 256, .threads = 2};
    logprob::linear::logits(in, std::span<double>(z1), one);
    logprob::linear::logits(in, std::span<double>(z2), two);
    CHECK(std::memcmp(z1.data(), z2.data(), z1.size() * sizeof(double)) == 0);
    double worst = 0;
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t v = 0; v < V; ++v) {
        long double z = b[v];
        for (std::size_t k = 0; k < d; ++k) z += static_cast<long double>(H[n * d + k]) * (vm ? W[v * d + k] : W[k * V + v]);
        worst = std::max(worst, std::abs(static_cast<double>(z) - z1[n * V + v]));
      }
    CHECK(worst < 1e-12);
  }
  const logprob::linear::LinearLogits<double> in{.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V};
  std::vector<double> small(N * V - 1);
  CHECK_THROWS_WITH_AS(logprob::linear::logits(in, std::span<double>(small)), doctest::Contains("logits"), dftune::error);
  CHECK_THROWS_WITH_AS(logprob::linear::logits(in, std::span<double>(H.data(), N * V)), doctest::Contains("logits"), dftune::error);
}

namespace {

// A decoder that records whether generate() touched it: every bad request must be refused first.
struct Recorder {
  using scalar_type = float;
  std::size_t reserved = 0, extended = 0;
  std::vector<float> w = std::vector<float>(4 * 3, 0.0f);
  std::size_t context_length() const { return 10; }
  generation::CacheShape cache_shape() const { return {.layers = 3, .width = 4}; }
  logprob::linear::LinearLogits<float> head() const { return {.proj = w, .dim = 4, .vocab = 3}; }
  void reserve(std::size_t) { ++reserved; }
  void extend(generation::KvCache<float>&, std::span<const std::size_t>, std::span<const token_t>, std::span<const std::int64_t>,
              std::span<float>) {
    ++extended;
  }
};

}  // namespace

TEST_CASE("cached generation: bad requests are named errors before the decoder or the cache is touched") {
  Recorder d;
  Batch b;
  b.add({1, 2});
  b.add({0, 1, 2, 0});
  const SamplingOptions ok{.temperature = 0.7};
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  // Prompt + max_new beyond the context (4 + 7 > 10), also where the sum would wrap.
  for (std::size_t max_new : {std::size_t{7}, max, max - 1, max / 2 + 1})
    CHECK_THROWS_WITH_AS(generation::generate(d, b.view(), max_new, ok), doctest::Contains("max_new"), dftune::error);
  // The cache beyond the memory bound: 3 layers · 2 · (2 + 6 + 4 + 6) positions · 4 · 4 bytes = 1728.
  CHECK_THROWS_WITH_AS(generation::generate(d, b.view(), 6, ok, std::nullopt, {.max_cache_bytes = 1727}),
                       doctest::Contains("max_cache_bytes = 1727"), dftune::error);
  CHECK(generation::cache_bytes<float>({.layers = 3, .width = 4}, 18, {.max_cache_bytes = 1728}) == 1728);
  CHECK_THROWS_WITH_AS(generation::cache_bytes<float>({.layers = 3, .width = max / 8}, 18, {.max_cache_bytes = max}),
                       doctest::Contains("key/value cache"), dftune::error);
  // Sampling options out of range.
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double t : {-0.1, nan, inf})
    CHECK_THROWS_WITH_AS(generation::generate(d, b.view(), 2, {.temperature = t}), doctest::Contains("temperature"), dftune::error);
  for (double p : {0.0, -0.5, 1.5, nan})
    CHECK_THROWS_WITH_AS(generation::generate(d, b.view(), 2, {.top_p = p}), doctest::Contains("top_p"), dftune::error);
  // Prompts: a token outside the vocabulary, an empty prompt.
  Batch bad;
  bad.add({1, 3});
  CHECK_THROWS_WITH_AS(generation::generate(d, bad.view(), 2, ok), doctest::Contains("prompts.tokens"), dftune::error);
  const std::vector<std::int64_t> empty_offsets{0, 0, 2};
  const std::vector<token_t> two{1, 2};
  CHECK_THROWS_WITH_AS(generation::generate(d, Prompts{.tokens = two, .offsets = empty_offsets}, 2, ok), doctest::Contains("prompts.offsets"),
                       dftune::error);
  CHECK(d.reserved == 0);
  CHECK(d.extended == 0);
}

TEST_CASE("TinyLm::generate: the cache bound and the decoder's own checks") {
  const tiny_lm::Config c{.vocab = 12, .max_len = 14, .d_model = 16, .n_heads = 2, .n_layers = 2, .d_ff = 32};
  TinyLm<float> m(c, 1);
  const Batch b = random_prompts(3, 5, c.vocab, 2);
  const std::size_t rows = b.tokens.size() + 3 * 4;
  const std::size_t need = 2 * 2 * rows * 16 * sizeof(float);
  CHECK_THROWS_WITH_AS(m.generate(b.view(), 4, {}, std::nullopt, {.max_cache_bytes = need - 1}), doctest::Contains("max_cache_bytes"),
                       dftune::error);
  CHECK(m.generate(b.view(), 4, {}, std::nullopt, {.max_cache_bytes = need}).tokens == m.generate(b.view(), 4, {}).tokens);
  // extend() refuses a slot past its capacity, before writing the cache.
  tiny_lm::KvDecoder<float> dec(m.config(), m.layout(), m.parameters());
  const std::vector<std::size_t> cap{2};
  generation::KvCache<float> cache(dec.cache_shape(), cap);
  const std::vector<token_t> three{1, 2, 3};
  const std::vector<std::int64_t> off{0, 3};
  const std::vector<std::size_t> slot0{0}, slot1{1};
  std::vector<float> hidden(16);
  CHECK_THROWS_WITH_AS(dec.extend(cache, slot0, three, off, hidden), doctest::Contains("capacity 2"), dftune::error);
  CHECK_THROWS_WITH_AS(dec.extend(cache, slot1, three, off, hidden), doctest::Contains("slots"), dftune::error);
  CHECK(cache.length(0) == 0);
}
