#pragma once
// The input and outputs of the fused linear + log-prob head (docs/fused_linear.md): hidden states
// H [N, d], the output projection W and an optional bias b define the logits of row n,
//   z_n = W h_n + b                                   (never stored beyond one chunk of rows)
// and targets, per-token weights and sequence offsets mean exactly what they mean for TokenLogits
// (token_logits.hpp): the outputs are those of logprob::forward / backward on the logits H·Wᵀ + b,
// carried on to H, W and b by the chain rule. Views only; the caller owns every buffer.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear {

// How W is stored, row-major either way.
enum class Layout {
  vocab_major,  // W [V, d]: torch.nn.Linear(d, V).weight, z = H Wᵀ + b
  dim_major,    // W [d, V]: z = H W + b (the tiny LM's w_out)
};

// The input of the fused linear + log-prob head: the last hidden states H and the output
// projection W (and bias b) whose logits H·Wᵀ + b are never held whole, with the targets, weights
// and sequences of a token reduction (TokenLogits' fields).
template <class T>
struct LinearLogits {
  std::span<const T> hidden = {};               // H [N, d] row-major
  std::span<const T> proj = {};                 // W: [V, d] or [d, V] (layout), row-major
  std::span<const T> bias = {};                 // b [V]; empty: no bias
  std::size_t dim = 0;                          // d
  std::size_t vocab = 0;                        // V
  // how W is stored: [V, d] (torch.nn.Linear) or [d, V]
  Layout layout = Layout::vocab_major;
  std::span<const token_t> targets = {};        // [N]; read only where the weight is non-zero
  std::span<const compute_t<T>> weights = {};   // [N]; empty means every token has weight 1
  std::span<const std::int64_t> offsets = {};   // [S + 1]: sequence s is rows [offsets[s], offsets[s+1])

  // N, the number of rows (tokens).
  std::size_t rows() const { return dim == 0 ? 0 : hidden.size() / dim; }
  // S, the number of sequences.
  std::size_t sequences() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  // The weight of a row: weights[row], or 1 when no weights are given.
  compute_t<T> weight(std::size_t row) const { return weights.empty() ? compute_t<T>(1) : weights[row]; }
};

// The gradients backward() produces; an empty span is not computed. W's and b's gradients are
// accumulated (+=, in compute_t<T>: float for bf16 storage, so that summing many chunks and
// micro-batches does not round to bf16 each time); H's gradient is written, 0 on the rows that
// carry no gradient (weight 0, or d_seq 0 without a z-loss), in T.
//
// z_loss = ζ adds a z-loss ζ Σ_n w_n lse_n² (PaLM's, log² of the softmax's normaliser; Liger's
// lse_square_scale) to the loss whose gradient is taken: every weighted row's logit gradient gains
// 2 ζ w_n lse_n softmax(z_n), rows with d_seq·w_n = 0 included. ζ multiplies the sum as it stands:
// put the loss's own normalisation (1/N, 1/B) into it. Its value is ζ Σ_n w_n row_lse[n]², from the
// forward's row_lse. 0 (the default) adds nothing and costs nothing.
template <class T>
struct LinearGrads {
  std::span<T> hidden = {};               // dH [N, d]
  std::span<compute_t<T>> proj = {};      // dW, W's shape and layout
  std::span<compute_t<T>> bias = {};      // db [V]
  double z_loss = 0;                      // ζ, the z-loss coefficient (finite); 0: no z-loss
};

// The optional per-token outputs of forward() and forward_backward(), each [N]; an empty span is
// not computed (an output not asked for costs nothing). Rows of weight 0 get 0 (token_logp) or NaN.
//   token_logp[n] = w_n (z_n[y_n] − lse_n)        the weighted log-prob of the target
//   row_lse[n]    = lse_n = log Σ_v exp z_n[v]    (for a z-loss; backward() takes it back)
//   entropy[n]    = −Σ_v p_v log p_v,  p = softmax(z_n)   (for monitoring; no gradient)
template <class T>
struct TokenOutputs {
  std::span<compute_t<T>> token_logp = {};  // w_n (z_n[y_n] − lse_n); 0 where w_n = 0
  std::span<compute_t<T>> row_lse = {};     // log Σ_v exp z_n[v]; NaN where w_n = 0
  std::span<compute_t<T>> entropy = {};     // the softmax's entropy in nats; NaN where w_n = 0
};

// Tiling. Every zero picks the value plan.hpp derives from the machine's caches and cores. The
// results depend on these sizes (they fix the order of every sum) and never on the thread count.
struct LinearOptions {
  std::size_t chunk_rows = 0;   // rows whose logits are held at once (the workspace is chunk_rows × V)
  std::size_t vocab_tile = 0;   // columns of W per GEMM task (logits, dW, and the dH sum over V)
  std::size_t dim_tile = 0;     // columns of dH per GEMM task
  std::size_t threads = 0;      // 0: omp_get_max_threads(), or 1 for a small chunk; bf16 stages W per thread
};

// The old name of LinearOptions, kept (deprecated) for one release.
using Options [[deprecated("use LinearOptions")]] = LinearOptions;

// dim, vocab and the sizes of H, W and b; what a device path can check without reading its buffers.
template <class T>
void validate_shapes(const LinearLogits<T>& in) {
  if (in.dim == 0) dftune::detail::fail("dim", in.dim, "at least 1");
  if (in.vocab == 0) dftune::detail::fail("vocab", in.vocab, "at least 1");
  if (in.hidden.size() % in.dim != 0)
    dftune::detail::fail("hidden", "size " + std::to_string(in.hidden.size()), "a multiple of dim = " + std::to_string(in.dim));
  dftune::detail::check_size_product("proj", in.proj.size(), in.vocab, in.dim, "proj (vocab·dim)");
  if (!in.bias.empty()) dftune::detail::check_size("bias", in.bias.size(), in.vocab);
}

// Shapes, offsets, weights and the targets of weighted rows; dftune::error naming the argument.
// H, W and b are not scanned: the logits they make are judged, during the call, by the reductions'
// rule (logprob/generic.hpp, "Non-finite logits"): a weighted row with a NaN or +inf logit, a −inf
// target logit or a log-prob compute_t<T> cannot hold, or a sequence sum it cannot hold, is the
// error logprob::forward would throw on the materialised logits, named "logits[n·V + v]",
// "token_logp[n]" or "seq_logp[s]". Then seq_logp is untouched; token_logp, row_lse and the
// gradients hold unspecified values (dW and db may hold some chunks' sums: forward first, as the
// DFT step does, keeps them intact, since backward given forward's row_lse trusts it).
template <class T>
void validate(const LinearLogits<T>& in) {
  validate_shapes(in);
  validate_rows(in.rows(), in.vocab, in.targets, in.weights, in.offsets);
}

}  // namespace logprob::linear

DFTUNE_NAMESPACE_END
