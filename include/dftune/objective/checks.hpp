#pragma once
// The input checks every sequence-level objective shares (DFT and the baselines): each names the
// argument, the value and what was expected, and runs before any computation or write.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

template <class T>
void check_finite(std::string_view argument, std::span<const T> x) {
  for (std::size_t k = 0; k < x.size(); ++k)
    if (!std::isfinite(x[k])) fail_at(argument, k, x[k], "a finite number");
}

inline void check_positive(std::string_view argument, double x) {
  if (!std::isfinite(x) || !(x > 0)) fail(argument, x, "a finite number > 0");
}

inline void check_nonnegative(std::string_view argument, double x) {
  if (!std::isfinite(x) || !(x >= 0)) fail(argument, x, "a finite number >= 0");
}

// Completion lengths |y| >= 1, `size` of them; `why` says which objective needs them.
inline void check_lengths(std::string_view argument, std::span<const std::int64_t> len, std::size_t size,
                          std::string_view why) {
  if (len.empty()) fail(argument, "size 0", "size " + std::to_string(size) + " (" + std::string(why) + ")");
  check_size(argument, len.size(), size);
  for (std::size_t k = 0; k < len.size(); ++k)
    if (len[k] <= 0) fail_at(argument, k, len[k], "a completion length >= 1");
}

inline void check_unique_ids(std::span<const std::int64_t> ids) {
  std::vector<std::int64_t> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) fail("ids", "id " + std::to_string(*dup) + " twice", "distinct ids within a batch");
}

}  // namespace detail

DFTUNE_NAMESPACE_END
