#pragma once
// Adam (Kingma & Ba 2015, Algorithm 1) and AdamW (Loshchilov & Hutter 2019, Algorithm 2) as one
// template over the weight-decay policy of rule.hpp — the ensmallen shape: AdamUpdate<T, Decay>,
// with Adam = coupled L2 (torch.optim.Adam) and AdamW = decoupled decay (torch.optim.AdamW).
// Step t = 1, 2, … (t = steps() + 1), with PyTorch's order of operations:
//
//   g_t ← g_t + λ·θ_{t−1}                       Adam only (coupled L2)
//   θ_{t−1} ← θ_{t−1}·(1 − lr·λ)                AdamW only (decoupled)
//   m_t = β1·m_{t−1} + (1 − β1)·g_t              (computed as m + (1 − β1)(g − m): torch's lerp)
//   v_t = β2·v_{t−1} + (1 − β2)·g_t²
//   m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)
//   θ_t = θ_{t−1} − lr · m̂_t / (√v̂_t + ε)      (ε outside the square root, as Algorithm 1 and
//                                                 PyTorch; not the end-of-§2 variant that adds ε̂
//                                                 to the uncorrected √v_t)
//
// At t = 1, m̂ = g and v̂ = g², so θ_1 = θ_0 − lr·g/(|g| + ε) ≈ θ_0 − lr·sign(g): the first step
// moves every coordinate by ~lr whatever the gradient's scale.
// Scalars that depend only on t (bias corrections, step size, shrink factor) are computed in
// double once per step; the element loop runs in T. State m, v is sized on the first step. A step
// whose θ, m or v would not be finite throws and changes nothing (rule.hpp, update_all_or_nothing).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/optim/rule.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Defaults of torch.optim.Adam. weight_decay defaults to 0 for AdamW too (the Hugging Face
// Trainer's default, which the DFT recipes use), not torch.optim.AdamW's 0.01: set it explicitly.
struct AdamOptions {
  double beta1 = 0.9;         // in [0, 1)
  double beta2 = 0.999;       // in [0, 1)
  double eps = 1e-8;          // > 0, added to √v̂
  double weight_decay = 0;    // λ >= 0: coupled (Adam) or decoupled (AdamW), per the policy
};

// Throws dftune::error naming the first option out of its range.
inline void validate(const AdamOptions& o) {
  if (!(o.beta1 >= 0 && o.beta1 < 1)) detail::fail("beta1", o.beta1, "a number in [0, 1)");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) detail::fail("beta2", o.beta2, "a number in [0, 1)");
  if (!std::isfinite(o.eps) || !(o.eps > 0)) detail::fail("eps", o.eps, "a finite number > 0");
  detail::check_weight_decay(o.weight_decay);
}

// Adam and AdamW (see the file's comment), T float, double or long double; WeightDecay is
// CoupledWeightDecay (Adam) or DecoupledWeightDecay (AdamW). Satisfies UpdateRule.
template <class T, class WeightDecay>
class AdamUpdate {
  static_assert(std::floating_point<T>, "dftune::Adam<T>/AdamW<T>: T must be float, double or long double");
  static_assert(WeightDecayPolicy<WeightDecay, T>,
                "dftune::AdamUpdate<T, WeightDecay>: WeightDecay needs `static T gradient<T>(T g, T theta, T "
                "lambda)` and `static double shrink(double lr, double lambda)` (see optim/rule.hpp)");

 public:
  using scalar_type = T;  // the type of parameters and gradients
  using weight_decay_policy = WeightDecay;  // how weight_decay enters the update

  AdamUpdate() = default;
  // Throws dftune::error for options out of range.
  explicit AdamUpdate(const AdamOptions& options) : opt_(options) { validate(opt_); }

  // One update of params in place from grads at learning rate lr. All or nothing: a bad input, or a
  // θ, m or v that would not be finite, throws dftune::error and changes nothing.
  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_rule_step(std::span<const T>(params), grads, lr, n_);
    detail::check_step_count(steps_);
    const std::size_t n = params.size();
    std::vector<T> fresh_m, fresh_v;  // the moments of the first step; may throw bad_alloc: nothing written yet
    if (steps_ == 0) {
      fresh_m.assign(n, T(0));
      fresh_v.assign(n, T(0));
    }
    T* const m = steps_ == 0 ? fresh_m.data() : m_.data();
    T* const v = steps_ == 0 ? fresh_v.data() : v_.data();
    const double t = static_cast<double>(steps_) + 1.0;  // not steps_ + 1, which wraps in size_t
    const double bias1 = 1.0 - std::pow(opt_.beta1, t);
    const double bias2 = 1.0 - std::pow(opt_.beta2, t);
    const T step_size = static_cast<T>(static_cast<double>(lr) / bias1);
    const T bias2_sqrt = static_cast<T>(std::sqrt(bias2));
    const T shrink = static_cast<T>(WeightDecay::shrink(static_cast<double>(lr), opt_.weight_decay));
    const T lambda = static_cast<T>(opt_.weight_decay);
    const T one_m_beta1 = static_cast<T>(1.0 - opt_.beta1);
    const T beta2 = static_cast<T>(opt_.beta2);
    const T one_m_beta2 = static_cast<T>(1.0 - opt_.beta2);
    const T eps = static_cast<T>(opt_.eps);
    struct Next {
      T theta, m, v;
      int finite() const {
        return detail::finite_value(theta) & detail::finite_value(m) & detail::finite_value(v);
      }
    };
    struct Moments {
      T m, v;
    };
    auto moments = [&](std::size_t k) {
      const T g = WeightDecay::gradient(grads[k], params[k], lambda);
      return Moments{m[k] + one_m_beta1 * (g - m[k]), beta2 * v[k] + one_m_beta2 * g * g};
    };
    auto next = [&](std::size_t k) {
      const Moments x = moments(k);
      const T denom = std::sqrt(x.v) / bias2_sqrt + eps;
      return Next{params[k] * shrink - step_size * (x.m / denom), x.m, x.v};
    };
    // Without the square root (scalar code: it may set errno): the denominator is >= eps, so
    // |θ'| <= |θ·shrink| + step_size·|m'|/eps, and two terms under max/4 cannot overflow, however
    // the rounding (or a fused multiply-add) falls.
    const T quarter = std::numeric_limits<T>::max() / 4;
    auto screen = [&](std::size_t k) {
      const Moments x = moments(k);
      return detail::finite_value(x.m) & detail::finite_value(x.v) &
             static_cast<int>(std::fabs(params[k] * shrink) <= quarter) &
             static_cast<int>(step_size * (std::fabs(x.m) / eps) <= quarter);
    };
    auto store = [&](std::size_t k, const Next& x) {
      params[k] = x.theta;
      m[k] = x.m;
      v[k] = x.v;
    };
    auto fail = [&](std::size_t k, const Next& x) {
      if (!detail::finite_value(x.m)) detail::fail_overflow("first_moment", k, x.m, params[k], grads[k], lr);
      if (!detail::finite_value(x.v)) detail::fail_overflow("second_moment", k, x.v, params[k], grads[k], lr);
      detail::fail_overflow("params", k, x.theta, params[k], grads[k], lr);
    };
    detail::update_all_or_nothing<T>(n, screen, next, store, fail);
    if (steps_ == 0) {
      m_.swap(fresh_m);
      v_.swap(fresh_v);
    }
    n_ = n;
    ++steps_;
  }

  // Steps taken.
  std::size_t steps() const { return steps_; }
  // 0 until the first step fixes it.
  std::size_t num_parameters() const { return n_; }
  // The options it was built with.
  const AdamOptions& options() const { return opt_; }
  // m of the formula above (not bias-corrected); empty before the first step.
  std::span<const T> first_moment() const { return m_; }
  // v of the formula above (not bias-corrected); empty before the first step.
  std::span<const T> second_moment() const { return v_; }

  // ---- checkpointing (io/checkpoint.hpp) ----------------------------------------------------
  // Replaces the state wholesale with what steps(), num_parameters(), first_moment() and
  // second_moment() showed: steps = 0 with num_parameters = 0 and empty moments, or both > 0 with
  // num_parameters finite m and finite v >= 0. All checks (check_state) run before the swap. A
  // count near 2^64 is accepted; the step that would wrap it throws.
  void restore(std::size_t steps, std::size_t num_parameters, std::vector<T>&& m, std::vector<T>&& v) {
    check_state(steps, num_parameters, m, v);
    m_.swap(m);
    v_.swap(v);
    n_ = num_parameters;
    steps_ = steps;
  }
  // Throws what restore would throw for this state, and changes nothing. Saving calls it on the
  // rule's own state, so that a checkpoint that saves also loads.
  void check_state(std::size_t steps, std::size_t num_parameters, std::span<const T> m, std::span<const T> v) const {
    if ((steps == 0) != (num_parameters == 0))
      detail::fail("num_parameters", num_parameters,
                   steps == 0 ? "0 before the first step" : "at least 1 after " + std::to_string(steps) + " steps");
    detail::check_size("first_moment", m.size(), num_parameters);
    detail::check_size("second_moment", v.size(), num_parameters);
    for (std::size_t k = 0; k < num_parameters; ++k) {
      if (!std::isfinite(m[k])) detail::fail_at("first_moment", k, m[k], "a finite number");
      if (!std::isfinite(v[k]) || !(v[k] >= 0)) detail::fail_at("second_moment", k, v[k], "a finite number >= 0");
    }
  }

 private:
  AdamOptions opt_{};
  std::vector<T> m_, v_;
  std::size_t n_ = 0;
  std::size_t steps_ = 0;
};

// torch.optim.Adam: weight decay added to the gradient.
template <class T>
using Adam = AdamUpdate<T, CoupledWeightDecay>;
// torch.optim.AdamW: weight decay applied to θ, outside the moments.
template <class T>
using AdamW = AdamUpdate<T, DecoupledWeightDecay>;

DFTUNE_NAMESPACE_END
