#pragma once
// Gradient clipping by global L2 norm, as the reference DFT trainer runs it (Hugging Face's Trainer,
// max_grad_norm = 1.0, through torch.nn.utils.clip_grad_norm_):
//   n = ‖g‖₂ over every parameter;   if n > max_norm:  g ← g · max_norm / (n + 1e-6)
// The 1e-6 is PyTorch's; with it a clipped norm lands a hair below max_norm, as in the reference.
// The norm is accumulated in double (a float sum of squares over millions of parameters loses
// digits and can overflow), and every check runs before the first write.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cmath>
#include <cstddef>
#include <span>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

// ‖g‖₂, in double; an error naming `argument` if an element is not finite.
template <class T>
double global_grad_norm(std::span<const T> g, std::string_view argument = "grads") {
  // Scaled accumulation (as LAPACK's dnrm2): Σ g² of finite doubles can overflow at |g| ~ 1e154.
  double scale = 0, ssq = 1;
  for (std::size_t k = 0; k < g.size(); ++k) {
    const double x = static_cast<double>(g[k]);
    if (!std::isfinite(x)) detail::fail_at(argument, k, x, "a finite gradient");
    const double a = std::fabs(x);
    if (a == 0) continue;
    if (scale < a) {
      ssq = 1 + ssq * (scale / a) * (scale / a);
      scale = a;
    } else {
      ssq += (a / scale) * (a / scale);
    }
  }
  return scale * std::sqrt(ssq);
}

// Clips g in place to global norm max_norm (> 0; +inf disables) and returns the norm before
// clipping, which is what trainers log as grad_norm.
template <class T>
double clip_grad_norm(std::span<T> g, double max_norm) {
  if (!(max_norm > 0)) detail::fail("max_norm", max_norm, "a number > 0 (+inf: no clipping)");
  const double n = global_grad_norm(std::span<const T>(g));
  if (n > max_norm) {
    const double c = max_norm / (n + 1e-6);
    for (T& x : g) x = static_cast<T>(static_cast<double>(x) * c);
  }
  return n;
}

DFTUNE_NAMESPACE_END
