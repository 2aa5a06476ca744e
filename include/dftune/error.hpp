#pragma once
// The exceptions of dftune: one base, dftune::error, and three kinds, each also the standard
// exception a C++ programmer expects for it:
//
//   dftune::argument_error  : std::invalid_argument  a bad argument or input: a size, a value, an id,
//                                                    a file whose content is not what the loader
//                                                    expects (checked before any state changes)
//   dftune::io_error        : std::runtime_error     the operating system refused a file operation:
//                                                    open, read, write, fsync, rename (ENOSPC, EACCES…)
//   dftune::device_error    : std::runtime_error     a device or communication failure: CUDA, cuBLAS,
//                                                    MPI (logprob/cuda's cuda_error and cublas_error
//                                                    derive from it)
//
// `catch (const dftune::error&)` catches all three, `catch (const std::invalid_argument&)` only the
// bad arguments, `catch (const std::exception&)` all of them (each derives from std::exception
// once). Every message names the argument, the value it got and what was expected; every check
// runs before any state is touched, so a caught error loses nothing.
#include <dftune/config.hpp>

#include <cstddef>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

// Which of the three kinds an error is (error::kind()).
enum class error_kind { argument, io, device };

// The base of every exception dftune throws (abstract: throw one of the three kinds below).
class error {
 public:
  virtual ~error() = default;
  // The message: "argument: got VALUE, expected EXPECTED" for a bad argument.
  virtual const char* what() const noexcept = 0;
  // Which kind this error is.
  virtual error_kind kind() const noexcept = 0;

 protected:
  // Only the three kinds below construct, copy and assign the base.
  error() = default;
  // Copied with the derived exception (throw copies it).
  error(const error&) = default;
  // Assigned with the derived exception.
  error& operator=(const error&) = default;
};

// A bad argument or input, checked before any state changes.
class argument_error : public std::invalid_argument, public error {
 public:
  using std::invalid_argument::invalid_argument;
  const char* what() const noexcept override { return std::invalid_argument::what(); }
  error_kind kind() const noexcept override { return error_kind::argument; }
};

// The operating system refused a file operation; the message names the path and the reason.
class io_error : public std::runtime_error, public error {
 public:
  using std::runtime_error::runtime_error;
  const char* what() const noexcept override { return std::runtime_error::what(); }
  error_kind kind() const noexcept override { return error_kind::io; }
};

// A device or communication failure (CUDA, cuBLAS, MPI).
class device_error : public std::runtime_error, public error {
 public:
  using std::runtime_error::runtime_error;
  const char* what() const noexcept override { return std::runtime_error::what(); }
  error_kind kind() const noexcept override { return error_kind::device; }
};

namespace detail {

// Throws the exception of `kind` with `message` (rethrowing an error with more context keeps its kind).
[[noreturn]] inline void throw_error(error_kind kind, const std::string& message) {
  switch (kind) {
    case error_kind::io: throw io_error(message);
    case error_kind::device: throw device_error(message);
    case error_kind::argument: break;
  }
  throw argument_error(message);
}

// Builds "argument: got VALUE, expected EXPECTED" and throws E (a bad argument unless told).
template <class E = argument_error, class Value>
[[noreturn]] void fail(std::string_view argument, const Value& value, std::string_view expected) {
  std::ostringstream os;
  os.precision(17);
  os << argument << ": got " << value << ", expected " << expected;
  throw E(os.str());
}

// Same, for an element of an array argument: "argument[index]: got VALUE, expected EXPECTED".
template <class E = argument_error, class Value>
[[noreturn]] void fail_at(std::string_view argument, std::size_t index, const Value& value,
                          std::string_view expected) {
  std::ostringstream os;
  os << argument << '[' << index << ']';
  fail<E>(os.str(), value, expected);
}

inline void check_size(std::string_view argument, std::size_t size, std::size_t expected) {
  if (size != expected) fail(argument, "size " + std::to_string(size), "size " + std::to_string(expected));
}

}  // namespace detail

DFTUNE_NAMESPACE_END
