#pragma once
// The phases of the SFT vs DFT vs DFT2 demo, shared by examples/demo.cpp and its quick test:
//   pretrain   the base model (also π_ref) on a corpus where part of the answers drop the carry
//   negatives  m samples per training prompt from the base (temperature 0.7, top-k 50, top-p 1),
//              with log π_ref computed once
//   finetune   SFT, DFT or DFT2 from the same base with the same budget (steps, batch, AdamW,
//              cosine schedule with 10% warm-up) on the same positives
//   evaluate   greedy exact match, mean log π of held-out positives and of the base's wrong samples
// Fine-tuning runs data-parallel when given a communicator of P > 1 ranks (examples/demo.cpp under
// mpirun, docs/distributed.md): every rank draws the same batches and keeps the ids it owns.
#include "addition.hpp"

#include <dftune/model/weights_io.hpp>

#include <dftune/distributed/collectives.hpp>
#include <dftune/dftune.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/schedule.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

namespace demo {

using Model = dftune::TinyLm<float>;
using dftune::Sequences;

enum class Method { sft, dft, dft2 };
inline const char* name(Method m) { return m == Method::sft ? "SFT" : m == Method::dft ? "DFT" : "DFT2"; }

struct Settings {
  // base model and pre-training
  dftune::tiny_lm::Config model{.vocab = kVocab, .max_len = kPromptLen + kAnswerLen, .d_model = 32, .n_heads = 4,
                                .n_layers = 2, .d_ff = 128};
  double drop_carry = 0.8;           // share of the pre-training corpus whose answers ignore every carry
  std::size_t pretrain_steps = 800, pretrain_batch = 64;
  double pretrain_lr = 3e-3;
  std::uint64_t base_seed = 1;       // the base model and the data splits are shared by all seeds
  // data
  std::size_t train_prompts = 1024, eval_prompts = 400;
  // negatives (paper: temperature 0.7, top-k 50, top-p 1.0; top-k 50 >= V = 12 cuts nothing here)
  std::size_t negatives = 2;
  dftune::SamplingOptions sampling{.temperature = 0.7, .top_k = 50, .top_p = 1.0};
  bool keep_right_negatives = false;  // true: a sample equal to the positive stays a negative
  std::size_t redraws = 8;            // otherwise such a sample is redrawn up to this many times
  // fine-tuning, the same budget for every method
  std::size_t steps = 60, batch = 32, curve_points = 4;
  double tau_dft = 1.0, gamma_dft = 0.85, tau_dft2 = 0.3, gamma_dft2 = 0.9;
  // The estimator of DFT and DFT2 (DESIGN.md §1): first_visit (dftune's default) and constant
  // self-normalise the weights by the moving average u, so they keep summing to about one per
  // example however dead the negatives are; fixed (log u ≡ 0) weights by π_θ/π_ref (DFT) and the
  // push-down fades as the negatives die.
  dftune::EstimatorInit estimator = dftune::EstimatorInit::first_visit;
};

// Progress lines on stderr: phase, step/total, loss, elapsed (quiet: none, as on ranks other than 0).
class Progress {
 public:
  bool quiet = false;
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  void line(const std::string& phase, std::size_t step, std::size_t total, double loss) const {
    if (!quiet) std::fprintf(stderr, "[%7.1fs] %-28s step %5zu/%zu  loss %8.4f\n", elapsed(), phase.c_str(), step, total, loss);
  }
  void note(const std::string& text) const {
    if (!quiet) std::fprintf(stderr, "[%7.1fs] %s\n", elapsed(), text.c_str());
  }

 private:
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

// ---- SFT: d loss / d score = −1/B for each positive --------------------------------------------
// Data-parallel: `pos` is this rank's share, B the global batch's size, and the gradient and the
// loss are summed over ranks before the update (as DftOptimizer does).
template <class Rule, class Schedule, class Comm = dftune::distributed::Single>
float sft_step(Model& model, Rule& rule, const Schedule& schedule, std::size_t step, const dftune::SequenceBatch& pos,
               std::vector<float>& scratch, Comm comm = {}) {
  const std::size_t B_local = pos.size();
  std::size_t B = 0;
  for (std::uint64_t b : dftune::distributed::all_gather_values(comm, static_cast<std::uint64_t>(B_local))) B += b;
  scratch.resize(2 * B_local);
  std::span<float> scores(scratch.data(), B_local), d(scratch.data() + B_local, B_local);
  model.zero_gradients();
  if (B_local != 0) {
    model.sequence_logp(pos, scores);
    std::fill(d.begin(), d.end(), -1.0f / static_cast<float>(B));
    model.accumulate_gradients(pos, d);
  }
  comm.all_reduce_sum(std::span<float>(model.gradients()));
  rule.step(model.parameters(), std::span<const float>(model.gradients()), static_cast<float>(schedule.lr(step)));
  float loss = -std::accumulate(scores.begin(), scores.end(), 0.0f) / static_cast<float>(B);
  comm.all_reduce_sum(std::span<float>(&loss, 1));
  return loss;
}

inline dftune::CosineSchedule schedule_for(double lr, std::size_t steps) {
  return {.base_lr = lr, .min_lr = 0.0, .warmup_steps = steps / 10, .total_steps = steps};
}

// ---- pre-training -----------------------------------------------------------------------------
inline Model pretrain(const Settings& s, const Progress& progress) {
  Model model(s.model, s.base_seed);
  dftune::AdamW<float> rule;
  const auto schedule = dftune::CosineSchedule{.base_lr = s.pretrain_lr, .min_lr = 0.1 * s.pretrain_lr,
                                               .warmup_steps = s.pretrain_steps / 20, .total_steps = s.pretrain_steps};
  std::mt19937_64 rng(s.base_seed * 7919 + 1);
  std::uniform_int_distribution<int> digits(0, 999);
  std::bernoulli_distribution drop(s.drop_carry);
  Sequences batch;
  std::vector<float> scratch;
  for (std::size_t step = 0; step < s.pretrain_steps; ++step) {
    batch = Sequences{};
    while (batch.size() < s.pretrain_batch) {
      const Problem p{digits(rng), digits(rng)};
      if (split_of(p) != Split::pretrain) continue;
      batch.push(prompt(p), answer(p, drop(rng)));
    }
    const float loss = sft_step(model, rule, schedule, step, batch.view(), scratch);
    if ((step + 1) % 100 == 0 || step + 1 == s.pretrain_steps) progress.line("pretrain", step + 1, s.pretrain_steps, loss);
  }
  return model;
}

// ---- data -------------------------------------------------------------------------------------
struct TrainData {
  std::vector<Problem> problems;
  std::vector<std::int64_t> ids;   // example i has id i (the estimator's key)
  Sequences positives;             // prompt + right answer
  Sequences negatives;             // m per prompt, row-major [i][j], sampled from the base
  std::vector<float> ref_neg_logp; // log π_ref of the negatives, computed once
  double negatives_correct = 0;    // share of sampled negatives that are in fact right answers
  double shared_tokens = 0;        // share of negative tokens equal to the positive's at that position
};

// A sample equal to the positive is not a negative: with it DFT pushes down the very answer SFT
// pulls up, and its self-normalised weight drifts onto it as the wrong samples die (DESIGN.md §1).
// The paper keeps such samples rare by prompting the base as "an unhelpful assistant"; here a slot
// whose sample equals the positive is redrawn (fresh random stream) up to `redraws` times, unless
// keep_right_negatives is set (the paper's sampler taken literally).
inline TrainData make_train_data(Model& base, const std::vector<Problem>& problems, const Settings& s, std::uint64_t seed) {
  TrainData d;
  d.problems = problems;
  const std::size_t m = s.negatives;
  std::vector<Problem> repeated;  // the j-th copy of prompt i draws negative (i, j)
  for (std::size_t i = 0; i < problems.size(); ++i) {
    d.ids.push_back(static_cast<std::int64_t>(i));
    d.positives.push(prompt(problems[i]), answer(problems[i]));
    for (std::size_t j = 0; j < m; ++j) repeated.push_back(problems[i]);
  }
  std::vector<std::array<token_t, kAnswerLen>> drawn(repeated.size());
  std::vector<std::size_t> pending(repeated.size());
  std::iota(pending.begin(), pending.end(), 0);
  for (std::size_t round = 0; round <= s.redraws && !pending.empty(); ++round) {
    std::vector<Problem> ask;
    for (std::size_t k : pending) ask.push_back(repeated[k]);
    dftune::SamplingOptions o = s.sampling;
    o.seed = seed * 1000 + round;
    const Sequences got = base.generate(PromptSet(ask).view(), kAnswerLen, o);
    std::vector<std::size_t> still;
    for (std::size_t q = 0; q < pending.size(); ++q) {
      const auto c = got.view().sequence(q).subspan(kPromptLen);
      std::copy(c.begin(), c.end(), drawn[pending[q]].begin());
      if (!s.keep_right_negatives && is_correct(repeated[pending[q]], c)) still.push_back(pending[q]);
    }
    pending = std::move(still);
  }
  for (std::size_t k = 0; k < repeated.size(); ++k) d.negatives.push(prompt(repeated[k]), drawn[k]);
  d.ref_neg_logp.resize(d.negatives.size());
  base.sequence_logp(d.negatives.view(), d.ref_neg_logp);
  std::size_t right = 0, shared = 0;
  for (std::size_t k = 0; k < repeated.size(); ++k) {
    right += is_correct(repeated[k], drawn[k]);
    const auto y = answer(repeated[k]);
    for (std::size_t t = 0; t < kAnswerLen; ++t) shared += drawn[k][t] == y[t];
  }
  d.negatives_correct = static_cast<double>(right) / static_cast<double>(repeated.size());
  d.shared_tokens = static_cast<double>(shared) / static_cast<double>(repeated.size() * kAnswerLen);
  return d;
}

// Held-out prompts with their right answers and the base model's wrong samples (the negatives
// whose likelihood DFT should push down).
struct EvalSet {
  std::vector<Problem> problems;
  PromptSet prompts{std::span<const Problem>{}};
  Sequences positives, wrong;
};

inline EvalSet make_eval_set(Model& base, const std::vector<Problem>& problems, const Settings& s, std::uint64_t seed) {
  EvalSet e;
  e.problems = problems;
  e.prompts = PromptSet(problems);
  for (const Problem& p : problems) e.positives.push(prompt(p), answer(p));
  dftune::SamplingOptions o = s.sampling;
  o.seed = seed;
  std::vector<Problem> repeated;
  for (const Problem& p : problems)
    for (std::size_t j = 0; j < 2; ++j) repeated.push_back(p);
  const Sequences samples = base.generate(PromptSet(repeated).view(), kAnswerLen, o);
  for (std::size_t k = 0; k < repeated.size(); ++k) {
    const auto c = samples.view().sequence(k).subspan(kPromptLen);
    if (!is_correct(repeated[k], c)) e.wrong.push(prompt(repeated[k]), c);
  }
  return e;
}

struct Metrics {
  double accuracy = 0;  // greedy exact match
  double pos_logp = 0;  // mean log π(right answer | prompt)
  double neg_logp = 0;  // mean log π(base model's wrong sample | prompt)
};

inline double mean_logp(Model& model, const Sequences& seqs) {
  if (seqs.size() == 0) return 0;
  std::vector<float> lp(seqs.size());
  model.sequence_logp(seqs.view(), lp);
  return std::accumulate(lp.begin(), lp.end(), 0.0) / static_cast<double>(lp.size());
}

inline Metrics evaluate(Model& model, const EvalSet& e) {
  const Sequences greedy = model.generate(e.prompts.view(), kAnswerLen, {.temperature = 0.0});
  std::size_t right = 0;
  for (std::size_t i = 0; i < e.problems.size(); ++i) right += is_correct(e.problems[i], greedy.view().sequence(i).subspan(kPromptLen));
  return {.accuracy = static_cast<double>(right) / static_cast<double>(e.problems.size()),
          .pos_logp = mean_logp(model, e.positives),
          .neg_logp = mean_logp(model, e.wrong)};
}

// ---- fine-tuning ------------------------------------------------------------------------------
struct CurvePoint {
  std::size_t step = 0;
  double loss = 0;  // mean training loss since the previous point
  Metrics test;
};

struct RunResult {
  Method method = Method::sft;
  double lr = 0;
  std::uint64_t seed = 0;
  Metrics validation, test;
  std::vector<CurvePoint> curve;
  double first_loss = 0, last_loss = 0;  // mean training loss over the first / last tenth of steps
  double ms_per_step = 0;                 // wall time of a training step (batching + gradient + update), evaluation excluded
};

// One training batch of the fine-tuning loop: B example ids (indices into TrainData), their
// positives, their m negatives each and those negatives' log π_ref.
struct StepBatch {
  std::span<const std::int64_t> ids;
  dftune::SequenceBatch positives, negatives;
  std::size_t num_negatives = 0;
  std::span<const float> ref_neg_logp;
};

// The loop every method shares (examples/demo.cpp and examples/compare.cpp): batches drawn from a
// per-seed shuffle of the training set (epoch by epoch; the same seed gives every method the same
// batches), the learning curve on test, the final validation and test metrics, and the wall time
// of the training steps alone (evaluation excluded). `train_step(step, batch)` updates `model`
// (already a copy of the base) and returns the step's loss; `label` names the run in progress lines.
// Data-parallel, `shard` is this rank's: it draws the same batches and passes on the ids it owns.
template <class TrainStep>
RunResult finetune_loop(Model& model, const char* label, double lr, const TrainData& data, const EvalSet& validation,
                        const EvalSet& test, const Settings& s, std::uint64_t seed, const Progress& progress,
                        TrainStep&& train_step, dftune::distributed::Shard shard = {}) {
  RunResult r;
  r.lr = lr;
  r.seed = seed;
  const std::size_t N = data.problems.size(), B = s.batch, m = s.negatives;
  std::mt19937_64 rng(seed * 1000003 + 17);
  std::vector<std::size_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::size_t cursor = N;
  Sequences pos, neg;
  std::vector<std::int64_t> ids;
  std::vector<float> ref;
  const auto data_pos = data.positives.view(), data_neg = data.negatives.view();
  auto push = [](Sequences& dst, const dftune::SequenceBatch& src, std::size_t k) {
    const auto seq = src.sequence(k);
    const auto p = static_cast<std::size_t>(src.prompt_len[k]);
    dst.push(seq.first(p), seq.subspan(p));
  };
  r.curve.push_back({.step = 0, .loss = 0, .test = evaluate(model, test)});
  const std::size_t every = std::max<std::size_t>(1, s.steps / std::max<std::size_t>(1, s.curve_points));
  const std::size_t tenth = std::max<std::size_t>(1, s.steps / 10);
  double loss_sum = 0, step_seconds = 0;
  std::size_t loss_n = 0;
  for (std::size_t step = 0; step < s.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    pos = Sequences{};
    neg = Sequences{};
    ids.clear();
    ref.clear();
    for (std::size_t b = 0; b < B; ++b) {
      if (cursor == N) {
        std::shuffle(order.begin(), order.end(), rng);
        cursor = 0;
      }
      const std::size_t i = order[cursor++];
      if (!shard.owns(static_cast<std::int64_t>(i))) continue;  // another rank's example
      ids.push_back(static_cast<std::int64_t>(i));
      push(pos, data_pos, i);
      for (std::size_t j = 0; j < m; ++j) {
        push(neg, data_neg, i * m + j);
        ref.push_back(data.ref_neg_logp[i * m + j]);
      }
    }
    const float loss = train_step(step, StepBatch{.ids = ids, .positives = pos.view(), .negatives = neg.view(),
                                                  .num_negatives = m, .ref_neg_logp = ref});
    step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step < tenth) r.first_loss += loss / static_cast<double>(tenth);
    if (step >= s.steps - tenth) r.last_loss += loss / static_cast<double>(tenth);
    loss_sum += loss;
    ++loss_n;
    if ((step + 1) % every == 0 || step + 1 == s.steps) {
      r.curve.push_back({.step = step + 1, .loss = loss_sum / static_cast<double>(loss_n), .test = evaluate(model, test)});
      char phase[96];
      std::snprintf(phase, sizeof phase, "finetune %s lr %.0e seed %llu", label, lr, static_cast<unsigned long long>(seed));
      progress.line(phase, step + 1, s.steps, loss_sum / static_cast<double>(loss_n));
      loss_sum = 0;
      loss_n = 0;
    }
  }
  r.ms_per_step = 1000 * step_seconds / static_cast<double>(std::max<std::size_t>(1, s.steps));
  r.test = r.curve.back().test;
  r.validation = evaluate(model, validation);
  return r;
}

// One SFT, DFT or DFT2 fine-tuning run from a copy of the base; data-parallel over `comm`.
template <class Comm = dftune::distributed::Single>
RunResult finetune(const Model& base, Method method, double lr, const TrainData& data, const EvalSet& validation,
                   const EvalSet& test, const Settings& s, std::uint64_t seed, const Progress& progress, Comm comm = {}) {
  Model model = base;
  const std::size_t N = data.problems.size();
  const auto schedule = schedule_for(lr, s.steps);
  const dftune::DftOptions opt =
      method == Method::dft2
          ? dftune::DftOptions{.variant = dftune::Variant::dft2, .tau = s.tau_dft2, .gamma = s.gamma_dft2, .init = s.estimator}
          : dftune::DftOptions{.variant = dftune::Variant::dft, .tau = s.tau_dft, .gamma = s.gamma_dft, .init = s.estimator};
  dftune::Estimator<float> estimator(N, opt, dftune::distributed::shard_of(comm));
  dftune::DftOptimizer dft(model, estimator, opt, dftune::AdamW<float>{}, schedule, {}, comm);
  dftune::AdamW<float> sft_rule;
  std::vector<float> scratch;
  RunResult r = finetune_loop(model, name(method), lr, data, validation, test, s, seed, progress,
                              [&](std::size_t step, const StepBatch& b) -> float {
                                if (method == Method::sft) return sft_step(model, sft_rule, schedule, step, b.positives, scratch, comm);
                                const auto info = dft.step({.ids = b.ids, .positives = b.positives, .negatives = b.negatives,
                                                            .num_negatives = b.num_negatives,
                                                            .ref_neg_logp = method == Method::dft ? b.ref_neg_logp
                                                                                                  : std::span<const float>()});
                                return info.result.loss;
                              },
                              dftune::distributed::shard_of(comm));
  r.method = method;
  return r;
}

}  // namespace demo
