#pragma once
// A tiny decoder-only transformer on Eigen (pre-layer-norm GPT):
//   x⁰_t = E[tok_t] + P[t]
//   per block:  x ← x + Attn(LN₁(x)),  x ← x + W₂ gelu(W₁ LN₂(x))        (causal, multi-head)
//   z_t = LN_f(x_t) W_out + b_out,   log π(y|x) = Σ_{t ∈ completion} log softmax(z_{t−1})[y_t]
// It satisfies dftune::Model and SamplingModel. The output head (z = LN_f(x) W_out + b_out, the
// log-softmax, the gather and their backward) is the library's fused linear head
// (logprob/linear/linear.hpp), which never holds more than a chunk of logits and skips prompt rows;
// this file maps tokens to the final hidden states and their gradient back to the parameters, with
// a hand-written backward of every layer.
// A batch is cut into chunks of whole sequences by a fixed rule (tiny_lm::chunk_count: about 64
// rows each, at most 16 chunks, a function of the batch alone); threads take chunks, each chunk
// runs the whole network on its rows (one-thread GEMMs over exactly those rows, through the build's
// GEMM, logprob::linear::DefaultGemm, as the fused head) and the chunks' gradients are added in
// chunk order. So scores and gradients are bit-identical for any number of OpenMP threads, also
// when called from inside another parallel region, and a run resumed with another thread count
// continues bit-exactly. Buffers grow with the
// batch and are reused: nothing is allocated inside the per-token generation loop. Every buffer
// size is checked (tiny_lm::buffer_sizes): a config or batch whose sizes would wrap around size_t
// is a dftune::error before anything is allocated.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/generation/generate.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>
#include <dftune/model/tiny_lm/config.hpp>
#include <dftune/model/tiny_lm/gelu.hpp>
#include <dftune/model/tiny_lm/kv_decoder.hpp>
#include <dftune/model/tiny_lm/layers.hpp>
#include <dftune/model/tiny_lm/threads.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// A small GPT-style language model (the file's comment has the network), T = float or double: a
// complete dftune::Model and SamplingModel for tests, examples and the demo. Example:
//
//     TinyLm<float> model(tiny_lm::Config{.vocab = 32, .max_len = 24}, /*seed=*/1);
//     std::vector<float> scores(batch.size());
//     model.sequence_logp(batch, scores);          // log π(completion | prompt) per sequence
//
// Bad input (a config, a batch whose tokens are outside [0, vocab) or longer than max_len, spans
// of the wrong size) is a dftune::argument_error before anything changes.
template <class T>
class TinyLm {
  static_assert(std::is_floating_point_v<T>, "dftune::TinyLm<T>: T must be float or double");
  using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Mat = Eigen::Map<RowMat>;
  using CMat = Eigen::Map<const RowMat>;
  using CRow = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  using Row = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  // Parameters, gradients and activations start at Eigen's packet alignment (64 bytes with
  // AVX-512): Eigen's vectorised reductions peel their first elements up to an aligned address, so
  // with malloc's 16 bytes the sums' order — and results — changed from run to run and with the
  // thread count in builds with packets wider than 16 bytes (-march=native).
  using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;
  using C = logprob::compute_t<T>;

 public:
  using scalar_type = T;  // the parameters' type (Model)

  // Weights ~ N(0, 1/fan_in) (residual outputs w_o, w_2 further scaled by 1/sqrt(2·n_layers) so the
  // residual stream keeps its scale), embeddings ~ N(0, init_std²), gains 1, biases 0.
  // make_layout validates the config (tiny_lm::validate) before any parameter is allocated.
  explicit TinyLm(const tiny_lm::Config& config, std::uint64_t seed = 0)
      : cfg_(config), lay_(tiny_lm::make_layout(config)), theta_(lay_.total, T(0)), grad_(lay_.total, T(0)) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    const double resid = 1.0 / std::sqrt(2.0 * static_cast<double>(cfg_.n_layers));
    for (const auto& g : lay_.groups) {
      const std::string n = g.name.substr(g.name.find('.') + 1);
      double sd = 0, fill = 0;
      if (n == "tok_emb" || n == "pos_emb") sd = cfg_.init_std;
      else if (n.starts_with("w_")) sd = 1.0 / std::sqrt(static_cast<double>(g.rows)) * (n == "w_o" || n == "w_2" ? resid : 1.0);
      else if (n.ends_with("_g")) fill = 1;
      for (std::size_t k = 0; k < g.size(); ++k) theta_[g.offset + k] = static_cast<T>(sd > 0 ? sd * normal(rng) : fill);
    }
  }

  // The configuration the model was built with.
  const tiny_lm::Config& config() const { return cfg_; }
  // Where each tensor lies in parameters() (tiny_lm::make_layout).
  const tiny_lm::Layout& layout() const { return lay_; }
  // V, the number of tokens.
  std::size_t vocab_size() const { return cfg_.vocab; }
  // Non-const access may write the parameters: activations kept for a backward are forgotten.
  std::span<T> parameters() {
    forget_kept();
    return theta_;
  }
  // Every parameter, flat, in layout() order.
  std::span<const T> parameters() const { return theta_; }
  // The gradient buffer, one value per parameter; accumulate_gradients adds into it.
  std::span<T> gradients() { return grad_; }
  // Sets every gradient to 0 (the optimizer calls it before each step).
  void zero_gradients() { std::fill(grad_.begin(), grad_.end(), T(0)); }

  // scores[s] = log π(completion_s | prompt_s).
  void sequence_logp(const SequenceBatch& batch, std::span<T> scores) {
    check(batch);
    detail::check_size("scores", scores.size(), batch.size());
    forward(batch.tokens, batch.offsets, /*logits=*/false);
    set_targets(batch);
    logprob::linear::forward(head_view(), scores, {}, {}, head_workspace());
  }

  // The same scores, and the batch's activations kept for the next accumulate_gradients on an equal
  // batch if they fit the bound of set_activation_memory (KeepsActivations, docs/backend.md).
  // Returns whether they were kept.
  bool sequence_logp(const SequenceBatch& batch, std::span<T> scores, KeepForBackward) {
    sequence_logp(batch, scores);
    return keep(batch);
  }

  // gradients += Σ_s d_scores[s] ∂scores[s]/∂θ: the activations kept by the scoring pass of an
  // equal batch (same tokens, offsets and prompt lengths; parameters not touched since) or else
  // forward again, the fused head's forward_backward (d_scores is known: one pass) gives ∂/∂LN_f(x)
  // on every row and adds into the gradients of W_out and b_out, then every layer backward. The
  // forward is deterministic, so kept or recomputed activations are the same bits.
  void accumulate_gradients(const SequenceBatch& batch, std::span<const T> d_scores) {
    check(batch);
    detail::check_size("d_scores", d_scores.size(), batch.size());
    if (Kept* k = find_kept(batch)) {
      swap_working(*k);  // the kept activations become the working ones; k keeps the old as spare
      k->live = false;
      ++forwards_skipped_;
    } else {
      forward(batch.tokens, batch.offsets, /*logits=*/false);
    }
    set_targets(batch);
    if (dh_.size() < sizes_.rows_d) dh_.resize(sizes_.rows_d);
    head_scores_.resize(batch.size());
    const logprob::linear::LinearGrads<T> head_grads{.hidden = std::span<T>(dh_.data(), n_ * d()),
                                                     .proj = std::span<T>(grad_.data() + lay_.w_out, d() * cfg_.vocab),
                                                     .bias = std::span<T>(grad_.data() + lay_.b_out, cfg_.vocab)};
    logprob::linear::forward_backward(head_view(), d_scores, head_grads, std::span<T>(head_scores_), {}, {}, head_workspace());
    backward(batch.tokens, batch.offsets);
  }

  // ---- one forward per scored step -----------------------------------------------------------
  // Bytes of activations the model may keep for backwards beyond its working buffers: kept
  // batches and the spare buffers they leave (reused by the next forwards). 0, the default, keeps
  // nothing. A batch's activations take about 4·L·n·(3d + 1.5·d_ff) + L·H·Σ len² values for n tokens.
  void set_activation_memory(std::size_t max_bytes) {
    keep_max_ = max_bytes;
    if (keep_max_ < kept_bytes(/*live_only=*/true)) forget_kept();
    trim_spares();
  }
  // The bound set by set_activation_memory (0: nothing is kept).
  std::size_t activation_memory() const { return keep_max_; }
  // What the kept activations hold now, spares included (<= activation_memory()).
  std::size_t kept_bytes() const { return kept_bytes(false); }
  // accumulate_gradients calls that took kept activations instead of a forward.
  std::size_t forwards_skipped() const { return forwards_skipped_; }

  // Batched generation (SamplingModel) with a key/value cache (model/generation/generate.hpp):
  // O(T) work per new token. Each prompt draws from its own random stream (seed, p), so results do
  // not depend on threads or on which other prompts are in the batch. The cache is sized and
  // checked against limits.max_cache_bytes before anything is allocated.
  Sequences generate(const Prompts& prompts, std::size_t max_new, const SamplingOptions& opt,
                     std::optional<token_t> eos = std::nullopt, const generation::Limits& limits = {}) const {
    tiny_lm::KvDecoder<T> decoder(cfg_, lay_, theta_);
    return generation::generate(decoder, prompts, max_new, opt, eos, limits);
  }

  // The same tokens without a cache, recomputing every prefix at every step (O(T²·V) work): the
  // reference the cached path is tested against.
  Sequences generate_uncached(const Prompts& prompts, std::size_t max_new, const SamplingOptions& opt,
                              std::optional<token_t> eos = std::nullopt) {
    validate(prompts, cfg_.vocab);
    validate(opt);
    const std::size_t P = prompts.size();
    // length + max_new <= max_len, written so that no sum can wrap (max_new may be SIZE_MAX).
    for (std::size_t p = 0; p < P; ++p)
      if (const std::size_t len = prompts.prompt(p).size(); len > cfg_.max_len || max_new > cfg_.max_len - len)
        detail::fail_at("prompts", p, "length " + std::to_string(len) + " + max_new " + std::to_string(max_new),
                        "at most max_len = " + std::to_string(cfg_.max_len));
    const std::size_t total = detail::checked_add("generate: prompt tokens + prompts·max_new", prompts.tokens.size(),
                                                  detail::checked_mul("generate: prompts·max_new", P, max_new));
    // Every buffer at its final size before the token loop.
    reserve(total, P, "generate: prompts + completions");
    std::vector<token_t> out(total);
    std::vector<std::int64_t> len(P), start(P), cur_offsets(P + 1);
    std::vector<std::size_t> active(P);
    std::vector<token_t> cur(out.size());
    std::vector<SplitMix64> rng;
    rng.reserve(P);
    std::vector<double> probs(cfg_.vocab);
    std::vector<std::int32_t> order(cfg_.vocab);
    for (std::size_t p = 0; p < P; ++p) {
      start[p] = static_cast<std::int64_t>(p == 0 ? 0 : start[p - 1] + len[p - 1] + static_cast<std::int64_t>(max_new));
      const auto pr = prompts.prompt(p);
      std::copy(pr.begin(), pr.end(), out.begin() + start[p]);
      len[p] = static_cast<std::int64_t>(pr.size());
      rng.emplace_back(opt.seed, p);
    }
    std::size_t n_active = P;
    for (std::size_t p = 0; p < P; ++p) active[p] = p;
    for (std::size_t step = 0; step < max_new && n_active > 0; ++step) {
      // Pack the active sequences and run the whole forward (sequences are short: recomputing
      // the prefix costs less than the bookkeeping of a KV cache here).
      std::size_t n = 0;
      cur_offsets[0] = 0;
      for (std::size_t a = 0; a < n_active; ++a) {
        const std::size_t p = active[a];
        std::copy(out.begin() + start[p], out.begin() + start[p] + len[p], cur.begin() + static_cast<std::ptrdiff_t>(n));
        n += static_cast<std::size_t>(len[p]);
        cur_offsets[a + 1] = static_cast<std::int64_t>(n);
      }
      forward(std::span<const token_t>(cur.data(), n), std::span<const std::int64_t>(cur_offsets.data(), n_active + 1));
      std::size_t still = 0;
      for (std::size_t a = 0; a < n_active; ++a) {
        const std::size_t p = active[a];
        const T* z = logits_.data() + static_cast<std::size_t>(cur_offsets[a + 1] - 1) * cfg_.vocab;
        const token_t y = sample_token(std::span<const T>(z, cfg_.vocab), opt, rng[p].uniform(), probs, order);
        out[static_cast<std::size_t>(start[p] + len[p]++)] = y;
        if (!(eos && y == *eos)) active[still++] = p;
      }
      n_active = still;
    }
    Sequences res;
    res.tokens.reserve(out.size());
    for (std::size_t p = 0; p < P; ++p) {
      const auto pl = static_cast<std::size_t>(prompts.offsets[p + 1] - prompts.offsets[p]);
      const auto* b = out.data() + start[p];
      res.push(std::span<const token_t>(b, pl), std::span<const token_t>(b + pl, static_cast<std::size_t>(len[p]) - pl));
    }
    return res;
  }

 private:
  std::size_t d() const { return cfg_.d_model; }
  T* param(std::size_t off) { return theta_.data() + off; }
  CRow prow(std::size_t off, std::size_t c) { return CRow(param(off), static_cast<Eigen::Index>(c)); }
  // C[m, n] (+)= op(A) op(B), row-major C, A and B row-major (ARow, BRow) or read transposed: the
  // build's GEMM (logprob::linear::DefaultGemm, CMake DFTUNE_GEMM), one thread per call, so a
  // chunk's products are the same whichever thread runs them.
  template <bool ARow, bool BRow>
  static void gemm(std::size_t m, std::size_t n, std::size_t k, const T* a, std::size_t lda, const T* b, std::size_t ldb, T* c,
                   std::size_t ldc, bool accumulate) {
    logprob::linear::DefaultGemm::template run<ARow, BRow>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }
  static Mat act(Buffer& buf, std::size_t at, std::size_t r, std::size_t c) {
    return Mat(buf.data() + at, static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c));
  }

  void check(const SequenceBatch& b) const {
    validate(b, cfg_.vocab);
    for (std::size_t s = 0; s < b.size(); ++s)
      if (static_cast<std::size_t>(b.length(s)) > cfg_.max_len)
        detail::fail_at("batch.sequence", s, "length " + std::to_string(b.length(s)), "at most max_len = " + std::to_string(cfg_.max_len));
  }

  // Grows every activation buffer to hold n rows in S sequences of at most max_len (never shrinks);
  // the sizes are checked (an error names `what`) before anything grows; the [n, V] logits only
  // when they are computed (generation), never for scoring.
  void reserve(std::size_t n, std::size_t S, std::string_view what, bool logits = true) {
    sizes_ = tiny_lm::buffer_sizes(cfg_, n, what);
    const auto& z = sizes_;
    auto grow = [](auto& v, std::size_t size) {
      if (v.size() < size) v.resize(size);
    };
    for (auto* v : {&h1_, &att_, &xmid_, &h2_}) grow(*v, z.layer_rows_d);
    grow(x_, z.residual);
    grow(qkv_, z.qkv);
    grow(u_, z.hidden);
    grow(a_, z.hidden);
    grow(t_, z.hidden);
    for (auto* v : {&mean1_, &rstd1_, &mean2_, &rstd2_}) grow(*v, z.layer_rows);
    grow(meanf_, n);
    grow(rstdf_, n);
    grow(hf_, z.rows_d);
    if (logits) grow(logits_, z.logits);
    grow(probs_, z.attention);
    grow(att_off_, S + 1);
  }

  // All activations of a batch given as tokens + sequence offsets, kept for backward. Rows are
  // independent through every layer, so each chunk of sequences (the fixed partition of
  // tiny_lm::chunk_count) runs the whole network on its rows: one parallel loop, no barrier between
  // layers, and the GEMMs inside run single-threaded on the chunk's rows (gemm() above), the same
  // ones whichever thread takes the chunk. The logits are
  // computed only when asked (generation); scoring goes through the fused head instead.
  void forward(std::span<const token_t> tokens, std::span<const std::int64_t> offsets, bool logits = true) {
    const std::size_t n = tokens.size(), S = offsets.size() - 1, H = cfg_.n_heads;
    reserve(n, S, "batch", logits);
    n_ = n;
    att_off_[0] = 0;
    for (std::size_t s = 0; s < S; ++s) {
      const auto Ls = static_cast<std::size_t>(offsets[s + 1] - offsets[s]);
      att_off_[s + 1] = att_off_[s] + H * Ls * Ls;  // <= H·max_len·n: within sizes_.attention
    }
    probs_stride_ = att_off_[S];
    const std::size_t K = chunks_ = tiny_lm::chunk_count(n, S);
    dftune::cpu::active_isa();  // a bad DFTUNE_ISA throws here, not in a worker's gelu_forward
    DFTUNE_OMP(parallel for schedule(dynamic, 1))
    for (std::size_t c = 0; c < K; ++c) {
      const auto [s0, s1] = tiny_lm::sequence_chunk(offsets, c, K);
      if (s0 < s1) forward_block(tokens, offsets, s0, s1, logits);
    }
  }

  void forward_block(std::span<const token_t> tokens, std::span<const std::int64_t> offsets, std::size_t s0, std::size_t s1,
                     bool logits) {
    const std::size_t n = n_, D = d(), H = cfg_.n_heads, dh = D / H, F = cfg_.d_ff, V = cfg_.vocab;
    const auto r0 = static_cast<std::size_t>(offsets[s0]), rows = static_cast<std::size_t>(offsets[s1]) - r0;
    for (std::size_t s = s0; s < s1; ++s)
      for (auto r = offsets[s]; r < offsets[s + 1]; ++r) {
        const T* te = param(lay_.tok_emb) + static_cast<std::size_t>(tokens[static_cast<std::size_t>(r)]) * D;
        const T* pe = param(lay_.pos_emb) + static_cast<std::size_t>(r - offsets[s]) * D;
        T* x = x_.data() + static_cast<std::size_t>(r) * D;
        for (std::size_t j = 0; j < D; ++j) x[j] = te[j] + pe[j];
      }
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const auto& k = lay_.blocks[l];
      const std::size_t o = l * n * D + r0 * D, ol = l * n + r0, of = (l * n + r0) * F, oq = (l * n + r0) * 3 * D;
      tiny_lm::layer_norm_forward(x_.data() + o, param(k.ln1_g), param(k.ln1_b), h1_.data() + o, mean1_.data() + ol,
                                  rstd1_.data() + ol, rows, D);
      Mat qkv = act(qkv_, oq, rows, 3 * D);
      gemm<true, true>(rows, 3 * D, D, h1_.data() + o, D, param(k.w_qkv), 3 * D, qkv.data(), 3 * D, false);
      qkv.rowwise() += prow(k.b_qkv, 3 * D);
      for (std::size_t s = s0; s < s1; ++s) {
        const auto rs = static_cast<std::size_t>(offsets[s]), Ls = static_cast<std::size_t>(offsets[s + 1]) - rs;
        for (std::size_t h = 0; h < H; ++h)
          tiny_lm::attention_forward(qkv_.data() + (l * n + rs) * 3 * D, probs_.data() + l * probs_stride_ + att_off_[s] + h * Ls * Ls,
                                     att_.data() + l * n * D + rs * D, Ls, D, h, dh);
      }
      Mat xmid = act(xmid_, o, rows, D);
      gemm<true, true>(rows, D, D, att_.data() + o, D, param(k.w_o), D, xmid.data(), D, false);
      xmid.rowwise() += prow(k.b_o, D);
      xmid += act(x_, o, rows, D);
      tiny_lm::layer_norm_forward(xmid_.data() + o, param(k.ln2_g), param(k.ln2_b), h2_.data() + o, mean2_.data() + ol,
                                  rstd2_.data() + ol, rows, D);
      Mat u = act(u_, of, rows, F);
      gemm<true, true>(rows, F, D, h2_.data() + o, D, param(k.w_1), F, u.data(), F, false);
      u.rowwise() += prow(k.b_1, F);
      tiny_lm::gelu_forward(u_.data() + of, t_.data() + of, a_.data() + of, rows * F);
      Mat xn = act(x_, o + n * D, rows, D);
      gemm<true, true>(rows, D, F, a_.data() + of, F, param(k.w_2), D, xn.data(), D, false);
      xn.rowwise() += prow(k.b_2, D);
      xn += xmid;
    }
    tiny_lm::layer_norm_forward(x_.data() + (cfg_.n_layers * n + r0) * D, param(lay_.lnf_g), param(lay_.lnf_b), hf_.data() + r0 * D,
                                meanf_.data() + r0, rstdf_.data() + r0, rows, D);
    if (!logits) return;
    Mat z = act(logits_, r0 * V, rows, V);
    gemm<true, true>(rows, V, D, hf_.data() + r0 * D, D, param(lay_.w_out), V, z.data(), V, false);
    z.rowwise() += prow(lay_.b_out, V);
  }

  // Row r's logits predict token r + 1 of the same sequence; only completion tokens are scored
  // (weight 1), prompt positions and each sequence's last row have weight 0.
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

  // The output head on the last forward's hidden states: W_out is [d, V] (z = h W_out + b_out).
  logprob::linear::LinearLogits<T> head_view() const {
    const std::size_t D = d(), V = cfg_.vocab;
    return {.hidden = std::span<const T>(hf_.data(), n_ * D), .proj = std::span<const T>(theta_.data() + lay_.w_out, D * V),
            .bias = std::span<const T>(theta_.data() + lay_.b_out, V), .dim = D, .vocab = V,
            .layout = logprob::linear::Layout::dim_major, .targets = targets_, .weights = weights_, .offsets = offsets_};
  }

  std::span<std::byte> head_workspace() {
    const std::size_t need = logprob::linear::workspace_size(head_view());
    if (head_ws_.size() < need) head_ws_.resize(need);
    return head_ws_;
  }

  // Backward of forward() from dh_ (∂/∂LN_f(x), from the fused head, which has added the gradients
  // of W_out and b_out), accumulating into grad_, chunk by chunk of the same fixed partition:
  // chunk 0 straight into grad_, chunk c > 0 into its own zeroed buffer, then every gradient
  // summed over the chunks in chunk order,
  //   grad ← ((grad + chunk 0) + chunk 1) + … + chunk K−1,
  // the same sum in the same order for any number of threads (threads split the parameters for
  // the sum, never a sum itself). Memory: K − 1 <= 15 gradient buffers (chunk_count caps K).
  void backward(std::span<const token_t> tokens, std::span<const std::int64_t> offsets) {
    auto grow = [](Buffer& v, std::size_t size) {
      if (v.size() < size) v.resize(size);
    };
    grow(dx_, sizes_.rows_d);
    grow(dh_, sizes_.rows_d);
    grow(datt_, sizes_.rows_d);
    grow(dqkv_, sizes_.rows_qkv);
    grow(du_, sizes_.rows_ff);
    grow(dprobs_, probs_stride_);
    const std::size_t K = chunks_, P = grad_.size();
    if (chunk_grad_.size() < K - 1) chunk_grad_.resize(K - 1);
    DFTUNE_OMP(parallel)
    {
      DFTUNE_OMP(for schedule(dynamic, 1))
      for (std::size_t c = 0; c < K; ++c) {
        const auto [s0, s1] = tiny_lm::sequence_chunk(offsets, c, K);
        T* g = grad_.data();
        if (c > 0) {
          chunk_grad_[c - 1].assign(P, T(0));
          g = chunk_grad_[c - 1].data();
        }
        if (s0 < s1) backward_block(tokens, offsets, s0, s1, g);
      }
      // Each thread sums its own slice of the parameters, chunk after chunk (contiguous, so the
      // adds vectorise); the order per parameter is c = 1, …, K−1 whatever the slices are.
      const auto [id, count] = thread_id_and_count();
      const std::size_t share = P / count, extra = P % count;
      const std::size_t k0 = share * id + std::min(id, extra), k1 = k0 + share + (id < extra ? 1 : 0);
      for (std::size_t c = 1; c < K; ++c) {
        const T* from = chunk_grad_[c - 1].data();
        for (std::size_t k = k0; k < k1; ++k) grad_[k] += from[k];
      }
    }
  }

  void backward_block(std::span<const token_t> tokens, std::span<const std::int64_t> offsets, std::size_t s0, std::size_t s1,
                      T* gbase) {
    const std::size_t n = n_, D = d(), H = cfg_.n_heads, dh = D / H, F = cfg_.d_ff;
    const auto r0 = static_cast<std::size_t>(offsets[s0]), rows = static_cast<std::size_t>(offsets[s1]) - r0;
    auto grad_row = [&](std::size_t off, std::size_t c) { return Row(gbase + off, static_cast<Eigen::Index>(c)); };
    // dh_ holds ∂/∂hf from the fused head (z = hf W_out + b_out, whose gradients it has added).
    Mat dx = act(dx_, r0 * D, rows, D), dhid = act(dh_, r0 * D, rows, D);
    dx.setZero();
    tiny_lm::layer_norm_backward(dh_.data() + r0 * D, x_.data() + (cfg_.n_layers * n + r0) * D, param(lay_.lnf_g), meanf_.data() + r0,
                                 rstdf_.data() + r0, dx_.data() + r0 * D, gbase + lay_.lnf_g, gbase + lay_.lnf_b, rows, D);
    for (std::size_t l = cfg_.n_layers; l-- > 0;) {
      const auto& k = lay_.blocks[l];
      const std::size_t o = l * n * D + r0 * D, ol = l * n + r0, of = (l * n + r0) * F;
      // x_out = x_mid + gelu(h2 W1 + b1) W2 + b2   (dx holds ∂/∂x_out, then ∂/∂x_mid)
      gemm<false, true>(F, D, rows, a_.data() + of, F, dx.data(), D, gbase + k.w_2, D, true);
      grad_row(k.b_2, D) += dx.colwise().sum();
      Mat du = act(du_, r0 * F, rows, F);
      gemm<true, false>(rows, F, D, dx.data(), D, param(k.w_2), D, du.data(), F, false);
      for (std::size_t i = 0; i < rows * F; ++i) du_[r0 * F + i] *= tiny_lm::gelu_grad(u_[of + i], t_[of + i]);
      gemm<false, true>(D, F, rows, h2_.data() + o, D, du.data(), F, gbase + k.w_1, F, true);
      grad_row(k.b_1, F) += du.colwise().sum();
      gemm<true, false>(rows, D, F, du.data(), F, param(k.w_1), F, dhid.data(), D, false);
      tiny_lm::layer_norm_backward(dh_.data() + r0 * D, xmid_.data() + o, param(k.ln2_g), mean2_.data() + ol, rstd2_.data() + ol,
                                   dx_.data() + r0 * D, gbase + k.ln2_g, gbase + k.ln2_b, rows, D);
      // x_mid = x_in + att W_o + b_o   (dx now ∂/∂x_mid, then ∂/∂x_in)
      gemm<false, true>(D, D, rows, att_.data() + o, D, dx.data(), D, gbase + k.w_o, D, true);
      grad_row(k.b_o, D) += dx.colwise().sum();
      Mat datt = act(datt_, r0 * D, rows, D);
      gemm<true, false>(rows, D, D, dx.data(), D, param(k.w_o), D, datt.data(), D, false);
      Mat dqkv = act(dqkv_, r0 * 3 * D, rows, 3 * D);
      dqkv.setZero();
      for (std::size_t s = s0; s < s1; ++s) {
        const auto rs = static_cast<std::size_t>(offsets[s]), Ls = static_cast<std::size_t>(offsets[s + 1]) - rs;
        for (std::size_t h = 0; h < H; ++h)
          tiny_lm::attention_backward(qkv_.data() + (l * n + rs) * 3 * D, probs_.data() + l * probs_stride_ + att_off_[s] + h * Ls * Ls,
                                      datt_.data() + rs * D, dqkv_.data() + rs * 3 * D, dprobs_.data() + att_off_[s] + h * Ls * Ls,
                                      Ls, D, h, dh);
      }
      gemm<false, true>(D, 3 * D, rows, h1_.data() + o, D, dqkv.data(), 3 * D, gbase + k.w_qkv, 3 * D, true);
      grad_row(k.b_qkv, 3 * D) += dqkv.colwise().sum();
      gemm<true, false>(rows, D, 3 * D, dqkv.data(), 3 * D, param(k.w_qkv), 3 * D, dhid.data(), D, false);
      tiny_lm::layer_norm_backward(dh_.data() + r0 * D, x_.data() + o, param(k.ln1_g), mean1_.data() + ol, rstd1_.data() + ol,
                                   dx_.data() + r0 * D, gbase + k.ln1_g, gbase + k.ln1_b, rows, D);
    }
    // x⁰_r = E[tok_r] + P[r − start of its sequence]
    for (std::size_t s = s0; s < s1; ++s)
      for (auto r = offsets[s]; r < offsets[s + 1]; ++r) {
        const T* g = dx_.data() + static_cast<std::size_t>(r) * D;
        T* te = gbase + lay_.tok_emb + static_cast<std::size_t>(tokens[static_cast<std::size_t>(r)]) * D;
        T* pe = gbase + lay_.pos_emb + static_cast<std::size_t>(r - offsets[s]) * D;
        for (std::size_t j = 0; j < D; ++j) {
          te[j] += g[j];
          pe[j] += g[j];
        }
      }
  }

  tiny_lm::Config cfg_;
  tiny_lm::Layout lay_;
  Buffer theta_, grad_;
  // Activations of the last forward (per layer, n rows each) and backward scratch.
  std::size_t n_ = 0, probs_stride_ = 0, chunks_ = 1;
  tiny_lm::BufferSizes sizes_;  // of the last reserve(): the n_ rows of the last forward
  Buffer x_, h1_, qkv_, att_, xmid_, h2_, u_, a_, t_, hf_, logits_, probs_;  // t_: tanh inside gelu(u_)
  Buffer mean1_, rstd1_, mean2_, rstd2_, meanf_, rstdf_;
  std::vector<std::size_t> att_off_;
  Buffer dx_, dh_, datt_, dqkv_, du_, dprobs_;
  std::vector<Buffer> chunk_grad_;  // gradients of chunks 1 … K−1 of the last backward
  std::vector<token_t> targets_;
  std::vector<C> weights_;
  std::vector<std::int64_t> offsets_;
  Buffer head_scores_;              // forward_backward's scores, not needed by accumulate_gradients
  std::vector<std::byte> head_ws_;  // the fused head's workspace (grows, never shrinks)

  // ---- kept activations ----------------------------------------------------------------------
  // One forward's activations moved out of the working buffers (or, not live, spare buffers to
  // lend to the next forward), with the batch they belong to.
  struct Kept {
    Buffer x, h1, qkv, att, xmid, h2, u, a, t, hf, probs, mean1, rstd1, mean2, rstd2, meanf, rstdf;
    std::vector<std::size_t> att_off;
    std::size_t n = 0, probs_stride = 0, chunks = 1;
    tiny_lm::BufferSizes sizes;
    std::vector<token_t> tokens;
    std::vector<std::int64_t> offsets, prompt_len;
    bool live = false;

    std::size_t bytes() const {
      std::size_t b = att_off.size() * sizeof(std::size_t);
      for (const auto* v : {&x, &h1, &qkv, &att, &xmid, &h2, &u, &a, &t, &hf, &probs, &mean1, &rstd1, &mean2, &rstd2, &meanf, &rstdf})
        b += v->size() * sizeof(T);
      return b;
    }
    bool holds(const SequenceBatch& b) const {
      return live && std::ranges::equal(tokens, b.tokens) && std::ranges::equal(offsets, b.offsets) &&
             std::ranges::equal(prompt_len, b.prompt_len);
    }
  };

  // Exchanges the working activations of the last forward with k's.
  void swap_working(Kept& k) {
    using std::swap;
    swap(x_, k.x), swap(h1_, k.h1), swap(qkv_, k.qkv), swap(att_, k.att), swap(xmid_, k.xmid), swap(h2_, k.h2);
    swap(u_, k.u), swap(a_, k.a), swap(t_, k.t), swap(hf_, k.hf), swap(probs_, k.probs), swap(mean1_, k.mean1), swap(rstd1_, k.rstd1);
    swap(mean2_, k.mean2), swap(rstd2_, k.rstd2), swap(meanf_, k.meanf), swap(rstdf_, k.rstdf), swap(att_off_, k.att_off);
    swap(n_, k.n), swap(probs_stride_, k.probs_stride), swap(chunks_, k.chunks), swap(sizes_, k.sizes);
  }

  std::size_t kept_bytes(bool live_only) const {
    std::size_t b = 0;
    for (const Kept& k : kept_)
      if (k.live || !live_only) b += k.bytes();
    return b;
  }

  Kept* find_kept(const SequenceBatch& b) {
    for (Kept& k : kept_)
      if (k.holds(b)) return &k;
    return nullptr;
  }

  void forget_kept() {
    for (Kept& k : kept_) k.live = false;
  }

  // Frees spare buffers, last first, until everything kept fits the bound.
  void trim_spares() {
    for (std::size_t i = kept_.size(); i-- > 0 && kept_bytes(false) > keep_max_;)
      if (!kept_[i].live) kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  // Moves the last forward's activations (of batch b) into a kept slot if they fit the bound; a
  // spare slot's buffers become the working ones, so steady-state steps allocate nothing.
  bool keep(const SequenceBatch& b) {
    Kept probe;
    swap_working(probe);  // measure the working buffers without copying them
    const std::size_t need = probe.bytes();
    swap_working(probe);
    if (Kept* old = find_kept(b)) old->live = false;  // scored again: the newer activations replace it
    const std::size_t live = kept_bytes(true);
    if (need > keep_max_ || live > keep_max_ - need) return false;
    // What may throw (allocations) first; then only swaps and moves.
    std::vector<token_t> tokens(b.tokens.begin(), b.tokens.end());
    std::vector<std::int64_t> offsets(b.offsets.begin(), b.offsets.end()), prompt_len(b.prompt_len.begin(), b.prompt_len.end());
    Kept* slot = nullptr;
    for (Kept& k : kept_)
      if (!k.live && (slot == nullptr || k.bytes() > slot->bytes())) slot = &k;  // the largest spare
    if (slot == nullptr) slot = &kept_.emplace_back();
    swap_working(*slot);
    slot->tokens = std::move(tokens);
    slot->offsets = std::move(offsets);
    slot->prompt_len = std::move(prompt_len);
    slot->live = true;
    trim_spares();
    return true;
  }

  std::vector<Kept> kept_;
  std::size_t keep_max_ = 0, forwards_skipped_ = 0;
};

DFTUNE_NAMESPACE_END
