#pragma once
// The tiny LM as a cached decoder (model/generation/generate.hpp): the forward of tiny_lm.hpp for
// new rows only, each attending to its sequence's cached keys and values,
//   x⁰ = E[tok] + P[t]   (t: the row's position in its sequence)
//   per block:  h = LN₁(x), [q|k|v] = h W_qkv + b_qkv, k and v appended to the cache,
//               x ← x + (Attn(q; cached k, v) W_o + b_o),  x ← x + (gelu(LN₂(x) W₁ + b₁) W₂ + b₂)
//   hidden = LN_f(x) of each sequence's last new row (the fused head's input).
// The same kernels and the same order of every sum as the uncached forward (layers.hpp's layer norm
// and GELU; the attention of a row has row_forward's values: generation/cached_attention.hpp), only the GEMMs
// differ: they run over column tiles (generation/tiled_linear.hpp: tiles fixed by the shape and the
// machine's core count), so the values do not depend on the thread count. Only the current layer's
// activations of the new rows are held: O(rows · (5d + d_ff)).
// A view: the parameters stay the model's; the decoder owns only its scratch.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/generation/cached_attention.hpp>
#include <dftune/model/generation/kv_cache.hpp>
#include <dftune/model/generation/tiled_linear.hpp>
#include <dftune/model/tiny_lm/config.hpp>
#include <dftune/model/tiny_lm/gelu.hpp>
#include <dftune/model/tiny_lm/layers.hpp>
#include <dftune/threads.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace tiny_lm {

// TinyLm's forward as a generation::Decoder (model/generation/generate.hpp), reading a TinyLm's
// parameters: what TinyLm::generate runs. Made by the model; a user calls TinyLm::generate.
template <class T>
class KvDecoder {
 public:
  using scalar_type = T;  // the parameters' type

  // The layout must be make_layout(config) and theta the model's parameters (TinyLm::parameters());
  // both must outlive the decoder.
  KvDecoder(const Config& config, const Layout& layout, std::span<const T> theta) : cfg_(config), lay_(layout), theta_(theta) {
    detail::check_size("parameters", theta.size(), layout.total);
  }

  // Longest sequence (prompt + completion): the config's max_len.
  std::size_t context_length() const { return cfg_.max_len; }
  // Per-layer key/value widths the generation cache allocates.
  generation::CacheShape cache_shape() const { return {.layers = cfg_.n_layers, .width = cfg_.d_model}; }
  // The output head (W_out, b_out) as the fused linear head's view.
  logprob::linear::LinearLogits<T> head() const {
    const std::size_t D = cfg_.d_model, V = cfg_.vocab;
    return {.proj = theta_.subspan(lay_.w_out, D * V), .bias = theta_.subspan(lay_.b_out, V), .dim = D, .vocab = V,
            .layout = logprob::linear::Layout::dim_major};
  }

  // Scratch for up to `rows` new rows per extend() (checked sizes; grows, never shrinks).
  void reserve(std::size_t rows) {
    const std::size_t D = cfg_.d_model;
    checked_elements("generate", "decoder scratch rows·max(3·d_model, d_ff)", rows, std::max(3 * D, cfg_.d_ff));
    const std::size_t scores = scores_size();
    auto grow = [](auto& v, std::size_t size) {
      if (v.size() < size) v.resize(size);
    };
    for (auto* v : {&x_, &h_, &att_}) grow(*v, rows * D);
    grow(qkv_, rows * 3 * D);
    grow(u_, rows * cfg_.d_ff);
    grow(mean_, rows);
    grow(rstd_, rows);
    grow(row_slot_, rows);
    grow(row_pos_, rows);
    grow(scores_, scores);
  }

  // generate.hpp's CachedDecoder::extend. The arguments are checked before the cache is written.
  void extend(generation::KvCache<T>& cache, std::span<const std::size_t> slots, std::span<const token_t> tokens,
              std::span<const std::int64_t> offsets, std::span<T> hidden) {
    const std::size_t B = slots.size(), D = cfg_.d_model, H = cfg_.n_heads, dh = D / H, F = cfg_.d_ff, n = tokens.size();
    detail::check_size("offsets", offsets.size(), B + 1);
    detail::check_size("hidden", hidden.size(), detail::checked_mul("hidden (sequences·d_model)", B, D));
    if (offsets.front() != 0 || offsets.back() != static_cast<std::int64_t>(n))
      detail::fail("offsets", "a table from " + std::to_string(offsets.front()) + " to " + std::to_string(offsets.back()),
                   "[0, ..., tokens.size() = " + std::to_string(n) + "]");
    for (std::size_t a = 0; a < B; ++a) {
      if (slots[a] >= cache.slots()) detail::fail_at("slots", a, slots[a], "a cache slot < " + std::to_string(cache.slots()));
      if (offsets[a + 1] <= offsets[a]) detail::fail_at("offsets", a + 1, offsets[a + 1], "> offsets[a] (at least one new token)");
      const auto m = static_cast<std::size_t>(offsets[a + 1] - offsets[a]);
      if (m > cache.capacity(slots[a]) - cache.length(slots[a]))
        detail::fail_at("slots", a, "length " + std::to_string(cache.length(slots[a])) + " + " + std::to_string(m) + " new",
                        "at most its capacity " + std::to_string(cache.capacity(slots[a])));
    }
    for (std::size_t i = 0; i < n; ++i)
      if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= cfg_.vocab)
        detail::fail_at("tokens", i, tokens[i], "in [0, vocab = " + std::to_string(cfg_.vocab) + ")");
    if (const auto s = cache.shape(); s.layers != cfg_.n_layers || s.width != D)
      detail::fail("cache", "shape " + std::to_string(s.layers) + " layers · width " + std::to_string(s.width),
                   std::to_string(cfg_.n_layers) + " layers · width " + std::to_string(D));
    if (x_.size() < n * D || scores_.size() < scores_size()) reserve(n);
    dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not in a tile's gelu_values

    for (std::size_t a = 0; a < B; ++a)
      for (auto r = offsets[a]; r < offsets[a + 1]; ++r) {
        const auto i = static_cast<std::size_t>(r);
        row_slot_[i] = slots[a];
        row_pos_[i] = cache.length(slots[a]) + static_cast<std::size_t>(r - offsets[a]);
        const T* te = param(lay_.tok_emb) + static_cast<std::size_t>(tokens[i]) * D;
        const T* pe = param(lay_.pos_emb) + row_pos_[i] * D;
        for (std::size_t j = 0; j < D; ++j) x_[i * D + j] = te[j] + pe[j];
      }
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const auto& k = lay_.blocks[l];
      layer_norm_forward(x_.data(), param(k.ln1_g), param(k.ln1_b), h_.data(), mean_.data(), rstd_.data(), n, D);
      linear(h_.data(), n, D, k.w_qkv, 3 * D, qkv_.data(), [&](T* y, std::size_t j0, std::size_t w) { add_bias(y, n, 3 * D, j0, w, k.b_qkv); });
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t s = row_slot_[i], t = row_pos_[i];
        std::copy_n(qkv_.data() + i * 3 * D + D, D, cache.keys(l, s) + t * D);
        std::copy_n(qkv_.data() + i * 3 * D + 2 * D, D, cache.values(l, s) + t * D);
      }
      attend(cache, l, n, D, H, dh);
      // x ← x + (att W_o + b_o): the uncached forward's (att W_o + b_o) + x, summed in the same order.
      linear(att_.data(), n, D, k.w_o, D, h_.data(), [&](T* y, std::size_t j0, std::size_t w) {
        add_bias(y, n, D, j0, w, k.b_o);
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = j0; j < j0 + w; ++j) x_[i * D + j] = y[i * D + j] + x_[i * D + j];
      });
      layer_norm_forward(x_.data(), param(k.ln2_g), param(k.ln2_b), h_.data(), mean_.data(), rstd_.data(), n, D);
      linear(h_.data(), n, D, k.w_1, F, u_.data(), [&](T* y, std::size_t j0, std::size_t w) {
        add_bias(y, n, F, j0, w, k.b_1);
        for (std::size_t i = 0; i < n; ++i)
          gelu_values(y + i * F + j0, y + i * F + j0, w);  // the forward's bits: gelu.hpp is lane-wise
      });
      linear(u_.data(), n, F, k.w_2, D, h_.data(), [&](T* y, std::size_t j0, std::size_t w) {
        add_bias(y, n, D, j0, w, k.b_2);
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = j0; j < j0 + w; ++j) x_[i * D + j] = y[i * D + j] + x_[i * D + j];
      });
    }
    for (std::size_t a = 0; a < B; ++a) {
      const auto last = static_cast<std::size_t>(offsets[a + 1] - 1);
      layer_norm_forward(x_.data() + last * D, param(lay_.lnf_g), param(lay_.lnf_b), hidden.data() + a * D, mean_.data(), rstd_.data(), 1, D);
      cache.advance(slots[a], static_cast<std::size_t>(offsets[a + 1] - offsets[a]));
    }
  }

 private:
  const T* param(std::size_t off) const { return theta_.data() + off; }

  // Attention weights scratch: generation/cached_attention.hpp's threads · heads · max_len, checked.
  std::size_t scores_size() const {
    return checked_elements("generate", "attention scratch threads·heads·max_len", dftune::max_threads(), cfg_.n_heads, cfg_.max_len);
  }

  void add_bias(T* y, std::size_t rows, std::size_t ld, std::size_t j0, std::size_t w, std::size_t bias) const {
    const T* b = param(bias);
    for (std::size_t i = 0; i < rows; ++i)
      for (std::size_t j = j0; j < j0 + w; ++j) y[i * ld + j] += b[j];
  }

  // Y[rows, N] = A[rows, K] · W (W the parameter block at w, [K, N]) over the shared column tiles.
  template <class Epilogue>
  void linear(const T* A, std::size_t rows, std::size_t K, std::size_t w, std::size_t N, T* Y, Epilogue&& epilogue) {
    generation::tiled_linear<generation::WeightLayout::in_major>(A, rows, K, param(w), N, Y, epilogue);
  }

  // att_[i, head h] = softmax(q_i k_jᵀ / sqrt(dh)) over the cached positions j <= t_i, times v:
  // the uncached forward's arithmetic for row t_i (generation/cached_attention.hpp).
  void attend(const generation::KvCache<T>& cache, std::size_t l, std::size_t n, std::size_t D, std::size_t H, std::size_t dh) {
    generation::cached_attention(cache, l, row_slot_.data(), row_pos_.data(), n, qkv_.data(), 3 * D, {.heads = H, .kv_heads = H, .dim = dh},
                                 cfg_.max_len, scores_.data(), att_.data(), D);
  }

  Config cfg_;
  const Layout& lay_;
  std::span<const T> theta_;
  std::vector<T> x_, h_, qkv_, att_, u_, mean_, rstd_, scores_;  // scratch of the new rows, one layer at a time
  std::vector<std::size_t> row_slot_, row_pos_;
};

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
