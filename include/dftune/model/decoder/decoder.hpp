#pragma once
// The decoder family (GPT-2, Llama, Qwen2, SmolLM2; docs/models.md) as one model whose config says
// which norm, positions and MLP it uses (decoder/config.hpp):
//   x⁰_t = E[tok_t] (+ P[pos_t] for learned positions)
//   per block:  x ← x + W_o Attn(rope(W_qkv N₁(x) + b_qkv)) + b_o,   x ← x + MLP(N₂(x))
//   log π(y|x) = Σ_{t ∈ completion} log softmax(W_head N_f(x_{t−1}))[y_t]
// The output head (z = N_f(x) W_headᵀ, log-softmax, gather, backward) is the library's fused linear
// head (logprob/linear/linear.hpp): no [tokens, V] logits are ever held for scoring or training.
// Everything before it has a hand-written backward. Float or double compute; the parameters are
// stored as the compute type (trainable: the Model concept's flat span) or, for a frozen model such
// as the reference policy π_ref, as bf16 (Decoder<float, bf16>: half the memory, docs/models.md),
// widened to float one block at a time before its GEMMs, so that its values are exactly those of
// Decoder<float> holding the same bf16-rounded weights.
// Threads: the GEMMs run over all rows of the batch (Eigen parallelises them), attention over
// (sequence, key/value head) pairs and row-wise kernels over rows; results are deterministic for
// a given thread count, not bit-identical across thread counts (Eigen's GEMM blocking follows it).
// Satisfies dftune::Model and SamplingModel.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/cpu/bf16.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/attention.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/generation/generate.hpp>
#include <dftune/model/decoder/config.hpp>
#include <dftune/model/decoder/kv_decoder.hpp>
#include <dftune/model/decoder/layers.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>
#include <dftune/model/tiny_lm/gelu.hpp>
#include <dftune/model/tiny_lm/layers.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace decoder {

// bfloat16 (Eigen's type: 8-bit exponent, 7-bit mantissa), the weight storage of a frozen
// Decoder<float, bf16>.
using bf16 = logprob::cpu::bf16;

// Whether Decoder<T, W> exists: weights stored as the compute type T, or as bf16 with T = float.
template <class T, class W>
inline constexpr bool valid_storage = std::is_same_v<T, W> || (std::is_same_v<T, float> && std::is_same_v<W, bf16>);

}  // namespace decoder

// A decoder-only transformer of the GPT-2 or Llama family (decoder::Config) with compute type T
// (float or double) and parameters stored as W: T (trainable; a dftune::Model and SamplingModel),
// or decoder::bf16 with T = float (frozen: scoring and logits only, no gradients or generation).
template <class T, class W = T>
class Decoder {
  static_assert(std::is_floating_point_v<T>, "dftune::Decoder<T, W>: T must be float or double");
  static_assert(decoder::valid_storage<T, W>, "dftune::Decoder<T, W>: W must be T, or decoder::bf16 with T = float");
  using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Mat = Eigen::Map<RowMat>;
  using CMat = Eigen::Map<const RowMat>;
  using Row = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  using CRow = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  using C = logprob::compute_t<T>;
  using Ix = Eigen::Index;
  // Parameters, gradients, activations and the head's workspace start at Eigen's packet alignment:
  // Eigen's vectorised reductions peel their first elements up to an aligned address, so with
  // malloc's 16 bytes the sums' order (and the results) depended on where the heap put a buffer,
  // which changed from run to run once a library (Open MPI) moved large buffers off mmap (as TinyLm).
  using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;
  using Store = std::vector<W, Eigen::aligned_allocator<W>>;

 public:
  // The compute type: activations, scores and (when trainable) gradients.
  using scalar_type = T;
  // How the parameters are held: T, or bf16 for a frozen model.
  using storage_type = W;
  // Whether the parameters are stored as the compute type: gradients, training and generation
  // need it.
  static constexpr bool trainable = std::is_same_v<T, W>;

  // GPT-2's initialisation: weights and embeddings ~ N(0, 0.02²), the residual outputs (W_o,
  // W_down) ~ N(0, 0.02²/(2·n_layers)), gains 1, biases 0, drawn in T and then rounded to W (to
  // nearest even), so Decoder<float, bf16>(c, s) holds Decoder<float>(c, s)'s weights rounded.
  // make_layout validates the config first (a dftune::argument_error naming the field).
  explicit Decoder(const decoder::Config& config, std::uint64_t seed = 0)
      : cfg_(config), lay_(decoder::make_layout(config)), theta_(lay_.total, W(0)), grad_(trainable ? lay_.total : 0, T(0)) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 0.02);
    const double resid = 1.0 / std::sqrt(2.0 * static_cast<double>(cfg_.n_layers));
    for (const auto& t : lay_.tensors) {
      const bool gain = t.name.find("ln") != std::string::npos || t.name.find("norm") != std::string::npos;
      const bool bias = t.name.ends_with(".bias");
      const bool out = t.name.find("c_proj") != std::string::npos || t.name.find("o_proj") != std::string::npos ||
                       t.name.find("down_proj") != std::string::npos;
      for (std::size_t k = 0; k < t.size(); ++k)
        theta_[t.offset + k] = static_cast<W>(bias ? T(0) : gain ? T(1) : static_cast<T>(normal(rng) * (out ? resid : 1.0)));
    }
  }

  // Every parameter 0, for a caller that fills them (hf::load_pretrained): no random draws.
  Decoder(const decoder::Config& config, decoder::Uninitialized)
      : cfg_(config), lay_(decoder::make_layout(config)), theta_(lay_.total, W(0)), grad_(trainable ? lay_.total : 0, T(0)) {}

  // The configuration the model was built with.
  const decoder::Config& config() const { return cfg_; }
  // Where each checkpoint tensor sits in parameters(), and its shape in the file.
  const decoder::Layout& layout() const { return lay_; }
  // V, the vocabulary size.
  std::size_t vocab_size() const { return cfg_.vocab; }
  // Every parameter, flat, in layout() order (as stored: T or bf16).
  std::span<W> parameters() { return theta_; }
  // Every parameter, flat, in layout() order (as stored: T or bf16).
  std::span<const W> parameters() const { return theta_; }
  // The gradients, parameters()' layout (trainable models only).
  std::span<T> gradients()
    requires trainable
  {
    return grad_;
  }
  // The gradients, parameters()' layout (trainable models only).
  std::span<const T> gradients() const
    requires trainable
  {
    return grad_;
  }
  // Sets every gradient to 0 (trainable models only).
  void zero_gradients()
    requires trainable
  {
    std::fill(grad_.begin(), grad_.end(), T(0));
  }

  // scores[s] = log π(completion_s | prompt_s), the sum over the completion's tokens. A bf16 model
  // hands the fused head its last hidden rows rounded to bf16 (the head reads H and W_head in one
  // storage type), its only rounding beyond the weights'. Errors (batch, scores size) are thrown
  // before anything changes.
  void sequence_logp(const SequenceBatch& batch, std::span<T> scores) {
    check(batch);
    detail::check_size("scores", scores.size(), batch.size());
    forward(batch.tokens, batch.offsets);
    set_targets(batch);
    if constexpr (!trainable) {
      const std::size_t m = n_ * cfg_.d_model;
      if (hf_store_.size() < m) hf_store_.resize(m);
      logprob::cpu::narrow(hf_.data(), hf_store_.data(), m);
    }
    logprob::linear::forward(head_view(), scores, {}, {}, head_workspace());
  }

  // gradients += Σ_s d_scores[s] ∂scores[s]/∂θ: forward, the fused head's forward_backward (∂/∂N_f(x)
  // on every row, W_head's gradient added), then every layer backward (trainable models only).
  void accumulate_gradients(const SequenceBatch& batch, std::span<const T> d_scores)
    requires trainable
  {
    check(batch);
    detail::check_size("d_scores", d_scores.size(), batch.size());
    forward(batch.tokens, batch.offsets);
    set_targets(batch);
    const std::size_t D = cfg_.d_model;
    grow(dh_, n_ * D);
    head_scores_.resize(batch.size());
    const logprob::linear::LinearGrads<T> g{.hidden = std::span<T>(dh_.data(), n_ * D),
                                            .proj = std::span<T>(grad_.data() + lay_.head, cfg_.vocab * D)};
    logprob::linear::forward_backward(head_view(), d_scores, g, std::span<T>(head_scores_), {}, {}, head_workspace());
    backward(batch.tokens, batch.offsets);
  }

  // The logits of every row, out [n, V] (tests, evaluation): z_r = W_head N_f(x_r), from the float
  // hidden rows. A bf16 model widens W_head whole for this call (V·d floats, freed after).
  void logits(std::span<const token_t> tokens, std::span<const std::int64_t> offsets, std::span<T> out) {
    const SequenceBatch b{.tokens = tokens, .offsets = offsets, .prompt_len = {}};
    check_rows(b);
    detail::check_size_product("out", out.size(), tokens.size(), cfg_.vocab, "out (rows·vocab)");
    forward(tokens, offsets);
    const std::size_t D = cfg_.d_model, V = cfg_.vocab;
    Buffer wide_head;
    const T* head = trainable ? param(lay_.head) : widened(lay_.head, lay_.head + V * D, wide_head);
    Mat(out.data(), static_cast<Ix>(n_), static_cast<Ix>(V)).noalias() =
        CMat(hf_.data(), static_cast<Ix>(n_), static_cast<Ix>(D)) * CMat(head, static_cast<Ix>(V), static_cast<Ix>(D)).transpose();
  }

  // Batched generation (SamplingModel) with a key/value cache (model/generation/generate.hpp,
  // decoder/kv_decoder.hpp): prompt p draws from its own stream (seed, p). The cache is checked
  // against limits.max_cache_bytes before anything is allocated. Trainable models only (the cached
  // decoder reads the parameters as T).
  Sequences generate(const Prompts& prompts, std::size_t max_new, const SamplingOptions& opt,
                     std::optional<token_t> eos = std::nullopt, const generation::Limits& limits = {}) const
    requires trainable
  {
    decoder::KvDecoder<T> kv(cfg_, lay_, theta_);
    return generation::generate(kv, prompts, max_new, opt, eos, limits);
  }

  // The same tokens without a cache (the reference the cached path is tested against): each step
  // runs the forward of the active sequences and draws from the last row's logits. Trainable
  // models only.
  Sequences generate_uncached(const Prompts& prompts, std::size_t max_new, const SamplingOptions& opt,
                              std::optional<token_t> eos = std::nullopt)
    requires trainable
  {
    validate(prompts, cfg_.vocab);
    validate(opt);
    const std::size_t P = prompts.size(), V = cfg_.vocab, D = cfg_.d_model;
    for (std::size_t p = 0; p < P; ++p)
      if (const std::size_t len = prompts.prompt(p).size(); len > cfg_.max_len || max_new > cfg_.max_len - len)
        detail::fail_at("prompts", p, "length " + std::to_string(len) + " + max_new " + std::to_string(max_new),
                        "at most max_len = " + std::to_string(cfg_.max_len));
    std::vector<std::vector<token_t>> seq(P);
    std::vector<SplitMix64> rng;
    for (std::size_t p = 0; p < P; ++p) {
      const auto pr = prompts.prompt(p);
      seq[p].assign(pr.begin(), pr.end());
      rng.emplace_back(opt.seed, p);
    }
    std::vector<std::size_t> active(P);
    for (std::size_t p = 0; p < P; ++p) active[p] = p;
    std::vector<token_t> cur;
    std::vector<std::int64_t> cur_off;
    Buffer z(V);
    std::vector<double> probs(V);
    std::vector<std::int32_t> order(V);
    const CMat head(theta_.data() + lay_.head, static_cast<Ix>(V), static_cast<Ix>(D));
    for (std::size_t step = 0; step < max_new && !active.empty(); ++step) {
      cur.clear();
      cur_off.assign(1, 0);
      for (std::size_t p : active) {
        cur.insert(cur.end(), seq[p].begin(), seq[p].end());
        cur_off.push_back(static_cast<std::int64_t>(cur.size()));
      }
      forward(cur, cur_off);
      std::size_t still = 0;
      for (std::size_t a = 0; a < active.size(); ++a) {
        const std::size_t p = active[a], r = static_cast<std::size_t>(cur_off[a + 1] - 1);
        Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(z.data(), static_cast<Ix>(V)).noalias() =
            head * Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(hf_.data() + r * D, static_cast<Ix>(D));
        const token_t y = sample_token(std::span<const T>(z), opt, rng[p].uniform(), probs, order);
        seq[p].push_back(y);
        if (!(eos && y == *eos)) active[still++] = p;
      }
      active.resize(still);
    }
    Sequences res;
    for (std::size_t p = 0; p < P; ++p) {
      const std::size_t pl = prompts.prompt(p).size();
      res.push(std::span<const token_t>(seq[p].data(), pl), std::span<const token_t>(seq[p].data() + pl, seq[p].size() - pl));
    }
    return res;
  }

 private:
  static void grow(Buffer& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
  // Parameter `off` as T: in theta_ itself, or (bf16) in the float window last widened, which must
  // hold it (forward widens each block, then the final norm, before reading them).
  const T* param(std::size_t off) const {
    if constexpr (trainable) return theta_.data() + off;
    else return window_.data() + (off - window_at_);
  }
  CMat pmat(std::size_t off, std::size_t r, std::size_t c) const { return CMat(param(off), static_cast<Ix>(r), static_cast<Ix>(c)); }

  // Widens parameters [begin, end) into `into` from begin rounded down to Eigen's packet alignment,
  // so each tensor keeps its address modulo the alignment that it has in a float model's theta_
  // (Eigen's kernels then take the same path); returns parameter begin's address in `into`.
  const T* widened(std::size_t begin, std::size_t end, Buffer& into, std::size_t* at = nullptr) const {
    constexpr std::size_t packet = EIGEN_MAX_ALIGN_BYTES / sizeof(T) > 0 ? EIGEN_MAX_ALIGN_BYTES / sizeof(T) : 1;
    const std::size_t from = begin - begin % packet;
    grow(into, end - from);
    if constexpr (trainable) std::copy(theta_.data() + from, theta_.data() + end, into.data());
    else logprob::cpu::widen(theta_.data() + from, into.data(), end - from);
    if (at) *at = from;
    return into.data() + (begin - from);
  }
  // The window param() reads: the parameters [begin, end) as T (bf16 models; nothing for T storage).
  void widen_window(std::size_t begin, std::size_t end) {
    if constexpr (!trainable) widened(begin, end, window_, &window_at_);
  }
  // Block l's parameters are contiguous (make_layout adds them in order), from its first norm's
  // gain up to the next block's, or the final norm's.
  void widen_block(std::size_t l) {
    widen_window(lay_.blocks[l].norm1_g, l + 1 < cfg_.n_layers ? lay_.blocks[l + 1].norm1_g : lay_.normf_g);
  }
  Mat gmat(std::size_t off, std::size_t r, std::size_t c) { return Mat(grad_.data() + off, static_cast<Ix>(r), static_cast<Ix>(c)); }
  static Mat act(Buffer& buf, std::size_t at, std::size_t r, std::size_t c) {
    return Mat(buf.data() + at, static_cast<Ix>(r), static_cast<Ix>(c));
  }
  bool has_bias_norm() const { return cfg_.norm() == decoder::Norm::layer; }
  bool center() const { return cfg_.norm() == decoder::Norm::layer; }

  void check_rows(const SequenceBatch& b) const {
    if (b.offsets.empty()) detail::fail("batch.offsets", "size 0", "size S + 1 >= 1");
    if (b.offsets.front() != 0 || b.offsets.back() != static_cast<std::int64_t>(b.tokens.size()))
      detail::fail("batch.offsets", "a table not spanning the tokens", "[0, ..., tokens.size()]");
    for (std::size_t s = 0; s + 1 < b.offsets.size(); ++s) {
      const auto len = b.offsets[s + 1] - b.offsets[s];
      if (len < 1 || static_cast<std::size_t>(len) > cfg_.max_len)
        detail::fail_at("batch.sequence", s, "length " + std::to_string(len), "in [1, max_len = " + std::to_string(cfg_.max_len) + "]");
    }
    for (std::size_t t = 0; t < b.tokens.size(); ++t)
      if (b.tokens[t] < 0 || static_cast<std::size_t>(b.tokens[t]) >= cfg_.vocab)
        detail::fail_at("batch.tokens", t, b.tokens[t], "in [0, vocab = " + std::to_string(cfg_.vocab) + ")");
  }
  void check(const SequenceBatch& b) const {
    validate(b, cfg_.vocab);
    check_rows(b);
  }

  // Grows the activation buffers for n rows (never shrinks); every size checked first.
  void reserve(std::size_t n, std::span<const std::int64_t> offsets) {
    const std::size_t L = cfg_.n_layers, D = cfg_.d_model;
    const std::string_view w = "batch (activation sizes)";
    auto elems = [&](auto... k) {
      const std::size_t r = detail::checked_product(w, k...);
      if (r > decoder::kMaxElements) detail::fail(w, r, "a buffer that fits in memory");
      return r;
    };
    std::size_t att = 0;
    for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
      const auto Ls = static_cast<std::size_t>(offsets[s + 1] - offsets[s]);
      att = detail::checked_add(w, att, elems(cfg_.n_heads, Ls, Ls));
    }
    const std::size_t x = elems(L + 1, n, D), ld = elems(L, n, D), qkv = elems(L, n, cfg_.qkv_width()), q = elems(L, n, cfg_.q_width()),
                      up = elems(L, n, cfg_.up_width()), ff = elems(L, n, cfg_.d_ff), ln = elems(L, n), pr = elems(L, att);
    grow(x_, x);
    for (auto* v : {&h1_, &xmid_, &h2_}) grow(*v, ld);
    grow(qkv_, qkv);
    grow(att_, q);
    grow(up_, up);
    grow(act_, ff);
    for (auto* v : {&mean1_, &rstd1_, &mean2_, &rstd2_}) grow(*v, ln);
    grow(hf_, n * D);
    grow(meanf_, n);
    grow(rstdf_, n);
    grow(probs_, pr);
    probs_stride_ = att;
    att_off_.assign(offsets.size(), 0);
    for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
      const auto Ls = static_cast<std::size_t>(offsets[s + 1] - offsets[s]);
      att_off_[s + 1] = att_off_[s] + cfg_.n_heads * Ls * Ls;
    }
    pos_.resize(n);
    std::size_t longest = 0;
    for (std::size_t s = 0; s + 1 < offsets.size(); ++s)
      for (auto r = offsets[s]; r < offsets[s + 1]; ++r) {
        pos_[static_cast<std::size_t>(r)] = static_cast<std::size_t>(r - offsets[s]);
        longest = std::max(longest, pos_[static_cast<std::size_t>(r)] + 1);
      }
    if (cfg_.positions() == decoder::Positions::rope && rope_len_ < longest) {
      decoder::rope_table(cfg_, longest, rope_cos_, rope_sin_);
      rope_len_ = longest;
    }
  }

  // Rows of sequence s, pairs (sequence, kv head): the units of parallel attention work.
  template <class F>
  void for_each_sequence_kv_head(std::span<const std::int64_t> offsets, F&& f) {
    const std::size_t S = offsets.size() - 1, G = cfg_.n_kv_heads;
    const auto units = static_cast<std::ptrdiff_t>(S * G);
    DFTUNE_OMP(parallel for schedule(dynamic, 1))
    for (std::ptrdiff_t u = 0; u < units; ++u) f(static_cast<std::size_t>(u) / G, static_cast<std::size_t>(u) % G);
  }

  void rope(T* qkv_layer, bool inverse) {
    const std::size_t half = cfg_.head_dim / 2, QKV = cfg_.qkv_width(), heads = cfg_.n_heads + cfg_.n_kv_heads;
    const auto n = static_cast<std::ptrdiff_t>(n_);
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const std::size_t p = pos_[static_cast<std::size_t>(r)];
      for (std::size_t h = 0; h < heads; ++h)  // q heads then k heads: contiguous in the row
        decoder::rope_rotate(qkv_layer + static_cast<std::size_t>(r) * QKV + h * cfg_.head_dim, rope_cos_.data() + p * half,
                             rope_sin_.data() + p * half, half, inverse);
    }
  }

  void norm_rows(const T* x, std::size_t g, std::size_t b, T* y, T* mean, T* rstd) {
    const std::size_t D = cfg_.d_model;
    const T* gp = param(g);
    const T* bp = has_bias_norm() ? param(b) : nullptr;
    const auto n = static_cast<std::ptrdiff_t>(n_);
    const bool c = center();
    const T eps = static_cast<T>(cfg_.norm_eps);
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const auto i = static_cast<std::size_t>(r);
      decoder::norm_forward(x + i * D, gp, bp, c, eps, y + i * D, mean + i, rstd + i, D);
    }
  }

  // dx += ∂/∂x of the norm given dy, and its gain's (and bias's) gradients.
  void norm_rows_backward(const T* dy, const T* x, std::size_t g, std::size_t b, const T* mean, const T* rstd, T* dx) {
    const std::size_t D = cfg_.d_model;
    const T* gp = param(g);
    const auto n = static_cast<std::ptrdiff_t>(n_);
    const bool c = center();
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const auto i = static_cast<std::size_t>(r);
      decoder::norm_backward_input(dy + i * D, x + i * D, gp, mean[i], rstd[i], c, dx + i * D, D);
    }
    decoder::norm_backward_params(dy, x, mean, rstd, grad_.data() + g, has_bias_norm() ? grad_.data() + b : nullptr, n_, D);
  }

  void forward(std::span<const token_t> tokens, std::span<const std::int64_t> offsets) {
    const std::size_t n = tokens.size(), D = cfg_.d_model, QKV = cfg_.qkv_width(), QW = cfg_.q_width(), KW = cfg_.kv_width(),
                      U = cfg_.up_width(), F = cfg_.d_ff, dh = cfg_.head_dim, grp = cfg_.n_heads / cfg_.n_kv_heads;
    reserve(n, offsets);
    n_ = n;
    const T scale = T(1) / std::sqrt(static_cast<T>(dh));
    // The embedding rows are read where they are stored (a bf16 value widens exactly to T).
    for (std::size_t r = 0; r < n; ++r) {
      const W* te = theta_.data() + lay_.tok_emb + static_cast<std::size_t>(tokens[r]) * D;
      T* x = x_.data() + r * D;
      if (cfg_.positions() == decoder::Positions::learned) {
        const W* pe = theta_.data() + lay_.pos_emb + pos_[r] * D;
        for (std::size_t j = 0; j < D; ++j) x[j] = static_cast<T>(te[j]) + static_cast<T>(pe[j]);
      } else {
        for (std::size_t j = 0; j < D; ++j) x[j] = static_cast<T>(te[j]);
      }
    }
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      widen_block(l);
      const auto& k = lay_.blocks[l];
      const std::size_t o = l * n * D, ol = l * n;
      norm_rows(x_.data() + o, k.norm1_g, k.norm1_b, h1_.data() + o, mean1_.data() + ol, rstd1_.data() + ol);
      Mat qkv = act(qkv_, l * n * QKV, n, QKV);
      qkv.noalias() = act(h1_, o, n, D) * pmat(k.w_qkv, QKV, D).transpose();
      if (cfg_.qkv_bias) qkv.rowwise() += CRow(param(k.b_qkv), static_cast<Ix>(QKV));
      if (cfg_.positions() == decoder::Positions::rope) rope(qkv.data(), false);
      T* probs = probs_.data() + l * probs_stride_;
      for_each_sequence_kv_head(offsets, [&](std::size_t s, std::size_t g) {
        const auto rs = static_cast<std::size_t>(offsets[s]), Ls = static_cast<std::size_t>(offsets[s + 1]) - rs;
        const T* base = qkv_.data() + (l * n + rs) * QKV;
        for (std::size_t h = g * grp; h < (g + 1) * grp; ++h)
          attention::forward(base + h * dh, base + QW + g * dh, base + QW + KW + g * dh, QKV, probs + att_off_[s] + h * Ls * Ls,
                             att_.data() + (l * n + rs) * QW + h * dh, QW, Ls, dh, scale);
      });
      Mat xmid = act(xmid_, o, n, D);
      xmid.noalias() = act(att_, l * n * QW, n, QW) * pmat(k.w_o, D, QW).transpose();
      if (cfg_.o_bias) xmid.rowwise() += CRow(param(k.b_o), static_cast<Ix>(D));
      xmid += act(x_, o, n, D);
      norm_rows(xmid_.data() + o, k.norm2_g, k.norm2_b, h2_.data() + o, mean2_.data() + ol, rstd2_.data() + ol);
      Mat up = act(up_, l * n * U, n, U);
      up.noalias() = act(h2_, o, n, D) * pmat(k.w_up, U, D).transpose();
      if (cfg_.mlp_bias) up.rowwise() += CRow(param(k.b_up), static_cast<Ix>(U));
      activation_forward(up_.data() + l * n * U, act_.data() + l * n * F);
      Mat xn = act(x_, o + n * D, n, D);
      xn.noalias() = act(act_, l * n * F, n, F) * pmat(k.w_down, D, F).transpose();
      if (cfg_.mlp_bias) xn.rowwise() += CRow(param(k.b_down), static_cast<Ix>(D));
      xn += xmid;
    }
    widen_window(lay_.normf_g, lay_.normf_g + (has_bias_norm() ? 2 : 1) * D);  // ln_f.weight, ln_f.bias: adjacent
    norm_rows(x_.data() + cfg_.n_layers * n * D, lay_.normf_g, lay_.normf_b, hf_.data(), meanf_.data(), rstdf_.data());
  }

  void activation_forward(const T* up, T* a) {
    const std::size_t U = cfg_.up_width(), F = cfg_.d_ff;
    const auto n = static_cast<std::ptrdiff_t>(n_);
    const bool swiglu = cfg_.mlp() == decoder::Mlp::swiglu;
    dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not in a worker's gelu_values
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const T* u = up + static_cast<std::size_t>(r) * U;
      T* ar = a + static_cast<std::size_t>(r) * F;
      if (swiglu) decoder::swiglu_forward(u, ar, F);
      else tiny_lm::gelu_values(u, ar, F);
    }
  }

  void activation_backward(const T* up, const T* da, T* dup) {
    const std::size_t U = cfg_.up_width(), F = cfg_.d_ff;
    const auto n = static_cast<std::ptrdiff_t>(n_);
    const bool swiglu = cfg_.mlp() == decoder::Mlp::swiglu;
    dftune::cpu::active_isa();
    DFTUNE_OMP(parallel for schedule(static))
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const T* u = up + static_cast<std::size_t>(r) * U;
      const T* g = da + static_cast<std::size_t>(r) * F;
      T* du = dup + static_cast<std::size_t>(r) * U;
      if (swiglu) decoder::swiglu_backward(u, g, du, F);
      else tiny_lm::gelu_backward(u, g, du, F);
    }
  }

  // Row r's logits predict token r + 1; only completion tokens are scored.
  void set_targets(const SequenceBatch& b) {
    targets_.assign(n_, 0);
    weights_.assign(n_, C(0));
    for (std::size_t s = 0; s < b.size(); ++s)
      for (auto r = b.offsets[s] + b.prompt_len[s] - 1; r + 1 < b.offsets[s + 1]; ++r) {
        targets_[static_cast<std::size_t>(r)] = b.tokens[static_cast<std::size_t>(r + 1)];
        weights_[static_cast<std::size_t>(r)] = C(1);
      }
    offsets_.assign(b.offsets.begin(), b.offsets.end());
  }

  // The fused head's input in the storage type (a bf16 model's hidden rows: hf_store_, rounded by
  // sequence_logp).
  logprob::linear::LinearLogits<W> head_view() const {
    const std::size_t D = cfg_.d_model, V = cfg_.vocab;
    const W* hidden = nullptr;
    if constexpr (trainable) hidden = hf_.data();
    else hidden = hf_store_.data();
    return {.hidden = std::span<const W>(hidden, n_ * D), .proj = std::span<const W>(theta_.data() + lay_.head, V * D),
            .bias = {}, .dim = D, .vocab = V, .layout = logprob::linear::Layout::vocab_major, .targets = targets_,
            .weights = weights_, .offsets = offsets_};
  }

  std::span<std::byte> head_workspace() {
    const std::size_t need = logprob::linear::workspace_size(head_view());
    if (head_ws_.size() < need) head_ws_.resize(need);
    return head_ws_;
  }

  // Backward of forward() from dh_ = ∂/∂N_f(x) (the fused head has added W_head's gradient).
  void backward(std::span<const token_t> tokens, std::span<const std::int64_t> offsets) {
    const std::size_t n = n_, D = cfg_.d_model, QKV = cfg_.qkv_width(), QW = cfg_.q_width(), KW = cfg_.kv_width(), U = cfg_.up_width(),
                      F = cfg_.d_ff, dh = cfg_.head_dim, grp = cfg_.n_heads / cfg_.n_kv_heads;
    const T scale = T(1) / std::sqrt(static_cast<T>(dh));
    grow(dx_, n * D);
    grow(datt_, n * QW);
    grow(dqkv_, n * QKV);
    grow(dup_, n * U);
    grow(dact_, n * F);
    Mat dx = act(dx_, 0, n, D), dhid = act(dh_, 0, n, D);
    dx.setZero();
    norm_rows_backward(dh_.data(), x_.data() + cfg_.n_layers * n * D, lay_.normf_g, lay_.normf_b, meanf_.data(), rstdf_.data(), dx_.data());
    for (std::size_t l = cfg_.n_layers; l-- > 0;) {
      const auto& k = lay_.blocks[l];
      const std::size_t o = l * n * D, ol = l * n;
      // x_out = x_mid + act(N₂(x_mid) W_upᵀ + b_up) W_downᵀ + b_down   (dx: ∂/∂x_out, then ∂/∂x_mid)
      gmat(k.w_down, D, F).noalias() += dx.transpose() * act(act_, l * n * F, n, F);
      if (cfg_.mlp_bias) Row(grad_.data() + k.b_down, static_cast<Ix>(D)) += dx.colwise().sum();
      Mat dact = act(dact_, 0, n, F);
      dact.noalias() = dx * pmat(k.w_down, D, F);
      activation_backward(up_.data() + l * n * U, dact_.data(), dup_.data());
      Mat dup = act(dup_, 0, n, U);
      gmat(k.w_up, U, D).noalias() += dup.transpose() * act(h2_, o, n, D);
      if (cfg_.mlp_bias) Row(grad_.data() + k.b_up, static_cast<Ix>(U)) += dup.colwise().sum();
      dhid.noalias() = dup * pmat(k.w_up, U, D);
      norm_rows_backward(dh_.data(), xmid_.data() + o, k.norm2_g, k.norm2_b, mean2_.data() + ol, rstd2_.data() + ol, dx_.data());
      // x_mid = x_in + att W_oᵀ + b_o   (dx: ∂/∂x_mid, then ∂/∂x_in)
      gmat(k.w_o, D, QW).noalias() += dx.transpose() * act(att_, l * n * QW, n, QW);
      if (cfg_.o_bias) Row(grad_.data() + k.b_o, static_cast<Ix>(D)) += dx.colwise().sum();
      Mat datt = act(datt_, 0, n, QW);
      datt.noalias() = dx * pmat(k.w_o, D, QW);
      Mat dqkv = act(dqkv_, 0, n, QKV);
      dqkv.setZero();
      const T* probs = probs_.data() + l * probs_stride_;
      for_each_sequence_kv_head(offsets, [&](std::size_t s, std::size_t g) {
        const auto rs = static_cast<std::size_t>(offsets[s]), Ls = static_cast<std::size_t>(offsets[s + 1]) - rs;
        const T* base = qkv_.data() + (l * n + rs) * QKV;
        T* dbase = dqkv_.data() + rs * QKV;
        thread_local std::vector<T> dA;
        if (dA.size() < Ls) dA.resize(Ls);
        for (std::size_t h = g * grp; h < (g + 1) * grp; ++h)
          attention::backward(base + h * dh, base + QW + g * dh, base + QW + KW + g * dh, QKV, probs + att_off_[s] + h * Ls * Ls,
                              datt_.data() + rs * QW + h * dh, QW, dbase + h * dh, dbase + QW + g * dh, dbase + QW + KW + g * dh,
                              dA.data(), Ls, dh, scale);
      });
      if (cfg_.positions() == decoder::Positions::rope) rope(dqkv_.data(), true);
      gmat(k.w_qkv, QKV, D).noalias() += dqkv.transpose() * act(h1_, o, n, D);
      if (cfg_.qkv_bias) Row(grad_.data() + k.b_qkv, static_cast<Ix>(QKV)) += dqkv.colwise().sum();
      dhid.noalias() = dqkv * pmat(k.w_qkv, QKV, D);
      norm_rows_backward(dh_.data(), x_.data() + o, k.norm1_g, k.norm1_b, mean1_.data() + ol, rstd1_.data() + ol, dx_.data());
    }
    // x⁰_r = E[tok_r] (+ P[pos_r])
    for (std::size_t r = 0; r < n; ++r) {
      const T* g = dx_.data() + r * D;
      T* te = grad_.data() + lay_.tok_emb + static_cast<std::size_t>(tokens[r]) * D;
      for (std::size_t j = 0; j < D; ++j) te[j] += g[j];
      if (cfg_.positions() == decoder::Positions::learned) {
        T* pe = grad_.data() + lay_.pos_emb + pos_[r] * D;
        for (std::size_t j = 0; j < D; ++j) pe[j] += g[j];
      }
    }
  }

  decoder::Config cfg_;
  decoder::Layout lay_;
  Store theta_;
  Buffer grad_;
  Buffer window_;               // bf16 models: the parameters being read, as T (param())
  std::size_t window_at_ = 0;   // the parameter index of window_[0]
  Store hf_store_;              // bf16 models: the fused head's input rows
  std::size_t n_ = 0, probs_stride_ = 0, rope_len_ = 0;
  Buffer x_, h1_, qkv_, att_, xmid_, h2_, up_, act_, hf_, probs_;
  Buffer mean1_, rstd1_, mean2_, rstd2_, meanf_, rstdf_;
  Buffer rope_cos_, rope_sin_;
  std::vector<std::size_t> att_off_, pos_;
  Buffer dx_, dh_, datt_, dqkv_, dup_, dact_;
  std::vector<token_t> targets_;
  std::vector<C> weights_;
  std::vector<std::int64_t> offsets_;
  Buffer head_scores_;
  std::vector<std::byte, Eigen::aligned_allocator<std::byte>> head_ws_;
};

DFTUNE_NAMESPACE_END
