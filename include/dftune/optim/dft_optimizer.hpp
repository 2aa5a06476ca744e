#pragma once
// The DFT / DFT2 optimizer (arXiv 2502.18679, Algorithm 1; DESIGN.md §1): one call does a full
// step on a batch of prompts with one positive and m negatives each —
//   1. score:     s_i = log π_θ(y_i|x_i), s'_ij = log π_θ(y'_ij|x_i)          (model)
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
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/sequence_batch.hpp>
#include <dftune/objective/dft.hpp>
#include <dftune/optim/clip.hpp>
#include <dftune/optim/rule.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/step_options.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

template <class T>
struct DftBatch {
  std::span<const std::int64_t> ids = {};  // [B] example ids, keys of the estimator state
  SequenceBatch positives = {};            // B sequences: prompt x_i + positive answer y_i
  SequenceBatch negatives = {};            // B·m sequences, row-major [i][j]: x_i + y'_ij ~ π_ref
  std::size_t num_negatives = 0;           // m
  std::span<const T> ref_neg_logp = {};    // [B·m] log π_ref(y'_ij|x_i), computed once (DFT only)
};

template <class T>
struct DftStepInfo {
  DftResult<T> result;     // loss, objective, gradients wrt the log-probs, new log u
  double lr = 0;           // the learning rate used for this step
  double grad_norm = 0;    // global L2 norm of the model's gradient before clipping (TRL's grad_norm)
  std::size_t step = 0;    // index of this step (0-based)
  T mean_pos_logp = 0;     // (1/B) Σ_i log π_θ(y_i|x_i) before the update
  T mean_neg_logp = 0;     // (1/(B·m)) Σ_ij log π_θ(y'_ij|x_i) before the update
};

template <class M, class Rule, class Schedule>
class DftOptimizer {
  static_assert(check_model<M>(), "DftOptimizer<M, ...>: M must satisfy dftune::Model");
  using T = typename M::scalar_type;
  static_assert(UpdateRule<Rule, T>, "DftOptimizer<M, Rule, ...>: Rule must satisfy dftune::UpdateRule");
  static_assert(LearningRateSchedule<Schedule>,
                "DftOptimizer<M, Rule, Schedule>: Schedule must satisfy dftune::LearningRateSchedule");

 public:
  DftOptimizer(M& model, Estimator<T>& estimator, const DftOptions& options, Rule rule, Schedule schedule,
               const StepOptions& step_options = {})
      : model_(model),
        est_(estimator),
        opt_(options),
        rule_(std::move(rule)),
        schedule_(std::move(schedule)),
        step_opt_(step_options) {
    validate(opt_);
    validate(step_opt_);
    if constexpr (requires { validate(schedule_); }) validate(schedule_);  // fail at construction, not at step t
  }

  DftStepInfo<T> step(const DftBatch<T>& batch) {
    if (step_ == std::numeric_limits<std::size_t>::max())
      detail::fail("steps", step_, "fewer than 2^64 − 1 steps taken (one more would wrap the step count)");
    DftStepInfo<T> info = evaluate(batch);
    const DftResult<T>& r = info.result;
    info.lr = schedule_.lr(step_);
    if (!(std::fabs(info.lr) <= static_cast<double>(std::numeric_limits<T>::max())))
      detail::fail("lr", info.lr, "a finite learning rate the model's scalar type can hold (from the schedule at step " +
                                      std::to_string(step_) + ")");
    model_.zero_gradients();
    model_.accumulate_gradients(batch.positives, std::span<const T>(r.grad_pos));
    model_.accumulate_gradients(batch.negatives, std::span<const T>(r.grad_neg));
    const std::span<T> grads = model_.gradients();
    info.grad_norm = clip_grad_norm(grads, step_opt_.max_grad_norm);
    const bool update_estimator = est_.init() != EstimatorInit::fixed;
    if (update_estimator) est_.check_set(batch.ids, std::span<const T>(r.log_u));
    rule_.step(model_.parameters(), std::span<const T>(grads), static_cast<T>(info.lr));
    if (update_estimator) est_.set(batch.ids, std::span<const T>(r.log_u));  // checked above: cannot fail
    info.step = step_++;
    return info;
  }

  // Steps 1–2 only: the loss the next step would take; changes neither model nor estimator.
  DftStepInfo<T> evaluate(const DftBatch<T>& batch) {
    const std::size_t B = batch.ids.size(), m = batch.num_negatives;
    detail::check_size("batch.positives", batch.positives.size(), B);
    detail::check_size_product("batch.negatives", batch.negatives.size(), B, m, "batch.num_negatives (B·m)");
    pos_.resize(B);
    neg_.resize(B * m);
    model_.sequence_logp(batch.positives, std::span<T>(pos_));
    model_.sequence_logp(batch.negatives, std::span<T>(neg_));
    pos_len_.resize(B);
    neg_len_.resize(B * m);
    for (std::size_t i = 0; i < B; ++i) pos_len_[i] = batch.positives.completion_length(i);
    for (std::size_t k = 0; k < B * m; ++k) neg_len_[k] = batch.negatives.completion_length(k);
    const SequenceScores<T> scores{.ids = batch.ids, .num_negatives = m, .pos_logp = pos_, .neg_logp = neg_,
                                   .ref_neg_logp = batch.ref_neg_logp, .pos_len = pos_len_, .neg_len = neg_len_};
    DftStepInfo<T> info;
    info.result = dft_loss(scores, est_, opt_);
    info.step = step_;
    info.mean_pos_logp = mean(pos_);
    info.mean_neg_logp = mean(neg_);
    return info;
  }

  std::size_t steps() const { return step_; }
  const DftOptions& options() const { return opt_; }
  const Rule& rule() const { return rule_; }
  const Schedule& schedule() const { return schedule_; }
  const StepOptions& step_options() const { return step_opt_; }

  // ---- checkpointing (io/checkpoint.hpp) ----------------------------------------------------
  // The model and estimator this optimizer drives (it holds references, so constness stops here).
  M& model() const { return model_; }
  Estimator<T>& estimator() const { return est_; }
  // Replaces the step count and the inner rule (with its state) wholesale; cannot fail once the
  // caller has built and checked `rule`.
  void restore(std::size_t steps, Rule&& rule) noexcept(std::is_nothrow_move_assignable_v<Rule>) {
    rule_ = std::move(rule);
    step_ = steps;
  }

 private:
  static T mean(const std::vector<T>& x) {
    double s = 0;
    for (T v : x) s += static_cast<double>(v);
    return static_cast<T>(x.empty() ? 0.0 : s / static_cast<double>(x.size()));
  }

  M& model_;
  Estimator<T>& est_;
  DftOptions opt_;
  Rule rule_;
  Schedule schedule_;
  StepOptions step_opt_;
  std::size_t step_ = 0;
  std::vector<T> pos_, neg_;
  std::vector<std::int64_t> pos_len_, neg_len_;
};

DFTUNE_NAMESPACE_END
