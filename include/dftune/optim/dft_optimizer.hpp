#pragma once
// The DFT / DFT2 optimizer (arXiv 2502.18679, Algorithm 1; docs/math.md): one call does a full
// step on a batch of prompts with one positive and m negatives each —
//   1. score:     s_i = log π_θ(y_i|x_i), s'_ij = log π_θ(y'_ij|x_i)          (model; a model that
//                 KeepsActivations keeps them for step 3, which then runs no forward)
//   2. objective: L, ∂L/∂s, ∂L/∂s' and the new log u_i                         (objective/dft.hpp)
//   3. backward:  ∇θ L = Σ_i ∂L/∂s_i ∇s_i + Σ_ij ∂L/∂s'_ij ∇s'_ij            (model)
//   4. clip:      ∇θ L ← ∇θ L · c/(‖∇θ L‖₂ + 1e-6) if ‖∇θ L‖₂ > c              (StepOptions, clip.hpp)
//   5. update:    θ ← rule(θ, ∇θ L, lr(t))                                     (inner rule, schedule)
//   6. commit:    store log u_i of the batch in the estimator
// Everything that can fail runs before the update: the schedule's rate, the step count, the
// gradient's norm, the estimator's checks of the new log u (check_set); the rule's update is all
// or nothing (rule.hpp); what is left (the estimator's store, the count) cannot fail. So an error
// anywhere leaves the estimator, the parameters, the rule's moments and the step count as they
// were (the gradient buffer is scratch and may have changed).
//
// Data-parallel (docs/distributed.md): given a Communicator of P > 1 ranks, each rank passes its
// share of the global batch — the ids it owns, its estimator built with shard_of(comm) — and
//   1–2. scores its share and runs the objective with the *global* batch size B in the 1/B,
//   3.   back-propagates its share, then all-reduces (sums) the gradient,
//   4–6. clips the summed gradient, applies the same inner rule to it on every rank (so the
//        replicas stay identical), and commits its own u_i.
// So the update is the single-process update of the global batch (up to the order of the sum).
// Steps 1–3 and every local check run inside distributed::agree: an error on any rank is thrown,
// the same, on every rank, before anything is written anywhere; what runs after the all-reduce
// sees the same values on every rank and so fails, if at all, everywhere alike. step() and
// evaluate() are then collective calls.
//
// Gradient accumulation (optim/accumulate.hpp): step(micro_batches) takes a rank's share as k
// micro-batches and is the step over their union — the objective once over the union's scores,
// the gradient summed over one backward pass per micro-batch, one all-reduce, clip, update and
// commit. Every rank must pass the same k.
//
// Callbacks (callbacks/step_callback.hpp): step(batch, callbacks...) calls each callback's
// on_step(info) once the step is done; one returning true sets info.stop_requested. Data-parallel,
// every rank calls its callbacks with the same global loss, lr and grad_norm: a stop decided from
// them is the same on every rank.
#include <dftune/callbacks/step_callback.hpp>
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/distributed/single.hpp>
#include <dftune/error.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/metrics/metrics.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/sequence_batch.hpp>
#include <dftune/objective/dft.hpp>
#include <dftune/optim/accumulate.hpp>
#include <dftune/optim/clip.hpp>
#include <dftune/optim/rule.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/step_options.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// One step's batch for DftOptimizer: B prompts, each with one positive and m negatives, as token
// sequences the model scores, and log π_ref of the negatives (DFT).
template <class T>
struct DftBatch {
  std::span<const std::int64_t> ids = {};  // [B] example ids, keys of the estimator state
  SequenceBatch positives = {};            // B sequences: prompt x_i + positive answer y_i
  SequenceBatch negatives = {};            // B·m sequences, row-major [i][j]: x_i + y'_ij ~ π_ref
  std::span<const T> ref_neg_logp = {};    // [B·m] log π_ref(y'_ij|x_i), computed once (DFT only)
  std::size_t num_negatives = 0;           // m
};

// In a data-parallel step, loss, objective and the means are the global batch's (the ranks' terms
// summed in rank order); the gradients and log u in `result` are this rank's share.
template <class T>
struct DftStepInfo {
  DftResult<T> result;     // loss, objective, gradients wrt the log-probs, new log u
  double lr = 0;           // the learning rate used for this step
  double grad_norm = 0;    // global L2 norm of the model's gradient before clipping (TRL's grad_norm)
  std::size_t step = 0;    // index of this step (0-based)
  T mean_pos_logp = 0;     // (1/B) Σ_i log π_θ(y_i|x_i) before the update
  T mean_neg_logp = 0;     // (1/(B·m)) Σ_ij log π_θ(y'_ij|x_i) before the update
  // The estimator's metrics of the step (dft_metrics: log u, effective sample size, weights), given
  // to callbacks: computed by step() when callbacks are passed and the world is of one process
  // (a rank's share alone would give a share's numbers); empty otherwise.
  std::optional<DftMetrics> metrics;
  bool stop_requested = false;  // a callback passed to step() returned true
};

// Runs a whole DFT / DFT2 step (see the file's comment) on model M (the Model concept) with the
// inner update Rule (Sgd, Adam, AdamW), the learning-rate Schedule and, for data-parallel training,
// the Communicator Comm. Holds references to the model and the estimator.
template <class M, class Rule, class Schedule, class Comm = distributed::Single>
class DftOptimizer {
  static_assert(check_model<M>(), "DftOptimizer<M, ...>: M must satisfy dftune::Model");
  using T = typename M::scalar_type;
  static_assert(UpdateRule<Rule, T>, "DftOptimizer<M, Rule, ...>: Rule must satisfy dftune::UpdateRule");
  static_assert(LearningRateSchedule<Schedule>,
                "DftOptimizer<M, Rule, Schedule>: Schedule must satisfy dftune::LearningRateSchedule");
  static_assert(distributed::check_communicator<Comm>(),
                "DftOptimizer<M, Rule, Schedule, Comm>: Comm must satisfy dftune::distributed::Communicator");
  static constexpr bool single_process = std::is_same_v<Comm, distributed::Single>;

 public:
  // `comm` (default: a world of one) must be the world the estimator is sharded over:
  // estimator.shard() == distributed::shard_of(comm).
  DftOptimizer(M& model, Estimator<T>& estimator, const DftOptions& options, Rule rule, Schedule schedule,
               const StepOptions& step_options = {}, Comm comm = {})
      : model_(model),
        est_(estimator),
        opt_(options),
        rule_(std::move(rule)),
        schedule_(std::move(schedule)),
        step_opt_(step_options),
        comm_(std::move(comm)) {
    validate(opt_);
    est_.check_options(opt_);  // options.init / log_u0 must be the estimator's (one source of truth)
    validate(step_opt_);
    if constexpr (requires { validate(schedule_); }) validate(schedule_);  // fail at construction, not at step t
    if (est_.shard() != distributed::shard_of(comm_))
      detail::fail("estimator", "an estimator sharded as " + est_.shard().describe(),
                   "the communicator's shard, " + distributed::shard_of(comm_).describe() +
                       " (build it as Estimator<T>(N, options, distributed::shard_of(comm)))");
  }

  // One training step: score, objective, backward, clip, update, estimator commit. All or nothing: an
  // error (dftune::error naming the argument) leaves the estimator, the parameters, the rule's state
  // and the step count as they were. Then each callback's on_step(info), in order
  // (callbacks/step_callback.hpp); an exception from one leaves the state as after the step.
  template <class... Callbacks>
    requires(StepCallback<Callbacks, DftStepInfo<T>> && ...)
  DftStepInfo<T> step(const DftBatch<T>& batch, Callbacks&&... callbacks) {
    return step(std::span<const DftBatch<T>>(&batch, 1), callbacks...);
  }

  // One step over the union of k >= 1 micro-batches (this rank's share of the step, split); the
  // result's per-example vectors are the union's, in the order of the micro-batches.
  template <class... Callbacks>
    requires(StepCallback<Callbacks, DftStepInfo<T>> && ...)
  DftStepInfo<T> step(std::span<const DftBatch<T>> micro_batches, Callbacks&&... callbacks) {
    DftStepInfo<T> info = update(micro_batches);
    if constexpr (sizeof...(Callbacks) > 0) {
      if (comm_.size() == 1) info.metrics = dft_metrics(info.result, union_.num_negatives(), opt_, neg_len_);
      info.stop_requested = detail::call_step_callbacks(info, callbacks...);
    }
    return info;
  }

  // Steps 1–2 only: the loss the next step would take; changes neither model nor estimator.
  DftStepInfo<T> evaluate(const DftBatch<T>& batch) { return evaluate(std::span<const DftBatch<T>>(&batch, 1)); }
  // evaluate over the union of k >= 1 micro-batches, as step(micro_batches) scores them.
  DftStepInfo<T> evaluate(std::span<const DftBatch<T>> micro_batches) { return run(micro_batches, /*backward=*/false); }

  // Steps taken (restored by io::load).
  std::size_t steps() const { return step_; }
  // The objective's options.
  const DftOptions& options() const { return opt_; }
  // The inner update rule, with its state.
  const Rule& rule() const { return rule_; }
  // The learning-rate schedule.
  const Schedule& schedule() const { return schedule_; }
  // The step's options (gradient clipping).
  const StepOptions& step_options() const { return step_opt_; }
  // The communicator (a world of one by default).
  const Comm& communicator() const { return comm_; }
  // The communicator (a world of one by default).
  Comm& communicator() { return comm_; }

  // ---- checkpointing (io/checkpoint.hpp) ----------------------------------------------------
  // The model and estimator this optimizer drives (it holds references, so constness stops here).
  M& model() const { return model_; }
  // The estimator this optimizer updates.
  Estimator<T>& estimator() const { return est_; }
  // Replaces the step count and the inner rule (with its state) wholesale; cannot fail once the
  // caller has built and checked `rule`.
  void restore(std::size_t steps, Rule&& rule) noexcept(std::is_nothrow_move_assignable_v<Rule>) {
    rule_ = std::move(rule);
    step_ = steps;
  }

 private:
  // Steps 1–6 of the file's comment.
  DftStepInfo<T> update(std::span<const DftBatch<T>> micro_batches) {
    DftStepInfo<T> info = run(micro_batches, /*backward=*/true);
    const DftResult<T>& r = info.result;
    const std::span<T> grads = model_.gradients();
    if constexpr (!single_process) comm_.all_reduce_sum(grads);  // Σ over ranks, the same bits on every rank
    info.grad_norm = clip_grad_norm(grads, step_opt_.max_grad_norm);
    rule_.step(model_.parameters(), std::span<const T>(grads), static_cast<T>(info.lr));
    if (est_.init() != EstimatorInit::fixed) est_.set(union_.ids(), std::span<const T>(r.log_u));  // checked: cannot fail
    info.step = step_++;
    return info;
  }

  static double sum(const std::vector<T>& x) {
    double s = 0;
    for (T v : x) s += static_cast<double>(v);
    return s;
  }

  // What each rank reports after scoring its share (one all-gather; distributed::agree).
  struct Share {
    std::uint64_t batch = 0, num_negatives = 0, num_parameters = 0, step = 0, micro_batches = 0;
    double sum_pos = 0, sum_neg = 0;
  };
  struct Loss {
    double loss = 0, objective = 0;
  };

  // Steps 1–2 (and 3 if backward): the local work of every rank inside two agreements, so that an
  // error on any rank is the same error on every rank and nothing has been written anywhere.
  DftStepInfo<T> run(std::span<const DftBatch<T>> micro, bool backward) {
    std::size_t B_local = 0, m = 0;
    double lr = 0;
    const std::vector<Share> shares = distributed::agree<Share>(comm_, [&] {
      if (backward && step_ == std::numeric_limits<std::size_t>::max())
        detail::fail("steps", step_, "fewer than 2^64 − 1 steps taken (one more would wrap the step count)");
      union_.assemble(micro);
      B_local = union_.size();
      m = union_.num_negatives();
      pos_.resize(B_local);
      neg_.resize(B_local * m);
      // Before scoring: a model that keeps activations for the backward forgets them at a
      // non-const parameters() call.
      const std::size_t num_parameters = model_.parameters().size();
      pos_len_.resize(B_local);
      neg_len_.resize(B_local * m);
      for (std::size_t q = 0; q < micro.size(); ++q) {
        const DftBatch<T>& b = micro[q];
        const std::size_t first = union_.first(q), n = union_.count(q);
        if (n != 0) {  // a rank may own no id of a batch; it still takes part
          const std::span<T> pos_out = std::span<T>(pos_).subspan(first, n);
          const std::span<T> neg_out = std::span<T>(neg_).subspan(first * m, n * m);
          if (backward) {  // the backward of these batches follows: one forward each (KeepsActivations)
            score_for_backward(model_, b.positives, pos_out);
            score_for_backward(model_, b.negatives, neg_out);
          } else {
            model_.sequence_logp(b.positives, pos_out);
            model_.sequence_logp(b.negatives, neg_out);
          }
        }
        for (std::size_t i = 0; i < n; ++i) pos_len_[first + i] = b.positives.completion_length(i);
        for (std::size_t k = 0; k < n * m; ++k) neg_len_[first * m + k] = b.negatives.completion_length(k);
      }
      if (backward) {
        lr = schedule_.lr(step_);
        if (!(std::fabs(lr) <= static_cast<double>(std::numeric_limits<T>::max())))
          detail::fail("lr", lr, "a finite learning rate the model's scalar type can hold (from the schedule at step " +
                                     std::to_string(step_) + ")");
      }
      return Share{.batch = B_local, .num_negatives = m, .num_parameters = num_parameters, .step = step_,
                   .micro_batches = micro.size(), .sum_pos = sum(pos_), .sum_neg = sum(neg_)};
    });
    // The global batch; every rank computes the same from the same records, so a mismatch is the
    // same error everywhere.
    std::size_t B = 0;
    double sum_pos = 0, sum_neg = 0;
    for (std::size_t r = 0; r < shares.size(); ++r) {
      const Share& s = shares[r];
      auto same = [&](std::string_view what, std::uint64_t got, std::uint64_t want) {
        if (got != want)
          detail::fail(what, std::to_string(got) + " on rank " + std::to_string(r),
                       std::to_string(want) + " as on rank 0 (every rank of a step must agree)");
      };
      same("batch.num_negatives", s.num_negatives, shares[0].num_negatives);
      same("model parameter count", s.num_parameters, shares[0].num_parameters);
      same("optimizer step", s.step, shares[0].step);
      same("micro-batch count", s.micro_batches, shares[0].micro_batches);
      B = detail::checked_add("global batch size", B, static_cast<std::size_t>(s.batch));
      sum_pos += s.sum_pos;
      sum_neg += s.sum_neg;
    }
    DftStepInfo<T> info;
    const std::vector<Loss> losses = distributed::agree<Loss>(comm_, [&] {
      if (B_local != 0 || B == 0) {  // B == 0: dft_loss names the empty batch
        const SequenceScores<T> scores{.ids = union_.ids(), .pos_logp = pos_, .neg_logp = neg_,
                                       .ref_neg_logp = union_.ref_neg_logp(), .pos_len = pos_len_, .neg_len = neg_len_,
                                       .num_negatives = m, .global_batch_size = B};
        info.result = dft_loss(scores, est_, opt_);
      }
      if (backward) {
        if (est_.init() != EstimatorInit::fixed) est_.check_set(union_.ids(), std::span<const T>(info.result.log_u));
        model_.zero_gradients();
        for (std::size_t q = 0; q < micro.size(); ++q) {  // Σ over micro-batches: one's activations at a time
          const std::size_t first = union_.first(q), n = union_.count(q);
          if (n == 0) continue;
          model_.accumulate_gradients(micro[q].positives, std::span<const T>(info.result.grad_pos).subspan(first, n));
          model_.accumulate_gradients(micro[q].negatives, std::span<const T>(info.result.grad_neg).subspan(first * m, n * m));
        }
      }
      return Loss{static_cast<double>(info.result.loss), static_cast<double>(info.result.objective)};
    });
    double loss = 0, objective = 0;
    for (const Loss& l : losses) {
      loss += l.loss;
      objective += l.objective;
    }
    info.result.loss = static_cast<T>(loss);  // a world of one: the same value, unchanged
    info.result.objective = static_cast<T>(objective);
    info.step = step_;
    info.lr = lr;
    info.mean_pos_logp = static_cast<T>(B == 0 ? 0.0 : sum_pos / static_cast<double>(B));
    info.mean_neg_logp = static_cast<T>(B == 0 ? 0.0 : sum_neg / static_cast<double>(detail::checked_mul("B·m", B, m)));
    return info;
  }

  M& model_;
  Estimator<T>& est_;
  DftOptions opt_;
  Rule rule_;
  Schedule schedule_;
  StepOptions step_opt_;
  Comm comm_;
  std::size_t step_ = 0;
  detail::MicroBatchUnion<T> union_;  // the step's micro-batches laid out as one batch
  std::vector<T> pos_, neg_;
  std::vector<std::int64_t> pos_len_, neg_len_;
};

DFTUNE_NAMESPACE_END
