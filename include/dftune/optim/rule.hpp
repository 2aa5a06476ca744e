#pragma once
// The inner update rule (docs/math.md, "Data flow", last arrow): θ ← rule(θ, ∇θ L, lr), on flat spans, so any
// model that shows its parameters and gradients as two spans of equal size can use any rule.
//
// Contract of an UpdateRule<R, T>:
//   r.step(params, grads, lr)  updates params in place with the gradient grads at learning rate lr;
//   r.steps()                  how many steps succeeded (Adam's bias correction reads it).
// dftune's rules (Sgd, Adam, AdamW) size their state on the *first* step: DftOptimizer and users
// construct a rule before they know the model (`AdamW<double>{}`), and a rule needs no count until
// it sees the span. From then on the parameter count is fixed: a span of another size is an error.
// A step that throws (sizes, lr, a non-finite gradient, a step count that would wrap, a result
// that would not be finite) changes neither params nor the state nor steps(): the checks of the
// inputs run before the first write, and the results are checked by update_all_or_nothing below
// before any of them is stored.
//
// The weight-decay policies live here because SGD and Adam share them (ensmallen style: the rule is
// a template over its decay policy, so Adam and AdamW are one class, see adam.hpp).
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

template <class R, class T>
concept UpdateRule = std::floating_point<T> &&
                     requires(R& r, const R& cr, std::span<T> params, std::span<const T> grads, T lr) {
                       { r.step(params, grads, lr) } -> std::same_as<void>;
                       { cr.steps() } -> std::convertible_to<std::size_t>;
                     };

// Static checks with one message per missing piece (the concept alone says only "constraints not
// satisfied"). Use: static_assert(check_update_rule<MyRule, double>()).
template <class R, class T>
constexpr bool check_update_rule() {
  static_assert(std::floating_point<T>, "dftune::UpdateRule<R, T>: T must be float, double or long double");
  static_assert(requires(R& r, std::span<T> p, std::span<const T> g, T lr) { r.step(p, g, lr); },
                "dftune::UpdateRule: the rule needs `void step(std::span<T> params, std::span<const T> grads, T lr)`");
  static_assert(requires(const R& r) { { r.steps() } -> std::convertible_to<std::size_t>; },
                "dftune::UpdateRule: the rule needs `std::size_t steps() const`");
  return UpdateRule<R, T>;
}

// ---- weight-decay policies ---------------------------------------------------------------------
// A policy says where the decay λ enters a step: into the gradient (coupled, classic L2
// regularisation of the loss, λ/2·‖θ‖²) or straight onto the parameters (decoupled).
// gradient(g, θ, λ): the gradient the rule's moments see.
// shrink(lr, λ):     the factor θ is multiplied by before the rule's own update, once per step.

// Coupled L2 (torch.optim.SGD / torch.optim.Adam `weight_decay`): g ← g + λ·θ.
struct CoupledWeightDecay {
  // g + λ·θ.
  template <class T>
  static T gradient(T g, T theta, T lambda) {
    return g + lambda * theta;
  }
  // 1: θ is not shrunk.
  static double shrink(double /*lr*/, double /*lambda*/) { return 1.0; }
};

// Decoupled (Loshchilov & Hutter 2019, Algorithm 2 line 12; torch.optim.AdamW):
// θ ← θ − lr·λ·θ = θ·(1 − lr·λ) before the step; the moments never see λ. As in PyTorch the decay
// is scaled by the learning rate lr (the paper scales it by the schedule multiplier η_t only), so a
// schedule decays it together with the step.
struct DecoupledWeightDecay {
  // g: the gradient does not see λ.
  template <class T>
  static T gradient(T g, T /*theta*/, T /*lambda*/) {
    return g;
  }
  // 1 − lr·λ.
  static double shrink(double lr, double lambda) { return 1.0 - lr * lambda; }
};

template <class P, class T>
concept WeightDecayPolicy = requires(T g, double x) {
  { P::template gradient<T>(g, g, g) } -> std::convertible_to<T>;
  { P::shrink(x, x) } -> std::convertible_to<double>;
};

namespace detail {

// Every check of a rule's step, before any write. fixed_count = 0 means no step has fixed the
// parameter count yet (a rule never accepts an empty span, so 0 is free to mean that).
template <class T>
void check_rule_step(std::span<const T> params, std::span<const T> grads, T lr, std::size_t fixed_count) {
  if (!std::isfinite(lr) || !(lr >= 0)) fail("lr", lr, "a finite learning rate >= 0");
  if (params.empty()) fail("params", "size 0", "at least one parameter");
  if (fixed_count != 0 && params.size() != fixed_count)
    fail("params", "size " + std::to_string(params.size()),
         "size " + std::to_string(fixed_count) + " (the parameter count is fixed by the rule's first step)");
  check_size("grads", grads.size(), params.size());
  for (std::size_t k = 0; k < grads.size(); ++k)
    if (!std::isfinite(grads[k])) fail_at("grads", k, grads[k], "a finite number");
}

// A rule counts its steps in size_t; the step after 2^64 − 1 would wrap the count to 0, which
// Adam reads as "no step yet" (bias corrections 1 − β^0 = 0: every parameter becomes non-finite)
// and SGD as "restart the momentum". A count loaded from a checkpoint can be that large.
inline void check_step_count(std::size_t steps) {
  if (steps == std::numeric_limits<std::size_t>::max())
    fail("steps", steps, "fewer than 2^64 − 1 steps taken (one more would wrap the step count)");
}

// 1 when |x| <= max, 0 for ±inf and NaN. A comparison rather than std::isfinite, and an int
// rather than a bool (combined with &, not &&), so that a loop of them vectorises without branches.
template <class T>
int finite_value(T x) {
  return static_cast<int>(std::fabs(x) <= std::numeric_limits<T>::max());
}

// The element loop of every rule, all or nothing without a copy of the parameters:
//   next(k)      computes element k's new values (a struct with `int finite() const`) from the
//                current ones, writing nothing;
//   screen(k)    a cheap test (an int) that, when it is 1, guarantees next(k) is finite (it may be
//                0 for a finite result: it is a sufficient condition, not an exact one);
//   pass 1       screens every element (vectorised: no branch, no sqrt) and, only where the screen
//                is unsure, computes next(k) and checks it;
//   on failure   fail(k, next(k)) for the first element whose result is not finite; must throw;
//   pass 2       store(k, next(k)), the loop the rule would run anyway.
// So the values stored are those next() computes, and a step that would overflow (lr 1e10 on a
// gradient 1e300, g² past the largest float in Adam's v) throws and leaves parameters and moments
// as they were instead of leaving ±inf or NaN behind. bench/bench_optim.cpp measures the cost.
template <class T, class Screen, class Next, class Store, class Fail>
void update_all_or_nothing(std::size_t n, Screen&& screen, Next&& next, Store&& store, Fail&& fail_at_element) {
  T unsure = 0;  // a select in T, not an integer and-reduction: GCC vectorises this form
  for (std::size_t k = 0; k < n; ++k) unsure = screen(k) ? unsure : T(1);
  if (unsure != 0)
    for (std::size_t k = 0; k < n; ++k)
      if (!screen(k))
        if (const auto x = next(k); !x.finite()) fail_at_element(k, x);
  for (std::size_t k = 0; k < n; ++k) store(k, next(k));
}

// The message of a step whose result at element k is not finite.
template <class T>
[[noreturn]] void fail_overflow(std::string_view argument, std::size_t k, T value, T param, T grad, T lr) {
  std::ostringstream os;
  os.precision(17);
  os << "a finite result of the update (from params[" << k << "] = " << param << ", grads[" << k << "] = " << grad
     << ", lr = " << lr << ": the step overflows the scalar type; nothing was changed)";
  fail_at(argument, k, value, os.str());
}

inline void check_weight_decay(double lambda) {
  if (!std::isfinite(lambda) || !(lambda >= 0)) fail("weight_decay", lambda, "a finite number >= 0");
}

}  // namespace detail

DFTUNE_NAMESPACE_END
