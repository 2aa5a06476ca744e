// Step time of TinyLm<float> on the demo's shapes (V 12, 12 tokens, d 32, 4 heads, 2 layers,
// d_ff 128): one DFT step = sequence_logp + accumulate_gradients on B positives and 2B negatives.
// Standalone (no Google Benchmark), so two versions of the headers can be compared A/B:
//   git archive <before> include | (mkdir -p /tmp/before && tar -x -C /tmp/before)
//   g++ -std=c++20 -O3 -DNDEBUG -fopenmp -I/tmp/before/include -I/usr/include/eigen3 bench/tiny_lm_step.cpp -o /tmp/step_A
//   g++ -std=c++20 -O3 -DNDEBUG -fopenmp -Iinclude -I/usr/include/eigen3 bench/tiny_lm_step.cpp -o /tmp/step_B
//   for i in $(seq 10); do /tmp/step_A 30; /tmp/step_B 30; done      # interleaved; compare medians
// Arguments: steps (default 50), B (default 32). Prints ms per step and the sum of the gradients
// (equal across thread counts since the fixed chunk partition).
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace dftune;

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 50;
  const std::size_t B = argc > 2 ? static_cast<std::size_t>(std::atoi(argv[2])) : 32;
  TinyLm<float> m({.vocab = 12, .max_len = 12, .d_model = 32, .n_heads = 4, .n_layers = 2, .d_ff = 128}, 1);
  std::mt19937 rng(3);
  auto make = [&](std::size_t S) {
    Sequences s;
    for (std::size_t i = 0; i < S; ++i) {
      std::vector<token_t> p(8), c(4);
      for (auto& t : p) t = static_cast<token_t>(rng() % 12);
      for (auto& t : c) t = static_cast<token_t>(rng() % 12);
      s.push(p, c);
    }
    return s;
  };
  const Sequences pos = make(B), neg = make(2 * B);
  std::vector<float> sp(pos.size()), sn(neg.size()), dp(pos.size(), 0.5f), dn(neg.size(), -0.25f);
  auto step = [&] {
    m.sequence_logp(pos.view(), sp);
    m.sequence_logp(neg.view(), sn);
    m.zero_gradients();
    m.accumulate_gradients(pos.view(), dp);
    m.accumulate_gradients(neg.view(), dn);
  };
  step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
  double g = 0;
  for (float x : m.gradients()) g += x;
  std::printf("%.4f ms/step  (grad sum %.9g)\n", ms, g);
}
