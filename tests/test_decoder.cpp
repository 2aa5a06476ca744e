// The decoder family (model/decoder/): the hand-written backward against central finite
// differences in double, for GPT-2 and for a Llama with every option on (GQA, Qwen2's q/k/v
// biases, untied head, Llama-3 RoPE scaling); the Model and sampling concepts; the fused head's
// scores against log-softmax of the model's own logits; bad configs and batches.
#include <dftune/model/decoder/decoder.hpp>
#include <dftune/dftune.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

using dftune::Decoder;
namespace decoder = dftune::decoder;

static_assert(dftune::Model<Decoder<float>> && dftune::Model<Decoder<double>>);
static_assert(dftune::SamplingModel<Decoder<float>>);

namespace {

decoder::Config llama_all_options() {
  auto c = decoder::tiny_llama(/*vocab=*/23, /*d=*/12, /*layers=*/2, /*heads=*/3, /*kv_heads=*/1, /*max_len=*/12);
  c.head_dim = 6;  // q width 18 ≠ d_model 12
  c.qkv_bias = true;
  c.mlp_bias = true;
  c.o_bias = true;
  c.tied_head = false;
  c.rope_theta = 500;
  c.rope_scaling = {.factor = 8, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 16};
  return c;
}

// Gains and biases away from 1 and 0, so that their gradients and every bias path are exercised.
template <class T>
void perturb(Decoder<T>& m, std::uint64_t seed, double sd = 0.3) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, sd);
  for (auto& p : m.parameters()) p += static_cast<T>(n(rng));
}

dftune::Sequences batch3() {
  dftune::Sequences b;
  b.push(std::vector<dftune::token_t>{1, 5, 7}, std::vector<dftune::token_t>{2, 9, 4, 11});
  b.push(std::vector<dftune::token_t>{3}, std::vector<dftune::token_t>{8});
  b.push(std::vector<dftune::token_t>{0, 6, 4, 2, 10}, std::vector<dftune::token_t>{12, 3});
  return b;
}

void check_gradients(const decoder::Config& cfg) {
  Decoder<double> m(cfg, 7);
  perturb(m, 11);
  const auto b = batch3();
  const std::vector<double> d = {0.7, -1.3, 0.4};
  m.zero_gradients();
  m.accumulate_gradients(b.view(), d);
  const std::vector<double> g(m.gradients().begin(), m.gradients().end());
  auto loss = [&] {
    std::vector<double> s(3);
    m.sequence_logp(b.view(), s);
    return d[0] * s[0] + d[1] * s[1] + d[2] * s[2];
  };
  auto p = m.parameters();
  double worst = 0;
  // Every tensor: its first, middle and last element.
  for (const auto& t : m.layout().tensors)
    for (std::size_t k : {std::size_t{0}, t.size() / 2, t.size() - 1}) {
      const std::size_t i = t.offset + k;
      const double h = 1e-5, keep = p[i];
      p[i] = keep + h;
      const double up = loss();
      p[i] = keep - h;
      const double down = loss();
      p[i] = keep;
      const double fd = (up - down) / (2 * h);
      const double err = std::abs(fd - g[i]) / std::max(1e-4, std::abs(fd));
      worst = std::max(worst, err);
      INFO(t.name << "[" << k << "]: fd " << fd << " analytic " << g[i]);
      CHECK(err < 1e-5);
    }
  MESSAGE("worst relative gradient error " << worst);
}

}  // namespace

TEST_CASE("gpt2: gradients match finite differences (double)") { check_gradients(decoder::tiny_gpt2(23, 12, 2, 3, 12)); }

TEST_CASE("llama: gradients match finite differences with GQA, biases, untied head, llama3 rope scaling (double)") {
  check_gradients(llama_all_options());
}

TEST_CASE("llama tied head, no biases: gradients match finite differences (double)") {
  auto c = decoder::tiny_llama(23, 16, 2, 4, 2, 12);
  c.tied_head = true;
  check_gradients(c);
}

TEST_CASE("sequence_logp is log-softmax of the model's own logits, summed over the completion") {
  for (const auto& cfg : {decoder::tiny_gpt2(23, 12, 2, 3, 12), llama_all_options()}) {
    Decoder<double> m(cfg, 3);
    perturb(m, 5);
    const auto b = batch3();
    std::vector<double> z(b.tokens.size() * cfg.vocab), s(3);
    m.logits(b.tokens, b.offsets, z);
    m.sequence_logp(b.view(), s);
    for (std::size_t q = 0; q < 3; ++q) {
      double want = 0;
      for (auto r = b.offsets[q] + b.prompt_len[q] - 1; r + 1 < b.offsets[q + 1]; ++r) {
        const double* zr = z.data() + static_cast<std::size_t>(r) * cfg.vocab;
        double hi = zr[0], sum = 0;
        for (std::size_t v = 0; v < cfg.vocab; ++v) hi = std::max(hi, zr[v]);
        for (std::size_t v = 0; v < cfg.vocab; ++v) sum += std::exp(zr[v] - hi);
        want += zr[b.tokens[static_cast<std::size_t>(r + 1)]] - hi - std::log(sum);
      }
      CHECK(s[q] == doctest::Approx(want).epsilon(1e-12));
    }
  }
}

TEST_CASE("a sequence's score does not depend on the other sequences of the batch (no leak across sequences)") {
  Decoder<double> m(llama_all_options(), 3);
  perturb(m, 5);
  const auto b = batch3();
  std::vector<double> all(3);
  m.sequence_logp(b.view(), all);
  for (std::size_t q = 0; q < 3; ++q) {
    dftune::Sequences one;
    const auto seq = b.view().sequence(q);
    const auto pl = static_cast<std::size_t>(b.prompt_len[q]);
    one.push(seq.first(pl), seq.subspan(pl));
    std::vector<double> s(1);
    m.sequence_logp(one.view(), s);
    CHECK(s[0] == doctest::Approx(all[q]).epsilon(1e-12));
  }
}

TEST_CASE("generate: same seed same tokens, prompts kept, eos stops, greedy is the argmax of the logits") {
  Decoder<float> m(decoder::tiny_gpt2(23, 12, 2, 3, 12), 1);
  perturb(m, 2, 0.5);
  const std::vector<dftune::token_t> toks = {1, 2, 3, 4, 5};
  const std::vector<std::int64_t> off = {0, 2, 5};
  const dftune::Prompts pr{.tokens = toks, .offsets = off};
  const dftune::SamplingOptions o{.temperature = 0.9, .top_k = 5, .top_p = 0.9, .seed = 4};
  const auto a = m.generate(pr, 6, o), b = m.generate(pr, 6, o);
  CHECK(a.tokens == b.tokens);
  CHECK(a.prompt_len == std::vector<std::int64_t>{2, 3});
  CHECK(a.offsets == std::vector<std::int64_t>{0, 8, 17});
  const auto g = m.generate(pr, 3, {.temperature = 0});
  for (std::size_t s = 0; s < 2; ++s) {
    const auto seq = g.view().sequence(s);
    std::vector<float> z(seq.size() * 23);
    const std::vector<std::int64_t> o1 = {0, static_cast<std::int64_t>(seq.size())};
    m.logits(seq, o1, z);
    for (std::size_t t = static_cast<std::size_t>(g.prompt_len[s]); t < seq.size(); ++t) {
      const float* zr = z.data() + (t - 1) * 23;
      CHECK(seq[t] == std::max_element(zr, zr + 23) - zr);
    }
  }
  const auto e = m.generate(pr, 6, {.temperature = 0}, g.tokens[2]);  // the first greedy token of prompt 0
  CHECK(e.view().completion_length(0) == 1);
}

TEST_CASE("DftOptimizer trains the decoder unchanged: DFT raises the positives and pushes its own samples down") {
  using namespace dftune;
  Decoder<float> model(decoder::tiny_llama(23, 16, 2, 4, 2, 16), 1);
  const std::size_t B = 4, m = 3;
  Sequences pos;
  std::vector<token_t> ptoks;
  std::vector<std::int64_t> poff{0}, ids;
  for (std::size_t i = 0; i < B; ++i) {
    const std::vector<token_t> prompt{static_cast<token_t>(i), static_cast<token_t>(i + 5)};
    pos.push(prompt, std::vector<token_t>{static_cast<token_t>(10 + i), static_cast<token_t>(11 + i), 20});
    for (std::size_t j = 0; j < m; ++j) ptoks.insert(ptoks.end(), prompt.begin(), prompt.end()), poff.push_back(static_cast<std::int64_t>(ptoks.size()));
    ids.push_back(static_cast<std::int64_t>(i));
  }
  const Sequences neg = model.generate({.tokens = ptoks, .offsets = poff}, 3, {.temperature = 1.0, .seed = 9});
  std::vector<float> ref(neg.size());
  model.sequence_logp(neg.view(), ref);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<float> est(B, opt);
  DftOptimizer optimizer(model, est, opt, AdamW<float>{}, ConstantSchedule{.base_lr = 3e-3});
  const DftBatch<float> batch{.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = m};
  const auto first = optimizer.evaluate(batch);
  for (int t = 0; t < 30; ++t) optimizer.step(batch);
  const auto last = optimizer.evaluate(batch);
  CHECK(last.mean_pos_logp > first.mean_pos_logp + 1.0);
  CHECK(last.mean_neg_logp < first.mean_neg_logp);
}

TEST_CASE("bad configs and batches are named errors; the model is unchanged") {
  auto c = decoder::tiny_llama();
  c.n_kv_heads = 3;
  CHECK_THROWS_WITH_AS(Decoder<float>{c}, doctest::Contains("config.n_kv_heads"), dftune::error);
  c = decoder::tiny_llama();
  c.head_dim = 5;
  CHECK_THROWS_WITH_AS(Decoder<float>{c}, doctest::Contains("config.head_dim"), dftune::error);
  c = decoder::tiny_gpt2();
  c.vocab = std::size_t{1} << 40;
  CHECK_THROWS_WITH_AS(Decoder<float>{c}, doctest::Contains("config.vocab"), dftune::error);
  c = decoder::tiny_llama();
  c.d_model = c.d_ff = std::size_t{1} << 31;
  c.head_dim = 2;
  CHECK_THROWS_AS(Decoder<float>{c}, dftune::error);

  Decoder<float> m(decoder::tiny_gpt2(), 1);
  const std::vector<float> before(m.parameters().begin(), m.parameters().end());
  dftune::Sequences b;
  b.push(std::vector<dftune::token_t>(10, 1), std::vector<dftune::token_t>(7, 2));  // 17 > max_len 16
  std::vector<float> s(1);
  CHECK_THROWS_WITH_AS(m.sequence_logp(b.view(), s), doctest::Contains("max_len"), dftune::error);
  dftune::Sequences t;
  t.push(std::vector<dftune::token_t>{1}, std::vector<dftune::token_t>{99});
  CHECK_THROWS_WITH_AS(m.accumulate_gradients(t.view(), s), doctest::Contains("batch.tokens"), dftune::error);
  CHECK(std::equal(before.begin(), before.end(), m.parameters().begin()));
}
