#pragma once
// Size arithmetic that cannot wrap. A size check that compares a buffer against a wrapped product
// (B·m, rows·V, n·d, ...) passes and lets the loop behind it run past the buffer, so every product or
// sum of sizes a check or an allocation depends on goes through these: they return the exact value
// or throw dftune::error naming the argument whose size made it overflow.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

// a·b; on overflow "argument: got a·b = A·B, expected a product of sizes that fits in size_t".
inline std::size_t checked_mul(std::string_view argument, std::size_t a, std::size_t b) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    fail(argument, std::to_string(a) + "·" + std::to_string(b),
         "a product of sizes that fits in size_t (at most " +
             std::to_string(std::numeric_limits<std::size_t>::max()) + ")");
  return r;
}

// a + b; on overflow the same kind of error.
inline std::size_t checked_add(std::string_view argument, std::size_t a, std::size_t b) {
  std::size_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    fail(argument, std::to_string(a) + " + " + std::to_string(b),
         "a sum of sizes that fits in size_t (at most " + std::to_string(std::numeric_limits<std::size_t>::max()) +
             ")");
  return r;
}

// n1·n2·…·nk without overflow (an empty product is 1).
template <class... Sizes>
std::size_t checked_product(std::string_view argument, Sizes... n) {
  std::size_t r = 1;
  ((r = checked_mul(argument, r, static_cast<std::size_t>(n))), ...);
  return r;
}

// A size check against a product: `argument` must hold a·b elements. Throws the overflow error when
// a·b itself does not fit, then the usual size error.
inline std::size_t check_size_product(std::string_view argument, std::size_t size, std::size_t a, std::size_t b,
                                      std::string_view product_name) {
  const std::size_t expected = checked_mul(product_name, a, b);
  check_size(argument, size, expected);
  return expected;
}

}  // namespace detail

DFTUNE_NAMESPACE_END
