#pragma once
// How TinyLm splits a batch: the fixed partition of a batch into chunks of sequences that keeps
// results independent of the thread count (the team itself: dftune/threads.hpp).
#include <dftune/config.hpp>
#include <dftune/threads.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

DFTUNE_NAMESPACE_BEGIN

namespace tiny_lm {

// tiny_lm's former spellings of dftune::max_threads and dftune::thread_id_and_count (threads.hpp),
// kept for one release.
[[deprecated("tiny_lm::max_threads is now dftune::max_threads (dftune/threads.hpp)")]] inline std::size_t max_threads() {
  return dftune::max_threads();
}
// (see max_threads above)
[[deprecated("tiny_lm::thread_id_and_count is now dftune::thread_id_and_count (dftune/threads.hpp)")]]
inline std::pair<std::size_t, std::size_t> thread_id_and_count() {
  return dftune::thread_id_and_count();
}

// Sequences [s0, s1) of part `id` out of `count`: contiguous, with about n/count rows each
// (offsets are the S + 1 row boundaries of the sequences).
inline std::pair<std::size_t, std::size_t> sequence_chunk(std::span<const std::int64_t> offsets, std::size_t id,
                                                          std::size_t count) {
  const std::size_t S = offsets.size() - 1;
  const auto n = offsets.back();
  auto first_at = [&](std::size_t k) {
    const auto target = static_cast<std::int64_t>(static_cast<double>(n) * static_cast<double>(k) / static_cast<double>(count));
    return std::min<std::size_t>(S, static_cast<std::size_t>(std::lower_bound(offsets.begin(), offsets.end() - 1, target) - offsets.begin()));
  };
  return {id == 0 ? 0 : first_at(id), id + 1 == count ? S : first_at(id + 1)};
}

// Rows per chunk of the fixed partition below: a chunk's GEMMs stay large enough to be efficient,
// and a batch of a few hundred rows still splits across threads.
inline constexpr std::size_t kChunkRows = 64;
// At most this many chunks: each chunk after the first holds a gradient buffer while the chunks
// are summed.
inline constexpr std::size_t kMaxChunks = 16;

// The number of chunks a batch of `rows` tokens in `seqs` sequences is cut into: a function of
// the batch alone, never of the thread count. The model runs each chunk (sequence_chunk(offsets,
// c, count)) as one unit — the same GEMMs over the same rows, whichever thread takes it — and adds
// the chunks' gradients in chunk order, so its results are bit-identical for any number of threads
// (threads beyond the number of chunks stay idle).
inline std::size_t chunk_count(std::size_t rows, std::size_t seqs) {
  return std::max<std::size_t>(1, std::min({seqs, rows / kChunkRows, kMaxChunks}));
}

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
