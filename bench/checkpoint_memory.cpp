// Peak memory of saving and loading a large estimator checkpoint (issue: a 50 M-example estimator,
// 429 MiB of state, needed about 3x its size to save and to load). Builds an Estimator<double> of
// N examples, every one seen, then saves it to PATH or loads PATH into it, and prints the state's
// size, the resident memory before the operation and the peak (VmHWM) after it, from
// /proc/self/status. Run it under /usr/bin/time -v for an outside view of the same peak:
//   cmake --build build --target checkpoint_memory
//   /usr/bin/time -v build/bench/checkpoint_memory save /tmp/u.ckpt 50000000
//   /usr/bin/time -v build/bench/checkpoint_memory load /tmp/u.ckpt 50000000
#include <dftune/estimator/estimator.hpp>
#include <dftune/io/checkpoint.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

// A field of /proc/self/status in MiB (0 where there is no such file).
double status_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::strtod(line.c_str() + std::strlen(field), nullptr) / 1024.0;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || (std::strcmp(argv[1], "save") != 0 && std::strcmp(argv[1], "load") != 0)) {
    std::fprintf(stderr, "usage: %s save|load PATH [num_examples = 50000000]\n", argv[0]);
    return 2;
  }
  const bool save = std::strcmp(argv[1], "save") == 0;
  const std::size_t n = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 50'000'000;
  const dftune::DftOptions opt{.init = dftune::EstimatorInit::constant};
  dftune::Estimator<double> est(n, opt);
  if (save) {  // every example seen, log u_i = −i/n, set in chunks of 1 M
    std::vector<std::int64_t> ids;
    std::vector<double> u;
    for (std::size_t i0 = 0; i0 < n; i0 += 1'000'000) {
      ids.clear();
      u.clear();
      for (std::size_t i = i0; i < n && i < i0 + 1'000'000; ++i) {
        ids.push_back(static_cast<std::int64_t>(i));
        u.push_back(-static_cast<double>(i) / static_cast<double>(n));
      }
      est.set(ids, u);
    }
  }
  const double state = static_cast<double>(n) * (sizeof(double) + 1) / (1024.0 * 1024.0);
  const double rss = status_mib("VmRSS:");
  const auto t0 = std::chrono::steady_clock::now();
  if (save) dftune::io::save(argv[2], est);
  else dftune::io::load(argv[2], est);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double peak = status_mib("VmHWM:");
  if (!save) {  // the loaded state is the saved one
    for (std::size_t i : {std::size_t{0}, n / 2, n - 1})
      if (est.log_u(static_cast<std::int64_t>(i)) != -static_cast<double>(i) / static_cast<double>(n)) {
        std::fprintf(stderr, "wrong value at %zu\n", i);
        return 1;
      }
  }
  std::printf("%s: %zu examples, state %.0f MiB; resident before %.0f MiB, peak %.0f MiB: %.0f MiB extra (%.2fx the state), %.2f s\n",
              argv[1], n, state, rss, peak, peak - rss, (peak - rss) / state, s);
}
