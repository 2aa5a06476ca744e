// Step time of TinyLm<float>, standalone (no Google Benchmark), so that two versions of the
// headers can be compared A/B:
//   git archive <before> include | (mkdir -p /tmp/before && tar -x -C /tmp/before)
//   g++ -std=c++20 -O3 -DNDEBUG -fopenmp -I/tmp/before/include -I/usr/include/eigen3 bench/tiny_lm_step.cpp -o /tmp/step_A
//   g++ -std=c++20 -O3 -DNDEBUG -fopenmp -Iinclude -I/usr/include/eigen3 bench/tiny_lm_step.cpp -o /tmp/step_B
//   for i in $(seq 10); do /tmp/step_A demo 30; /tmp/step_B demo 30; done      # interleaved; compare medians
// (add -DDFTUNE_LINEAR_GEMM_DNNL ... -ldnnl, or the other libraries' flags, for another GEMM).
//
//   tiny_lm_step demo [steps] [B]   the demo's shapes (V 12, 12 tokens, d 32, 4 heads, 2 layers, d_ff 128):
//                                   one DFT step = sequence_logp + accumulate_gradients on B positives
//                                   and 2B negatives; prints ms per step and the sum of the gradients
//                                   (equal across thread counts since the fixed chunk partition)
//   tiny_lm_step gpt2 [rounds]      GPT-2-like (6 layers, d 384, 6 heads, d_ff 1536, V 50257), one batch
//                                   of 4 sequences × 64 tokens (prompt 32, completion 32), timed side by
//                                   side in rounds: a plain forward + backward (accumulate_gradients),
//                                   a scored step (sequence_logp, then accumulate_gradients) and, where
//                                   the headers have it, a scored step that keeps the activations
//                                   (score_for_backward); medians in ms and the gradients' checksum.
//                                   Times are the process's CPU time (on one thread, the time the
//                                   step ran), so that a machine shared with other jobs counts less.
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

using namespace dftune;
using Clock = std::chrono::steady_clock;

namespace {

// Whether these headers let a model keep its scoring pass for the backward (dependent, so that the
// same source compiles against headers without it).
template <class M>
constexpr bool keeps = requires(M& m, const SequenceBatch& b, std::span<float> s) {
  m.set_activation_memory(std::size_t{1});
  score_for_backward(m, b, s);
};

Sequences random_sequences(std::size_t S, std::size_t prompt, std::size_t completion, std::size_t vocab, std::mt19937& rng) {
  Sequences s;
  for (std::size_t i = 0; i < S; ++i) {
    std::vector<token_t> p(prompt), c(completion);
    for (auto& t : p) t = static_cast<token_t>(rng() % vocab);
    for (auto& t : c) t = static_cast<token_t>(rng() % vocab);
    s.push(p, c);
  }
  return s;
}

template <class M>
double checksum(M& m) {
  double g = 0;
  for (float x : m.gradients()) g += x;
  return g;
}

int demo(int steps, std::size_t B) {
  TinyLm<float> m({.vocab = 12, .max_len = 12, .d_model = 32, .n_heads = 4, .n_layers = 2, .d_ff = 128}, 1);
  std::mt19937 rng(3);
  const Sequences pos = random_sequences(B, 8, 4, 12, rng), neg = random_sequences(2 * B, 8, 4, 12, rng);
  std::vector<float> sp(pos.size()), sn(neg.size()), dp(pos.size(), 0.5f), dn(neg.size(), -0.25f);
  auto step = [&] {
    m.sequence_logp(pos.view(), sp);
    m.sequence_logp(neg.view(), sn);
    m.zero_gradients();
    m.accumulate_gradients(pos.view(), dp);
    m.accumulate_gradients(neg.view(), dn);
  };
  step();
  const auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / steps;
  std::printf("%.4f ms/step  (grad sum %.9g)\n", ms, checksum(m));
  return 0;
}

template <class M>  // TinyLm<float>; a template so that the branches on keeps<M> are discarded
int gpt2(int rounds) {
  const tiny_lm::Config cfg{.vocab = 50257, .max_len = 64, .d_model = 384, .n_heads = 6, .n_layers = 6, .d_ff = 1536};
  M m(cfg, 1);
  std::mt19937 rng(3);
  const Sequences batch = random_sequences(4, 32, 32, cfg.vocab, rng);
  std::vector<float> s(batch.size()), d{0.5f, -0.25f, 1.0f, -1.0f};
  if constexpr (keeps<M>) m.set_activation_memory(std::size_t{1} << 30);
  enum { plain, scored, scored_keep, kinds };
  const char* names[kinds] = {"forward + backward (accumulate_gradients)", "scored step (sequence_logp + accumulate_gradients)",
                              "scored step, activations kept (score_for_backward + accumulate_gradients)"};
  const int n_kinds = keeps<M> ? 3 : 2;
  std::vector<double> ms[kinds];
  double sums[kinds] = {};
  auto cpu_ms = [] {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return 1e3 * static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_nsec);
  };
  auto run = [&](int kind) {
    const double t0 = cpu_ms();
    if (kind == scored) m.sequence_logp(batch.view(), s);
    if (kind == scored_keep) {
      if constexpr (keeps<M>) score_for_backward(m, batch.view(), std::span<float>(s));
    }
    m.zero_gradients();
    m.accumulate_gradients(batch.view(), d);
    const double t = cpu_ms() - t0;
    sums[kind] = checksum(m);
    return t;
  };
  for (int k = 0; k < n_kinds; ++k) run(k);  // warm-up: buffers, kernels
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < n_kinds; ++k) ms[k].push_back(run(k));
  std::printf("# TinyLm<float> 6 layers, d 384, 6 heads, d_ff 1536, V 50257; 4 × 64 tokens (prompt 32); GEMM %s; %zu threads; "
              "median CPU time of %d rounds\n",
              logprob::linear::DefaultGemm::name, max_threads(), rounds);
  if constexpr (keeps<M>) {
    score_for_backward(m, batch.view(), std::span<float>(s));
    std::printf("# kept activations of the batch: %.1f MiB\n", static_cast<double>(m.kept_bytes()) / (1 << 20));
  }
  for (int k = 0; k < n_kinds; ++k) {
    std::sort(ms[k].begin(), ms[k].end());
    const double med = ms[k][ms[k].size() / 2];
    std::printf("%-80s %9.1f ms  (%.2f× forward + backward; grad sum %.9g)\n", names[k], med,
                med / ms[plain][ms[plain].size() / 2], sums[k]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string preset = argc > 1 ? argv[1] : "demo";
  if (preset == "gpt2") return gpt2<TinyLm<float>>(argc > 2 ? std::atoi(argv[2]) : 3);
  if (preset == "demo") return demo(argc > 2 ? std::atoi(argv[2]) : 50, argc > 3 ? static_cast<std::size_t>(std::atoi(argv[3])) : 32);
  std::fprintf(stderr, "tiny_lm_step: preset '%s' is not known; expected demo or gpt2\n", preset.c_str());
  return 2;
}
