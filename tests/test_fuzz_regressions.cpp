// Replays, in the ordinary test suite (and so under the sanitizer job too), every input saved
// under tests/fuzz/regressions/<target>/ (crashes the fuzzers found, kept after the fix) and
// tests/fuzz/corpus/<target>/ (valid seeds) through the fuzz targets' own property checks, which
// abort on a violation. The fuzz sources are compiled here with g++, without libFuzzer.
#define LLVMFuzzerTestOneInput dftune_fuzz_checkpoint_one
#define LLVMFuzzerInitialize dftune_fuzz_checkpoint_init
#include "fuzz/fuzz_checkpoint.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize
#define LLVMFuzzerTestOneInput dftune_fuzz_objectives_one
#include "fuzz/fuzz_objectives.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput dftune_fuzz_weights_one
#define LLVMFuzzerInitialize dftune_fuzz_weights_init
#include "fuzz/fuzz_weights.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
// The tests' source folder from CMake: __FILE__ is relative under Ninja.
const fs::path kFuzzDir = fs::path(DFTUNE_TESTS_DIR) / "fuzz";

template <class F>
std::size_t replay(const std::string& target, F&& one) {
  std::size_t n = 0;
  for (const char* kind : {"regressions", "corpus"}) {
    const fs::path dir = kFuzzDir / kind / target;
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (!e.is_regular_file() || e.path().filename().string().starts_with(".")) continue;
      std::ifstream in(e.path(), std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      CAPTURE(e.path().string());
      one(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz inputs of the checkpoint loader replay cleanly") {
  const std::size_t n = replay("fuzz_checkpoint", [](const std::uint8_t* d, std::size_t s) { dftune_fuzz_checkpoint_one(d, s); });
  MESSAGE(n << " inputs");
  CHECK(n > 0);
}

TEST_CASE("fuzz inputs of the objectives and reductions replay cleanly") {
  const std::size_t n = replay("fuzz_objectives", [](const std::uint8_t* d, std::size_t s) { dftune_fuzz_objectives_one(d, s); });
  MESSAGE(n << " inputs");
  CHECK(n > 0);
}

TEST_CASE("fuzz inputs of the weights loader replay cleanly") {
  const std::size_t n = replay("fuzz_weights", [](const std::uint8_t* d, std::size_t s) { dftune_fuzz_weights_one(d, s); });
  MESSAGE(n << " inputs");
  CHECK(n > 0);
}
