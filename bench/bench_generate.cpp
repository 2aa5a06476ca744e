// Tokens per second of cached generation (Decoder::generate and TinyLm::generate: model/generation/,
// docs/generation.md) for one shape, batch, length and thread count per process; bench/torch_generate.py is the PyTorch
// eager sampler with its own key/value cache on the same architecture, and
// scripts/bench_generate.sh runs both side by side and prints the table (bench/RESULTS_generate.md).
//
//   bench_generate [--arch gpt2|tiny] [--layers L --d D --heads H --ff F --V V --max-len M] --batch B,B,.. --new N,N,..
//                  [--prompt P] [--threads T] [--temperature t] [--top-k k] [--top-p p] [--reps R] [--max-packed-bytes B]
// Every batch × new pair runs in this one process (the model is built once); one line each.
// Defaults: GPT-2 124M's shape (12 layers, d 768, 12 heads, d_ff 3072, V 50257, 1024 positions) on
// the decoder family's GPT-2 (--arch gpt2: tied head without bias, as the checkpoint; --arch tiny:
// the tiny LM, whose head is untied and has a bias, so it holds V·d more parameters), prompts of 16
// random tokens, the finetune pipeline's sampling (temperature 0.7, top-k 50, top-p 1), no eos.
// The time of a generate call (prefill included) is the minimum over R calls after one warm-up call
// of 2 new tokens; tokens/s = B·N / that time. Prints one JSON object, with the environment.
#include "bench_env.hpp"

#include <dftune/model/decoder/decoder.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace dftune;

// CPU seconds of the whole process (every thread), user + system: on a shared machine, the work
// done, where wall-clock time also counts the time slices other jobs took.
static double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

static std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

int main(int argc, char** argv) try {
  tiny_lm::Config c{.vocab = 50257, .max_len = 1024, .d_model = 768, .n_heads = 12, .n_layers = 12, .d_ff = 3072};
  std::vector<std::size_t> batches{1}, lengths{64};
  std::size_t P = 16;
  auto list = [](const std::string& v) {
    std::vector<std::size_t> r;
    for (std::size_t i = 0; i < v.size();) {
      const std::size_t j = std::min(v.find(',', i), v.size());
      r.push_back(std::stoul(v.substr(i, j - i)));
      i = j + 1;
    }
    return r;
  };
  int threads = 1, reps = 1;
  generation::Limits limits;  // --max-packed-bytes 0: no packed weights (generation/packed_weights.hpp)
  std::string arch = "gpt2";
  SamplingOptions o{.temperature = 0.7, .top_k = 50, .top_p = 1.0, .seed = 1};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--arch") arch = v;
    else if (k == "--layers") c.n_layers = std::stoul(v);
    else if (k == "--d") c.d_model = std::stoul(v);
    else if (k == "--heads") c.n_heads = std::stoul(v);
    else if (k == "--ff") c.d_ff = std::stoul(v);
    else if (k == "--V") c.vocab = std::stoul(v);
    else if (k == "--max-len") c.max_len = std::stoul(v);
    else if (k == "--batch") batches = list(v);
    else if (k == "--new") lengths = list(v);
    else if (k == "--prompt") P = std::stoul(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--temperature") o.temperature = std::stod(v);
    else if (k == "--top-k") o.top_k = std::stoul(v);
    else if (k == "--top-p") o.top_p = std::stod(v);
    else if (k == "--reps") reps = std::stoi(v);
    else if (k == "--max-packed-bytes") limits.max_packed_bytes = std::stoul(v);
    else throw std::invalid_argument("unknown flag " + k);
  }
  omp_set_num_threads(threads);
  if (arch != "gpt2" && arch != "tiny") throw std::invalid_argument("--arch: " + arch + ", expected gpt2 or tiny");
  auto run = [&](const auto& m) {
    auto now = [] { return std::chrono::steady_clock::now(); };
    for (const std::size_t B : batches)
      for (const std::size_t N : lengths) {
        std::mt19937_64 rng(7);
        std::vector<token_t> tokens(B * P);
        for (auto& t : tokens) t = static_cast<token_t>(rng() % c.vocab);
        std::vector<std::int64_t> offsets(B + 1);
        for (std::size_t b = 0; b <= B; ++b) offsets[b] = static_cast<std::int64_t>(b * P);
        const Prompts prompts{.tokens = tokens, .offsets = offsets};
        m.generate(prompts, 2, o, std::nullopt, limits);  // warm-up: pages of the weights, thread pool
        double best = 1e300, cpu = 1e300;
        std::size_t generated = 0;
        for (int r = 0; r < reps; ++r) {
          const auto t0 = now();
          const double c0 = cpu_seconds();
          const Sequences s = m.generate(prompts, N, o, std::nullopt, limits);
          cpu = std::min(cpu, cpu_seconds() - c0);
          best = std::min(best, std::chrono::duration<double>(now() - t0).count());
          generated = s.tokens.size() - tokens.size();
        }
        std::printf("{\"impl\": \"dftune\", \"arch\": \"%s\", \"layers\": %zu, \"d\": %zu, \"V\": %zu, \"batch\": %zu, \"new\": %zu, \"prompt\": %zu, "
                    "\"threads\": %d, \"max_packed_bytes\": %zu, \"temperature\": %g, \"top_k\": %zu, \"top_p\": %g, \"seconds\": %.4f, \"tokens_per_s\": %.2f, "
                    "\"generated\": %zu, \"cpu_seconds\": %.4f, \"tokens_per_cpu_s\": %.2f, \"load\": \"%s\", \"env\": %s}\n",
                    arch.c_str(), c.n_layers, c.d_model, c.vocab, B, N, P, threads, limits.max_packed_bytes, o.temperature, o.top_k, o.top_p, best,
                    static_cast<double>(B * N) / best, generated, cpu, static_cast<double>(B * N) / cpu, loadavg().c_str(), bench_env::env_json(logprob::linear::DefaultGemm::name).c_str());
        std::fflush(stdout);
      }
  };
  if (arch == "tiny") {
    run(TinyLm<float>(c, 1));
  } else {
    const decoder::Config g{.family = decoder::Family::gpt2, .vocab = c.vocab, .d_model = c.d_model, .n_layers = c.n_layers,
                            .n_heads = c.n_heads, .n_kv_heads = c.n_heads, .head_dim = c.d_model / c.n_heads, .d_ff = c.d_ff,
                            .max_len = c.max_len, .norm_eps = 1e-5, .rope_theta = 10000, .rope_scaling = {}, .tied_head = true,
                            .qkv_bias = true, .o_bias = true, .mlp_bias = true};
    run(Decoder<float>(g, 1));
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_generate: %s\n", e.what());
  return 1;
}
