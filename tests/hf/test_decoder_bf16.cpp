// Decoder<float, bf16>, the frozen decoder whose weights are held in bf16 (widened to float one
// block at a time): its body equals, bit for bit, Decoder<float> holding the same bf16-rounded
// weights; its scores differ from that model's only by the rounding of the head's input rows to
// bf16, within the bound that rounding implies; load_pretrained keeps BF16 tensors as they are and
// rounds F32 ones to nearest even; every bad input is a named error that changes nothing.
#include <dftune/hf/pretrained.hpp>

#include "support/testing.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>


namespace fs = std::filesystem;
namespace hf = dftune::hf;
namespace decoder = dftune::decoder;
using dftune::Decoder;
using Bf16Decoder = Decoder<float, decoder::bf16>;

static_assert(!dftune::Model<Bf16Decoder>, "a bf16-stored decoder is frozen: no gradients");
template <class M>
concept has_gradients = requires(M& m) { m.zero_gradients(); };
template <class M>
concept generates = requires(const M& m, const dftune::Prompts& p) { m.generate(p, 1, dftune::SamplingOptions{}); };
static_assert(has_gradients<Decoder<float>> && !has_gradients<Bf16Decoder>);
static_assert(generates<Decoder<float>> && !generates<Bf16Decoder>);
static_assert(!decoder::valid_storage<double, decoder::bf16>);

namespace {

fs::path fresh_dir(const std::string& name) { return test::fresh_dir("dftune_test_bf16_", name); }

// Every option the window has to carry: biases on q/k/v, o and the MLP, an untied head, GQA,
// three blocks (the block ranges of make_layout).
decoder::Config llama_all_options() {
  auto c = decoder::tiny_llama(/*vocab=*/29, /*d=*/16, /*layers=*/3, /*heads=*/4, /*kv_heads=*/2, /*max_len=*/16);
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.tied_head = false;
  return c;
}

std::vector<decoder::Config> configs() { return {decoder::tiny_gpt2(29, 16, 3, 2, 16), llama_all_options()}; }

// A float model moved off its initialisation (gains off 1, biases off 0), its weights then rounded
// to bf16; and the bf16 model holding those bf16 values.
struct Pair {
  Decoder<float> f;
  Bf16Decoder b;
};
Pair rounded_pair(const decoder::Config& c, std::uint64_t seed) {
  Pair p{Decoder<float>(c, seed), Bf16Decoder(c, decoder::Uninitialized{})};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 0.3);
  auto pf = p.f.parameters();
  auto pb = p.b.parameters();
  for (std::size_t k = 0; k < pf.size(); ++k) {
    const std::uint16_t bits = hf::float_to_bf16(pf[k] + static_cast<float>(noise(rng)));
    pf[k] = hf::bf16_to_float(bits);
    pb[k] = std::bit_cast<decoder::bf16>(bits);
  }
  return p;
}

dftune::Sequences batch(std::size_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> tok(0, static_cast<int>(vocab) - 1);
  auto draw = [&](std::size_t n) {
    std::vector<dftune::token_t> v(n);
    for (auto& x : v) x = tok(rng);
    return v;
  };
  dftune::Sequences b;
  b.push(draw(3), draw(5));
  b.push(draw(1), draw(1));
  b.push(draw(6), draw(10));  // 16 rows: max_len
  return b;
}

std::vector<std::uint16_t> bits_of(std::span<const decoder::bf16> p) {
  std::vector<std::uint16_t> out(p.size());
  for (std::size_t k = 0; k < p.size(); ++k) out[k] = std::bit_cast<std::uint16_t>(p[k]);
  return out;
}

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

}  // namespace

TEST_CASE("Decoder<float, bf16>(config, seed) holds Decoder<float>(config, seed)'s weights rounded to nearest even") {
  for (const auto& c : configs()) {
    const Decoder<float> f(c, 5);
    const Bf16Decoder b(c, 5);
    const auto pf = f.parameters();
    std::vector<std::uint16_t> want(pf.size());
    for (std::size_t k = 0; k < pf.size(); ++k) want[k] = hf::float_to_bf16(pf[k]);
    CHECK(bits_of(b.parameters()) == want);
    CHECK(b.parameters().size_bytes() * 2 == f.parameters().size_bytes());
  }
}

TEST_CASE("Decoder<float, bf16>: logits bit-identical to Decoder<float> holding the same bf16-rounded weights") {
  for (const auto& c : configs()) {
    CAPTURE(c.family == decoder::Family::gpt2);
    auto [f, b] = rounded_pair(c, 11);
    const auto s = batch(c.vocab, 3);
    std::vector<float> zf(s.tokens.size() * c.vocab), zb(zf.size(), -1.f);
    f.logits(s.tokens, s.offsets, zf);
    b.logits(s.tokens, s.offsets, zb);
    CHECK(same_bits(zf, zb));
  }
}

// The bf16 model rounds the head's input h = N_f(x) to bf16 (|δh_j| ≤ 2⁻⁹|h_j|), so each logit moves
// by |δz_v| ≤ 2⁻⁹ Σ_j |h_j||W_vj| ≤ 2⁻⁹ ‖h‖₂ ‖W_v‖₂ and each token's log-prob by at most 2 max_v |δz_v|.
// ‖h‖₂ ≤ max|g| ‖x̂‖₂ + ‖b‖₂ with ‖x̂‖₂ ≤ √d for both norms. Beyond that, the two heads' float sums
// may be ordered differently: 1e-5 relative.
TEST_CASE("Decoder<float, bf16>: sequence_logp within the head-input rounding's bound of the float model's") {
  for (const auto& c : configs()) {
    CAPTURE(c.family == decoder::Family::gpt2);
    auto [f, b] = rounded_pair(c, 13);
    const auto s = batch(c.vocab, 4);
    std::vector<float> sf(s.size()), sb(s.size());
    f.sequence_logp(s.view(), sf);
    b.sequence_logp(s.view(), sb);
    const auto p = f.parameters();
    const auto& lay = f.layout();
    const std::size_t D = c.d_model;
    double gmax = 0, bnorm = 0, wmax = 0;
    for (std::size_t j = 0; j < D; ++j) {
      gmax = std::max(gmax, std::abs(static_cast<double>(p[lay.normf_g + j])));
      if (c.family == decoder::Family::gpt2) bnorm += static_cast<double>(p[lay.normf_b + j]) * p[lay.normf_b + j];
    }
    for (std::size_t v = 0; v < c.vocab; ++v) {
      double w = 0;
      for (std::size_t j = 0; j < D; ++j) w += static_cast<double>(p[lay.head + v * D + j]) * p[lay.head + v * D + j];
      wmax = std::max(wmax, std::sqrt(w));
    }
    const double per_token = 2 * std::ldexp(1.0, -9) * (gmax * std::sqrt(static_cast<double>(D)) + std::sqrt(bnorm)) * wmax;
    for (std::size_t q = 0; q < s.size(); ++q) {
      CAPTURE(q);
      const double tokens = static_cast<double>(s.offsets[q + 1] - s.offsets[q] - s.prompt_len[q]);
      CHECK(std::abs(static_cast<double>(sb[q]) - sf[q]) <= tokens * per_token + 1e-5 * std::abs(sf[q]));
      CHECK(sb[q] != sf[q]);  // the rounding is there: a test of the bound, not of equality
    }
  }
}

TEST_CASE("Decoder<float, bf16>: bad batches and output sizes are named errors that change nothing") {
  auto [f, b] = rounded_pair(llama_all_options(), 17);
  const auto s = batch(b.vocab_size(), 5);
  std::vector<float> before(s.size()), after(s.size());
  b.sequence_logp(s.view(), before);
  const auto params = bits_of(b.parameters());
  std::vector<float> scores(s.size()), wrong(s.size() + 1);
  CHECK(test::error_of([&] { b.sequence_logp(s.view(), wrong); }).find("scores") != std::string::npos);
  auto bad = s;
  bad.tokens[2] = static_cast<dftune::token_t>(b.vocab_size());
  CHECK(test::error_of([&] { b.sequence_logp(bad.view(), scores); }).find("tokens") != std::string::npos);
  auto long_seq = batch(b.vocab_size(), 5);
  long_seq.push(std::vector<dftune::token_t>(9, 1), std::vector<dftune::token_t>(8, 2));  // 17 > max_len
  std::vector<float> long_scores(long_seq.size());
  CHECK(test::error_of([&] { b.sequence_logp(long_seq.view(), long_scores); }).find("batch.sequence") != std::string::npos);
  std::vector<float> z(s.tokens.size() * b.vocab_size() - 1);
  CHECK(test::error_of([&] { b.logits(s.tokens, s.offsets, z); }).find("out") != std::string::npos);
  CHECK(bits_of(b.parameters()) == params);
  b.sequence_logp(s.view(), after);
  CHECK(same_bits(before, after));
}

TEST_CASE("load_pretrained<float, bf16>: BF16 tensors bit for bit, F32 rounded to nearest even; logits equal load_pretrained<float>'s") {
  for (const auto& c : configs()) {
    CAPTURE(c.family == decoder::Family::gpt2);
    const auto dir = fresh_dir("load");
    Decoder<float> m(c, 7);
    std::mt19937_64 rng(7);
    std::normal_distribution<double> noise(0, 0.3);
    for (auto& x : m.parameters()) x += static_cast<float>(noise(rng));
    // Ties: 1 + 2⁻⁸ lies halfway between bf16's 1 and 1 + 2⁻⁷ (to even: 1), 1 + 3·2⁻⁸ between
    // 1 + 2⁻⁷ and 1 + 2⁻⁶ (to even: 1 + 2⁻⁶).
    m.parameters()[0] = 1.0f + std::ldexp(1.0f, -8);
    m.parameters()[1] = 1.0f + 3 * std::ldexp(1.0f, -8);
    hf::save_pretrained(dir / "f32", m, hf::Dtype::f32);
    hf::save_pretrained(dir / "bf16", m, hf::Dtype::bf16);
    const auto from_f32 = hf::load_pretrained<float, decoder::bf16>(dir / "f32");
    std::vector<std::uint16_t> want(m.parameters().size());
    for (std::size_t k = 0; k < want.size(); ++k) want[k] = hf::float_to_bf16(m.parameters()[k]);
    CHECK(want[0] == 0x3F80);
    CHECK(want[1] == 0x3F82);
    CHECK(bits_of(from_f32.parameters()) == want);
    auto from_bf16 = hf::load_pretrained<float, decoder::bf16>(dir / "bf16");
    CHECK(bits_of(from_bf16.parameters()) == want);
    // The common case: a BF16 checkpoint, held as bf16 or widened to float on load.
    auto widened = hf::load_pretrained<float>(dir / "bf16");
    const auto s = batch(c.vocab, 6);
    std::vector<float> zw(s.tokens.size() * c.vocab), zb(zw.size());
    widened.logits(s.tokens, s.offsets, zw);
    from_bf16.logits(s.tokens, s.offsets, zb);
    CHECK(same_bits(zw, zb));
    fs::remove_all(dir);
  }
}

TEST_CASE("load_pretrained<float, bf16>: a bad dtype, a wrong shape, and an F32 weight that rounds to bf16's infinity are named errors") {
  const auto dir = fresh_dir("bad");
  const auto c = decoder::tiny_gpt2();
  Decoder<float> m(c, 3);
  auto load = [&] { (void)hf::load_pretrained<float, decoder::bf16>(dir); };
  SUBCASE("a dtype that is not a floating-point weight") {
    hf::save_pretrained(dir, m);
    // Same header length: F32 → I32 for the first tensor (4 bytes an element either way).
    std::fstream file(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    std::string head(4096, '\0');
    file.read(head.data(), static_cast<std::streamsize>(head.size()));
    const auto at = head.find("\"F32\"");
    REQUIRE(at != std::string::npos);
    file.clear();
    file.seekp(static_cast<std::streamoff>(at + 1));
    file.write("I", 1);
    file.close();
    CHECK(test::error_of(load).find("dtype: got I32, expected F32, BF16, F16 or F64") != std::string::npos);
  }
  SUBCASE("a shape other than config.json implies") {
    auto big = c;
    big.d_ff = 80;
    hf::save_pretrained(dir / "other", Decoder<float>(big, 2));
    hf::save_pretrained(dir, m);
    fs::copy_file(dir / "other" / "model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
    CHECK(test::error_of(load).find("tensor \"h.0.mlp.c_fc.weight\".shape: got [16, 80], expected [16, 64]") != std::string::npos);
  }
  SUBCASE("an F32 weight finite in float but infinite in bf16") {
    m.parameters()[m.layout().blocks[1].w_up + 3] = 3.4e38f;  // > bf16's largest, 0x7F7F = 3.39e38 (+ half an ulp)
    hf::save_pretrained(dir, m);
    REQUIRE(test::error_of([&] { (void)hf::load_pretrained<float>(dir); }) == test::no_error);
    CHECK(test::error_of(load).find("a non-finite value at element 3 (once rounded to bf16)") != std::string::npos);
  }
  fs::remove_all(dir);
}
