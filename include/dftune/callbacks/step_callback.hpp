#pragma once
// Callbacks of DftOptimizer::step, as ensmallen's (ensmallen.org, "Callback documentation"): each
// object passed after the batch, `optimizer.step(batch, logger, stopper)`, is called once per
// step, in the order given, after the step is complete (parameters updated, the estimator's log u
// stored, the step counted), with the step's DftStepInfo:
//
//   struct PrintLoss { void on_step(const DftStepInfo<float>& s) { std::printf("%g\n", s.result.loss); } };
//   dft.step(batch, PrintLoss{}, [](const DftStepInfo<float>& s) { return s.result.loss < 0.01; });
//
// A callback is an object with on_step(info) or a callable taking info. It may return bool: true
// asks the training loop to stop (the step's DftStepInfo::stop_requested is then true; every
// callback is still called, so a logger placed after the one that stops still sees the step).
// An exception from a callback propagates out of step() with the step done: the optimizer's state
// is that after the step, and the callbacks after the throwing one are not called for it.
// With no callback, step() does nothing more than it did without them.
#include <dftune/config.hpp>

#include <concepts>
#include <functional>
#include <type_traits>
#include <utility>

DFTUNE_NAMESPACE_BEGIN

// An object with on_step(const Info&), or a callable taking const Info&; returning void or a value
// convertible to bool (true: stop).
template <class C, class Info>
concept StepCallback = requires(C& c, const Info& info) { c.on_step(info); } || std::invocable<C&, const Info&>;

namespace detail {

// Calls one callback; true when it asks to stop.
template <class Info, class C>
bool call_step_callback(C& c, const Info& info) {
  auto call = [&]() -> decltype(auto) {
    if constexpr (requires { c.on_step(info); }) return c.on_step(info);
    else return std::invoke(c, info);
  };
  using R = decltype(call());
  static_assert(std::is_void_v<R> || std::convertible_to<R, bool>,
                "a step callback returns void or bool (true: stop training)");
  if constexpr (std::is_void_v<R>) {
    call();
    return false;
  } else {
    return static_cast<bool>(call());
  }
}

// Calls every callback in order (none skipped by another's request to stop); true when any asked
// to stop.
template <class Info, class... C>
bool call_step_callbacks(const Info& info, C&... callbacks) {
  bool stop = false;
  ((stop = call_step_callback(callbacks, info) || stop), ...);
  return stop;
}

}  // namespace detail

DFTUNE_NAMESPACE_END
