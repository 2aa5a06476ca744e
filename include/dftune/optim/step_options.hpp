#pragma once
// Options of a training step beyond the objective's and the inner rule's: what happens to the
// model's gradient between the backward pass and the update.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <limits>

DFTUNE_NAMESPACE_BEGIN

// Options of DftOptimizer's step beyond the objective's and the inner rule's.
struct StepOptions {
  // Clip the gradient to this global L2 norm before the inner rule (optim/clip.hpp: the rule of
  // torch.nn.utils.clip_grad_norm_, which the Hugging Face Trainer applies with max_grad_norm; the
  // DFT reference recipes run with 1.0). > 0; +inf, the default, never clips.
  double max_grad_norm = std::numeric_limits<double>::infinity();
};

// Throws dftune::error unless max_grad_norm > 0.
inline void validate(const StepOptions& o) {
  if (!(o.max_grad_norm > 0))
    detail::fail("max_grad_norm", o.max_grad_norm, "a norm > 0 (+inf: no clipping, the default)");
}

DFTUNE_NAMESPACE_END
