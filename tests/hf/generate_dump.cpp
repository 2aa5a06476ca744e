// Writes, for tests/hf/generate_parity.py: a random-weight checkpoint of a tiny GPT-2 or Llama-3
// (GQA, q/k/v biases, untied head, rope scaling whose original_max_position the sequences pass) in
// DIR/model (save_pretrained), and the completions Decoder<double>::generate (the key/value-cached
// path) draws for fixed prompts under several sampling settings, in DIR/generated.json:
//   {"max_new": N, "prompts": [[...], ...], "runs": [{"temperature", "top_k", "top_p", "seed", "eos",
//    "completions": [[...], ...]}, ...]}     (eos -1: none)
//   hf_generate_dump --arch gpt2|llama --dir DIR
#include "dump_main.hpp"

#include <dftune/hf/pretrained.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

dftune::decoder::Config config_for(const std::string& arch) {
  namespace decoder = dftune::decoder;
  if (arch == "gpt2") return decoder::tiny_gpt2(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*max_len=*/32);
  if (arch != "llama") throw dftune::argument_error("--arch: got " + arch + ", expected gpt2 or llama");
  auto c = decoder::tiny_llama(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2, /*max_len=*/32);
  c.head_dim = 12;
  c.d_ff = 48;
  c.norm_eps = 1e-6;
  c.rope_theta = 500000;
  c.rope_scaling = {.factor = 32, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 8};
  c.qkv_bias = true;
  c.tied_head = false;
  return c;
}

std::string list(std::span<const dftune::token_t> v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  return hf_dump::main_of("hf_generate_dump", "gpt2|llama", argc, argv, [](const std::string& arch, const std::filesystem::path& root) {
    std::mt19937_64 rng(29);
    const dftune::Decoder<double> m = hf_dump::noisy_model(config_for(arch), 19, rng, root);
    std::vector<dftune::token_t> tokens;
    std::vector<std::int64_t> offsets{0};
    std::uniform_int_distribution<int> tok(0, static_cast<int>(m.vocab_size()) - 1);
    for (std::size_t len : {1, 4, 9, 2, 6}) {
      for (std::size_t k = 0; k < len; ++k) tokens.push_back(tok(rng));
      offsets.push_back(static_cast<std::int64_t>(tokens.size()));
    }
    const dftune::Prompts prompts{.tokens = tokens, .offsets = offsets};
    const std::size_t max_new = 16;  // 9 + 16 = 25 positions: past original_max_position 8
    struct Run {
      dftune::SamplingOptions o;
      int eos;
    };
    const Run runs[] = {{{.temperature = 0.0}, -1},
                        {{.temperature = 0.7, .top_k = 50, .seed = 1}, -1},
                        {{.temperature = 1.0, .seed = 2}, 7},
                        {{.temperature = 1.3, .top_k = 5, .seed = 3}, -1},
                        {{.temperature = 0.9, .top_p = 0.8, .seed = 4}, 3},
                        {{.temperature = 2.0, .top_k = 7, .top_p = 0.6, .seed = 5}, -1}};
    std::ofstream f(root / "generated.json");
    f << "{\"max_new\": " << max_new << ", \"prompts\": [";
    for (std::size_t p = 0; p < prompts.size(); ++p) f << (p ? ", " : "") << list(prompts.prompt(p));
    f << "], \"runs\": [";
    for (std::size_t r = 0; r < std::size(runs); ++r) {
      const auto& [o, eos] = runs[r];
      const auto got = m.generate(prompts, max_new, o, eos < 0 ? std::nullopt : std::optional<dftune::token_t>(eos));
      char head[256];
      std::snprintf(head, sizeof head, "{\"temperature\": %.17g, \"top_k\": %zu, \"top_p\": %.17g, \"seed\": %llu, \"eos\": %d, \"completions\": [",
                    o.temperature, o.top_k, o.top_p, static_cast<unsigned long long>(o.seed), eos);
      f << (r ? ", " : "") << head;
      for (std::size_t p = 0; p < got.size(); ++p) {
        const auto s = got.view().sequence(p);
        f << (p ? ", " : "") << list(s.subspan(static_cast<std::size_t>(got.prompt_len[p])));
      }
      f << "]}";
    }
    f << "]}\n";
    if (!f) throw dftune::io_error("generated.json: write failed");
  });
}
