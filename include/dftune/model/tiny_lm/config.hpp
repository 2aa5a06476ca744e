#pragma once
// Shape of the tiny causal LM and the layout of its flat parameter vector. One function,
// make_layout, names every parameter group and its place, so the model, the gradient checks and
// the weight files all read the same table.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cstddef>
#include <string>
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

inline void validate(const Config& c) {
  if (c.vocab < 1) detail::fail("config.vocab", c.vocab, "at least 1");
  if (c.max_len < 2) detail::fail("config.max_len", c.max_len, "at least 2 (a prompt and one completion token)");
  if (c.d_model < 1) detail::fail("config.d_model", c.d_model, "at least 1");
  if (c.n_heads < 1 || c.d_model % c.n_heads != 0)
    detail::fail("config.n_heads", c.n_heads, "a divisor of d_model = " + std::to_string(c.d_model));
  if (c.n_layers < 1) detail::fail("config.n_layers", c.n_layers, "at least 1");
  if (c.d_ff < 1) detail::fail("config.d_ff", c.d_ff, "at least 1");
  if (!(c.init_std > 0)) detail::fail("config.init_std", c.init_std, "a number > 0");
}

// A named [rows, cols] row-major block of the flat parameter vector.
struct Group {
  std::string name;
  std::size_t offset = 0, rows = 0, cols = 0;
  std::size_t size() const { return rows * cols; }
};

// Offsets of one block. Matrices act on row vectors (y = x W), so W is [fan_in, fan_out].
struct BlockLayout {
  std::size_t ln1_g, ln1_b;   // [d]        pre-attention layer norm
  std::size_t w_qkv, b_qkv;   // [d, 3d]    q | k | v, heads contiguous inside each
  std::size_t w_o, b_o;       // [d, d]     attention output projection
  std::size_t ln2_g, ln2_b;   // [d]        pre-MLP layer norm
  std::size_t w_1, b_1;       // [d, d_ff]
  std::size_t w_2, b_2;       // [d_ff, d]
};

struct Layout {
  std::size_t tok_emb = 0, pos_emb = 0;  // [V, d], [max_len, d]
  std::vector<BlockLayout> blocks;
  std::size_t lnf_g = 0, lnf_b = 0;      // [d] final layer norm
  std::size_t w_out = 0, b_out = 0;      // [d, V] output projection (not tied to tok_emb)
  std::size_t total = 0;
  std::vector<Group> groups;             // every tensor, in storage order
};

inline Layout make_layout(const Config& c) {
  validate(c);
  Layout l;
  auto add = [&](std::string name, std::size_t rows, std::size_t cols) {
    l.groups.push_back({std::move(name), l.total, rows, cols});
    l.total += rows * cols;
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
