// generation::PackedWeights (model/generation/packed_weights.hpp): the packed products equal
// tiled_linear's up to the GEMM's rounding, bit for bit the same on 1 and 2 threads, at row counts
// other than the one packed for; decoder::KvDecoder packs only within Limits::max_packed_bytes and
// from PackedWeights' thresholds; and generation with packed weights samples the same tokens as
// without (a token could flip only where a uniform falls within a logit's rounding of a CDF boundary).
#include <dftune/model/decoder/decoder.hpp>
#include <dftune/model/decoder/kv_decoder.hpp>
#include <dftune/model/generation/packed_weights.hpp>
#include <dftune/model/generation/tiled_linear.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace dftune;

namespace {

void set_threads([[maybe_unused]] int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST_CASE("PackedWeights: the product of tiled_linear, any row count, the same bits on 1 and 2 threads") {
  using P = generation::PackedWeights<float>;
  const std::size_t K = 40;
  for (const std::size_t N : {std::size_t{70}, std::size_t{600}}) {  // one ragged tile; several tiles
    const auto W = random_vector(N * K, N);
    P packed;
    if (!P::available) {
      CHECK_FALSE(packed.pack(0, W.data(), N, K, 8));
      CHECK(packed.bytes() == 0);
      continue;
    }
    REQUIRE(packed.pack(0, W.data(), N, K, 8));
    CHECK(packed.bytes() >= N * K * sizeof(float));
    for (const std::size_t rows : {std::size_t{1}, std::size_t{3}, std::size_t{8}, std::size_t{33}}) {
      const auto A = random_vector(rows * K, rows);
      std::vector<float> ref(rows * N), y1(rows * N, -1.0f), y2(rows * N, -2.0f);
      auto plus_one = [&](float* y, std::size_t j0, std::size_t w) {  // the epilogue sees every tile once
        for (std::size_t i = 0; i < rows; ++i)
          for (std::size_t j = j0; j < j0 + w; ++j) y[i * N + j] += 1.0f;
      };
      generation::tiled_linear<generation::WeightLayout::out_major>(A.data(), rows, K, W.data(), N, ref.data(), plus_one);
      set_threads(1);
      packed.run(0, A.data(), rows, W.data(), y1.data(), plus_one);
      set_threads(2);
      packed.run(0, A.data(), rows, W.data(), y2.data(), plus_one);
      set_threads(1);
      CHECK(y1 == y2);
      for (std::size_t i = 0; i < rows * N; ++i) {
        INFO("rows " << rows << ", N " << N << ", element " << i);
        CHECK(std::abs(y1[i] - ref[i]) <= 1e-5f * (1.0f + std::abs(ref[i])));
      }
    }
  }
}

TEST_CASE("KvDecoder packs within Limits::max_packed_bytes and from PackedWeights' thresholds only") {
  using P = generation::PackedWeights<float>;
  const auto cfg = decoder::tiny_gpt2(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*max_len=*/160);
  Decoder<float> m(cfg, 3);
  const decoder::Layout layout = decoder::make_layout(cfg);  // the decoder keeps a reference
  decoder::KvDecoder<float> kv(cfg, layout, m.parameters());
  const std::size_t weights = (61 * 32 + 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)) * sizeof(float);
  kv.pack_for(8, 128, {});
  CHECK(kv.packed_bytes() >= (P::available ? weights : 0));
  if (!P::available) CHECK(kv.packed_bytes() == 0);
  kv.pack_for(8, 128, {.max_packed_bytes = weights - 1});  // one byte short: nothing packed
  CHECK(kv.packed_bytes() == 0);
  kv.pack_for(P::kMinRows - 1, 1024, {});  // too few sequences
  CHECK(kv.packed_bytes() == 0);
  kv.pack_for(8, P::kMinTokens / 8 - 1, {});  // too few tokens
  CHECK(kv.packed_bytes() == 0);
  // The double model never packs.
  Decoder<double> d(cfg, 3);
  decoder::KvDecoder<double> kvd(cfg, layout, d.parameters());
  kvd.pack_for(8, 128, {});
  CHECK(kvd.packed_bytes() == 0);
}

TEST_CASE("Decoder::generate with packed weights samples the tokens of the unpacked path") {
  const auto cfg = decoder::tiny_gpt2(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*max_len=*/160);
  Decoder<float> m(cfg, 5);
  std::mt19937_64 rng(6);
  std::normal_distribution<double> noise(0, 0.15);
  for (float& p : m.parameters()) p += static_cast<float>(noise(rng));
  std::vector<token_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (std::size_t p = 0; p < 8; ++p) {
    for (std::size_t i = 0; i < 1 + p % 5; ++i) tokens.push_back(static_cast<token_t>(rng() % 61));
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
  }
  const Prompts prompts{.tokens = tokens, .offsets = offsets};
  for (const SamplingOptions& o : {SamplingOptions{.temperature = 0.0}, SamplingOptions{.temperature = 0.7, .top_k = 50, .seed = 1},
                                   SamplingOptions{.temperature = 1.0, .top_p = 0.9, .seed = 2}}) {
    for (const int threads : {1, 2}) {
      set_threads(threads);
      const Sequences packed = m.generate(prompts, 128, o, std::nullopt, {});
      const Sequences plain = m.generate(prompts, 128, o, std::nullopt, {.max_packed_bytes = 0});
      CHECK(packed.tokens == plain.tokens);
      CHECK(packed.offsets == plain.offsets);
    }
  }
  set_threads(1);
}
