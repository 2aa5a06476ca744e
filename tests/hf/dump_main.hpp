#pragma once
// What hf_parity_dump (parity_dump.cpp) and hf_generate_dump (generate_dump.cpp) share: their
// command line, `--arch A --dir DIR`, and error handling, and the random-weight decoder they save.
#include <dftune/hf/pretrained.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <random>
#include <string>

namespace hf_dump {

// body(arch, dir) for `name --arch A --dir DIR`: 2 with the usage (archs: what A may be) where
// either is missing, 1 with the message of what body throws, else 0.
template <class Body>
int main_of(const char* name, const char* archs, int argc, char** argv, Body&& body) {
  std::string arch, dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--arch")) arch = argv[i + 1];
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
  }
  if (arch.empty() || dir.empty()) {
    std::fprintf(stderr, "usage: %s --arch %s --dir DIR\n", name, archs);
    return 2;
  }
  try {
    body(arch, std::filesystem::path(dir));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
  return 0;
}

// Decoder<double>(c, seed) with every parameter moved by N(0, 0.15) draws from rng (gains off 1,
// biases off 0, at a scale where the layers do something: attention not uniform, activations off
// their linear part), saved to root/model (save_pretrained).
inline dftune::Decoder<double> noisy_model(const dftune::decoder::Config& c, std::uint64_t seed, std::mt19937_64& rng,
                                           const std::filesystem::path& root) {
  dftune::Decoder<double> m(c, seed);
  std::normal_distribution<double> noise(0, 0.15);
  for (double& p : m.parameters()) p += noise(rng);
  dftune::hf::save_pretrained(root / "model", m);
  return m;
}

}  // namespace hf_dump
