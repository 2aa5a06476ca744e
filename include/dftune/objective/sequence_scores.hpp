#pragma once
// Per-sequence inputs of the sequence-level objectives: spans of log-probs, never a framework's
// tensors, so any backend plugs in (docs/math.md, "Data flow").
#include <dftune/config.hpp>
#include <dftune/objective/result.hpp>  // DftResult, the result of dft_loss on these inputs

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The input of dft_loss / dft_step: B prompts, each with one positive and m negatives, as
// per-sequence log-probs your model computed, and the example ids that key the estimator.
// Every input struct of the objectives is laid out alike (designated initialisers follow this
// order): ids, the data spans (log-probs, then lengths `*_len`, a mask `weights`), then the sizes
// (num_negatives, group_size, global_batch_size).
template <class T>
struct SequenceScores {
  std::span<const std::int64_t> ids = {};        // [B] stable example ids, each in [0, num_examples)
  std::span<const T> pos_logp = {};              // [B]    log π_θ(y_i|x_i), summed over completion tokens
  std::span<const T> neg_logp = {};              // [B·m]  log π_θ(y'_ij|x_i), row-major [i][j]
  std::span<const T> ref_neg_logp = {};          // [B·m]  log π_ref(y'_ij|x_i); DFT only (ignored by DFT2)
  std::span<const std::int64_t> pos_len = {};    // [B]    |y_i|; DFT2 only (ignored by DFT)
  std::span<const std::int64_t> neg_len = {};    // [B·m]  |y'_ij|; DFT2 only (ignored by DFT)
  std::size_t num_negatives = 0;                 // m >= 1
  // The B of the objective's 1/B: 0 for this batch's size; in a data-parallel step, where this
  // batch is one rank's share, the size of the global batch (>= B), so that the ranks' gradients
  // sum to the single-process gradient of the global batch (DftResult then holds this share's
  // terms of L: they too sum over ranks to L).
  std::size_t global_batch_size = 0;

  // B, the number of prompts.
  std::size_t batch_size() const { return ids.size(); }
};

DFTUNE_NAMESPACE_END
