// Quickstart: DFT fine-tunes a contextual categorical policy. Each prompt (a context id) has one
// positive answer; the negatives are sampled once from the base model π_ref, which also scores them.
#include <dftune/dftune.hpp>

#include <array>
#include <cstdio>
#include <random>

int main() {
  using namespace dftune;
  constexpr std::size_t contexts = 8, vocab = 32, m = 4, steps = 100;
  std::mt19937_64 rng(0);
  CategoricalPolicy<double> base(contexts, vocab);  // π_ref: a random base policy
  std::normal_distribution<double> noise(0.0, 2.0);
  for (double& x : base.parameters()) x = noise(rng);
  CategoricalPolicy<double> model = base;  // fine-tuning starts from the base

  Sequences pos, neg;
  std::vector<std::int64_t> ids;
  for (token_t c = 0; c < token_t(contexts); ++c) {
    const std::array<token_t, 1> prompt{c};
    ids.push_back(c);
    pos.push(prompt, std::array<token_t, 2>{token_t(c + 1), token_t(2 * c)});
    for (std::size_t j = 0; j < m; ++j) neg.push(prompt, base.sample(std::size_t(c), 2, rng, {.temperature = 0.7}));
  }
  std::vector<double> ref(neg.size());
  base.sequence_logp(neg.view(), ref);  // log π_ref of the negatives, once

  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<double> est(contexts, opt);
  DftOptimizer dft(model, est, opt, AdamW<double>{}, CosineSchedule{.base_lr = 0.2, .warmup_steps = 10, .total_steps = steps});
  const DftBatch<double> batch{.ids = ids, .positives = pos.view(), .negatives = neg.view(),
                               .ref_neg_logp = ref, .num_negatives = m};
  for (std::size_t t = 0; t < steps; ++t) {
    const auto info = dft.step(batch);
    if (t % 10 == 0 || t + 1 == steps)
      std::printf("step %3zu  loss %9.4f  log pi(pos) %8.4f  log pi(neg) %8.4f\n", info.step, info.result.loss,
                  info.mean_pos_logp, info.mean_neg_logp);
  }
}
