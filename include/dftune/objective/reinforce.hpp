#pragma once
// REINFORCE with a baseline (Williams 1992, "Simple statistical gradient-following algorithms for
// connectionist reinforcement learning", Machine Learning 8, §4: Δθ ∝ (r − b)·∇ log π), written as
// the surrogate loss whose gradient is the policy-gradient estimate on k samples of each of B
// prompts (N = B·k samples y_n ~ π_θ, rewards r_n):
//
//   L = −(1/N) Σ_n (r_n − b_n) · s_n,   s_n = log π_θ(y_n|x_n)      ∂L/∂s_n = −(r_n − b_n)/N
//
// (r − b) is a constant (stop-gradient); L's value is not an objective, only its gradient is.
// r is used as given: any KL shaping of the reward is the caller's (TRL's RLOOTrainer subtracts
// β·(log π_θ(y|x) − log π_ref(y|x)) from each sample's reward, β = 0.05 by default, before its
// leave-one-out baseline).
// Sums and differences of rewards are computed without intermediate overflow (math/no_overflow.hpp):
// rewards near ±1e308 give finite advantages; a loss or gradient T cannot hold is a dftune::error.
// The baseline b is a policy:
//   BatchMeanBaseline      b_n = (1/N) Σ_n' r_n'  (default; includes the sample's own reward, so the
//                          estimate is biased by a factor (1 − 1/N) — RLOO removes that)
//   ConstantBaseline       b_n = value            (a baseline the caller keeps, e.g. a running mean)
//   SampleBaseline<T>      b_n = values[n]        (one per sample, e.g. from a value model)
//   LeaveOneOutBaseline    RLOO (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples, get a
//                          baseline for free!"; Ahmadian et al. 2024, arXiv 2402.14740, §3.3):
//                          b_ij = (1/(k−1)) Σ_{j'≠j} r_ij', the mean of the other samples of the
//                          same prompt, independent of y_ij, so the estimate is unbiased; k >= 2.
// A baseline policy has  template <class T> void validate(const SampleScores<T>&) const,
// template <class T> void compute(const SampleScores<T>&, std::vector<double>& b) const  and
// static constexpr std::size_t min_group_size.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/math/no_overflow.hpp>
#include <dftune/objective/baseline.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The baseline b = the batch's mean reward (REINFORCE's default).
struct BatchMeanBaseline {
  static constexpr std::size_t min_group_size = 1;  // the fewest samples per prompt it needs
  // Throws dftune::error for inputs this baseline cannot use.
  template <class T>
  void validate(const SampleScores<T>&) const {}
  // b[n], the baseline of sample n.
  template <class T>
  void compute(const SampleScores<T>& s, std::vector<double>& b) const {
    const detail::ScaledSum sum = detail::scaled_sum(s.reward);  // no overflow for rewards near 1e308
    b.assign(s.reward.size(), sum.sum / static_cast<double>(s.reward.size()) * sum.unscale);
  }
};

// A fixed baseline b (0: plain REINFORCE).
struct ConstantBaseline {
  double value = 0;  // b, finite
  static constexpr std::size_t min_group_size = 1;  // the fewest samples per prompt it needs
  // Throws dftune::error for inputs this baseline cannot use.
  template <class T>
  void validate(const SampleScores<T>&) const {
    if (!std::isfinite(value)) detail::fail("baseline", value, "a finite number");
  }
  // b[n], the baseline of sample n.
  template <class T>
  void compute(const SampleScores<T>& s, std::vector<double>& b) const {
    b.assign(s.reward.size(), value);
  }
};

// One baseline per sample, given by the caller (e.g. a value model's).
template <class T>
struct SampleBaseline {
  std::span<const T> values = {};  // [B·k] b_n
  static constexpr std::size_t min_group_size = 1;  // the fewest samples per prompt it needs
  // Throws dftune::error for inputs this baseline cannot use.
  void validate(const SampleScores<T>& s) const {
    detail::check_size("baseline", values.size(), s.logp.size());
    detail::check_finite("baseline", values);
  }
  // b[n], the baseline of sample n.
  void compute(const SampleScores<T>&, std::vector<double>& b) const { b.assign(values.begin(), values.end()); }
};

// RLOO: each sample's baseline is the mean reward of the other k − 1 samples of its prompt.
struct LeaveOneOutBaseline {
  static constexpr std::size_t min_group_size = 2;  // the fewest samples per prompt it needs
  // Throws dftune::error for inputs this baseline cannot use.
  template <class T>
  void validate(const SampleScores<T>&) const {}
  // b[n], the baseline of sample n.
  template <class T>
  void compute(const SampleScores<T>& s, std::vector<double>& b) const {
    const std::size_t k = s.group_size;
    b.resize(s.reward.size());
    for (std::size_t start = 0; start < s.reward.size(); start += k) {
      // The group's sum, scaled by an exact power of two if it would overflow.
      const detail::ScaledSum sum = detail::scaled_sum(s.reward.subspan(start, k));
      for (std::size_t n = start; n < start + k; ++n)
        b[n] = (sum.sum - static_cast<double>(s.reward[n]) * sum.scale) / static_cast<double>(k - 1) * sum.unscale;
    }
  }
};

// What reinforce_loss needs of a Baseline policy: validate, compute and min_group_size.
template <class P, class T>
concept RewardBaseline = requires(const P& p, const SampleScores<T>& s, std::vector<double>& b) {
  p.validate(s);
  p.compute(s, b);
  { P::min_group_size } -> std::convertible_to<std::size_t>;
};

// REINFORCE with a baseline: L = −(1/N) Σ_n sg(r_n − b_n)·logp_n over the N = B·k samples (see the
// file's comment). Throws dftune::error, naming the argument, before computing anything.
template <class T, class Baseline = BatchMeanBaseline>
ScoreResult<T> reinforce_loss(const SampleScores<T>& s, const Baseline& baseline = {}) {
  static_assert(RewardBaseline<Baseline, T>,
                "dftune::reinforce_loss: Baseline needs `validate(const SampleScores<T>&) const`, "
                "`compute(const SampleScores<T>&, std::vector<double>&) const` and "
                "`static constexpr std::size_t min_group_size`");
  detail::baselines::check_samples(s, Baseline::min_group_size,
                                   Baseline::min_group_size > 1 ? "RLOO needs another sample of the same prompt"
                                                                : "REINFORCE");
  baseline.validate(s);
  std::vector<double> c;
  baseline.compute(s, c);
  const double inv_n = 1.0 / static_cast<double>(s.logp.size());
  // (r − b)/N; r − b may overflow where (r − b)/N does not (rewards of both signs near 1e308).
  for (std::size_t n = 0; n < c.size(); ++n) c[n] = detail::difference_times(static_cast<double>(s.reward[n]), c[n], inv_n);
  return detail::baselines::weighted_nll(s.logp, c);
}

// RLOO: REINFORCE with the leave-one-out baseline.
template <class T>
ScoreResult<T> rloo_loss(const SampleScores<T>& s) {
  return reinforce_loss(s, LeaveOneOutBaseline{});
}

DFTUNE_NAMESPACE_END
