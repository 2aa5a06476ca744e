#pragma once
// Gradient clipping by global L2 norm, as the reference DFT trainer runs it (Hugging Face's Trainer,
// max_grad_norm = 1.0, through torch.nn.utils.clip_grad_norm_):
//   n = ‖g‖₂ over every parameter;   if n > max_norm:  g ← g · max_norm / (n + 1e-6)
// The 1e-6 is PyTorch's; with it a clipped norm lands a hair below max_norm, as in the reference.
// The norm is accumulated in double (a float sum of squares over millions of parameters loses
// digits and can overflow), scaled where the squares would overflow or underflow, and every check
// runs before the first write.
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
  // Fast path: Σ g² in double, summed pairwise (blocks of 256 squares in four partial sums, then a
  // binary tree of block sums): rounding error O(ε·log n) and a fixed order, so the same bits every
  // run. It is exact to that rounding when every nonzero |g| lies in [2^-480, 2^480]: no square
  // underflows into the subnormals and fewer than 2^60 squares cannot overflow. float gradients
  // always do.
  constexpr double lo = 0x1p-480, hi = 0x1p480;
  constexpr std::size_t block = 256;
  const std::size_t n = g.size();
  double tree[64];  // tree[d]: sum of 2^d consecutive blocks, pending (64 levels: any n)
  std::size_t depth = 0, blocks = 0;
  bool in_range = true;
  for (std::size_t b0 = 0; b0 < n; b0 += block) {
    const std::size_t b1 = b0 + block < n ? b0 + block : n;
    double s[4] = {0, 0, 0, 0};
    for (std::size_t k = b0; k < b1; ++k) {
      const double a = std::fabs(static_cast<double>(g[k]));
      in_range &= (a <= hi) & ((a >= lo) | (a == 0));
      s[k % 4] += a * a;
    }
    tree[depth++] = (s[0] + s[1]) + (s[2] + s[3]);
    for (std::size_t c = ++blocks; c % 2 == 0; c /= 2, --depth) tree[depth - 2] += tree[depth - 1];
  }
  double sum = 0;
  while (depth > 0) sum += tree[--depth];
  if (in_range) return std::sqrt(sum);
  // Otherwise scaled accumulation (as LAPACK's dnrm2), which neither overflows at |g| ~ 1e154 nor
  // loses the tiny ones, and finds a non-finite element.
  double scale = 0, ssq = 1;
  for (std::size_t k = 0; k < n; ++k) {
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
