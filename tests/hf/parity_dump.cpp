// Writes, for tests/hf/parity.py: a random-weight checkpoint of a tiny GPT-2, Llama (GQA, untied
// head, Llama-3 RoPE scaling, head_dim ≠ d/H) or Qwen2 (q/k/v biases, tied head) in DIR/model/
// (save_pretrained), then loads it back (load_pretrained) in float and in double and writes what
// each computes on a fixed batch to DIR/out_float.safetensors and DIR/out_double.safetensors:
// tokens, offsets, prompt_len, d_scores, logits [n, V], seq_logp [S] and, for every parameter
// tensor under its checkpoint name prefixed "grad.", ∂(Σ_s d_scores[s] seq_logp[s])/∂θ. The same
// weights saved as BF16 in DIR/model_bf16/ are loaded into a bf16-stored Decoder<float, bf16>, whose
// logits and seq_logp (no gradients: it is frozen) go to DIR/out_bf16.safetensors.
//   hf_parity_dump --arch gpt2|llama|qwen2 --dir DIR
#include "dump_main.hpp"

#include <dftune/hf/pretrained.hpp>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

dftune::decoder::Config config_for(const std::string& arch) {
  namespace decoder = dftune::decoder;
  if (arch == "gpt2") return decoder::tiny_gpt2(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*max_len=*/24);
  auto c = decoder::tiny_llama(/*vocab=*/61, /*d=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2, /*max_len=*/64);
  c.d_ff = 48;
  c.norm_eps = 1e-6;
  if (arch == "llama") {
    c.head_dim = 12;  // q width 48 ≠ d_model 32
    c.rope_theta = 500000;
    c.rope_scaling = {.factor = 32, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 16};
    c.tied_head = false;
  } else if (arch == "qwen2") {
    c.n_kv_heads = 1;
    c.rope_theta = 1000000;
    c.qkv_bias = true;
    c.tied_head = true;
  } else {
    throw dftune::argument_error("--arch: got " + arch + ", expected gpt2, llama or qwen2");
  }
  return c;
}

template <class T, class W = T>
void dump(const std::filesystem::path& model_dir, const std::filesystem::path& out, const dftune::Sequences& b,
          const std::vector<float>& d_scores) {
  auto m = dftune::hf::load_pretrained<T, W>(model_dir);
  const std::size_t n = b.tokens.size(), V = m.vocab_size(), S = b.size();
  std::vector<T> logits(n * V), seq(S), d(d_scores.begin(), d_scores.end());
  m.logits(b.tokens, b.offsets, logits);
  m.sequence_logp(b.view(), seq);
  std::vector<T> tok(b.tokens.begin(), b.tokens.end()), off(b.offsets.begin(), b.offsets.end()), pl(b.prompt_len.begin(), b.prompt_len.end());
  std::vector<dftune::hf::TensorOut<T>> t = {{"tokens", {n}, tok}, {"offsets", {S + 1}, off}, {"prompt_len", {S}, pl},
                                             {"d_scores", {S}, d},  {"logits", {n, V}, logits}, {"seq_logp", {S}, seq}};
  if constexpr (dftune::Decoder<T, W>::trainable) {
    m.zero_gradients();
    m.accumulate_gradients(b.view(), d);
    const auto g = std::span<const T>(m.gradients());
    for (const auto& x : m.layout().tensors) t.push_back({"grad." + x.name, x.shape, g.subspan(x.offset, x.size()), x.transposed});
  }
  dftune::hf::write_safetensors<T>(out, t, sizeof(T) == 4 ? dftune::hf::Dtype::f32 : dftune::hf::Dtype::f64);
}

}  // namespace

int main(int argc, char** argv) {
  return hf_dump::main_of("hf_parity_dump", "gpt2|llama|qwen2", argc, argv, [](const std::string& arch, const std::filesystem::path& root) {
    std::mt19937_64 rng(23);
    const dftune::Decoder<double> m = hf_dump::noisy_model(config_for(arch), 17, rng, root);
    dftune::Sequences b;
    std::uniform_int_distribution<int> tok(0, static_cast<int>(m.vocab_size()) - 1);
    auto draw = [&](std::size_t len) {
      std::vector<dftune::token_t> v(len);
      for (auto& x : v) x = tok(rng);
      return v;
    };
    b.push(draw(3), draw(5));
    b.push(draw(1), draw(1));
    b.push(draw(7), draw(11));  // 18 rows: past the Llama-3 scaling's original_max_position of 16
    const std::vector<float> d_scores = {0.7f, -1.3f, 0.45f};
    dump<float>(root / "model", root / "out_float.safetensors", b, d_scores);
    dump<double>(root / "model", root / "out_double.safetensors", b, d_scores);
    dftune::hf::save_pretrained(root / "model_bf16", m, dftune::hf::Dtype::bf16);
    dump<float, dftune::decoder::bf16>(root / "model_bf16", root / "out_bf16.safetensors", b, d_scores);
  });
}
