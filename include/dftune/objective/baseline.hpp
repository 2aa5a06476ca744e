#pragma once
// What the baseline objectives (docs/math.md, "Baselines") share: their inputs and results
// on spans of per-sequence log-probs, their input checks, and the one computation most of them are
// made of — a stop-gradient-weighted negative log-likelihood L = −Σ_n c_n · s_n, whose gradient
// wrt the score s_n = log π_θ(y_n|x_n) is −c_n (SFT, RWR, REINFORCE/RLOO, Best-of-N differ only
// in the coefficients c_n; DPO, IPO, SimPO and the odds-ratio term of ORPO share pairwise.hpp).
//
// Two input shapes:
//   PreferenceScores  B prompts, one positive (chosen) y_i and m negatives (rejected) y'_ij each,
//                     the layout of the DFT batch (SequenceScores); every (i, j) is one preference
//                     pair y_i ≻ y'_ij. as_preferences() views a DFT batch this way.
//   SampleScores      B prompts with k scored samples each (rewards r_ij), row-major [i][j].
// Every function checks all its input before computing (sizes, NaN/Inf, lengths, options) and
// throws dftune::error naming the argument; none keeps state. Arithmetic runs in double, results
// are stored as T through detail::narrow_checked: finite inputs give a finite result or a
// dftune::error naming the result that T cannot hold (loss, grad[n], ...), never inf or NaN; where
// a naive formula would overflow although the result does not (a sum of rewards near 1e308, an
// IPO square, r/η for a tiny η) the objectives use one that does not (math/no_overflow.hpp).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/checks.hpp>
#include <dftune/objective/result.hpp>
#include <dftune/objective/sequence_scores.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The input of the pairwise objectives (DPO, IPO, SimPO, ORPO): B prompts, each with one chosen
// answer and m rejected ones, as per-sequence log-probs; each objective reads the spans it names.
template <class T>
struct PreferenceScores {
  std::span<const std::int64_t> ids = {};      // [B]   example ids; optional, read by no pairwise objective
                                               //       (kept so that a DFT batch viewed as pairs keeps them)
  std::span<const T> pos_logp = {};            // [B]   s_w = log π_θ(y_i|x_i), summed over completion tokens
  std::span<const T> neg_logp = {};            // [B·m] s_l = log π_θ(y'_ij|x_i), row-major [i][j]
  std::span<const T> ref_pos_logp = {};        // [B]   r_w = log π_ref(y_i|x_i)    (DPO, IPO)
  std::span<const T> ref_neg_logp = {};        // [B·m] r_l = log π_ref(y'_ij|x_i)  (DPO, IPO)
  std::span<const std::int64_t> pos_len = {};  // [B]   |y_w| completion tokens     (SimPO, ORPO)
  std::span<const std::int64_t> neg_len = {};  // [B·m] |y_l|                       (SimPO, ORPO)
  std::size_t num_negatives = 1;               // m >= 1 rejected answers per prompt

  // B, the number of prompts.
  std::size_t batch_size() const { return pos_logp.size(); }
};

// A DFT batch seen as B·m preference pairs (positive ≻ each negative). DFT needs no log π_ref of the
// positives; DPO and IPO do, so they come as an extra span.
template <class T>
PreferenceScores<T> as_preferences(const SequenceScores<T>& s, std::span<const T> ref_pos_logp = {}) {
  return {.ids = s.ids, .pos_logp = s.pos_logp, .neg_logp = s.neg_logp, .ref_pos_logp = ref_pos_logp,
          .ref_neg_logp = s.ref_neg_logp, .pos_len = s.pos_len, .neg_len = s.neg_len,
          .num_negatives = s.num_negatives};
}

// The input of the objectives on k samples per prompt (SFT, RWR, REINFORCE / RLOO, Best-of-N).
template <class T>
struct SampleScores {
  std::span<const T> logp = {};            // [B·k] log π_θ(y_ij|x_i), row-major [i][j]
  std::span<const T> reward = {};          // [B·k] r_ij
  std::span<const std::int64_t> len = {};  // [B·k] |y_ij|; only for a token-mean reduction
  std::size_t group_size = 1;              // k >= 1 samples per prompt (RLOO: k >= 2; Best-of-N: N)

  // B, the number of prompts.
  std::size_t batch_size() const { return group_size == 0 ? 0 : logp.size() / group_size; }
};

// How a negative log-likelihood over sequences is averaged (SFT, the SFT term of ORPO, Best-of-N).
enum class NllReduction {
  sequence_mean,      // −(1/B) Σ_i s_i                  (the per-sequence mean; dftune's SFT default)
  token_mean,         // −Σ_i s_i / Σ_i |y_i|            (a causal-LM cross-entropy over the batch's tokens,
                      //                                  as Hugging Face / TRL compute the SFT loss)
  length_normalized,  // −(1/B) Σ_i s_i / |y_i|          (mean of per-sequence token means)
};

namespace detail::baselines {

inline void check_reduction(NllReduction r) {
  if (r != NllReduction::sequence_mean && r != NllReduction::token_mean && r != NllReduction::length_normalized)
    fail("reduction", static_cast<int>(r), "NllReduction::sequence_mean, token_mean or length_normalized");
}

// The common checks of a preference batch: B >= 1, m >= 1, sizes and finiteness of the policy's
// log-probs. Reference log-probs and lengths are checked by the objectives that read them.
// Returns B·m.
template <class T>
std::size_t check_preferences(const PreferenceScores<T>& b) {
  const std::size_t B = b.batch_size(), m = b.num_negatives;
  if (B == 0) fail("pos_logp", "size 0", "at least one prompt");
  if (m == 0) fail("num_negatives", m, "at least 1");
  const std::size_t Bm = check_size_product("neg_logp", b.neg_logp.size(), B, m, "num_negatives (B·m)");
  check_finite("pos_logp", b.pos_logp);
  check_finite("neg_logp", b.neg_logp);
  return Bm;
}

template <class T>
void check_references(const PreferenceScores<T>& b, std::string_view who) {
  const std::size_t B = b.batch_size();
  const std::size_t Bm = checked_mul("num_negatives (B·m)", B, b.num_negatives);
  const std::string why = std::string(who) + " needs log π_ref";
  if (b.ref_pos_logp.empty()) fail("ref_pos_logp", "size 0", "size B = " + std::to_string(B) + " (" + why + ")");
  if (b.ref_neg_logp.empty()) fail("ref_neg_logp", "size 0", "size B·m = " + std::to_string(Bm) + " (" + why + ")");
  check_size("ref_pos_logp", b.ref_pos_logp.size(), B);
  check_size("ref_neg_logp", b.ref_neg_logp.size(), Bm);
  check_finite("ref_pos_logp", b.ref_pos_logp);
  check_finite("ref_neg_logp", b.ref_neg_logp);
}

template <class T>
void check_preference_lengths(const PreferenceScores<T>& b, std::string_view who) {
  const std::string why = std::string(who) + " needs completion lengths";
  check_lengths("pos_len", b.pos_len, b.batch_size(), why);
  check_lengths("neg_len", b.neg_len, checked_mul("num_negatives (B·m)", b.batch_size(), b.num_negatives), why);
}

// The common checks of sampled completions: k >= min_group, B >= 1, sizes, finite log-probs and
// rewards, and lengths when a reduction reads them.
template <class T>
void check_samples(const SampleScores<T>& s, std::size_t min_group, std::string_view who) {
  if (s.group_size < min_group)
    fail("group_size", s.group_size, "at least " + std::to_string(min_group) + " (" + std::string(who) + ")");
  if (s.logp.empty()) fail("logp", "size 0", "at least one sample");
  if (s.logp.size() % s.group_size != 0)
    fail("logp", "size " + std::to_string(s.logp.size()), "a multiple of group_size = " + std::to_string(s.group_size));
  check_size("reward", s.reward.size(), s.logp.size());
  check_finite("logp", s.logp);
  check_finite("reward", s.reward);
}

// Checks of an NLL over the sequences picked by `rows` (all of them when rows is empty): lengths
// are needed, and checked, only by the reductions that read them.
inline void check_nll_lengths(NllReduction r, std::span<const std::int64_t> len, std::size_t size,
                              std::string_view who) {
  check_reduction(r);
  if (r != NllReduction::sequence_mean)
    check_lengths("len", len, size, std::string(who) + " with a token-mean or length-normalised reduction");
}

// c_n of an NLL averaged by `r` over the sequences in `rows` (indices into logp/len); coefficients
// are added into c so that a term can be stacked onto another (ORPO: SFT + λ·odds-ratio term).
inline void add_nll_coefficients(NllReduction r, std::span<const std::size_t> rows, std::span<const std::int64_t> len,
                                 double scale, std::vector<double>& c) {
  const double n = static_cast<double>(rows.size());
  double tokens = 0;
  if (r == NllReduction::token_mean)
    for (std::size_t row : rows) tokens += static_cast<double>(len[row]);
  for (std::size_t row : rows) {
    switch (r) {
      case NllReduction::sequence_mean: c[row] += scale / n; break;
      case NllReduction::token_mean: c[row] += scale / tokens; break;
      case NllReduction::length_normalized: c[row] += scale / (n * static_cast<double>(len[row])); break;
    }
  }
}

// L = −Σ_n c_n · s_n in double: the shared tail of every NLL-shaped objective, whose gradient is
// ∂L/∂s_n = −c_n. The c_n are constants (stop-gradient): rewards and weights never depend on θ
// through the scores.
template <class T>
double nll_loss(std::span<const T> logp, const std::vector<double>& c) {
  double loss = 0;
  for (std::size_t n = 0; n < logp.size(); ++n) loss -= c[n] * static_cast<double>(logp[n]);
  return loss;
}

// The NLL with coefficients c stored as T, through the finite-result guard.
template <class T>
ScoreResult<T> weighted_nll(std::span<const T> logp, const std::vector<double>& c) {
  ScoreResult<T> r;
  r.loss = narrow_checked<T>(nll_loss(logp, c), "loss");
  r.grad.resize(logp.size());
  for (std::size_t n = 0; n < logp.size(); ++n) r.grad[n] = narrow_checked_at<T>(-c[n], "grad", n);
  return r;
}

}  // namespace detail::baselines

DFTUNE_NAMESPACE_END
