#pragma once
// Command-line helpers shared by the demo and the comparison harness: every bad flag exits with
// status 2 and a message that names the flag, the value and what was expected.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace demo {

struct Flags {
  const char* program;

  [[noreturn]] void bad(const std::string& flag, const std::string& why) const {
    std::fprintf(stderr, "%s: %s: %s (see --help)\n", program, flag.c_str(), why.c_str());
    std::exit(2);
  }
  std::size_t count(const std::string& flag, const std::string& v) const {
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || x < 1) bad(flag, "got '" + v + "', expected an integer >= 1");
    return static_cast<std::size_t>(x);
  }
  double real(const std::string& flag, const std::string& v) const {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !std::isfinite(x)) bad(flag, "got '" + v + "', expected a number");
    return x;
  }
  // A comma-separated list of learning rates, each > 0.
  std::vector<double> rates(const std::string& flag, const std::string& v) const {
    std::vector<double> out;
    for (const std::string& x : split(v)) {
      const double lr = real(flag, x);
      if (!(lr > 0)) bad(flag, "got '" + x + "', expected a rate > 0");
      out.push_back(lr);
    }
    return out;
  }
  static std::vector<std::string> split(const std::string& v) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= v.size()) {
      const std::size_t comma = std::min(v.find(',', start), v.size());
      out.push_back(v.substr(start, comma - start));
      start = comma + 1;
    }
    return out;
  }
};

}  // namespace demo
