#pragma once
// What the test files share instead of copying it: the message of an expected error, the
// central difference that checks an analytic gradient, and an empty scratch directory.
#include <dftune/error.hpp>

#include <cstddef>
#include <filesystem>
#include <string>
#include <utility>

#include <unistd.h>

namespace test {

// An empty directory <temp>/<prefix><name>_<pid>, created anew (whatever was there is removed).
inline std::filesystem::path fresh_dir(const std::string& prefix, const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() / (prefix + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// What error_of returns when f() throws nothing.
inline const std::string no_error = "no error";

// The message of the dftune::error f() throws, or no_error when it throws none (any other
// exception propagates: the test fails on it).
template <class F>
std::string error_of(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const dftune::error& e) {
    return e.what();
  }
  return no_error;
}

// (f(x + h·e_k) − f(x − h·e_k)) / 2h: the derivative of f at x along coordinate k, to O(h²).
// x is copied (any container with operator[]); f takes it and returns a number.
template <class X, class F>
double central_difference(const X& x, std::size_t k, double h, F&& f) {
  X up = x, down = x;
  up[k] += h;
  down[k] -= h;
  return static_cast<double>(f(up) - f(down)) / (2 * h);
}

}  // namespace test
