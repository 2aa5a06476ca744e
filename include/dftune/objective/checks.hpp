#pragma once
// The input checks every sequence-level objective shares (DFT and the baselines): each names the
// argument, the value and what was expected, and runs before any computation or write.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/math/no_overflow.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

// A number as error messages print it (17 significant digits, like fail's value; std::to_string
// would print 1e300 with 300 digits).
inline std::string to_text(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

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

inline constexpr std::string_view too_extreme = "a value the scalar type can hold (inputs too extreme for this precision)";

// x stored as T, or a dftune::error naming `what` (a result: "loss", "grad_neg", "log_u", ...).
// Every result an objective returns goes through this guard, so finite inputs give a finite result
// or a named error, never inf or NaN: a result computed in double can overflow (an intermediate, a
// sum) and can exceed float's range.
template <class T>
T narrow_checked(double x, std::string_view what) {
  if (!fits<T>(x)) fail(what, x, too_extreme);
  return static_cast<T>(x);
}

// The same for element `index` of an array result: "what[index]: got …".
template <class T>
T narrow_checked_at(double x, std::string_view what, std::size_t index) {
  if (!fits<T>(x)) fail_at(what, index, x, too_extreme);
  return static_cast<T>(x);
}

inline void check_unique_ids(std::span<const std::int64_t> ids) {
  std::vector<std::int64_t> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) fail("ids", "id " + std::to_string(*dup) + " twice", "distinct ids within a batch");
}

}  // namespace detail

DFTUNE_NAMESPACE_END
