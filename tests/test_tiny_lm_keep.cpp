// TinyLm keeps the scoring pass's activations for the backward (KeepsActivations): DFT steps with
// and without kept activations end in the same parameters, bit for bit, with one forward per
// batch; a batch that differs from the kept one, a bound too small for the batch and a parameter
// write between scoring and backward each fall back to a forward, with the same gradients.
#include <dftune/model/tiny_lm/tiny_lm.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/schedule.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

using namespace dftune;

namespace {

tiny_lm::Config config() {
  return {.vocab = 11, .max_len = 10, .d_model = 16, .n_heads = 2, .n_layers = 2, .d_ff = 24, .init_std = 0.5};
}

Sequences random_batch(std::size_t S, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Sequences s;
  for (std::size_t i = 0; i < S; ++i) {
    std::vector<token_t> p(1 + rng() % 4), c(1 + rng() % 5);
    for (auto& t : p) t = static_cast<token_t>(rng() % 11);
    for (auto& t : c) t = static_cast<token_t>(rng() % 11);
    s.push(p, c);
  }
  return s;
}

template <class T>
bool same_bits(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// One DFT run of `steps` steps (B 3, m 2, a new batch each step); returns the final parameters.
template <class T>
std::vector<T> dft_run(std::size_t keep_bytes, std::size_t steps, std::size_t* skipped) {
  TinyLm<T> model(config(), 5);
  model.set_activation_memory(keep_bytes);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<T> est(12, opt);
  DftOptimizer dft(model, est, opt, AdamW<T>{}, CosineSchedule{.base_lr = 1e-2, .min_lr = 0, .warmup_steps = 1, .total_steps = steps});
  for (std::size_t t = 0; t < steps; ++t) {
    const std::vector<std::int64_t> ids{static_cast<std::int64_t>(3 * t % 12), static_cast<std::int64_t>((3 * t + 1) % 12),
                                        static_cast<std::int64_t>((3 * t + 2) % 12)};
    const Sequences pos = random_batch(3, 100 + t), neg = random_batch(6, 200 + t);
    const std::vector<T> ref(6, T(-4));
    dft.step({.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = 2});
  }
  *skipped = model.forwards_skipped();
  const auto p = std::as_const(model).parameters();
  return {p.begin(), p.end()};
}

}  // namespace

TEST_CASE("TinyLm keeps activations: the concept detects the member, CategoricalPolicy-like models go without") {
  static_assert(KeepsActivations<TinyLm<float>>);
  static_assert(KeepsActivations<TinyLm<double>>);
  TinyLm<float> m(config());
  CHECK(m.activation_memory() == 0);  // off unless the user sets a bound
  CHECK(m.kept_bytes() == 0);
}

TEST_CASE_TEMPLATE("TinyLm: DFT steps with kept activations end bit-identical to steps without, one forward per batch", T,
                   float, double) {
  std::size_t skipped_off = 0, skipped_on = 0;
  const std::vector<T> off = dft_run<T>(0, 4, &skipped_off);
  const std::vector<T> on = dft_run<T>(std::size_t{64} << 20, 4, &skipped_on);
  CHECK(skipped_off == 0);
  CHECK(skipped_on == 8);  // positives and negatives of each of the 4 steps
  CHECK(same_bits<T>(off, on));
  const std::vector<T> init = [] {
    TinyLm<T> m(config(), 5);
    const auto p = std::as_const(m).parameters();
    return std::vector<T>(p.begin(), p.end());
  }();
  CHECK_FALSE(same_bits<T>(init, on));  // the steps did move the parameters
}

TEST_CASE("TinyLm: a batch other than the kept one, a bound too small and a parameter write fall back to a forward") {
  const Sequences a = random_batch(4, 1);
  Sequences b = a;  // the same shape, other tokens
  for (token_t& t : b.tokens) t = (t + 1) % 11;
  const std::vector<float> d{0.5f, -1.0f, 0.25f, 2.0f};
  std::vector<float> s(4);
  // The reference: gradients of a fresh model, no activations kept.
  auto reference = [&](const Sequences& batch, float nudge) {
    TinyLm<float> m(config(), 9);
    m.parameters()[3] += nudge;
    m.zero_gradients();
    m.accumulate_gradients(batch.view(), d);
    const auto g = m.gradients();
    return std::vector<float>(g.begin(), g.end());
  };
  auto grads = [](TinyLm<float>& m) {
    const auto g = m.gradients();
    return std::vector<float>(g.begin(), g.end());
  };

  SUBCASE("the kept batch is used once, by an equal batch (another view of equal contents)") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(std::size_t{1} << 20);
    CHECK(m.sequence_logp(a.view(), s, keep_for_backward));
    CHECK(m.kept_bytes() > 0);
    CHECK(m.kept_bytes() <= m.activation_memory());
    const Sequences a_copy = a;
    m.zero_gradients();
    m.accumulate_gradients(a_copy.view(), d);
    CHECK(m.forwards_skipped() == 1);
    CHECK(same_bits<float>(grads(m), reference(a, 0)));
    m.zero_gradients();
    m.accumulate_gradients(a.view(), d);  // used up: a forward again, the same gradients
    CHECK(m.forwards_skipped() == 1);
    CHECK(same_bits<float>(grads(m), reference(a, 0)));
  }
  SUBCASE("another batch") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(std::size_t{1} << 20);
    CHECK(m.sequence_logp(a.view(), s, keep_for_backward));
    m.zero_gradients();
    m.accumulate_gradients(b.view(), d);
    CHECK(m.forwards_skipped() == 0);
    CHECK(same_bits<float>(grads(m), reference(b, 0)));
    // a's activations are still kept, and still right.
    m.zero_gradients();
    m.accumulate_gradients(a.view(), d);
    CHECK(m.forwards_skipped() == 1);
    CHECK(same_bits<float>(grads(m), reference(a, 0)));
  }
  SUBCASE("a bound below the batch's activations keeps nothing") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(64);
    CHECK_FALSE(m.sequence_logp(a.view(), s, keep_for_backward));
    CHECK(m.kept_bytes() == 0);
    m.zero_gradients();
    m.accumulate_gradients(a.view(), d);
    CHECK(m.forwards_skipped() == 0);
    CHECK(same_bits<float>(grads(m), reference(a, 0)));
  }
  SUBCASE("a bound that holds one batch keeps the first, not the second") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(std::size_t{1} << 20);
    CHECK(m.sequence_logp(a.view(), s, keep_for_backward));
    const std::size_t one = m.kept_bytes();
    m.set_activation_memory(one + one / 2);
    CHECK(m.kept_bytes() == one);  // still kept
    CHECK_FALSE(m.sequence_logp(b.view(), s, keep_for_backward));
    m.zero_gradients();
    m.accumulate_gradients(b.view(), d);
    m.accumulate_gradients(a.view(), d);
    CHECK(m.forwards_skipped() == 1);
    m.set_activation_memory(0);  // lowering the bound drops what no longer fits
    CHECK(m.kept_bytes() == 0);
  }
  SUBCASE("a parameter write between scoring and backward") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(std::size_t{1} << 20);
    CHECK(m.sequence_logp(a.view(), s, keep_for_backward));
    m.parameters()[3] += 0.125f;
    m.zero_gradients();
    m.accumulate_gradients(a.view(), d);
    CHECK(m.forwards_skipped() == 0);
    CHECK(same_bits<float>(grads(m), reference(a, 0.125f)));
  }
  SUBCASE("scores are those of sequence_logp") {
    TinyLm<float> m(config(), 9);
    m.set_activation_memory(std::size_t{1} << 20);
    std::vector<float> plain(4);
    m.sequence_logp(a.view(), plain);
    CHECK(m.sequence_logp(a.view(), s, keep_for_backward));
    CHECK(same_bits<float>(plain, s));
  }
}
