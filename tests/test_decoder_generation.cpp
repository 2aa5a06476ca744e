// Cached generation of the decoder family (decoder/kv_decoder.hpp): token for token equal to the
// uncached generation that recomputes every prefix (Decoder::generate_uncached), for GPT-2 and for
// Llama-family configs with grouped-query attention, Llama-3 RoPE scaling (prompts + completions
// past original_max_position), q/k/v biases and tied or untied heads, over sampling settings, eos
// and 1 or 2 threads; prompts independent of the batch and the thread count; the key/value heads
// only in the cache; and every bad request refused by name before anything is allocated.
// The comparison with an independent PyTorch sampler is tests/hf/generate_parity.py.
#include <dftune/model/decoder/decoder.hpp>
#include <dftune/model/decoder/kv_decoder.hpp>
#include <dftune/model/generation/generate.hpp>

#include "support/generation.hpp"
#include "support/testing.hpp"

#include <doctest/doctest.h>

#include <limits>
#include <optional>
#include <random>
#include <type_traits>
#include <vector>

using namespace dftune;

static_assert(generation::CachedDecoder<decoder::KvDecoder<float>> && generation::CachedDecoder<decoder::KvDecoder<double>>);
static_assert(SamplingModel<Decoder<float>>);

namespace {

using test::Batch;
using test::completion;
using test::random_prompts;
using test::set_threads;

// GPT-2 with every bias; 4 heads of 8.
decoder::Config gpt2() { return decoder::tiny_gpt2(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*max_len=*/24); }

// Llama-3: 4 query heads on 2 key/value heads, head_dim 12 (q width 48 ≠ d 32), θ 500000 with
// rope scaling whose original_max_position (8) the sequences pass, q/k/v biases, untied head.
decoder::Config llama() {
  auto c = decoder::tiny_llama(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2, /*max_len=*/24);
  c.head_dim = 12;
  c.d_ff = 48;
  c.rope_theta = 500000;
  c.rope_scaling = {.factor = 32, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 8};
  c.qkv_bias = true;
  c.tied_head = false;
  return c;
}

// Qwen2-like: one key/value head for 4 query heads, q/k/v biases, tied head.
decoder::Config qwen2() {
  auto c = decoder::tiny_llama(61, 32, 2, 4, 1, 24);
  c.rope_theta = 1000000;
  c.qkv_bias = true;
  c.tied_head = true;
  return c;
}

// Every parameter moved off its initialisation, at a scale where the layers do something.
template <class T>
Decoder<T> model(const decoder::Config& c, std::uint64_t seed) {
  Decoder<T> m(c, seed);
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> noise(0, 0.15);
  for (T& p : m.parameters()) p += static_cast<T>(noise(rng));
  return m;
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
void check_equal_to_uncached(const decoder::Config& c, std::uint64_t seed) {
  Decoder<T> m = model<T>(c, seed);
  const std::size_t max_new = 10;
  const Batch b = random_prompts(6, c.max_len - max_new, c.vocab, seed + 2);
  for (const auto& o : kOptions)
    for (const std::optional<token_t> eos : {std::optional<token_t>{}, std::optional<token_t>{5}})
      for (int threads : {1, 2}) {
        if (threads == 1 && std::is_same_v<T, float>) continue;  // float: 2 threads only (thread independence: below)
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
      }
  set_threads(2);
}

}  // namespace

TEST_CASE("decoder cached generation: token for token the uncached generation, GPT-2 (double and float, threads 1 and 2)") {
  check_equal_to_uncached<double>(gpt2(), 31);
  check_equal_to_uncached<float>(gpt2(), 32);
}

TEST_CASE("decoder cached generation: token for token the uncached generation, Llama-3 GQA + rope scaling + q/k/v biases") {
  check_equal_to_uncached<double>(llama(), 41);
  check_equal_to_uncached<float>(llama(), 42);
}

TEST_CASE("decoder cached generation: token for token the uncached generation, Qwen2 (one key/value head, tied head)") {
  check_equal_to_uncached<double>(qwen2(), 51);
  check_equal_to_uncached<float>(qwen2(), 52);
}

TEST_CASE("decoder cached generation: a prompt's tokens do not depend on the rest of the batch or on the thread count") {
  for (const auto& c : {gpt2(), llama()}) test::check_prompt_independence(model<double>(c, 5), 24, 10, c.vocab);
}

TEST_CASE("decoder cached generation: the cache holds the key/value heads only, and bad requests are named errors before allocation") {
  const decoder::Config c = llama();
  const Decoder<float> m = model<float>(c, 3);
  const decoder::KvDecoder<float> kv(c, m.layout(), m.parameters());
  CHECK(kv.cache_shape().layers == 2);
  CHECK(kv.cache_shape().width == 2 * 12);  // n_kv_heads · head_dim, not n_heads · head_dim = 48
  CHECK(kv.context_length() == 24);
  Batch b;
  b.add({1, 2, 3});
  b.add({4, 5, 6, 7, 8});
  const SamplingOptions ok{.temperature = 0.7};
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  // A prompt + max_new beyond the context (5 + 20 > 24), also where the sum would wrap.
  for (std::size_t max_new : {std::size_t{20}, max, max / 2 + 1})
    CHECK(test::error_of([&] { (void)m.generate(b.view(), max_new, ok); }).find("max_new") != std::string::npos);
  // The cache beyond its bound: 2 layers · 2 · (3 + 5 + 2·4) positions · 24 · 4 bytes = 6144.
  CHECK(test::error_of([&] { (void)m.generate(b.view(), 4, ok, std::nullopt, {.max_cache_bytes = 6143}); }).find("max_cache_bytes = 6143") !=
        std::string::npos);
  CHECK(m.generate(b.view(), 4, ok, std::nullopt, {.max_cache_bytes = 6144}).tokens == m.generate(b.view(), 4, ok).tokens);
  // Sampling options out of range.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double t : {-0.5, nan}) CHECK(test::error_of([&] { (void)m.generate(b.view(), 2, {.temperature = t}); }).find("temperature") != std::string::npos);
  for (double p : {0.0, 1.5, nan}) CHECK(test::error_of([&] { (void)m.generate(b.view(), 2, {.top_p = p}); }).find("top_p") != std::string::npos);
  Batch bad;
  bad.add({1, 61});
  CHECK(test::error_of([&] { (void)m.generate(bad.view(), 2, ok); }).find("prompts.tokens") != std::string::npos);
  // extend() refuses a slot past its capacity, an unknown slot and a token outside the vocabulary,
  // before writing the cache.
  decoder::KvDecoder<float> dec(c, m.layout(), m.parameters());
  const std::vector<std::size_t> cap{2};
  generation::KvCache<float> cache(dec.cache_shape(), cap);
  const std::vector<token_t> three{1, 2, 3}, wrong{1, 99};
  const std::vector<std::int64_t> off3{0, 3}, off2{0, 2};
  const std::vector<std::size_t> slot0{0}, slot1{1};
  std::vector<float> hidden(c.d_model);
  CHECK(test::error_of([&] { dec.extend(cache, slot0, three, off3, hidden); }).find("capacity 2") != std::string::npos);
  CHECK(test::error_of([&] { dec.extend(cache, slot1, three, off3, hidden); }).find("slots") != std::string::npos);
  CHECK(test::error_of([&] { dec.extend(cache, slot0, wrong, off2, hidden); }).find("tokens") != std::string::npos);
  generation::KvCache<float> other({.layers = 2, .width = 48}, cap);
  CHECK(test::error_of([&] { dec.extend(other, slot0, three, off3, hidden); }).find("width 24") != std::string::npos);
  CHECK(cache.length(0) == 0);
}
