#pragma once
// Supervised fine-tuning: maximum likelihood of the given answers (the baseline DFT is compared
// with, arXiv 2502.18679 §2; docs/math.md, "Baselines"):
//
//   L = −(1/B) Σ_i log π_θ(y_i|x_i)         ∂L/∂s_i = −1/B                 (sequence_mean, default)
//   L = −Σ_i log π_θ(y_i|x_i) / Σ_i |y_i|    ∂L/∂s_i = −1/Σ|y|              (token_mean: HF/TRL's loss)
//   L = −(1/B) Σ_i log π_θ(y_i|x_i) / |y_i|  ∂L/∂s_i = −1/(B·|y_i|)         (length_normalized)
//
// with s_i = log π_θ(y_i|x_i) summed over completion tokens. The reductions only rescale the
// per-sequence gradients, but they change what a learning rate means: compare objectives at their
// own tuned learning rates (docs/math.md, "Fair comparisons").
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// Options of sft_loss.
struct SftOptions {
  NllReduction reduction = NllReduction::sequence_mean;  // how the negative log-likelihood is averaged
};

// logp[i] = log π_θ(y_i|x_i); len[i] = |y_i|, read (and required) only by token_mean and
// length_normalized. Data first, options last, as every objective.
template <class T>
ScoreResult<T> sft_loss(std::span<const T> logp, std::span<const std::int64_t> len = {}, const SftOptions& opt = {}) {
  namespace bl = detail::baselines;
  if (logp.empty()) detail::fail("logp", "size 0", "at least one sequence");
  detail::check_finite("logp", logp);
  bl::check_nll_lengths(opt.reduction, len, logp.size(), "SFT");
  std::vector<std::size_t> rows(logp.size());
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  std::vector<double> c(logp.size(), 0.0);
  bl::add_nll_coefficients(opt.reduction, rows, len, 1.0, c);
  return bl::weighted_nll(logp, c);
}

// The order before 0.x (options before the lengths); removed in the next release.
template <class T>
[[deprecated("sft_loss(logp, opt, len) is now sft_loss(logp, len, opt)")]]
ScoreResult<T> sft_loss(std::span<const T> logp, const SftOptions& opt, std::span<const std::int64_t> len = {}) {
  return sft_loss(logp, len, opt);
}

DFTUNE_NAMESPACE_END
