#pragma once
// Learning-rate schedules: s.lr(step) is the learning rate of the update with 0-based index step
// (DftOptimizer asks for lr(0) on its first step). Schedules are aggregates (designated
// initialisers) and so cannot check themselves at construction: lr() validates on every call
// (a handful of comparisons), and validate(s) lets a caller check early.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <numbers>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

template <class S>
concept LearningRateSchedule = requires(const S& s, std::size_t step) {
  { s.lr(step) } -> std::convertible_to<double>;
};

namespace detail {
inline void check_rate(std::string_view argument, double lr) {
  if (!std::isfinite(lr) || !(lr >= 0)) fail(argument, lr, "a finite learning rate >= 0");
}
}  // namespace detail

// lr(t) = base_lr for every t. The field is named as CosineSchedule's peak rate, so that switching
// schedules changes the type, not the field (it was `rate` before; a field can keep no alias).
struct ConstantSchedule {
  double base_lr = 0;  // finite, >= 0

  // The rate of any step. Throws dftune::error if base_lr is not finite and >= 0.
  double lr(std::size_t /*step*/) const {
    detail::check_rate("base_lr", base_lr);
    return base_lr;
  }
};

// Throws dftune::error unless base_lr is finite and >= 0.
inline void validate(const ConstantSchedule& s) { detail::check_rate("base_lr", s.base_lr); }

// Linear warm-up, then cosine decay to min_lr (W = warmup_steps, N = total_steps, t 0-based):
//
//   lr(t) = base_lr · (t + 1) / W                                              0 <= t < W
//   lr(t) = min_lr + (base_lr − min_lr) · ½ · (1 + cos(π · (t − W) / (N − W)))  W <= t < N
//   lr(t) = min_lr                                                             t >= N
//
// So lr(W − 1) = lr(W) = base_lr and lr(N) = min_lr; after N the rate stays at min_lr.
// Relation to Hugging Face transformers (optimization.py, get_cosine_schedule_with_warmup with
// num_cycles = 0.5, and get_cosine_with_min_lr_schedule_with_warmup for min_lr): HF's multiplier is
//   λ(t) = t / max(1, W)                                       t < W
//   λ(t) = max(0, ½(1 + cos(π · (t − W) / max(1, N − W))))     t >= W   (lr = min + (base − min)·λ)
// and LambdaLR applies λ(t) to the update with 0-based index t. For W <= t < N the two formulas
// are the same (up to rounding). During warm-up dftune uses λ(t + 1): HF's first update runs at
// lr = 0 (λ(0) = 0) and is wasted; dftune's first update runs at base_lr / W and its warm-up ends
// at base_lr on update W − 1. Past N, HF's cosine rises again; dftune holds min_lr.
struct CosineSchedule {
  double base_lr = 0;             // peak rate, finite, >= 0
  double min_lr = 0;              // final rate, in [0, base_lr]
  std::size_t warmup_steps = 0;   // W <= N; 0: no warm-up
  std::size_t total_steps = 1;    // N >= 1

  // The rate of step t (0-based), by the formula above.
  double lr(std::size_t step) const;
};

// Throws dftune::error unless 0 <= min_lr <= base_lr (finite), N >= 1 and W <= N.
inline void validate(const CosineSchedule& s) {
  detail::check_rate("base_lr", s.base_lr);
  detail::check_rate("min_lr", s.min_lr);
  if (s.min_lr > s.base_lr) detail::fail("min_lr", s.min_lr, "a rate <= base_lr = " + std::to_string(s.base_lr));
  if (s.total_steps < 1) detail::fail("total_steps", s.total_steps, "at least 1");
  if (s.warmup_steps > s.total_steps)
    detail::fail("warmup_steps", s.warmup_steps, "at most total_steps = " + std::to_string(s.total_steps));
}

inline double CosineSchedule::lr(std::size_t step) const {
  validate(*this);
  if (step < warmup_steps) return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (step >= total_steps) return min_lr;
  const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

DFTUNE_NAMESPACE_END
