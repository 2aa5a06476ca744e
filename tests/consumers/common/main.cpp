// The program both consumer projects build: a few DFT steps on the categorical reference policy,
// a checkpoint round trip, and the version the headers report; with Eigen, the log-prob reduction's
// fast path, whose kernels must have run the CPU's widest version although this program is built
// for the baseline ISA. It exits non-zero on any surprise.
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include "smallest_model.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#ifndef EXPECTED_VERSION
#error "the consumer's CMakeLists passes -DEXPECTED_VERSION=\"x.y.z\" from the package it found"
#endif

int main() {
  using namespace dftune;
  char version[32];
  std::snprintf(version, sizeof version, "%d.%d.%d", DFTUNE_VERSION_MAJOR, DFTUNE_VERSION_MINOR, DFTUNE_VERSION_PATCH);
  if (std::string(version) != EXPECTED_VERSION) {
    std::fprintf(stderr, "header version %s, CMake package version %s\n", version, EXPECTED_VERSION);
    return 1;
  }
  CategoricalPolicy<double> model(2, 4);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<double> est(2, opt);
  DftOptimizer dft(model, est, opt, AdamW<double>{}, CosineSchedule{.base_lr = 0.1, .warmup_steps = 1, .total_steps = 10});
  Sequences pos, neg;
  for (token_t c = 0; c < 2; ++c) {
    pos.push(std::vector<token_t>{c}, std::vector<token_t>{1, 1});
    neg.push(std::vector<token_t>{c}, std::vector<token_t>{2});
    neg.push(std::vector<token_t>{c}, std::vector<token_t>{3, 0});
  }
  const std::vector<std::int64_t> ids{0, 1};
  const std::vector<double> ref{-1.4, -2.8, -1.4, -2.8};
  const DftBatch<double> batch{.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = 2};
  const double before = dft.evaluate(batch).mean_pos_logp;
  for (int t = 0; t < 5; ++t) dft.step(batch);
  const double after = dft.evaluate(batch).mean_pos_logp;

  const auto path = std::filesystem::temp_directory_path() / "dftune_consumer.ckpt";
  io::save(path, dft);
  CategoricalPolicy<double> model2(2, 4);
  Estimator<double> est2(2, opt);
  DftOptimizer dft2(model2, est2, opt, AdamW<double>{}, CosineSchedule{.base_lr = 0.1, .warmup_steps = 1, .total_steps = 10});
  io::load(path, dft2);
  std::filesystem::remove(path);
  const bool same = std::equal(model.parameters().begin(), model.parameters().end(), model2.parameters().begin()) &&
                    dft2.steps() == 5;
  // The smallest model of docs/backend.md, trained by the same optimizer.
  Unigram uni(4);
  Estimator<double> est3(2, opt);
  DftOptimizer dft3(uni, est3, opt, Sgd<double>{}, ConstantSchedule{.base_lr = 0.5});
  const double uni_before = dft3.evaluate(batch).mean_pos_logp;
  for (int t = 0; t < 5; ++t) dft3.step(batch);
  const double uni_after = dft3.evaluate(batch).mean_pos_logp;
  std::printf("dftune %s: mean log pi(y|x) %.4f -> %.4f after 5 steps; checkpoint round trip %s; "
              "docs/backend.md's Unigram %.4f -> %.4f\n", version, before, after, same ? "ok" : "FAILED", uni_before, uni_after);
  bool dispatched = true;
#if __has_include(<Eigen/Core>)
  // Two rows of 5000 logits, through the CPU fast path, against their closed form.
  std::vector<float> z(10000);
  for (std::size_t i = 0; i < z.size(); ++i) z[i] = static_cast<float>(i % 5000) * 1e-3f;
  const std::vector<token_t> y{4999, 0};
  const std::vector<std::int64_t> off{0, 2};
  float lp = 0;
  logprob::forward(logprob::TokenLogits<float>{.logits = z, .vocab = 5000, .targets = y, .weights = {}, .offsets = off},
                   std::span<float>(&lp, 1));
  const double lse = std::log(std::expm1(5.0) / std::expm1(1e-3));  // log Σ_{k<5000} exp(k/1000)
  const double want = (4.999 - lse) + (0.0 - lse);
  const auto ran = cpu::last_isa();
  dispatched = ran == cpu::supported_isa() && std::fabs(lp - want) <= 1e-5 * std::fabs(want);
  std::printf("fast path: kernels ran %s (this CPU's widest: %s), log-prob %.6f (closed form %.6f)\n",
              ran ? cpu::isa_name(*ran) : "nothing", cpu::isa_name(cpu::supported_isa()), lp, want);
#endif
  return after > before && same && uni_after > uni_before && dispatched ? 0 : 1;
}
