#pragma once
// The shape of a pre-norm decoder-only transformer and what varies between the families dftune
// runs (docs/models.md):
//                 GPT-2                         Llama / Qwen2 / SmolLM2
//   norm          LayerNorm (gain, bias)        RMSNorm (gain)
//   positions     learned table added to x⁰     RoPE on q and k (θ, Llama-3 scaling)
//   MLP           W₂ gelu_tanh(W₁ h + b₁) + b₂  W_d (silu(W_g h) ⊙ W_u h)
//   attention     H heads, q/k/v/o biases       grouped-query (H_kv | H), q/k/v biases for Qwen2
//   head          tied to the token embedding   tied or its own lm_head
// and the flat parameter vector's layout, every tensor named as the Hugging Face checkpoint names
// it, with the shape it has in the file. All sizes are overflow-checked: a config from a hostile
// file is a dftune::error before anything is allocated.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace decoder {

// The architecture family: which norm, positions and MLP the blocks use (the table above).
enum class Family {
  gpt2,   // LayerNorm, learned positions, GELU (tanh) MLP
  llama,  // RMSNorm, RoPE, SwiGLU MLP (Llama, Qwen2, SmolLM2)
};
// The normalisation of each block and of the final hidden rows.
enum class Norm {
  layer,  // LayerNorm: centred, gain and bias
  rms,    // RMSNorm: not centred, gain only
};
// How a token's position enters the model.
enum class Positions {
  learned,  // a learned table P added to the token embedding
  rope,     // rotary embedding of q and k
};
// The MLP's activation.
enum class Mlp {
  gelu,    // W₂ gelu_tanh(W₁ h + b₁) + b₂
  swiglu,  // W_d (silu(W_g h) ⊙ W_u h)
};

// Llama-3's RoPE frequency scaling (rope_scaling.rope_type = "llama3"); factor 0 means none.
struct RopeScaling {
  double factor = 0;                          // wavelengths beyond original/low_freq_factor are stretched by it; 0: no scaling
  double low_freq_factor = 1;                 // original/low_freq_factor: the wavelength above which all is scaled
  double high_freq_factor = 4;                // original/high_freq_factor: the wavelength below which nothing is
  std::size_t original_max_position = 8192;   // original_max_position_embeddings: the context trained without scaling
  // Field-wise equality.
  friend bool operator==(const RopeScaling&, const RopeScaling&) = default;
};

// The shape of one decoder (config.json's, hf/config.hpp) and its family's options.
struct Config {
  Family family = Family::llama;   // which norm, positions and MLP
  std::size_t vocab = 0;           // V, the vocabulary size
  std::size_t d_model = 0;         // d, the residual width
  std::size_t n_layers = 0;        // transformer blocks
  std::size_t n_heads = 0;         // query heads H
  std::size_t n_kv_heads = 0;      // key/value heads H_kv, a divisor of H (grouped-query attention)
  std::size_t head_dim = 0;        // width of one head (Llama may have H·head_dim ≠ d)
  std::size_t d_ff = 0;            // the MLP's hidden width F
  std::size_t max_len = 0;         // longest sequence (GPT-2: the position table)
  double norm_eps = 1e-5;          // ε of the norms
  double rope_theta = 10000;       // θ of RoPE's frequencies θ^(−2i/head_dim)
  RopeScaling rope_scaling;        // Llama-3's frequency scaling (factor 0: none)
  bool tied_head = true;           // the head's weight is the token embedding
  bool qkv_bias = false;           // q, k and v have biases (GPT-2, Qwen2)
  bool o_bias = false;             // the attention output has a bias (GPT-2)
  bool mlp_bias = false;           // the MLP's matrices have biases (GPT-2)

  // LayerNorm for GPT-2, RMSNorm for the Llama family.
  Norm norm() const { return family == Family::gpt2 ? Norm::layer : Norm::rms; }
  // Learned positions for GPT-2, RoPE for the Llama family.
  Positions positions() const { return family == Family::gpt2 ? Positions::learned : Positions::rope; }
  // GELU for GPT-2, SwiGLU for the Llama family.
  Mlp mlp() const { return family == Family::gpt2 ? Mlp::gelu : Mlp::swiglu; }
  // Width of the queries, H · head_dim.
  std::size_t q_width() const { return n_heads * head_dim; }
  // Width of the keys (and of the values), H_kv · head_dim.
  std::size_t kv_width() const { return n_kv_heads * head_dim; }
  // Width of the fused [q | k | v] projection.
  std::size_t qkv_width() const { return q_width() + 2 * kv_width(); }
  // Width of the MLP's first projection: 2F (gate | up) for SwiGLU, F (fc) for GELU.
  std::size_t up_width() const { return mlp() == Mlp::swiglu ? 2 * d_ff : d_ff; }
  // Field-wise equality.
  friend bool operator==(const Config&, const Config&) = default;
};

// The most elements one buffer may hold (bytes of double and Eigen's signed index must not wrap).
inline constexpr std::size_t kMaxElements = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(double);

// The most layers a config may have: a layer count is also a count of named tensors.
inline constexpr std::size_t kMaxLayers = 4096;

// Tag of the Decoder constructor that leaves initialisation to the caller.
struct Uninitialized {};

// A tiny GPT-2 (tests, examples): H heads of d/H, F = 4d, every bias, tied head.
inline Config tiny_gpt2(std::size_t vocab = 32, std::size_t d = 16, std::size_t layers = 2, std::size_t heads = 2,
                        std::size_t max_len = 16) {
  return {.family = Family::gpt2, .vocab = vocab, .d_model = d, .n_layers = layers, .n_heads = heads, .n_kv_heads = heads,
          .head_dim = d / heads, .d_ff = 4 * d, .max_len = max_len, .norm_eps = 1e-5, .rope_theta = 10000, .rope_scaling = {}, .tied_head = true,
          .qkv_bias = true, .o_bias = true, .mlp_bias = true};
}
// A tiny Llama (tests, examples): H heads of d/H, H_kv key/value heads, F = 3d, no biases, own head.
inline Config tiny_llama(std::size_t vocab = 32, std::size_t d = 16, std::size_t layers = 2, std::size_t heads = 4,
                         std::size_t kv_heads = 2, std::size_t max_len = 16) {
  return {.family = Family::llama, .vocab = vocab, .d_model = d, .n_layers = layers, .n_heads = heads, .n_kv_heads = kv_heads,
          .head_dim = d / heads, .d_ff = 3 * d, .max_len = max_len, .norm_eps = 1e-5, .rope_theta = 10000,
          .rope_scaling = {}, .tied_head = false};
}

// One tensor of the checkpoint: where it sits in the flat vector and its shape in the file.
// Matrices are held as [out, in] (torch.nn.Linear); GPT-2 stores its Conv1D weights as [in, out],
// so those are `transposed` between file and memory.
struct Tensor {
  std::string name;                // the checkpoint's name, e.g. "h.0.attn.c_attn.weight"
  std::size_t offset = 0;          // where its first element sits in the parameters
  std::vector<std::size_t> shape;  // in the file
  bool transposed = false;         // the file holds the transpose of the memory layout (GPT-2's Conv1D)
  // The element count, the product of shape.
  std::size_t size() const {
    std::size_t n = 1;
    for (std::size_t s : shape) n *= s;
    return n;
  }
};

// Offsets of one block. q|k|v is one [qkv_width, d] matrix (and bias): Llama's three tensors are
// stored back to back, which is the same memory. gate|up likewise for SwiGLU ([2F, d]).
struct BlockLayout {
  std::size_t norm1_g = 0;  // the attention's norm: gain [d]
  std::size_t norm1_b = 0;  // and bias [d] (LayerNorm only)
  std::size_t w_qkv = 0;    // [qkv_width, d]
  std::size_t b_qkv = 0;    // [qkv_width] (qkv_bias)
  std::size_t w_o = 0;      // [d, q_width]
  std::size_t b_o = 0;      // [d] (o_bias)
  std::size_t norm2_g = 0;  // the MLP's norm: gain [d]
  std::size_t norm2_b = 0;  // and bias [d] (LayerNorm only)
  std::size_t w_up = 0;     // [up_width, d]
  std::size_t b_up = 0;     // [up_width] (mlp_bias)
  std::size_t w_down = 0;   // [d, F]
  std::size_t b_down = 0;   // [d] (mlp_bias)
};

// The flat parameter vector: every offset, and each checkpoint tensor's place. A block's tensors
// are contiguous, from its norm1_g to the next block's (or normf_g).
struct Layout {
  std::size_t tok_emb = 0;            // the token embedding E [V, d]
  std::size_t pos_emb = 0;            // the position table P [max_len, d] (learned positions)
  std::size_t normf_g = 0;            // the final norm's gain [d]
  std::size_t normf_b = 0;            // its bias [d] (LayerNorm), right after the gain
  std::size_t head = 0;               // W_head [V, d]; == tok_emb when tied
  std::vector<BlockLayout> blocks;    // per block
  std::vector<Tensor> tensors;        // every checkpoint tensor, in order
  std::size_t total = 0;              // the parameter count
};

// Refuses a config (dftune::argument_error naming the field) whose sizes are 0, inconsistent
// (H_kv ∤ H, odd head_dim with RoPE, GPT-2 with H·head_dim ≠ d) or so large that a product wraps.
inline void validate(const Config& c) {
  auto at_least_1 = [](const char* name, std::size_t v) {
    if (v < 1) detail::fail(std::string("config.") + name, v, "at least 1");
  };
  at_least_1("vocab", c.vocab);
  at_least_1("d_model", c.d_model);
  at_least_1("n_layers", c.n_layers);
  at_least_1("n_heads", c.n_heads);
  at_least_1("head_dim", c.head_dim);
  at_least_1("d_ff", c.d_ff);
  // A layer count is also a count of tensors (names and offsets are made per layer); no published
  // decoder has more than a few hundred.
  if (c.n_layers > kMaxLayers) detail::fail("config.n_layers", c.n_layers, "at most " + std::to_string(kMaxLayers));
  constexpr auto max_vocab = static_cast<std::size_t>(std::numeric_limits<token_t>::max()) + 1;
  if (c.vocab > max_vocab) detail::fail("config.vocab", c.vocab, "at most " + std::to_string(max_vocab) + " (token ids are int32)");
  if (c.max_len < 2) detail::fail("config.max_len", c.max_len, "at least 2 (a prompt and one completion token)");
  if (c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads != 0)
    detail::fail("config.n_kv_heads", c.n_kv_heads, "a divisor of n_heads = " + std::to_string(c.n_heads));
  if (c.positions() == Positions::rope && c.head_dim % 2 != 0) detail::fail("config.head_dim", c.head_dim, "an even size (RoPE rotates pairs)");
  if (c.family == Family::gpt2 && (c.n_kv_heads != c.n_heads || c.q_width() != c.d_model))
    detail::fail("config.n_heads", c.n_heads, "n_kv_heads = n_heads and n_heads·head_dim = d_model for GPT-2");
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps)) detail::fail("config.norm_eps", c.norm_eps, "a finite number > 0");
  if (!(c.rope_theta > 1) || !std::isfinite(c.rope_theta)) detail::fail("config.rope_theta", c.rope_theta, "a finite number > 1");
  const auto& r = c.rope_scaling;
  if (r.factor != 0) {
    if (!(r.factor >= 1) || !std::isfinite(r.factor)) detail::fail("config.rope_scaling.factor", r.factor, "a finite number >= 1");
    if (!(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor && std::isfinite(r.high_freq_factor)))
      detail::fail("config.rope_scaling.high_freq_factor", r.high_freq_factor,
                   "a finite number > low_freq_factor = " + std::to_string(r.low_freq_factor) + " > 0");
    if (r.original_max_position < 1) detail::fail("config.rope_scaling.original_max_position_embeddings", r.original_max_position, "at least 1");
  }
  // Every width the model multiplies must fit, with one sequence of max_len rows.
  const std::string_view what = "config (sizes)";
  for (std::size_t w : {c.qkv_width(), c.up_width()}) detail::checked_product(what, w, c.d_model, c.max_len);
  detail::checked_product(what, c.vocab, c.d_model);
  detail::checked_product(what, c.n_layers, c.max_len, c.max_len, c.n_heads);
}

// Every parameter tensor, named and shaped as the Hugging Face checkpoint has it.
inline Layout make_layout(const Config& c) {
  validate(c);
  Layout l;
  const std::string_view what = "config (parameter count)";
  auto add = [&](std::string name, std::vector<std::size_t> shape, bool transposed = false) {
    std::size_t n = 1;
    for (std::size_t s : shape) n = detail::checked_mul(what, n, s);
    l.tensors.push_back({std::move(name), l.total, std::move(shape), transposed});
    l.total = detail::checked_add(what, l.total, n);
    return l.tensors.back().offset;
  };
  const std::size_t d = c.d_model, F = c.d_ff, qw = c.q_width(), kw = c.kv_width();
  if (c.family == Family::gpt2) {
    l.tok_emb = add("wte.weight", {c.vocab, d});
    l.pos_emb = add("wpe.weight", {c.max_len, d});
    for (std::size_t b = 0; b < c.n_layers; ++b) {
      const std::string p = "h." + std::to_string(b) + ".";
      BlockLayout k;
      k.norm1_g = add(p + "ln_1.weight", {d});
      k.norm1_b = add(p + "ln_1.bias", {d});
      k.w_qkv = add(p + "attn.c_attn.weight", {d, 3 * d}, true);
      k.b_qkv = add(p + "attn.c_attn.bias", {3 * d});
      k.w_o = add(p + "attn.c_proj.weight", {d, d}, true);
      k.b_o = add(p + "attn.c_proj.bias", {d});
      k.norm2_g = add(p + "ln_2.weight", {d});
      k.norm2_b = add(p + "ln_2.bias", {d});
      k.w_up = add(p + "mlp.c_fc.weight", {d, F}, true);
      k.b_up = add(p + "mlp.c_fc.bias", {F});
      k.w_down = add(p + "mlp.c_proj.weight", {F, d}, true);
      k.b_down = add(p + "mlp.c_proj.bias", {d});
      l.blocks.push_back(k);
    }
    l.normf_g = add("ln_f.weight", {d});
    l.normf_b = add("ln_f.bias", {d});
    l.head = l.tok_emb;
  } else {
    l.tok_emb = add("model.embed_tokens.weight", {c.vocab, d});
    for (std::size_t b = 0; b < c.n_layers; ++b) {
      const std::string p = "model.layers." + std::to_string(b) + ".";
      BlockLayout k;
      k.norm1_g = add(p + "input_layernorm.weight", {d});
      k.w_qkv = add(p + "self_attn.q_proj.weight", {qw, d});
      add(p + "self_attn.k_proj.weight", {kw, d});
      add(p + "self_attn.v_proj.weight", {kw, d});
      if (c.qkv_bias) {
        k.b_qkv = add(p + "self_attn.q_proj.bias", {qw});
        add(p + "self_attn.k_proj.bias", {kw});
        add(p + "self_attn.v_proj.bias", {kw});
      }
      k.w_o = add(p + "self_attn.o_proj.weight", {d, qw});
      if (c.o_bias) k.b_o = add(p + "self_attn.o_proj.bias", {d});
      k.norm2_g = add(p + "post_attention_layernorm.weight", {d});
      k.w_up = add(p + "mlp.gate_proj.weight", {F, d});
      add(p + "mlp.up_proj.weight", {F, d});
      if (c.mlp_bias) {
        k.b_up = add(p + "mlp.gate_proj.bias", {F});
        add(p + "mlp.up_proj.bias", {F});
      }
      k.w_down = add(p + "mlp.down_proj.weight", {d, F});
      if (c.mlp_bias) k.b_down = add(p + "mlp.down_proj.bias", {d});
      l.blocks.push_back(k);
    }
    l.normf_g = add("model.norm.weight", {d});
    l.head = c.tied_head ? l.tok_emb : add("lm_head.weight", {c.vocab, d});
  }
  if (l.total > kMaxElements) detail::fail(what, l.total, "at most " + std::to_string(kMaxElements) + " parameters");
  return l;
}

// The per-row RoPE frequencies: inv_freq_i = θ^(−2i/head_dim), i < head_dim/2, then Llama-3's
// scaling: wavelengths 2π/f longer than original/low_freq_factor are divided by factor, those
// shorter than original/high_freq_factor kept, and those between blended linearly in
// original/wavelength.
inline std::vector<double> rope_frequencies(const Config& c) {
  const std::size_t half = c.head_dim / 2;
  std::vector<double> f(half);
  const double pi = 3.14159265358979323846;
  for (std::size_t i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
    const auto& r = c.rope_scaling;
    if (r.factor != 0) {
      const double old = static_cast<double>(r.original_max_position), wavelen = 2 * pi / inv;
      if (wavelen > old / r.low_freq_factor) {
        inv /= r.factor;
      } else if (wavelen >= old / r.high_freq_factor) {
        const double smooth = (old / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        inv = (1 - smooth) * inv / r.factor + smooth * inv;
      }
    }
    f[i] = inv;
  }
  return f;
}

}  // namespace decoder

DFTUNE_NAMESPACE_END
