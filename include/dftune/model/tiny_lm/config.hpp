#pragma once
// Shape of the tiny causal LM, the layout of its flat parameter vector and the sizes of its
// buffers. One function, make_layout, names every parameter group and its place, so the model, the
// gradient checks and the weight files all read the same table. Every size here is computed with
// overflow-checked arithmetic (checked_size.hpp): a config read from a hostile file whose parameter
// count or activation sizes wrap around size_t is refused with a dftune::error before anything is
// allocated, instead of sizing a buffer by the wrapped value and writing past it.
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

namespace tiny_lm {

struct Config {
  std::size_t vocab = 16;     // V
  std::size_t max_len = 16;   // longest sequence (prompt + completion); size of the position table
  std::size_t d_model = 32;   // residual width d
  std::size_t n_heads = 4;    // d_model must be a multiple of n_heads
  std::size_t n_layers = 2;   // transformer blocks
  std::size_t d_ff = 128;     // hidden width of the MLP
  double init_std = 0.02;     // std of the embeddings at initialisation (weights use 1/sqrt(fan_in))

  friend bool operator==(const Config&, const Config&) = default;
};

// The most elements any one buffer may hold: its byte count (for double, the widest scalar) and
// Eigen's signed index must not overflow. A config or batch needing more is an error, not a
// std::length_error from the allocator.
inline constexpr std::size_t kMaxElements = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(double);

// n1·n2·… elements of the buffer `name` of `what`, checked: a product that wraps around size_t or
// exceeds kMaxElements is a dftune::error "what: name: got …". No string is built unless it throws
// (generate's token loop sizes its buffers through here and must not allocate).
template <class... Sizes>
std::size_t checked_elements(std::string_view what, std::string_view name, Sizes... n) {
  std::size_t r = 1;
  const bool wraps = (__builtin_mul_overflow(r, static_cast<std::size_t>(n), &r) || ...);
  if (wraps || r > kMaxElements) {
    const std::string argument = std::string(what) + ": " + std::string(name);
    r = detail::checked_product(argument, n...);  // throws the overflow error when the product wraps
    detail::fail(argument, r, "at most " + std::to_string(kMaxElements) + " elements (a buffer that fits in memory)");
  }
  return r;
}

// Number of parameters, the sum of make_layout's groups in closed form:
//   n_layers·(4d² + 2·d·d_ff + 9d + d_ff) + 2·V·d + max_len·d + 2d + V
// (a block: w_qkv 3d², w_o d², w_1 and w_2 d·d_ff each, b_1 d_ff, and 9d of gains and biases).
// Refuses a config whose count wraps around size_t or exceeds kMaxElements.
inline std::size_t parameter_count(const Config& c) {
  const std::string_view what = "config (parameter count)";
  const std::size_t d = c.d_model, F = c.d_ff;
  auto sum = [&](std::size_t& acc, std::size_t x) { acc = detail::checked_add(what, acc, x); };
  std::size_t block = 0;
  sum(block, detail::checked_product(what, 4, d, d));
  sum(block, detail::checked_product(what, 2, d, F));
  sum(block, detail::checked_mul(what, 9, d));
  sum(block, F);
  std::size_t total = detail::checked_mul(what, c.n_layers, block);
  sum(total, detail::checked_product(what, 2, c.vocab, d));
  sum(total, detail::checked_mul(what, c.max_len, d));
  sum(total, detail::checked_mul(what, 2, d));
  sum(total, c.vocab);
  return checked_elements(what, "total", total);
}

// Element counts of the buffers TinyLm holds for a batch of `rows` tokens in sequences of at most
// max_len tokens each (L = n_layers, d = d_model, H = n_heads, n = rows), all checked:
struct BufferSizes {
  std::size_t layer_rows_d = 0;   // L·n·d         layer-norm outputs, attention outputs, mid residuals
  std::size_t residual = 0;       // (L + 1)·n·d   the residual stream at every block boundary
  std::size_t qkv = 0;            // L·n·3d
  std::size_t hidden = 0;         // L·n·d_ff      MLP pre-activation, its tanh, post-activation
  std::size_t layer_rows = 0;     // L·n           layer-norm statistics
  std::size_t rows_d = 0;         // n·d           final layer norm; backward scratch
  std::size_t rows_qkv = 0;       // n·3d          backward scratch
  std::size_t rows_ff = 0;        // n·d_ff        backward scratch
  std::size_t logits = 0;         // n·V           logits and their gradient
  std::size_t attention = 0;      // L·n·max_len·H  softmax probabilities, L·Σ_s H·len_s² <= L·H·max_len·Σ_s len_s
};

// `what` names the caller's argument in an error ("config" or "batch").
inline BufferSizes buffer_sizes(const Config& c, std::size_t rows, std::string_view what) {
  const std::size_t L = c.n_layers, d = c.d_model, n = rows;
  auto buffer_size = [&](std::string_view name, auto... k) { return checked_elements(what, name, k...); };
  return {.layer_rows_d = buffer_size("activations n_layers·rows·d_model", L, n, d),
          .residual = buffer_size("residual stream (n_layers + 1)·rows·d_model",
                                  detail::checked_add("config.n_layers + 1", L, 1), n, d),
          .qkv = buffer_size("q|k|v n_layers·rows·3·d_model", L, n, 3, d),
          .hidden = buffer_size("MLP activations n_layers·rows·d_ff", L, n, c.d_ff),
          .layer_rows = buffer_size("layer-norm statistics n_layers·rows", L, n),
          .rows_d = buffer_size("rows·d_model", n, d),
          .rows_qkv = buffer_size("rows·3·d_model", n, 3, d),
          .rows_ff = buffer_size("rows·d_ff", n, c.d_ff),
          .logits = buffer_size("logits rows·vocab", n, c.vocab),
          .attention = buffer_size("attention probabilities n_layers·rows·max_len·n_heads", L, n, c.max_len, c.n_heads)};
}

// Checks every field, then that the parameters and the buffers of one max_len sequence fit: a
// config passing this never makes TinyLm's size arithmetic wrap (a batch adds only its own row
// count, checked by buffer_sizes when it arrives).
inline void validate(const Config& c) {
  if (c.vocab < 1) detail::fail("config.vocab", c.vocab, "at least 1");
  // Token ids are token_t (int32): a larger vocabulary has tokens no id can name.
  constexpr auto max_vocab = static_cast<std::size_t>(std::numeric_limits<token_t>::max()) + 1;
  if (c.vocab > max_vocab) detail::fail("config.vocab", c.vocab, "at most " + std::to_string(max_vocab) + " (token ids are int32)");
  if (c.max_len < 2) detail::fail("config.max_len", c.max_len, "at least 2 (a prompt and one completion token)");
  if (c.d_model < 1) detail::fail("config.d_model", c.d_model, "at least 1");
  if (c.n_heads < 1 || c.d_model % c.n_heads != 0)
    detail::fail("config.n_heads", c.n_heads, "a divisor of d_model = " + std::to_string(c.d_model));
  if (c.n_layers < 1) detail::fail("config.n_layers", c.n_layers, "at least 1");
  if (c.d_ff < 1) detail::fail("config.d_ff", c.d_ff, "at least 1");
  if (!(c.init_std > 0) || !std::isfinite(c.init_std)) detail::fail("config.init_std", c.init_std, "a finite number > 0");
  parameter_count(c);
  buffer_sizes(c, c.max_len, "config (buffers for one sequence of max_len tokens)");
}

// A named [rows, cols] row-major block of the flat parameter vector.
struct Group {
  std::string name;        // e.g. "block0.w_qkv"
  std::size_t offset = 0;  // first element in the parameter vector
  std::size_t rows = 0;    // fan_in of a matrix (1 for a vector)
  std::size_t cols = 0;    // fan_out
  // rows · cols elements
  std::size_t size() const { return rows * cols; }
};

// Offsets of one block. Matrices act on row vectors (y = x W), so W is [fan_in, fan_out].
struct BlockLayout {
  std::size_t ln1_g;  // [d] pre-attention layer norm: gain
  std::size_t ln1_b;  // [d] its bias
  std::size_t w_qkv;  // [d, 3d] q | k | v, heads contiguous inside each
  std::size_t b_qkv;  // [3d]
  std::size_t w_o;    // [d, d] attention output projection
  std::size_t b_o;    // [d]
  std::size_t ln2_g;  // [d] pre-MLP layer norm: gain
  std::size_t ln2_b;  // [d] its bias
  std::size_t w_1;    // [d, d_ff]
  std::size_t b_1;    // [d_ff]
  std::size_t w_2;    // [d_ff, d]
  std::size_t b_2;    // [d]
};

// Where every tensor of a TinyLm lies in its flat parameter vector (offsets in elements).
struct Layout {
  std::size_t tok_emb = 0;            // [V, d] token embedding
  std::size_t pos_emb = 0;            // [max_len, d] position embedding
  std::vector<BlockLayout> blocks;    // one per layer
  std::size_t lnf_g = 0;              // [d] final layer norm: gain
  std::size_t lnf_b = 0;              // [d] its bias
  std::size_t w_out = 0;              // [d, V] output projection (not tied to tok_emb)
  std::size_t b_out = 0;              // [V]
  std::size_t total = 0;              // number of parameters
  std::vector<Group> groups;          // every tensor, in storage order
};

// The layout of a model of configuration c (validated first: dftune::argument_error naming the
// field; the parameter count is overflow-checked).
inline Layout make_layout(const Config& c) {
  validate(c);
  Layout l;
  auto add = [&](std::string name, std::size_t rows, std::size_t cols) {
    l.groups.push_back({std::move(name), l.total, rows, cols});
    l.total = detail::checked_add("config (parameter count)", l.total, detail::checked_mul("config (parameter count)", rows, cols));
    return l.groups.back().offset;
  };
  const std::size_t d = c.d_model;
  l.tok_emb = add("tok_emb", c.vocab, d);
  l.pos_emb = add("pos_emb", c.max_len, d);
  for (std::size_t b = 0; b < c.n_layers; ++b) {
    const std::string p = "block" + std::to_string(b) + ".";
    BlockLayout k{};
    k.ln1_g = add(p + "ln1_g", 1, d);
    k.ln1_b = add(p + "ln1_b", 1, d);
    k.w_qkv = add(p + "w_qkv", d, 3 * d);
    k.b_qkv = add(p + "b_qkv", 1, 3 * d);
    k.w_o = add(p + "w_o", d, d);
    k.b_o = add(p + "b_o", 1, d);
    k.ln2_g = add(p + "ln2_g", 1, d);
    k.ln2_b = add(p + "ln2_b", 1, d);
    k.w_1 = add(p + "w_1", d, c.d_ff);
    k.b_1 = add(p + "b_1", 1, c.d_ff);
    k.w_2 = add(p + "w_2", c.d_ff, d);
    k.b_2 = add(p + "b_2", 1, d);
    l.blocks.push_back(k);
  }
  l.lnf_g = add("lnf_g", 1, d);
  l.lnf_b = add("lnf_b", 1, d);
  l.w_out = add("w_out", d, c.vocab);
  l.b_out = add("b_out", 1, c.vocab);
  return l;
}

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
