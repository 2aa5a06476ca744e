#pragma once
// The fused linear + log-prob head on the GPU: the outputs of logprob::linear (linear/linear.hpp,
// docs/fused_linear.md) on device memory, from the logits z = H Wᵀ + b computed one chunk of rows
// at a time by cuBLAS and reduced by this folder's kernels; the N×V logits are never held. Same
// LinearLogits, same three calls, a workspace of workspace_size(in, options) bytes; plus a cuBLAS
// handle and a stream:
//
//   forward(in, seq_logp [S], token_logp [N] or {}, row_lse [N] or {}, workspace, handle, stream)
//   backward(in, d_seq [S], grads, row_lse from forward [N] or {}, workspace, handle, stream)
//   forward_backward(in, d_seq [S], grads, seq_logp [S], token_logp, row_lse, workspace, handle, stream)
//
// The chunk loop is linear_chunks.cuh's (cublasSgemm / cublasSgemv and this folder's kernels, on
// `stream`, to which the handle is bound); this file checks the call and supplies the CUDA ops.
//
// What differs from the CPU head, by design of a first version:
//   - float storage only (bf16/fp16 need converted copies of the chunk's gradient or of W's tiles
//     for cuBLAS, whose A and B types must match: not done yet);
//   - every row enters the GEMMs, masked ones included (the CPU head gathers the weighted rows
//     first; on the GPU that needs a device-side compaction of the rows: not done yet). Masked
//     rows' outputs are still exactly those of the reductions (token 0, gradient 0);
//   - data errors are the kernels' (device_logprob.cuh): NaN outputs, a status bit, the first bad
//     row, reported by check_status(workspace, stream) — the host cannot see device data without
//     synchronising;
//   - cuBLAS' GEMMs are deterministic for a given GPU, cuBLAS version and chunk size: results are
//     reproducible run to run, not bit-identical to the CPU head (another summation order).
// No allocation, no synchronisation: cuBLAS needs its own workspace set on the handle by the caller
// (cublasSetWorkspace) if it is to run graph-captured; otherwise it uses its default pool.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/cuda/device_logprob.cuh>
#include <dftune/logprob/cuda/dispatch.cuh>
#include <dftune/logprob/cuda/linear_chunks.cuh>
#include <dftune/logprob/cuda/types.cuh>
#include <dftune/logprob/linear/checks.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>

#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::linear {

class cublas_error : public device_error {
 public:
  cublas_error(cublasStatus_t code, const std::string& what)
      : device_error(what + ": cuBLAS status " + std::to_string(static_cast<int>(code))), code_(code) {}
  cublasStatus_t code() const noexcept { return code_; }

 private:
  cublasStatus_t code_;
};

namespace detail {

inline void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw cublas_error(s, what);
}

inline unsigned blocks_for(long long items) { return dispatch::grid_for(items, 256); }

// linear_chunks.cuh's steps on the GPU: cuBLAS (fp32, alpha 1) and kernel launches on `stream`.
struct CudaOps {
  cublasHandle_t handle;
  cudaStream_t stream;
  void memset(void* p, std::size_t bytes) { cuda::detail::check_cuda(cudaMemsetAsync(p, 0, bytes, stream), "cudaMemsetAsync"); }
  void gemm(bool ta, bool tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    const float one = 1.0f;
    check_cublas(cublasSgemm(handle, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, A, lda, B, ldb,
                             &beta, C, ldc),
                 "cublasSgemm");
  }
  void gemv(int m, int n, const float* A, int lda, const float* x, float* y) {
    const float one = 1.0f;
    check_cublas(cublasSgemv(handle, CUBLAS_OP_N, m, n, &one, A, lda, x, 1, &one, y, 1), "cublasSgemv");
  }
  void add_bias(float* z, const float* b, long long k, int V) {
    add_bias_kernel<<<blocks_for(k * V), 256, 0, stream>>>(z, b, k, V);
    cuda::detail::check_launch("add_bias_kernel");
  }
  void row_coef(const std::int64_t* offsets, long long S, const float* d_seq, const float* weights, long long N, float* coef) {
    row_coef_kernel<<<blocks_for(N), 256, 0, stream>>>(offsets, S, d_seq, weights, N, coef);
    cuda::detail::check_launch("row_coef_kernel");
  }
  void constants(float* ones, long long R, float* unit, std::int64_t* offsets, long long k) {
    constants_kernel<<<blocks_for(R), 256, 0, stream>>>(ones, R, unit, offsets, k);
    cuda::detail::check_launch("constants_kernel");
  }
  void merge_status(status_area* total, status_area* chunk, long long r0) {
    merge_status_kernel<<<1, 1, 0, stream>>>(total, chunk, r0);
    cuda::detail::check_launch("merge_status_kernel");
  }
  void lse_gather(const float* z, int V, long long k, const std::int32_t* targets, const float* weights, float* token, float* lse,
                  status_area* status) {
    cuda::detail::check_cuda(dispatch::row_logsumexp_gather(z, V, k, targets, weights, token, lse, status, stream),
                             "row_logsumexp_gather_kernel");
  }
  void softmax_grad(const float* z, float* grad, int V, long long k, const std::int32_t* targets, const float* coef,
                    const std::int64_t* offsets, long long S, const float* unit, const float* lse, status_area* status) {
    cuda::detail::check_cuda(dispatch::softmax_grad(z, grad, V, k, targets, coef, offsets, S, unit, lse, status, stream),
                             "softmax_grad_kernel");
  }
  void segment_sum(const float* token, const std::int64_t* offsets, long long S, long long N, float* seq, status_area* status) {
    cuda::detail::check_cuda(dispatch::segment_sum(token, offsets, S, N, seq, status, stream), "segment_sum_kernel");
  }
};

// Host-side checks (everything that needs no device read), then the chunks.
inline void run(const LinearLogits<float>& in, Mode mode, std::span<float> seq_logp, std::span<float> token_logp,
                std::span<float> row_lse, std::span<const float> d_seq, std::span<const float> lse_in,
                const LinearGrads<float>& g, std::span<std::byte> workspace, const LinearOptions& opt, cublasHandle_t handle,
                cudaStream_t stream) {
  using dftune::detail::check_size;
  using dftune::detail::fail;
  // Shapes only: targets, weights and offsets are device memory, their values the kernels' to judge.
  logprob::linear::validate_shapes(in);
  check_size("targets", in.targets.size(), in.rows());
  if (!in.weights.empty()) check_size("weights", in.weights.size(), in.rows());
  if (in.offsets.empty()) fail("offsets", "size 0", "size S + 1 >= 1");
  if (in.offsets.size() == 1 && in.rows() != 0)
    fail("offsets", "size 1 (no sequence) with N = " + std::to_string(in.rows()) + " rows",
         "size S + 1 with S >= 1 sequences covering the rows");
  if (in.vocab > max_vocab) fail("vocab", in.vocab, "at most 2^30 (the kernels index a row in 32 bits)");
  if (in.dim > static_cast<std::size_t>(INT32_MAX) || in.vocab > static_cast<std::size_t>(INT32_MAX))
    fail("dim", in.dim, "at most 2^31 − 1 (cuBLAS' int dimensions)");
  const std::size_t N = in.rows(), S = in.sequences(), V = in.vocab, d = in.dim;
  const bool fwd = mode != Mode::backward, bwd = mode != Mode::forward;
  if (fwd) {
    check_size("seq_logp", seq_logp.size(), S);
    if (!token_logp.empty()) check_size("token_logp", token_logp.size(), N);
    if (!row_lse.empty()) check_size("row_lse", row_lse.size(), N);
  }
  if (bwd) {
    check_size("d_seq", d_seq.size(), S);
    if (g.z_loss != 0) fail("grads.z_loss", g.z_loss, "0: the CUDA head has no z-loss gradient yet (the CPU head does)");
    if (!g.hidden.empty()) dftune::detail::check_size_product("grads.hidden", g.hidden.size(), N, d, "grads.hidden (N·dim)");
    if (!g.proj.empty()) dftune::detail::check_size_product("grads.proj", g.proj.size(), V, d, "grads.proj (vocab·dim)");
    if (!g.bias.empty()) check_size("grads.bias", g.bias.size(), V);
  }
  if (!lse_in.empty()) check_size("row_lse", lse_in.size(), N);
  const WorkspaceLayout l = layout_of(in, opt);
  if (workspace.size() < l.bytes)
    fail("workspace", "size " + std::to_string(workspace.size()),
         "at least workspace_size(in, options) = " + std::to_string(l.bytes) + " bytes");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % 256 != 0)
    fail("workspace", "a misaligned buffer", "alignment 256 (what cudaMalloc returns)");
  using logprob::linear::detail::region;
  const logprob::linear::detail::Region inputs[] = {
      region("hidden", in.hidden),   region("proj", in.proj), region("bias", in.bias),   region("targets", in.targets),
      region("weights", in.weights), region("offsets", in.offsets), region("d_seq", d_seq), region("row_lse", lse_in)};
  const logprob::linear::detail::Region outputs[] = {
      region("seq_logp", seq_logp),          region("token_logp", token_logp), region("row_lse", row_lse),
      region("grads.hidden", g.hidden),      region("grads.proj", g.proj),     region("grads.bias", g.bias),
      region("workspace", workspace.first(l.bytes))};
  logprob::linear::detail::check_disjoint(outputs, inputs);  // the CPU head's rule, on device addresses
  if (handle == nullptr) fail("handle", "null", "a cuBLAS handle (cublasCreate)");

  CudaOps ops{handle, stream};
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  run_chunks(in, mode, seq_logp, token_logp, row_lse, d_seq, lse_in, g, workspace.data(), l, ops);
}

}  // namespace detail

// Bytes of device workspace every call on `in` with `options` needs; host only, no CUDA call.
inline std::size_t workspace_size(const LinearLogits<float>& in, const LinearOptions& options = {}) {
  return detail::layout_of(in, options).bytes;
}

// Asynchronous on `stream`; check_status(workspace, stream) reports what the kernels found.
inline void forward(const LinearLogits<float>& in, std::span<float> seq_logp, std::span<float> token_logp, std::span<float> row_lse,
                    std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream, const LinearOptions& options = {}) {
  detail::run(in, detail::Mode::forward, seq_logp, token_logp, row_lse, {}, {}, {}, workspace, options, handle, stream);
}

// Recomputes each chunk's logits; dH written, dW and db accumulated (+=).
inline void backward(const LinearLogits<float>& in, std::span<const float> d_seq, const LinearGrads<float>& grads,
                     std::span<const float> row_lse, std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream,
                     const LinearOptions& options = {}) {
  detail::run(in, detail::Mode::backward, {}, {}, {}, d_seq, row_lse, grads, workspace, options, handle, stream);
}

// When d_seq is known before the scores (SFT, accumulate_gradients): one pass, three GEMMs a chunk.
inline void forward_backward(const LinearLogits<float>& in, std::span<const float> d_seq, const LinearGrads<float>& grads,
                             std::span<float> seq_logp, std::span<float> token_logp, std::span<float> row_lse,
                             std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream,
                             const LinearOptions& options = {}) {
  detail::run(in, detail::Mode::forward_backward, seq_logp, token_logp, row_lse, d_seq, {}, grads, workspace, options, handle,
              stream);
}

}  // namespace logprob::cuda::linear

DFTUNE_NAMESPACE_END
