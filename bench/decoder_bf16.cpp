// Scoring (sequence_logp) with the weights held in float or in bf16 (Decoder<float> vs
// Decoder<float, bf16>) at GPT-2 124M's shape (12 layers, d 768, 12 heads, V 50257, 1024 positions),
// S sequences of L tokens (prompt 1 token, L − 1 scored). Prints one JSON line.
//   decoder_bf16 float|bf16 [S=4] [L=64] [reps=3]   one model: its peak RSS after building it and
//                                                   after scoring (run each in its own process)
//   decoder_bf16 both [S=4] [L=64] [reps=3]         both models, timed in alternation in one process
//                                                   (a loaded machine slows both alike): the ratio
// Threads from OMP_NUM_THREADS.
#include <dftune/model/decoder/decoder.hpp>

#include "decoder_bench.hpp"

#include "bench_env.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>

using namespace dftune;
using bench::make_sequences;
using bench::peak_rss_mb;
using bench::seconds_since;

namespace {

template <class M>
double score_once(M& m, const Sequences& b, std::vector<float>& scores) {
  const auto t0 = std::chrono::steady_clock::now();
  m.sequence_logp(b.view(), scores);
  return seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "both";
  auto arg = [&](int i, std::size_t d) { return argc > i ? static_cast<std::size_t>(std::atol(argv[i])) : d; };
  const std::size_t S = arg(2, 4), L = arg(3, 64), reps = arg(4, 3);
  const decoder::Config c = decoder::tiny_gpt2(50257, 768, 12, 12, 1024);
  const Sequences batch = make_sequences(S, L, c.vocab);
  std::vector<float> scores(S);
  const std::string env = bench_env::env_json(logprob::linear::DefaultGemm::name);
  if (mode == "float" || mode == "bf16") {
    auto run = [&](auto& model) {
      const double rss_model = peak_rss_mb();
      score_once(model, batch, scores);  // warm-up: buffers grow once
      double best = 1e300;
      for (std::size_t r = 0; r < reps; ++r) best = std::min(best, score_once(model, batch, scores));
      std::printf("{\"storage\": \"%s\", \"threads\": %d, \"S\": %zu, \"L\": %zu, \"score_s\": %.4f, \"peak_rss_mb_model\": %.0f, "
                  "\"peak_rss_mb_scored\": %.0f, \"parameter_mb\": %.1f, \"score0\": %.6f, \"env\": %s}\n",
                  mode.c_str(), omp_get_max_threads(), S, L, best, rss_model, peak_rss_mb(),
                  static_cast<double>(model.parameters().size_bytes()) / (1024.0 * 1024.0), static_cast<double>(scores[0]), env.c_str());
    };
    if (mode == "float") {
      Decoder<float> m(c, 1);
      run(m);
    } else {
      Decoder<float, decoder::bf16> m(c, 1);
      run(m);
    }
    return 0;
  }
  if (mode != "both") {
    std::fprintf(stderr, "usage: decoder_bf16 float|bf16|both [S] [L] [reps]\n");
    return 2;
  }
  Decoder<float> f(c, 1);
  Decoder<float, decoder::bf16> b(c, 1);
  std::vector<float> sb(S);
  score_once(f, batch, scores);
  score_once(b, batch, sb);
  double best_f = 1e300, best_b = 1e300;
  for (std::size_t r = 0; r < reps; ++r) {
    best_f = std::min(best_f, score_once(f, batch, scores));
    best_b = std::min(best_b, score_once(b, batch, sb));
  }
  std::printf("{\"mode\": \"both\", \"threads\": %d, \"S\": %zu, \"L\": %zu, \"float_score_s\": %.4f, \"bf16_score_s\": %.4f, "
              "\"bf16_over_float\": %.3f, \"score0_float\": %.6f, \"score0_bf16\": %.6f, \"env\": %s}\n",
              omp_get_max_threads(), S, L, best_f, best_b, best_b / best_f, static_cast<double>(scores[0]), static_cast<double>(sb[0]),
              env.c_str());
}
