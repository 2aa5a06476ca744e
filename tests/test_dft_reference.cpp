// examples/dft_reference.hpp — DFT and DFT2 written as the paper writes them, with no checks —
// against the library's step (model scores → dft_step with an Estimator → the model's backward →
// Sgd), and against DftOptimizer: the same loss, gradients, log u and parameters, bit for bit,
// over several steps whose batches revisit examples (so the moving average u is exercised).
//
// The categorical policy here scores through the generic log-prob oracle: the reference's
// log-softmax is written in the oracle's order, and the CPU fast path is tested against that
// oracle (to rounding) in test_logprob_fast.
#define DFTUNE_LOGPROB_GENERIC_ONLY
#include "../examples/dft_reference.hpp"

#include <dftune/dftune.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <random>
#include <vector>

using namespace dftune;
namespace ref = dft_reference;

namespace {

constexpr std::size_t kContexts = 5, kVocab = 7, kExamples = 6, kNeg = 3, kSteps = 8;

bool same_bits(double a, double b) { return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b); }
bool same_bits(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k)
    if (!same_bits(a[k], b[k])) return false;
  return true;
}

// Random examples: context id % kContexts, answers of 1–4 tokens (DFT2's lengths differ), and
// log π_ref of each negative from a random base policy.
std::vector<ref::Example> make_examples(std::mt19937_64& rng) {
  CategoricalPolicy<double> base(kContexts, kVocab);
  std::normal_distribution<double> noise(0.0, 1.5);
  for (double& x : base.parameters()) x = noise(rng);
  std::uniform_int_distribution<int> token(0, int(kVocab) - 1), length(1, 4);
  auto answer = [&] {
    std::vector<int> a(static_cast<std::size_t>(length(rng)));
    for (int& t : a) t = token(rng);
    return a;
  };
  std::vector<ref::Example> out;
  for (std::size_t i = 0; i < kExamples; ++i) {
    ref::Example e{.id = std::int64_t(i), .positive = {int(i % kContexts), answer()}, .negatives = {}, .ref_logp = {}};
    for (std::size_t j = 0; j < kNeg; ++j) {
      e.negatives.push_back({e.positive.context, answer()});
      Sequences one;
      const std::array<token_t, 1> prompt{token_t(e.positive.context)};
      const std::vector<token_t> a(e.negatives.back().answer.begin(), e.negatives.back().answer.end());
      one.push(prompt, a);
      double lp = 0;
      base.sequence_logp(one.view(), std::span<double>(&lp, 1));
      e.ref_logp.push_back(lp);
    }
    out.push_back(e);
  }
  return out;
}

// Batch t: three examples, overlapping the previous batches.
std::vector<ref::Example> batch_at(const std::vector<ref::Example>& all, std::size_t t) {
  return {all[t % kExamples], all[(t + 2) % kExamples], all[(t + 3) % kExamples]};
}

// The library's inputs for a batch of reference examples.
struct LibraryBatch {
  std::vector<std::int64_t> ids, pos_len, neg_len;
  std::vector<double> ref_neg;
  Sequences pos, neg;
  explicit LibraryBatch(const std::vector<ref::Example>& b) {
    auto push = [](Sequences& s, const ref::Sequence& y, std::vector<std::int64_t>& len) {
      const std::array<token_t, 1> prompt{token_t(y.context)};
      const std::vector<token_t> a(y.answer.begin(), y.answer.end());
      s.push(prompt, a);
      len.push_back(std::int64_t(a.size()));
    };
    for (const auto& e : b) {
      ids.push_back(e.id);
      push(pos, e.positive, pos_len);
      for (std::size_t j = 0; j < e.negatives.size(); ++j) {
        push(neg, e.negatives[j], neg_len);
        ref_neg.push_back(e.ref_logp[j]);
      }
    }
  }
};

void run_case(const ref::Options& o) {
  std::mt19937_64 rng(42);
  const std::vector<ref::Example> all = make_examples(rng);
  std::normal_distribution<double> noise(0.0, 0.5);
  ref::Policy reference{kVocab, std::vector<double>(kContexts * kVocab)};
  for (double& x : reference.theta) x = noise(rng);
  std::vector<std::optional<double>> ref_log_u(kExamples);

  const DftOptions opt{.variant = o.dft2 ? Variant::dft2 : Variant::dft, .tau = o.tau, .gamma = o.gamma,
                       .init = o.log_u0 ? EstimatorInit::constant : EstimatorInit::first_visit,
                       .log_u0 = o.log_u0.value_or(0.0), .eps = o.eps};
  // A: the objective alone (dft_step + Estimator), the model's backward and the inner rule by hand.
  CategoricalPolicy<double> model_a(kContexts, kVocab);
  std::copy(reference.theta.begin(), reference.theta.end(), model_a.parameters().begin());
  Estimator<double> est_a(kExamples, opt);
  Sgd<double> sgd;
  // B: the whole step in one call.
  CategoricalPolicy<double> model_b = model_a;
  Estimator<double> est_b(kExamples, opt);
  DftOptimizer opt_b(model_b, est_b, opt, Sgd<double>{}, ConstantSchedule{.base_lr = o.lr});

  for (std::size_t t = 0; t < kSteps; ++t) {
    CAPTURE(t);
    const std::vector<ref::Example> b = batch_at(all, t);
    const ref::Step r = ref::dft_step(reference, ref_log_u, b, o);

    LibraryBatch lb(b);
    std::vector<double> pos(lb.ids.size()), neg(lb.ref_neg.size());
    model_a.sequence_logp(lb.pos.view(), pos);
    model_a.sequence_logp(lb.neg.view(), neg);
    const DftResult<double> a = dft_step(SequenceScores<double>{.ids = lb.ids, .pos_logp = pos,
                                                                .neg_logp = neg, .ref_neg_logp = lb.ref_neg,
                                                                .pos_len = lb.pos_len, .neg_len = lb.neg_len, .num_negatives = kNeg},
                                         est_a, opt);
    model_a.zero_gradients();
    model_a.accumulate_gradients(lb.pos.view(), a.grad_pos);
    model_a.accumulate_gradients(lb.neg.view(), a.grad_neg);
    sgd.step(model_a.parameters(), model_a.gradients(), o.lr);

    const auto info = opt_b.step({.ids = lb.ids, .positives = lb.pos.view(), .negatives = lb.neg.view(), .ref_neg_logp = lb.ref_neg, .num_negatives = kNeg});

    CHECK(same_bits(a.loss, r.loss));
    CHECK(same_bits(a.grad_pos, r.grad_pos));
    CHECK(same_bits(a.grad_neg, r.grad_neg));
    CHECK(same_bits(a.log_u, r.log_u));
    CHECK(same_bits(model_a.parameters(), reference.theta));
    CHECK(same_bits(info.result.loss, r.loss));
    CHECK(same_bits(model_b.parameters(), reference.theta));
    for (std::size_t i = 0; i < kExamples; ++i) {
      CAPTURE(i);
      REQUIRE(est_a.log_u(std::int64_t(i)).has_value() == ref_log_u[i].has_value());
      if (ref_log_u[i]) {
        CHECK(same_bits(*est_a.log_u(std::int64_t(i)), *ref_log_u[i]));
        CHECK(same_bits(*est_b.log_u(std::int64_t(i)), *ref_log_u[i]));
      }
    }
  }
  // Not vacuous: the parameters moved, and every example was revisited (its u is a moving average).
  CHECK_FALSE(same_bits(model_a.parameters()[0], 0.0));
}

}  // namespace

TEST_CASE("dft_reference: DFT, first-visit u, equals dft_step + Estimator and DftOptimizer bit for bit") {
  run_case({.dft2 = false, .tau = 1.0, .gamma = 0.85, .eps = 1e-8, .log_u0 = std::nullopt, .lr = 0.3});
}
TEST_CASE("dft_reference: DFT, τ = 0.7, constant log u0 = 0.5, γ = 1") {
  run_case({.dft2 = false, .tau = 0.7, .gamma = 1.0, .eps = 1e-8, .log_u0 = 0.5, .lr = 0.3});
}
TEST_CASE("dft_reference: DFT2, first-visit u, lengths 1–4") {
  run_case({.dft2 = true, .tau = 0.3, .gamma = 0.9, .eps = 1e-8, .log_u0 = std::nullopt, .lr = 0.3});
}
TEST_CASE("dft_reference: DFT2, constant log u0 = 0 (the reference trainer), ε = 0") {
  run_case({.dft2 = true, .tau = 0.3, .gamma = 0.9, .eps = 0.0, .log_u0 = 0.0, .lr = 0.3});
}
