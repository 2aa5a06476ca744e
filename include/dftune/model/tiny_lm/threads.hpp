#pragma once
// The thread id and team size of the enclosing OpenMP region, or (0, 1) in a build without OpenMP,
// so a header can split its work per thread and still compile warning-free without -fopenmp.
#include <dftune/config.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace tiny_lm {

inline std::size_t max_threads() {
#if defined(_OPENMP)
  return static_cast<std::size_t>(std::max(1, omp_get_max_threads()));
#else
  return 1;
#endif
}

inline std::pair<std::size_t, std::size_t> thread_id_and_count() {
#if defined(_OPENMP)
  return {static_cast<std::size_t>(omp_get_thread_num()), static_cast<std::size_t>(omp_get_num_threads())};
#else
  return {0, 1};
#endif
}

// Sequences [s0, s1) of thread `id` out of `count`: contiguous, with about n/count rows each
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

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
