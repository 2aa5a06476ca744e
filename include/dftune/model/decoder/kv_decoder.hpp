#pragma once
// The decoder family (decoder.hpp: GPT-2, Llama, Qwen2, SmolLM2) as a cached decoder
// (model/generation/generate.hpp): the forward of decoder.hpp for new rows only, each attending to
// its sequence's cached keys and values,
//   x⁰ = E[tok] (+ P[t] for learned positions; t: the row's position in its sequence)
//   per block:  h = N₁(x), [q|k|v] = h W_qkvᵀ (+ b_qkv), q and k turned by RoPE at t,
//               k and v appended to the cache (the n_kv_heads key/value heads only),
//               x ← x + (Attn(q; cached k, v) W_oᵀ (+ b_o)),  x ← x + MLP(N₂(x))
//   hidden = N_f(x) of each sequence's last new row (the fused head's input).
// The same kernels as the uncached forward (layers.hpp's norm, RoPE and activations; attention is
// row_forward's values, query head h reading key/value head h / (n_heads/n_kv_heads): generation/cached_attention.hpp);
// only the GEMMs differ: column tiles (generation/tiled_linear.hpp) fixed by the shape and the
// machine's core count, so the values do not depend on the thread count. Only the current layer's
// activations of the new rows are held: O(rows · (2d + qkv_width + q_width + up_width + d_ff)).
// A view: the parameters stay the model's; the decoder owns only its scratch and RoPE tables.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/decoder/config.hpp>
#include <dftune/model/decoder/layers.hpp>
#include <dftune/model/generation/cached_attention.hpp>
#include <dftune/model/generation/kv_cache.hpp>
#include <dftune/model/generation/packed_weights.hpp>
#include <dftune/model/generation/tiled_linear.hpp>
#include <dftune/model/tiny_lm/gelu.hpp>
#include <dftune/model/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace decoder {

// A decoder-family model seen by cached generation (generation::CachedDecoder): a view of its
// config, layout and parameters, with its own scratch. Decoder<T>::generate builds one per call.
template <class T>
class KvDecoder {
 public:
  // The parameters' element type and the compute type.
  using scalar_type = T;

  // `layout` must be make_layout(config) and `theta` the model's parameters (Decoder::parameters());
  // both must outlive the decoder.
  KvDecoder(const Config& config, const Layout& layout, std::span<const T> theta) : cfg_(config), lay_(layout), theta_(theta) {
    detail::check_size("parameters", theta.size(), layout.total);
  }

  // The longest sequence (prompt + completion): config.max_len.
  std::size_t context_length() const { return cfg_.max_len; }
  // Keys and values per position and layer: the key/value heads' width, n_kv_heads · head_dim.
  generation::CacheShape cache_shape() const { return {.layers = cfg_.n_layers, .width = cfg_.kv_width()}; }
  // The output head: W_head [vocab, d_model] (the token embedding when tied), no bias.
  logprob::linear::LinearLogits<T> head() const {
    const std::size_t D = cfg_.d_model, V = cfg_.vocab;
    return {.proj = theta_.subspan(lay_.head, V * D), .bias = {}, .dim = D, .vocab = V, .layout = logprob::linear::Layout::vocab_major};
  }

  // Scratch for up to `rows` new rows per extend() (checked sizes; grows, never shrinks).
  void reserve(std::size_t rows) {
    const std::size_t D = cfg_.d_model;
    checked_rows(rows);
    const std::size_t scores = generation::attention_scratch(heads(), cfg_.max_len);
    auto grow = [](auto& v, std::size_t size) {
      if (v.size() < size) v.resize(size);
    };
    grow(x_, rows * D);
    grow(h_, rows * D);
    grow(qkv_, rows * cfg_.qkv_width());
    grow(att_, rows * cfg_.q_width());
    grow(up_, rows * cfg_.up_width());
    grow(act_, rows * cfg_.d_ff);
    grow(mean_, rows);
    grow(rstd_, rows);
    grow(row_slot_, rows);
    grow(row_pos_, rows);
    grow(scores_, scores);
  }

  // Packs every GEMM weight (the layers' and the head's) once for a call of `sequences` sequences
  // of up to `max_new` new tokens (generation/packed_weights.hpp) when it pays: the build has
  // oneDNN, sequences >= PackedWeights::kMinRows, sequences·max_new >= PackedWeights::kMinTokens,
  // and the packed copy fits limits.max_packed_bytes; otherwise nothing is packed and the GEMMs
  // stay tiled_linear's. Optional member of generation::CachedDecoder, called once before prefill.
  void pack_for(std::size_t sequences, std::size_t max_new, const generation::Limits& limits) {
    using Packed = generation::PackedWeights<T>;
    packed_.clear();
    if (!Packed::available || sequences < Packed::kMinRows || max_new < Packed::kMinTokens / sequences) return;
    const std::size_t D = cfg_.d_model, V = cfg_.vocab;
    std::size_t elements = V * D;
    for (std::size_t l = 0; l < cfg_.n_layers; ++l)
      elements += D * (cfg_.qkv_width() + cfg_.up_width()) + cfg_.q_width() * D + cfg_.d_ff * D;
    if (elements > limits.max_packed_bytes / sizeof(T)) return;
    bool ok = true;
    for (std::size_t l = 0; l < cfg_.n_layers && ok; ++l) {
      const auto& k = lay_.blocks[l];
      ok = packed_.pack(k.w_qkv, param(k.w_qkv), cfg_.qkv_width(), D, sequences) && packed_.pack(k.w_o, param(k.w_o), D, cfg_.q_width(), sequences) &&
           packed_.pack(k.w_up, param(k.w_up), cfg_.up_width(), D, sequences) && packed_.pack(k.w_down, param(k.w_down), D, cfg_.d_ff, sequences);
    }
    if (ok) ok = packed_.pack(lay_.head, param(lay_.head), V, D, sequences);
    if (!ok) packed_.clear();
  }

  // Bytes of weights packed by pack_for (0 when nothing is).
  std::size_t packed_bytes() const { return packed_.bytes(); }

  // logits[rows, V] = hidden[rows, d] W_headᵀ: on the packed head when pack_for packed it, else the
  // fused head's tiles (logprob::linear::logits). Optional member of generation::CachedDecoder.
  void step_logits(std::span<const T> hidden, std::size_t rows, std::span<T> logits) {
    if (packed_.has(lay_.head)) {
      packed_.run(lay_.head, hidden.data(), rows, param(lay_.head), logits.data(), [](T*, std::size_t, std::size_t) {});
    } else {
      auto h = head();
      h.hidden = hidden.first(rows * cfg_.d_model);
      logprob::linear::logits(h, logits.first(rows * cfg_.vocab));
    }
  }

  // generate.hpp's CachedDecoder::extend; every argument is checked before the cache is written.
  void extend(generation::KvCache<T>& cache, std::span<const std::size_t> slots, std::span<const token_t> tokens,
              std::span<const std::int64_t> offsets, std::span<T> hidden) {
    const std::size_t B = slots.size(), D = cfg_.d_model, n = tokens.size();
    const std::size_t QKV = cfg_.qkv_width(), QW = cfg_.q_width(), KW = cfg_.kv_width(), U = cfg_.up_width(), F = cfg_.d_ff;
    check(cache, slots, tokens, offsets, hidden);
    if (x_.size() < n * D || row_pos_.size() < n || scores_.size() < generation::attention_scratch(heads(), cfg_.max_len)) reserve(n);
    std::size_t longest = 0;
    for (std::size_t a = 0; a < B; ++a)
      for (auto r = offsets[a]; r < offsets[a + 1]; ++r) {
        const auto i = static_cast<std::size_t>(r);
        row_slot_[i] = slots[a];
        row_pos_[i] = cache.length(slots[a]) + static_cast<std::size_t>(r - offsets[a]);
        longest = std::max(longest, row_pos_[i] + 1);
        const T* te = param(lay_.tok_emb) + static_cast<std::size_t>(tokens[i]) * D;
        T* x = x_.data() + i * D;
        if (cfg_.positions() == Positions::learned) {
          const T* pe = param(lay_.pos_emb) + row_pos_[i] * D;
          for (std::size_t j = 0; j < D; ++j) x[j] = te[j] + pe[j];
        } else {
          std::copy(te, te + D, x);
        }
      }
    if (cfg_.positions() == Positions::rope) grow_rope(longest);
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const auto& k = lay_.blocks[l];
      norm(x_.data(), k.norm1_g, k.norm1_b, h_.data(), n);
      linear(h_.data(), n, D, k.w_qkv, QKV, qkv_.data(), cfg_.qkv_bias ? k.b_qkv : kNone, [](T*, std::size_t, std::size_t) {});
      for (std::size_t i = 0; i < n; ++i) {
        T* row = qkv_.data() + i * QKV;
        if (cfg_.positions() == Positions::rope) rope(row, row_pos_[i]);
        const std::size_t s = row_slot_[i], t = row_pos_[i];
        std::copy_n(row + QW, KW, cache.keys(l, s) + t * KW);
        std::copy_n(row + QW + KW, KW, cache.values(l, s) + t * KW);
      }
      attend(cache, l, n);
      // x ← x + (att W_oᵀ + b_o): the uncached forward's (att W_oᵀ + b_o) + x.
      linear(att_.data(), n, QW, k.w_o, D, h_.data(), cfg_.o_bias ? k.b_o : kNone, [&](T* y, std::size_t j0, std::size_t w) {
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = j0; j < j0 + w; ++j) x_[i * D + j] = y[i * D + j] + x_[i * D + j];
      });
      norm(x_.data(), k.norm2_g, k.norm2_b, h_.data(), n);
      linear(h_.data(), n, D, k.w_up, U, up_.data(), cfg_.mlp_bias ? k.b_up : kNone, [](T*, std::size_t, std::size_t) {});
      activation(n);
      linear(act_.data(), n, F, k.w_down, D, h_.data(), cfg_.mlp_bias ? k.b_down : kNone, [&](T* y, std::size_t j0, std::size_t w) {
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = j0; j < j0 + w; ++j) x_[i * D + j] = y[i * D + j] + x_[i * D + j];
      });
    }
    const T* gf = param(lay_.normf_g);
    const T* bf = cfg_.norm() == Norm::layer ? param(lay_.normf_b) : nullptr;
    for (std::size_t a = 0; a < B; ++a) {
      const auto last = static_cast<std::size_t>(offsets[a + 1] - 1);
      T mean, rstd;
      norm_forward(x_.data() + last * D, gf, bf, cfg_.norm() == Norm::layer, static_cast<T>(cfg_.norm_eps), hidden.data() + a * D, &mean,
                   &rstd, D);
      cache.advance(slots[a], static_cast<std::size_t>(offsets[a + 1] - offsets[a]));
    }
  }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);  // no bias

  const T* param(std::size_t off) const { return theta_.data() + off; }

  void checked_rows(std::size_t rows) const {
    const std::size_t widest = std::max({cfg_.qkv_width(), cfg_.up_width(), cfg_.d_model});
    const std::size_t e = detail::checked_mul("generate: decoder scratch rows·max(qkv_width, up_width)", rows, widest);
    if (e > kMaxElements) detail::fail("generate: decoder scratch", std::to_string(e) + " elements", "at most " + std::to_string(kMaxElements));
  }

  void check(const generation::KvCache<T>& cache, std::span<const std::size_t> slots, std::span<const token_t> tokens,
             std::span<const std::int64_t> offsets, std::span<const T> hidden) const {
    const std::size_t B = slots.size(), n = tokens.size();
    detail::check_size("offsets", offsets.size(), B + 1);
    detail::check_size("hidden", hidden.size(), detail::checked_mul("hidden (sequences·d_model)", B, cfg_.d_model));
    if (offsets.front() != 0 || offsets.back() != static_cast<std::int64_t>(n))
      detail::fail("offsets", "a table from " + std::to_string(offsets.front()) + " to " + std::to_string(offsets.back()),
                   "[0, ..., tokens.size() = " + std::to_string(n) + "]");
    if (const auto s = cache.shape(); s.layers != cfg_.n_layers || s.width != cfg_.kv_width())
      detail::fail("cache", "shape " + std::to_string(s.layers) + " layers · width " + std::to_string(s.width),
                   std::to_string(cfg_.n_layers) + " layers · width " + std::to_string(cfg_.kv_width()));
    for (std::size_t a = 0; a < B; ++a) {
      if (slots[a] >= cache.slots()) detail::fail_at("slots", a, slots[a], "a cache slot < " + std::to_string(cache.slots()));
      if (offsets[a + 1] <= offsets[a]) detail::fail_at("offsets", a + 1, offsets[a + 1], "> offsets[a] (at least one new token)");
      const auto m = static_cast<std::size_t>(offsets[a + 1] - offsets[a]);
      if (m > cache.capacity(slots[a]) - cache.length(slots[a]))
        detail::fail_at("slots", a, "length " + std::to_string(cache.length(slots[a])) + " + " + std::to_string(m) + " new",
                        "at most its capacity " + std::to_string(cache.capacity(slots[a])));
      if (cache.length(slots[a]) + m > cfg_.max_len)
        detail::fail_at("slots", a, "length " + std::to_string(cache.length(slots[a]) + m), "at most max_len = " + std::to_string(cfg_.max_len));
    }
    for (std::size_t i = 0; i < n; ++i)
      if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= cfg_.vocab)
        detail::fail_at("tokens", i, tokens[i], "in [0, vocab = " + std::to_string(cfg_.vocab) + ")");
  }

  // cos and sin of t·f_i for the positions t < len (rope_table: the uncached forward's values).
  // Grows by doubling, so a generate call computes O(max position) entries in all.
  void grow_rope(std::size_t len) {
    if (len <= rope_len_) return;
    const std::size_t to = std::min(cfg_.max_len, std::max({len, 2 * rope_len_, std::size_t{64}}));
    rope_table(cfg_, to, rope_cos_, rope_sin_);
    rope_len_ = to;
  }

  // RoPE on the n_heads query heads and n_kv_heads key heads of one row (contiguous in the row).
  void rope(T* row, std::size_t t) const {
    const std::size_t half = cfg_.head_dim / 2;
    for (std::size_t h = 0; h < cfg_.n_heads + cfg_.n_kv_heads; ++h)
      rope_rotate(row + h * cfg_.head_dim, rope_cos_.data() + t * half, rope_sin_.data() + t * half, half, false);
  }

  void norm(const T* x, std::size_t g, std::size_t b, T* y, std::size_t n) {
    const std::size_t D = cfg_.d_model;
    const bool layer = cfg_.norm() == Norm::layer;
    for (std::size_t i = 0; i < n; ++i)
      norm_forward(x + i * D, param(g), layer ? param(b) : nullptr, layer, static_cast<T>(cfg_.norm_eps), y + i * D, mean_.data() + i,
                   rstd_.data() + i, D);
  }

  // act_ = gelu(up_) or silu(gate) ⊙ up: after the GEMM, since SwiGLU pairs columns j and F + j,
  // which fall in different tiles.
  void activation(std::size_t n) {
    const std::size_t U = cfg_.up_width(), F = cfg_.d_ff;
    const bool swiglu = cfg_.mlp() == Mlp::swiglu;
    [[maybe_unused]] const bool parallel = n * F >= (std::size_t{1} << 15);
    dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not in a worker's gelu_values
    DFTUNE_OMP(parallel for schedule(static) num_threads(static_cast<int>(parallel ? dftune::max_threads() : 1)))
    for (std::ptrdiff_t r = 0; r < static_cast<std::ptrdiff_t>(n); ++r) {
      const T* u = up_.data() + static_cast<std::size_t>(r) * U;
      T* a = act_.data() + static_cast<std::size_t>(r) * F;
      if (swiglu) swiglu_forward(u, a, F);
      else tiny_lm::gelu_values(u, a, F);
    }
  }

  // Y[rows, N] = A[rows, K] · Wᵀ (+ b), W the [N, K] parameter block at w, then epilogue.
  template <class Epilogue>
  void linear(const T* A, std::size_t rows, std::size_t K, std::size_t w, std::size_t N, T* Y, std::size_t bias, Epilogue&& epilogue) {
    const T* b = bias == kNone ? nullptr : param(bias);
    auto finish = [&](T* y, std::size_t j0, std::size_t width) {
      if (b)
        for (std::size_t i = 0; i < rows; ++i)
          for (std::size_t j = j0; j < j0 + width; ++j) y[i * N + j] += b[j];
      epilogue(y, j0, width);
    };
    if (packed_.has(w)) packed_.run(w, A, rows, param(w), Y, finish);
    else generation::tiled_linear<generation::WeightLayout::out_major>(A, rows, K, param(w), N, Y, finish);
  }

  generation::AttentionHeads heads() const { return {.heads = cfg_.n_heads, .kv_heads = cfg_.n_kv_heads, .dim = cfg_.head_dim}; }

  // att_[i, query head h] = softmax(q_i k_jᵀ / sqrt(dh)) v over the cached positions j <= t_i of
  // key/value head h / (n_heads / n_kv_heads): the uncached forward's values (generation/cached_attention.hpp).
  void attend(const generation::KvCache<T>& cache, std::size_t l, std::size_t n) {
    generation::cached_attention(cache, l, row_slot_.data(), row_pos_.data(), n, qkv_.data(), cfg_.qkv_width(), heads(), cfg_.max_len,
                                 scores_.data(), att_.data(), cfg_.q_width());
  }

  Config cfg_;
  const Layout& lay_;
  std::span<const T> theta_;
  std::vector<T> x_, h_, qkv_, att_, up_, act_, mean_, rstd_, scores_;  // scratch of the new rows, one layer at a time
  std::vector<T> rope_cos_, rope_sin_;                                   // [rope_len_, head_dim / 2]
  std::size_t rope_len_ = 0;
  std::vector<std::size_t> row_slot_, row_pos_;
  generation::PackedWeights<T> packed_;  // keyed by the weight's offset in theta_
};

}  // namespace decoder

DFTUNE_NAMESPACE_END
