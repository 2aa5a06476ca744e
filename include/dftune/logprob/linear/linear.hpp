#pragma once
// The one entry point of the fused linear + log-prob head: the outputs of logprob::forward /
// backward on the logits z = H Wᵀ + b (linear_logits.hpp), carried to H, W and b, without ever
// holding more than one chunk of logits (docs/fused_linear.md). CUB-style: ask workspace_size(in,
// options), hand that many bytes to the call, and the call never allocates; or leave the workspace
// out (every optional span defaults to empty, as logprob::forward's) and the call allocates it.
//
//   forward(in, seq_logp [S], token_logp [N] = {}, row_lse [N] = {}, workspace = {}, options = {})
//   forward(in, seq_logp [S], {.token_logp, .row_lse, .entropy} (TokenOutputs, each optional), workspace = {})
//   backward(in, d_seq [S], grads, row_lse from forward [N] = {}, workspace = {})
//       recomputes each chunk's logits; dH written, dW and db accumulated (+=); grads.z_loss = ζ
//       adds the gradient of a z-loss ζ Σ_n w_n lse_n²
//   forward_backward(in, d_seq [S], grads, seq_logp [S], token_logp = {}, row_lse = {}, workspace = {})
//   forward_backward(in, d_seq [S], grads, seq_logp [S], TokenOutputs, workspace = {})
//       when d_seq is known before the scores (the Model concept's accumulate_gradients, SFT):
//       the gradient is taken from the forward's logits, three GEMMs instead of four
//   logits(in, z [N, V])
//       the logits themselves, for a sampler's few rows (one per sequence generated: logits.hpp)
//
// Dispatch: GEMMs through a BLAS when the build selected one (CMake DFTUNE_GEMM=openblas|blis|onednn),
// else Eigen's kernel when Eigen is on the include path, else plain loops; row kernels from the
// CPU fast path (cpu/fast.hpp) when Eigen is there and DFTUNE_LOGPROB_GENERIC_ONLY is not defined,
// else the generic oracle's. chunked::execute<Gemm, Rows> runs any other pair.
#include <dftune/config.hpp>
#include <dftune/logprob/linear/checks.hpp>
#include <dftune/logprob/linear/chunked.hpp>
#include <dftune/logprob/linear/gemm.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/linear/logits.hpp>
#include <dftune/logprob/linear/plan.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <span>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear {

// The dispatch differs with the build's choices; a namespace per variant keeps translation units
// built with different choices from violating the one-definition rule. DFTUNE_LINEAR_DISPATCH
// names it, for the headers that build on this dispatch (vocab_parallel.hpp).
#if defined(DFTUNE_DOXYGEN)
// The inline namespace of this build's dispatch (one per variant, below): headers that build on
// it (vocab_parallel.hpp) reopen it.
#define DFTUNE_LINEAR_DISPATCH dispatch_doc
inline namespace dispatch_doc {
// The GEMM policy of this build (gemm.hpp): DnnlGemm, CblasGemm or BlisGemm as CMake's
// DFTUNE_GEMM selects, else EigenGemm when Eigen is on the include path, else LoopGemm.
using DefaultGemm = gemm::LoopGemm;
#elif defined(DFTUNE_LINEAR_GEMM_DNNL) && DFTUNE_LINEAR_HAS_FAST_ROWS
#define DFTUNE_LINEAR_DISPATCH dispatch_dnnl_fast
inline namespace dispatch_dnnl_fast {
using DefaultGemm = gemm::DnnlGemm;
#elif defined(DFTUNE_LINEAR_GEMM_DNNL)
#define DFTUNE_LINEAR_DISPATCH dispatch_dnnl_generic
inline namespace dispatch_dnnl_generic {
using DefaultGemm = gemm::DnnlGemm;
#elif defined(DFTUNE_LINEAR_GEMM_CBLAS) && DFTUNE_LINEAR_HAS_FAST_ROWS
#define DFTUNE_LINEAR_DISPATCH dispatch_cblas_fast
inline namespace dispatch_cblas_fast {
using DefaultGemm = gemm::CblasGemm;
#elif defined(DFTUNE_LINEAR_GEMM_CBLAS)
#define DFTUNE_LINEAR_DISPATCH dispatch_cblas_generic
inline namespace dispatch_cblas_generic {
using DefaultGemm = gemm::CblasGemm;
#elif defined(DFTUNE_LINEAR_GEMM_BLIS) && DFTUNE_LINEAR_HAS_FAST_ROWS
#define DFTUNE_LINEAR_DISPATCH dispatch_blis_fast
inline namespace dispatch_blis_fast {
using DefaultGemm = gemm::BlisGemm;
#elif defined(DFTUNE_LINEAR_GEMM_BLIS)
#define DFTUNE_LINEAR_DISPATCH dispatch_blis_generic
inline namespace dispatch_blis_generic {
using DefaultGemm = gemm::BlisGemm;
#elif DFTUNE_LINEAR_HAS_EIGEN_GEMM && DFTUNE_LINEAR_HAS_FAST_ROWS
#define DFTUNE_LINEAR_DISPATCH dispatch_eigen_fast
inline namespace dispatch_eigen_fast {
using DefaultGemm = gemm::EigenGemm;
#elif DFTUNE_LINEAR_HAS_EIGEN_GEMM
#define DFTUNE_LINEAR_DISPATCH dispatch_eigen_generic
inline namespace dispatch_eigen_generic {
using DefaultGemm = gemm::EigenGemm;
#else
#define DFTUNE_LINEAR_DISPATCH dispatch_loops_generic
inline namespace dispatch_loops_generic {
using DefaultGemm = gemm::LoopGemm;
#endif

#if DFTUNE_LINEAR_HAS_FAST_ROWS
// The row kernels of this build: the CPU fast path's (Eigen on the include path).
using DefaultRows = chunked::FastRows;
#else
// The row kernels of this build: the generic oracle's (no Eigen, or DFTUNE_LOGPROB_GENERIC_ONLY).
using DefaultRows = chunked::GenericRows;
#endif

// Bytes of workspace every call on `in` with `options` needs (forward, backward and
// forward_backward alike). It depends on the shapes, the plan and, for storage types other than
// compute_t<T> (bf16), options.threads (0: omp_get_max_threads() at the time of the call). Sizes
// only: call validate(in) first for a dftune::argument_error on bad shapes; a size that overflows
// std::size_t is one.
template <class T>
std::size_t workspace_size(const LinearLogits<T>& in, const LinearOptions& options = {}) {
  return make_plan(in, options).bytes;
}

// seq_logp [S] = Σ_{n in s} token_logp[n], and the per-token outputs of `rows` that are not empty
// (TokenOutputs: token_logp, row_lse, entropy, each [N]): logprob::forward's outputs on the logits
// H·Wᵀ + b, and the entropy. `workspace`: at least workspace_size(in, options) bytes, disjoint from
// every input and output; empty (the default), the call allocates them itself. Throws
// dftune::argument_error naming the argument (shapes, offsets, targets, weights, sizes, a workspace
// too small, an output overlapping another buffer) before writing anything, or naming the row
// whose logits the reductions refuse (linear_logits.hpp, validate). Example (N = 3 tokens in
// S = 2 sequences, d = 2, V = 3; W [V, d] as torch.nn.Linear stores it):
//
//     const std::vector<float> H{1, 0, 0, 1, 1, 1}, W{1, 0, 0, 1, 1, 1};
//     const std::vector<dftune::token_t> y{0, 2, 1};
//     const std::vector<std::int64_t> offsets{0, 2, 3};
//     const linear::LinearLogits<float> in{.hidden = H, .proj = W, .dim = 2, .vocab = 3, .targets = y, .offsets = offsets};
//     std::vector<float> seq(2), entropy(3);
//     linear::forward(in, std::span<float>(seq));                          // scores only, own workspace
//     std::vector<std::byte> ws(linear::workspace_size(in));
//     linear::forward(in, std::span<float>(seq), {.entropy = entropy}, ws);  // allocation-free
template <class T>
void forward(const LinearLogits<T>& in, std::span<compute_t<T>> seq_logp, const TokenOutputs<T>& rows,
             std::span<std::byte> workspace = {}, const LinearOptions& options = {}) {
  detail::Call<T> call{.mode = detail::Mode::forward, .seq_logp = seq_logp, .token_logp = rows.token_logp,
                       .row_lse = rows.row_lse, .entropy = rows.entropy};
  chunked::execute<DefaultGemm, DefaultRows>(in, call, workspace, options);
}

// forward() with token_logp [N] and row_lse [N] given one by one, each optional (empty: not
// computed), as logprob::forward takes them: seq_logp[s] = Σ_{n in s} token_logp[n],
// token_logp[n] = w_n (z_n[y_n] − row_lse[n]) (0 where w_n = 0), row_lse[n] = log Σ_v exp(z_n[v])
// (NaN where w_n = 0). The workspace and the errors as above.
template <class T>
void forward(const LinearLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
             std::span<compute_t<T>> row_lse = {}, std::span<std::byte> workspace = {}, const LinearOptions& options = {}) {
  forward(in, seq_logp, TokenOutputs<T>{.token_logp = token_logp, .row_lse = row_lse}, workspace, options);
}

// With G_n = d_seq[s(n)] w_n (onehot(y_n) − softmax(z_n)) (logprob::backward's gradient), plus
// 2 ζ w_n lse_n softmax(z_n) for a z-loss ζ = grads.z_loss:
// grads.hidden[n] = G_n W (written), grads.proj += Σ_n G_nᵀ h_n, grads.bias += Σ_n G_n (each
// optional: an empty span is not computed). d_seq [S] = ∂loss/∂seq_logp, finite. row_lse [N] from
// forward() saves one pass over each row of logits; empty (the default), it is recomputed. The
// workspace as forward()'s; dftune::argument_error as forward()'s, and for a non-finite d_seq or
// z_loss, or a row_lse not finite on a weighted row. Example (after the forward() above):
//
//     const std::vector<float> d_seq{1, -0.5f};
//     std::vector<float> dH(6), dW(6, 0.0f);
//     linear::backward(in, std::span<const float>(d_seq), {.hidden = dH, .proj = dW});
template <class T>
void backward(const LinearLogits<T>& in, std::span<const compute_t<T>> d_seq, const LinearGrads<T>& grads,
              std::span<const compute_t<T>> row_lse = {}, std::span<std::byte> workspace = {},
              const LinearOptions& options = {}) {
  detail::Call<T> call{.mode = detail::Mode::backward, .d_seq = d_seq, .lse_in = row_lse, .grads = grads};
  chunked::execute<DefaultGemm, DefaultRows>(in, call, workspace, options);
}

// forward() and backward() in one pass, for a d_seq that does not depend on this call's scores
// (SFT; the Model concept's accumulate_gradients): the gradient is taken from the forward's
// logits, three GEMMs instead of four. seq_logp and the per-token outputs of `rows` that are not
// empty, as forward() writes them; the gradients as backward() writes them. The workspace and the
// errors as forward()'s and backward()'s.
template <class T>
void forward_backward(const LinearLogits<T>& in, std::span<const compute_t<T>> d_seq, const LinearGrads<T>& grads,
                      std::span<compute_t<T>> seq_logp, const TokenOutputs<T>& rows, std::span<std::byte> workspace = {},
                      const LinearOptions& options = {}) {
  detail::Call<T> call{.mode = detail::Mode::forward_backward, .seq_logp = seq_logp, .token_logp = rows.token_logp,
                       .row_lse = rows.row_lse, .entropy = rows.entropy, .d_seq = d_seq, .grads = grads};
  chunked::execute<DefaultGemm, DefaultRows>(in, call, workspace, options);
}

// forward_backward() with token_logp and row_lse given one by one, each optional (empty: not
// computed).
template <class T>
void forward_backward(const LinearLogits<T>& in, std::span<const compute_t<T>> d_seq, const LinearGrads<T>& grads,
                      std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp = {},
                      std::span<compute_t<T>> row_lse = {}, std::span<std::byte> workspace = {},
                      const LinearOptions& options = {}) {
  forward_backward(in, d_seq, grads, seq_logp, TokenOutputs<T>{.token_logp = token_logp, .row_lse = row_lse}, workspace,
                   options);
}

// z [N·V] row-major: z[n, :] = W h_n + b for every row of in.hidden, tiled as forward() tiles them
// (float, double; targets, weights and offsets are not read), for a sampler's few rows.
// dftune::argument_error for bad shapes, a z of another size, or a z overlapping H, W or b.
template <class T>
  requires std::is_same_v<T, compute_t<T>>
void logits(const LinearLogits<T>& in, std::span<T> z, const LinearOptions& options = {}) {
  chunked::logits<DefaultGemm>(in, z, options);
}

}  // inline namespace dispatch_*

}  // namespace logprob::linear

DFTUNE_NAMESPACE_END
