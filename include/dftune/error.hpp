#pragma once
// The one exception type of dftune. Every check names the argument, the value it got and what was
// expected, and every check runs before any state is touched, so a caught error loses nothing.
#include <dftune/config.hpp>

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

// What every check of dftune throws: "argument: got VALUE, expected EXPECTED", before any state changes.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

// Builds "argument: got VALUE, expected EXPECTED" and throws dftune::error.
template <class Value>
[[noreturn]] void fail(std::string_view argument, const Value& value, std::string_view expected) {
  std::ostringstream os;
  os.precision(17);
  os << argument << ": got " << value << ", expected " << expected;
  throw error(os.str());
}

// Same, for an element of an array argument: "argument[index]: got VALUE, expected EXPECTED".
template <class Value>
[[noreturn]] void fail_at(std::string_view argument, std::size_t index, const Value& value,
                          std::string_view expected) {
  std::ostringstream os;
  os << argument << '[' << index << ']';
  fail(os.str(), value, expected);
}

inline void check_size(std::string_view argument, std::size_t size, std::size_t expected) {
  if (size != expected) fail(argument, "size " + std::to_string(size), "size " + std::to_string(expected));
}

}  // namespace detail

DFTUNE_NAMESPACE_END
