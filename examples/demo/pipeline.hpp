#pragma once
// The phases of the SFT vs DFT vs DFT2 demo, shared by examples/demo.cpp and its quick test:
//   pretrain   the base model (also π_ref) on a corpus where part of the answers drop the carry
//   negatives  m samples per training prompt from the base (temperature 0.7, top-k 50, top-p 1),
//              with log π_ref computed once; sampled once, or afresh for every epoch (the paper's
//              recipe, Settings::fresh_negatives)
//   finetune   SFT, DFT or DFT2 from the same base with the same budget (steps, batch, AdamW,
//              cosine schedule with 10% warm-up, optional clipping to a global gradient norm) on the
//              same positives, logging TRL-named metrics at every step (docs/math.md, "Metrics")
//   evaluate   greedy exact match, mean log π of held-out positives and of the base's wrong samples
// Fine-tuning runs data-parallel when given a communicator of P > 1 ranks (examples/demo.cpp under
// mpirun, docs/distributed.md): every rank draws the same batches and keeps the ids it owns.
#include "addition.hpp"
#include "clipped_rule.hpp"

#include <dftune/model/weights_io.hpp>

#include <dftune/metrics/jsonl.hpp>
#include <dftune/metrics/metrics.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/replica_check.hpp>
#include <dftune/distributed/sampler.hpp>
#include <dftune/dftune.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/step_options.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace demo {

using Model = dftune::TinyLm<float>;
// What a model may keep of a scoring pass for the backward of the same batch (TinyLm::
// set_activation_memory): a step's batches take well under a MiB at the demo's size.
inline constexpr std::size_t kActivationMemory = std::size_t{64} << 20;
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
  // The estimator of DFT and DFT2 (docs/math.md, "The estimator"): first_visit (dftune's default)
  // starts u at the example's own first inner mean, so its weights sum to 1 on a first visit and
  // stay near 1 however dead the negatives are (u follows them down); constant (the reference's,
  // log u0 = 0) starts u at 1, so an example first seen after its negatives died gets weights
  // summing to less than 1; fixed (log u ≡ log_u0) weights by π_θ/π_ref (DFT), and the push-down
  // fades as the negatives die.
  dftune::EstimatorInit estimator = dftune::EstimatorInit::first_visit;
  double log_u0 = 0.0;                 // log u of an unseen example (constant) or always (fixed)
  double eps_dft2 = 1e-8;              // ε of DFT2's |y| + ε (the reference's 1e-8 is lost in float32: 0)
  bool fresh_negatives = false;        // new negatives from the base model every epoch (the paper's recipe)
  bool balanced_sampler = false;       // data-parallel: B/P of each rank's own prompts per step (distributed/sampler.hpp)
  double max_grad_norm = std::numeric_limits<double>::infinity();  // clip to this global L2 norm (reference: 1)
};

// The recipe as the reference trainer runs it (docs/math.md, "Differences from the reference
// trainer"): constant init log u = 0, DFT2's ε = 0 (its 1e-8 vanishes in float32: |y| + 1e-8
// rounds to |y|), fresh negatives from the base model every epoch, gradients clipped to global
// norm 1.0 (the Trainer's default max_grad_norm). dftune: first-visit init, ε = 1e-8 (no effect
// on these lengths in double), negatives sampled once, no clipping.
enum class Recipe { dftune, official };

inline void apply(Recipe r, Settings& s) {
  const Settings d;
  const bool off = r == Recipe::official;
  s.estimator = off ? dftune::EstimatorInit::constant : d.estimator;
  s.log_u0 = 0.0;
  s.eps_dft2 = off ? 0.0 : d.eps_dft2;
  s.fresh_negatives = off;
  s.max_grad_norm = off ? 1.0 : d.max_grad_norm;
}

// The DFT / DFT2 options of a run.
inline dftune::DftOptions dft_options(const Settings& s, bool dft2) {
  return dft2 ? dftune::DftOptions{.variant = dftune::Variant::dft2, .tau = s.tau_dft2, .gamma = s.gamma_dft2,
                                   .init = s.estimator, .log_u0 = s.log_u0, .eps = s.eps_dft2}
              : dftune::DftOptions{.variant = dftune::Variant::dft, .tau = s.tau_dft, .gamma = s.gamma_dft,
                                   .init = s.estimator, .log_u0 = s.log_u0, .eps = s.eps_dft2};
}

using Rule = ClippedRule<float, dftune::AdamW<float>>;  // every fine-tuning run's update rule
inline Rule rule_for(const Settings& s) { return Rule(dftune::AdamW<float>{}, s.max_grad_norm); }

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
    dftune::score_for_backward(model, pos, scores);  // the backward below reuses its forward
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
  model.set_activation_memory(kActivationMemory);
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
struct NegativeSet {
  Sequences negatives;              // m per prompt, row-major [i][j], sampled from the base
  std::vector<float> ref_neg_logp;  // log π_ref of the negatives, computed once
  double correct = 0;               // share of sampled negatives that are in fact right answers
  double shared_tokens = 0;         // share of negative tokens equal to the positive's at that position
};

struct TrainData {
  std::vector<Problem> problems;
  std::vector<std::int64_t> ids;   // example i has id i (the estimator's key)
  Sequences positives;             // prompt + right answer
  std::vector<NegativeSet> epochs; // the negatives of epoch e; one set: sampled once and reused
  const NegativeSet& negatives_of_epoch(std::size_t e) const { return epochs[std::min(e, epochs.size() - 1)]; }
};

// Epochs a run of `steps` batches of `batch` prompts starts on a training set of n prompts.
inline std::size_t epochs_needed(std::size_t steps, std::size_t batch, std::size_t n) {
  return (steps * batch + n - 1) / n;
}

// A sample equal to the positive is not a negative: with it DFT pushes down the very answer SFT
// pulls up, and its self-normalised weight drifts onto it as the wrong samples die (docs/math.md,
// "The estimator"). The paper keeps such samples rare by prompting the base as "an unhelpful
// assistant"; here a slot whose sample equals the positive is redrawn (fresh random stream) up to
// `redraws` times, unless keep_right_negatives is set (the paper's sampler taken literally).
inline NegativeSet sample_negatives(Model& base, const std::vector<Problem>& problems, const Settings& s, std::uint64_t seed) {
  NegativeSet d;
  const std::size_t m = s.negatives;
  std::vector<Problem> repeated;  // the j-th copy of prompt i draws negative (i, j)
  for (std::size_t i = 0; i < problems.size(); ++i)
    for (std::size_t j = 0; j < m; ++j) repeated.push_back(problems[i]);
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
  d.correct = static_cast<double>(right) / static_cast<double>(repeated.size());
  d.shared_tokens = static_cast<double>(shared) / static_cast<double>(repeated.size() * kAnswerLen);
  return d;
}

// The positives and the negatives of every epoch: epoch 0's from `seed` (what the demo has always
// drawn), epoch e's from another stream of the same seed when s.fresh_negatives.
inline TrainData make_train_data(Model& base, const std::vector<Problem>& problems, const Settings& s, std::uint64_t seed) {
  TrainData d;
  d.problems = problems;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    d.ids.push_back(static_cast<std::int64_t>(i));
    d.positives.push(prompt(problems[i]), answer(problems[i]));
  }
  const std::size_t epochs = s.fresh_negatives ? epochs_needed(s.steps, s.batch, problems.size()) : 1;
  for (std::size_t e = 0; e < epochs; ++e) d.epochs.push_back(sample_negatives(base, problems, s, seed + 1000003 * e));
  return d;
}

// Held-out prompts with their right answers and the base model's wrong samples (the negatives
// whose likelihood DFT should push down).
struct EvalSet {
  std::vector<Problem> problems;
  PromptSet prompts{std::span<const Problem>{}};
  Sequences positives, wrong;
};

struct Metrics {
  double accuracy = 0;  // greedy exact match
  double pos_logp = 0;  // mean log π(right answer | prompt)
  double neg_logp = 0;  // mean log π(base model's wrong sample | prompt)
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

// One training step's numbers under TRL's names where it has one (docs/math.md, "Metrics"), in the
// order they were added; written as one JSON object per step (metrics.jsonl).
struct StepLog {
  std::vector<std::pair<std::string, double>> values;
  void add(std::string name, double v) { values.emplace_back(std::move(name), v); }
  double get(std::string_view name) const {
    for (const auto& [k, v] : values)
      if (k == name) return v;
    return std::numeric_limits<double>::quiet_NaN();
  }
};

struct RunResult {
  Method method = Method::sft;
  double lr = 0;
  std::uint64_t seed = 0;
  Metrics validation, test;
  std::vector<CurvePoint> curve;
  std::vector<StepLog> log;              // one per training step
  double first_loss = 0, last_loss = 0;  // mean training loss over the first / last tenth of steps
  double ms_per_step = 0;                 // wall time of a training step (batching + gradient + update), evaluation excluded
};

// One training batch of the fine-tuning loop: B example ids (indices into TrainData), their
// positives, their m negatives each and those negatives' log π_ref.
struct StepBatch {
  std::span<const std::int64_t> ids;
  dftune::SequenceBatch positives, negatives;
  std::span<const float> ref_neg_logp;
  std::size_t num_negatives = 0;  // last, as in dftune's input structs
};

// Every completion token of `b` as a one-token completion, for token-level objectives (Dynamic
// FT) through the Model concept, which scores whole completions: sequence s = (x, y_1..y_L)
// becomes the L sequences (x y_<t, y_t), whose scores are log π(y_t | x, y_<t) and whose gradient
// with weights g_t is Σ_t g_t ∇ log π(y_t | x, y_<t). Sequence s owns the split sequences
// [offsets[s], offsets[s+1]). It costs L forward passes per sequence; a backend that hands out its
// reduction's token_logp (logprob::forward) needs one.
inline Sequences split_tokens(const dftune::SequenceBatch& b, std::vector<std::int64_t>& offsets) {
  Sequences out;
  offsets.assign(1, 0);
  for (std::size_t s = 0; s < b.size(); ++s) {
    const auto seq = b.sequence(s);
    const auto p = static_cast<std::size_t>(b.prompt_len[s]);
    for (std::size_t t = p; t < seq.size(); ++t) out.push(seq.first(t), seq.subspan(t, 1));
    offsets.push_back(static_cast<std::int64_t>(out.size()));
  }
  return out;
}

// The loop every method shares (examples/demo.cpp and examples/compare.cpp): batches drawn from a
// per-seed shuffle of the training set (epoch by epoch; the same seed gives every method the same
// batches, and epoch e the negatives of TrainData::negatives_of_epoch(e)), the learning curve on
// test, the final validation and test metrics, a StepLog per step, and the wall time of the
// training steps alone (evaluation excluded). `train_step(step, batch, log)` updates `model`
// (already a copy of the base), adds its metrics to `log` (which already holds step, epoch and
// learning_rate) and returns the step's loss; `label` names the run in progress lines.
// Data-parallel, `shard` is this rank's: it draws the same batches and passes on the ids it owns.
// `at_start`, when given, is evaluate(base, test), computed once by the caller: every run starts
// from the same base, so its step-0 point is the same numbers (evaluation is deterministic), and
// the demo's 36 runs need not each evaluate it again.
template <class TrainStep>
RunResult finetune_loop(Model& model, const char* label, double lr, const TrainData& data, const EvalSet& validation,
                        const EvalSet& test, const Settings& s, std::uint64_t seed, const Progress& progress,
                        TrainStep&& train_step, dftune::distributed::Shard shard = {}, const Metrics* at_start = nullptr) {
  RunResult r;
  r.lr = lr;
  r.seed = seed;
  const std::size_t N = data.problems.size(), B = s.batch, m = s.negatives;
  const auto schedule = schedule_for(lr, s.steps);
  std::mt19937_64 rng(seed * 1000003 + 17);
  std::vector<std::size_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::size_t cursor = N, epoch = 0, shuffles = 0;
  std::optional<dftune::distributed::ShardedBatches> balanced;
  if (s.balanced_sampler)
    balanced.emplace(N, B, seed * 1000003 + 17, shard, dftune::distributed::SamplerOptions{.balance = dftune::distributed::Balance::per_rank});
  Sequences pos, neg;
  std::vector<std::int64_t> ids;
  std::vector<float> ref;
  const auto data_pos = data.positives.view();
  auto push = [](Sequences& dst, const dftune::SequenceBatch& src, std::size_t k) {
    const auto seq = src.sequence(k);
    const auto p = static_cast<std::size_t>(src.prompt_len[k]);
    dst.push(seq.first(p), seq.subspan(p));
  };
  r.curve.push_back({.step = 0, .loss = 0, .test = at_start ? *at_start : evaluate(model, test)});
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
    if (balanced) {  // Balance::per_rank: this rank's B/P ids, epochs of ⌈n_0/(B/P)⌉ steps
      epoch = step / balanced->batches_per_epoch();
      const NegativeSet& negs = data.negatives_of_epoch(epoch);
      const auto data_neg = negs.negatives.view();
      for (std::int64_t id : balanced->local_batch(step)) {
        const auto i = static_cast<std::size_t>(id);
        ids.push_back(id);
        push(pos, data_pos, i);
        for (std::size_t j = 0; j < m; ++j) {
          push(neg, data_neg, i * m + j);
          ref.push_back(negs.ref_neg_logp[i * m + j]);
        }
      }
    }
    for (std::size_t b = 0; b < (balanced ? 0 : B); ++b) {
      if (cursor == N) {
        std::shuffle(order.begin(), order.end(), rng);
        cursor = 0;
        epoch = shuffles++;
      }
      const std::size_t i = order[cursor++];
      if (!shard.owns(static_cast<std::int64_t>(i))) continue;  // another rank's example
      const NegativeSet& negs = data.negatives_of_epoch(epoch);
      const auto data_neg = negs.negatives.view();
      ids.push_back(static_cast<std::int64_t>(i));
      push(pos, data_pos, i);
      for (std::size_t j = 0; j < m; ++j) {
        push(neg, data_neg, i * m + j);
        ref.push_back(negs.ref_neg_logp[i * m + j]);
      }
    }
    StepLog log;
    log.add("step", static_cast<double>(step + 1));
    log.add("epoch", static_cast<double>((step + 1) * B) / static_cast<double>(N));
    log.add("learning_rate", schedule.lr(step));
    const float loss = train_step(step, StepBatch{.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = m},
                                  log);
    step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.log.push_back(std::move(log));
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

// The estimator's numbers of a DFT/DFT2 step (metrics/metrics.hpp) under the log's names.
// Data-parallel, they are this rank's shard's (rank 0 writes the log).
template <class T>
void log_dft(StepLog& log, const dftune::DftResult<T>& r, const StepBatch& b, const dftune::DftOptions& opt) {
  std::vector<std::int64_t> neg_len(b.negatives.size());
  for (std::size_t k = 0; k < neg_len.size(); ++k) neg_len[k] = b.negatives.completion_length(k);
  const dftune::DftMetrics d = dftune::dft_metrics(r, b.num_negatives, opt, neg_len);
  log.add("dft/log_u_mean", d.log_u_mean);
  log.add("dft/log_u_min", d.log_u_min);
  log.add("dft/log_u_max", d.log_u_max);
  log.add("dft/ess", d.ess);
  log.add("dft/max_weight", d.max_weight);
  log.add("dft/weight_sum", d.weight_sum);
}

// One SFT, DFT or DFT2 fine-tuning run from a copy of the base; data-parallel over `comm`;
// `base_test`: evaluate(base, test) if the caller has it (finetune_loop's at_start).
template <class Comm = dftune::distributed::Single>
RunResult finetune(const Model& base, Method method, double lr, const TrainData& data, const EvalSet& validation,
                   const EvalSet& test, const Settings& s, std::uint64_t seed, const Progress& progress, Comm comm = {},
                   const Metrics* base_test = nullptr) {
  Model model = base;
  model.set_activation_memory(kActivationMemory);
  const std::size_t N = data.problems.size();
  const auto schedule = schedule_for(lr, s.steps);
  const dftune::DftOptions opt = dft_options(s, method == Method::dft2);
  dftune::Estimator<float> estimator(N, opt, dftune::distributed::shard_of(comm));
  // DFT/DFT2 clip inside the optimizer (StepOptions); SFT through the loop's rule: the same rule,
  // applied after the gradient's all-reduce, so both clip the global gradient.
  dftune::DftOptimizer dft(model, estimator, opt, dftune::AdamW<float>{}, schedule,
                           dftune::StepOptions{.max_grad_norm = s.max_grad_norm}, comm);
  dftune::distributed::check_replicas(dft);  // collective: every rank starts from the same bits, or every rank says which do not
  Rule sft_rule = rule_for(s);
  std::vector<float> scratch;
  RunResult r = finetune_loop(model, name(method), lr, data, validation, test, s, seed, progress,
                              [&](std::size_t step, const StepBatch& b, StepLog& log) -> float {
                                if (method == Method::sft) {
                                  const float loss = sft_step(model, sft_rule, schedule, step, b.positives, scratch, comm);
                                  log.add("loss", loss);
                                  log.add("grad_norm", sft_rule.last_grad_norm());
                                  log.add("logps/chosen", -loss);
                                  return loss;
                                }
                                const auto info = dft.step({.ids = b.ids, .positives = b.positives, .negatives = b.negatives,
                                                            .ref_neg_logp = method == Method::dft ? b.ref_neg_logp
                                                                                                  : std::span<const float>(),
                                                            .num_negatives = b.num_negatives});
                                log.add("loss", info.result.loss);
                                log.add("grad_norm", info.grad_norm);
                                log.add("logps/chosen", info.mean_pos_logp);
                                log.add("logps/rejected", info.mean_neg_logp);
                                log_dft(log, info.result, b, opt);
                                return info.result.loss;
                              },
                              dftune::distributed::shard_of(comm), base_test);
  r.method = method;
  return r;
}

}  // namespace demo
