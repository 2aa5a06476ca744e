#pragma once
// Stochastic gradient descent with optional momentum, Nesterov momentum and coupled L2 weight
// decay, step for step the update of torch.optim.SGD (PyTorch docs, "SGD" algorithm box; Sutskever
// et al. 2013 for the momentum form used there):
//
//   g_t ← g_t + λ·θ_{t−1}                                   (weight_decay λ ≠ 0, coupled L2)
//   b_t ← g_t                                  at t = 1     (the buffer starts at the first gradient,
//   b_t ← μ·b_{t−1} + (1 − τ)·g_t              at t > 1      undamped, as PyTorch)
//   g_t ← g_t + μ·b_t   (Nesterov)   or   g_t ← b_t         (momentum μ ≠ 0, dampening τ)
//   θ_t ← θ_{t−1} − lr·g_t
//
// The momentum buffer is sized on the first step (see rule.hpp), only when μ ≠ 0.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/optim/rule.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Options of Sgd, with torch.optim.SGD's defaults.
struct SgdOptions {
  double momentum = 0;      // μ in [0, 1); 0: plain SGD, no buffer
  double dampening = 0;     // τ in [0, 1]; scales the new gradient in the buffer after the first step
  double weight_decay = 0;  // λ >= 0, coupled L2 (added to the gradient)
  bool nesterov = false;    // needs μ > 0 and τ = 0 (as PyTorch)
};

// Throws dftune::error naming the first option out of its range (Nesterov needs μ > 0, τ = 0).
inline void validate(const SgdOptions& o) {
  if (!(o.momentum >= 0 && o.momentum < 1)) detail::fail("momentum", o.momentum, "a number in [0, 1)");
  if (!(o.dampening >= 0 && o.dampening <= 1)) detail::fail("dampening", o.dampening, "a number in [0, 1]");
  detail::check_weight_decay(o.weight_decay);
  if (o.nesterov && !(o.momentum > 0 && o.dampening == 0))
    detail::fail("nesterov", "true with momentum " + std::to_string(o.momentum) + " and dampening " +
                                 std::to_string(o.dampening),
                 "momentum > 0 and dampening = 0 for Nesterov momentum");
}

// SGD with optional momentum, Nesterov momentum and coupled weight decay (see the file's comment),
// T float, double or long double. Satisfies UpdateRule.
template <class T>
class Sgd {
  static_assert(std::floating_point<T>, "dftune::Sgd<T>: T must be float, double or long double");

 public:
  using scalar_type = T;  // the type of parameters and gradients

  Sgd() = default;
  // Throws dftune::error for options out of range.
  explicit Sgd(const SgdOptions& options) : opt_(options) { validate(opt_); }

  // One update of params in place from grads at learning rate lr. All or nothing: a bad input, or a
  // θ or buffer that would not be finite, throws dftune::error and changes nothing.
  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_rule_step(std::span<const T>(params), grads, lr, n_);
    detail::check_step_count(steps_);
    const std::size_t n = params.size();
    const bool first = steps_ == 0;
    const bool momentum = opt_.momentum != 0;
    std::vector<T> fresh;  // the buffer of the first step; may throw bad_alloc: nothing written yet
    if (momentum && first) fresh.assign(n, T(0));
    T* const buf = momentum ? (first ? fresh.data() : buf_.data()) : nullptr;
    // The four switches of the update are constants of the step: each combination gets its own
    // branch-free loops (compile-time flags), which vectorise.
    auto flag = [](bool b, auto f) { return b ? f(std::true_type{}) : f(std::false_type{}); };
    flag(opt_.weight_decay != 0, [&](auto decay) {
      flag(momentum, [&](auto with_momentum) {
        flag(momentum && first, [&](auto first_step) {
          flag(momentum && opt_.nesterov, [&](auto nesterov) {
            update<decay, with_momentum, first_step, nesterov>(params, grads, lr, buf);
          });
        });
      });
    });
    if (momentum && first) buf_.swap(fresh);
    n_ = n;
    ++steps_;
  }

  // Steps taken.
  std::size_t steps() const { return steps_; }
  // 0 until the first step fixes it.
  std::size_t num_parameters() const { return n_; }
  // The options it was built with.
  const SgdOptions& options() const { return opt_; }
  // b of the formula above; empty before the first step and without momentum.
  std::span<const T> momentum_buffer() const { return buf_; }

  // ---- checkpointing (io/checkpoint.hpp) ----------------------------------------------------
  // Replaces the state wholesale with what steps(), num_parameters() and momentum_buffer() showed:
  // steps = 0 with num_parameters = 0, or both > 0; the buffer holds num_parameters finite numbers
  // after a first step with momentum, and is empty otherwise. All checks (check_state) run before
  // the swap.
  void restore(std::size_t steps, std::size_t num_parameters, std::vector<T>&& momentum_buffer) {
    check_state(steps, num_parameters, momentum_buffer);
    buf_.swap(momentum_buffer);
    n_ = num_parameters;
    steps_ = steps;
  }
  // Throws what restore would throw for this state, and changes nothing. Saving calls it on the
  // rule's own state, so that a checkpoint that saves also loads.
  void check_state(std::size_t steps, std::size_t num_parameters, std::span<const T> momentum_buffer) const {
    if ((steps == 0) != (num_parameters == 0))
      detail::fail("num_parameters", num_parameters,
                   steps == 0 ? "0 before the first step" : "at least 1 after " + std::to_string(steps) + " steps");
    const std::size_t want = opt_.momentum != 0 && steps != 0 ? num_parameters : 0;
    detail::check_size("momentum_buffer", momentum_buffer.size(), want);
    for (std::size_t k = 0; k < momentum_buffer.size(); ++k)
      if (!std::isfinite(momentum_buffer[k])) detail::fail_at("momentum_buffer", k, momentum_buffer[k], "a finite number");
  }

 private:
  template <bool Decay, bool Momentum, bool First, bool Nesterov>
  void update(std::span<T> params, std::span<const T> grads, T lr, T* buf) const {
    const T lambda = static_cast<T>(opt_.weight_decay);
    const T mu = static_cast<T>(opt_.momentum);
    const T keep = static_cast<T>(1.0 - opt_.dampening);
    struct Next {
      T theta, buf;
      int finite() const { return detail::finite_value(theta) & detail::finite_value(buf); }
    };
    auto next = [&](std::size_t k) {
      T g = grads[k];
      if constexpr (Decay) g = CoupledWeightDecay::gradient(g, params[k], lambda);
      T b = 0;
      if constexpr (Momentum) {
        if constexpr (First) b = g;
        else b = mu * buf[k] + keep * g;
        if constexpr (Nesterov) g = g + mu * b;
        else g = b;
      }
      return Next{params[k] - lr * g, b};
    };
    auto store = [&](std::size_t k, const Next& x) {
      params[k] = x.theta;
      if constexpr (Momentum) buf[k] = x.buf;
    };
    auto fail = [&](std::size_t k, const Next& x) {
      if (!detail::finite_value(x.buf)) detail::fail_overflow("momentum_buffer", k, x.buf, params[k], grads[k], lr);
      detail::fail_overflow("params", k, x.theta, params[k], grads[k], lr);
    };
    auto screen = [&](std::size_t k) { return next(k).finite(); };  // as cheap as the step itself
    detail::update_all_or_nothing<T>(params.size(), screen, next, store, fail);
  }

  SgdOptions opt_{};
  std::vector<T> buf_;
  std::size_t n_ = 0;
  std::size_t steps_ = 0;
};

DFTUNE_NAMESPACE_END
