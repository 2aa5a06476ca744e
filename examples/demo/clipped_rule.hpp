#pragma once
// Gradient clipping for the examples' fine-tuning loop: an UpdateRule that clips the gradient to a
// global L2 norm before its inner rule's step (torch's rule, include/dftune/optim/clip.hpp; the
// reference DFT trainer runs Hugging Face's Trainer with max_grad_norm = 1.0) and keeps the norm
// before clipping, which trainers log as grad_norm. SFT and compare's baselines step through it;
// DFT/DFT2 clip inside DftOptimizer (StepOptions{.max_grad_norm}) with the same clip_grad_norm, so
// every method is clipped alike. max_norm = +inf clips nothing: the inner rule then sees the
// model's own gradient buffer, untouched, and runs bit for bit as without the wrapper.
#include <dftune/optim/clip.hpp>
#include <dftune/optim/rule.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <utility>
#include <vector>

namespace demo {

template <class T, class Rule>
class ClippedRule {
  static_assert(dftune::UpdateRule<Rule, T>, "demo::ClippedRule<T, Rule>: Rule must satisfy dftune::UpdateRule");

 public:
  explicit ClippedRule(Rule inner = {}, double max_norm = std::numeric_limits<double>::infinity())
      : inner_(std::move(inner)), max_norm_(max_norm) {
    if (!(max_norm > 0)) dftune::detail::fail("max_grad_norm", max_norm, "a number > 0 (+inf: no clipping)");
  }

  void step(std::span<T> params, std::span<const T> grads, T lr) {
    const double norm = dftune::global_grad_norm(grads);
    if (norm > max_norm_) {
      clipped_.assign(grads.begin(), grads.end());
      dftune::clip_grad_norm(std::span<T>(clipped_), max_norm_);
      inner_.step(params, std::span<const T>(clipped_), lr);
    } else {
      inner_.step(params, grads, lr);
    }
    last_norm_ = norm;  // after the inner step: a step that throws leaves it as it was
  }
  std::size_t steps() const { return inner_.steps(); }

  double max_norm() const { return max_norm_; }
  double last_grad_norm() const { return last_norm_; }  // ‖g‖₂ before clipping, of the last step
  const Rule& inner() const { return inner_; }

 private:
  Rule inner_;
  double max_norm_;
  double last_norm_ = std::numeric_limits<double>::quiet_NaN();
  std::vector<T> clipped_;
};

}  // namespace demo
