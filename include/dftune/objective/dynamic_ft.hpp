#pragma once
// Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning
// Perspective with Reward Rectification", arXiv 2508.05629, eq. 9): the method that TRL
// (SFTConfig(loss_type="dft")), Liger-Kernel, ms-swift, verl and unsloth call "DFT". It is *not*
// the Discriminative Fine-Tuning of objective/dft.hpp, which is what dftune implements; it is here
// as a baseline (docs/math.md, "The other DFT"). SFT with each completion token's log-likelihood
// weighted by the token's own probability, held constant:
//
//   ℓ_n = −sg(p_n) · log p_n,    p_n = π_θ(y_n | x, y_<n)        (completion token n)
//   L   = Σ_n c_n · ℓ_n          ∂L/∂log p_n = −c_n · p_n
//
// with c_n from the reduction (baseline.hpp's NllReduction, at token level; S sequences):
//   token_mean (default)   c_n = 1/N_tok, N_tok = completion tokens of the batch (TRL's dft_loss)
//   sequence_mean          c_n = 1/S
//   length_normalized      c_n = 1/(S·|y_s|), s the sequence of token n
//
// Input: what the token reduction gives (logprob::forward): token_logp, the 0/1 weights of the same
// TokenLogits (the completion mask, `weights` here too) and its sequence offsets. Rows of weight 0 are
// never read.
// Backward: the per-token gradient goes back through the same reduction as per-token weights —
//   logprob::backward(TokenLogits{same logits, targets and offsets, .weights = r.grad}, d_seq = 1, g)
// writes g[n] = r.grad[n] · (onehot(y_n) − softmax(z_n)) = ∂L/∂z_n, since ∂ log p_n/∂z_n =
// onehot(y_n) − softmax(z_n) (masked rows get r.grad[n] = 0, hence a zero gradient row).
// Every check runs before any computation; arithmetic is in double, results are stored as T.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/checks.hpp>
#include <dftune/objective/result.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The input of dynamic_ft_loss: per-token log-probs of S sequences, with their 0/1 completion weights.
template <class T>
struct TokenScores {
  std::span<const T> token_logp = {};          // [N] log π_θ(y_n|x, y_<n) on completion rows (logprob::forward's token_logp)
  std::span<const T> weights = {};             // [N] 1 on completion rows, 0 elsewhere; empty: every row counts
                                               //     (the 0/1 weights of the TokenLogits, as logprob/ names them)
  std::span<const std::int64_t> offsets = {};  // [S + 1] sequence s owns rows [offsets[s], offsets[s+1])
};

// Options of dynamic_ft_loss.
struct DynamicFtOptions {
  NllReduction reduction = NllReduction::token_mean;  // TRL's: the mean over the batch's completion tokens
};

// Throws dftune::error for a reduction that is not an NllReduction.
inline void validate(const DynamicFtOptions& o) { detail::baselines::check_reduction(o.reduction); }

// dynamic_ft_loss returns a ScoreResult (objective/result.hpp): grad[n] = ∂L/∂token_logp[n], 0 on
// rows of weight 0. TokenResult was its own type with the same two fields.
template <class T>
using TokenResult [[deprecated("use ScoreResult<T>: the same fields")]] = ScoreResult<T>;

namespace detail {

template <class T>
void validate_token_scores(const TokenScores<T>& in, NllReduction reduction) {
  baselines::check_reduction(reduction);
  const std::size_t N = in.token_logp.size();
  if (!in.weights.empty()) check_size("weights", in.weights.size(), N);
  if (in.offsets.size() < 2)
    fail("offsets", "size " + std::to_string(in.offsets.size()), "size S + 1 >= 2 (at least one sequence)");
  if (in.offsets.front() != 0) fail_at("offsets", 0, in.offsets.front(), "0");
  for (std::size_t s = 1; s < in.offsets.size(); ++s)
    if (in.offsets[s] < in.offsets[s - 1])
      fail_at("offsets", s, in.offsets[s], ">= offsets[" + std::to_string(s - 1) + "] (non-decreasing)");
  if (in.offsets.back() != static_cast<std::int64_t>(N))
    fail_at("offsets", in.offsets.size() - 1, in.offsets.back(), "N = " + std::to_string(N) + " (the size of token_logp)");
  std::size_t tokens = 0;
  for (std::size_t n = 0; n < N; ++n) {
    const T w = in.weights.empty() ? T(1) : in.weights[n];
    if (w != T(0) && w != T(1)) fail_at("weights", n, w, "0 or 1 (a completion mask)");
    if (w == T(0)) continue;
    if (!std::isfinite(in.token_logp[n])) fail_at("token_logp", n, in.token_logp[n], "a finite log-prob");
    ++tokens;
  }
  if (tokens == 0) fail("weights", "no completion token", "at least one row with weight 1");
  if (reduction == NllReduction::length_normalized)
    for (std::size_t s = 0; s + 1 < in.offsets.size(); ++s) {
      bool any = false;
      for (auto n = in.offsets[s]; n < in.offsets[s + 1] && !any; ++n)
        any = in.weights.empty() || in.weights[static_cast<std::size_t>(n)] != T(0);
      if (!any) fail_at("offsets", s, "a sequence without completion tokens", "at least one (length_normalized divides by |y|)");
    }
}

}  // namespace detail

// Dynamic Fine-Tuning's loss −sg(p_t)·log p_t, reduced as opt says, and its gradient per token
// (see the file's comment). Throws dftune::error, naming the argument, before computing anything.
template <class T>
ScoreResult<T> dynamic_ft_loss(const TokenScores<T>& in, const DynamicFtOptions& opt = {}) {
  validate(opt);
  detail::validate_token_scores(in, opt.reduction);
  const std::size_t N = in.token_logp.size(), S = in.offsets.size() - 1;
  auto counted = [&](std::size_t n) { return in.weights.empty() || in.weights[n] != T(0); };
  double tokens = 0;
  for (std::size_t n = 0; n < N; ++n) tokens += counted(n) ? 1.0 : 0.0;
  ScoreResult<T> r;
  r.grad.assign(N, T(0));
  double loss = 0;
  for (std::size_t s = 0; s < S; ++s) {
    const auto begin = static_cast<std::size_t>(in.offsets[s]), end = static_cast<std::size_t>(in.offsets[s + 1]);
    double len = 0;
    for (std::size_t n = begin; n < end; ++n) len += counted(n) ? 1.0 : 0.0;
    double c = 0;
    switch (opt.reduction) {
      case NllReduction::token_mean: c = 1.0 / tokens; break;
      case NllReduction::sequence_mean: c = 1.0 / static_cast<double>(S); break;
      case NllReduction::length_normalized: c = 1.0 / (static_cast<double>(S) * len); break;
    }
    for (std::size_t n = begin; n < end; ++n) {
      if (!counted(n)) continue;
      const double lp = static_cast<double>(in.token_logp[n]);
      const double p = std::exp(lp);  // sg(p_n): a constant weight, never differentiated
      loss -= c * p * lp;
      r.grad[n] = static_cast<T>(-c * p);
    }
  }
  r.loss = static_cast<T>(loss);
  return r;
}

DFTUNE_NAMESPACE_END
