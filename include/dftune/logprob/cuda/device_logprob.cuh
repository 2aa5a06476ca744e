#pragma once
// The device API of the CUDA log-prob reductions (CUB's shape: size query, caller-owned workspace,
// explicit stream). Every pointer in `in` and in the outputs is device (or managed) memory; the
// semantics are those of logprob/generic.hpp, in float:
//
//   row_lse[n]    = log Σ_v exp(z_n[v])                 (NaN on masked rows)
//   token_logp[n] = w_n · (z_n[y_n] − row_lse[n])       (exactly 0 on masked rows)
//   seq_logp[s]   = Σ_{n in s} token_logp[n]            (0 for an empty sequence; double accumulation,
//                                                        fixed order: bitwise reproducible)
//   grad[n, v]    = d_seq[s(n)] · w_n · (onehot(y_n)[v] − exp(z_n[v] − row_lse[n]))   (0 on masked rows)
//
// Usage:
//   std::size_t bytes = dftune::logprob::cuda::workspace_size(in);       // host only, no CUDA call
//   void* ws; cudaMallocAsync(&ws, bytes, stream);                         // yours to own and reuse
//   auto w = std::span(static_cast<std::byte*>(ws), bytes);
//   dftune::logprob::cuda::forward(in, seq_logp, token_logp, row_lse, w, stream);  // async
//   ... d_seq from the objective ...
//   dftune::logprob::cuda::backward(in, d_seq, grad, row_lse, w, stream);          // async, in place ok
//   dftune::logprob::cuda::check_status(w, stream);   // optional: synchronises, throws on bad data
//
// Guarantees: no allocation and no synchronisation inside forward()/backward() (one
// cudaMemsetAsync of the status area, the kernels, all on `stream`); argument errors throw
// dftune::error before anything is enqueued; launch errors throw cuda_error with the CUDA error
// string. What the host cannot check without reading device memory (targets in range, valid
// offsets, finite weights / row_lse, gradient scales |d_seq·w| the gradient type can hold, weighted
// rows with a finite log-sum-exp and log-prob, sums float can hold) the kernels check: the
// affected outputs become NaN, no access goes out of bounds, and a status bit is set that
// read_status()/check_status() report (check_status with the first bad row of logits).
// The status area describes the latest call made with that workspace.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/cuda/dispatch.cuh>
#include <dftune/logprob/cuda/types.cuh>
#include <dftune/logprob/token_logits.hpp>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda {

// Workspace layout: [status area (types.cuh), padded to 256 B][token log-prob scratch: N floats, padded].
inline constexpr std::size_t status_bytes = 256;
inline constexpr std::size_t workspace_alignment = 16;
// The largest vocabulary: a row is indexed in 32 bits, with room for a step past its end.
inline constexpr std::size_t max_vocab = std::size_t{1} << 30;

// Bytes of device workspace forward() and backward() need for `in` (backward uses the first
// status_bytes only). Depends on the shapes only; calls nothing on the device. It is also at least
// the CPU path's logprob::workspace_size(in), so one buffer serves the dispatching overloads.
template <class T>
std::size_t workspace_size(const TokenLogits<T>& in) {
  const std::size_t scratch = in.rows() * sizeof(float);
  return status_bytes + (scratch + 255) / 256 * 256;
}

// The name of workspace_size before it took the CPU path's spelling (kept for one release).
template <class T>
[[deprecated("dftune::logprob::cuda::get_workspace_size is now workspace_size")]]
std::size_t get_workspace_size(const TokenLogits<T>& in) {
  return cuda::workspace_size(in);
}

namespace detail {

using dftune::detail::check_size;
using dftune::detail::fail;

template <class T>
void check_shapes(const TokenLogits<T>& in) {
  static_assert(supported<T>, "the CUDA log-prob path takes float, __half or __nv_bfloat16 logits");
  if (in.vocab == 0) fail("vocab", in.vocab, "at least 1");
  if (in.vocab > max_vocab) fail("vocab", in.vocab, "at most 2^30 (the kernels index a row in 32 bits)");
  if (in.logits.size() % in.vocab != 0)
    fail("logits", "size " + std::to_string(in.logits.size()), "a multiple of vocab = " + std::to_string(in.vocab));
  const std::size_t n = in.rows();
  check_size("targets", in.targets.size(), n);
  if (!in.weights.empty()) check_size("weights", in.weights.size(), n);
  if (in.offsets.empty()) fail("offsets", "size 0", "size S + 1 >= 1");
  if (in.offsets.size() == 1 && n != 0)
    fail("offsets", "size 1 (no sequence) with N = " + std::to_string(n) + " rows",
         "size S + 1 with S >= 1 sequences covering the rows");
}

inline status_area* check_workspace(std::span<std::byte> workspace, std::size_t needed, const char* what) {
  if (workspace.size() < needed)
    fail("workspace", "size " + std::to_string(workspace.size()),
         std::string("at least ") + what + " = " + std::to_string(needed) + " bytes");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % workspace_alignment != 0)
    fail("workspace", "a misaligned buffer", "alignment " + std::to_string(workspace_alignment));
  return reinterpret_cast<status_area*>(workspace.data());
}

}  // namespace detail

// seq_logp [S] is required; token_logp [N] and row_lse [N] are written when non-empty (row_lse
// saves the backward a pass over the logits). workspace: workspace_size(in) bytes of device
// memory, 16-byte aligned. Enqueued on `stream`; returns without waiting for it.
template <class T>
void forward(const TokenLogits<T>& in, std::span<float> seq_logp, std::span<float> token_logp,
             std::span<float> row_lse, std::span<std::byte> workspace, cudaStream_t stream) {
  detail::check_shapes(in);
  dftune::detail::check_size("seq_logp", seq_logp.size(), in.sequences());
  if (!token_logp.empty()) dftune::detail::check_size("token_logp", token_logp.size(), in.rows());
  if (!row_lse.empty()) dftune::detail::check_size("row_lse", row_lse.size(), in.rows());
  status_area* status = detail::check_workspace(workspace, cuda::workspace_size(in), "workspace_size(in)");
  float* token = token_logp.empty() ? reinterpret_cast<float*>(workspace.data() + status_bytes) : token_logp.data();
  const auto V = static_cast<int>(in.vocab);
  const auto N = static_cast<long long>(in.rows());
  const auto S = static_cast<long long>(in.sequences());
  using cuda::detail::check_cuda;
  check_cuda(cudaMemsetAsync(status, 0, sizeof(status_area), stream), "cudaMemsetAsync(status area)");
  check_cuda(dispatch::row_logsumexp_gather(in.logits.data(), V, N, in.targets.data(),
                                            in.weights.empty() ? nullptr : in.weights.data(), token,
                                            row_lse.empty() ? nullptr : row_lse.data(), status, stream),
             "row_logsumexp_gather_kernel");
  check_cuda(dispatch::segment_sum(token, in.offsets.data(), S, N, seq_logp.data(), status, stream),
             "segment_sum_kernel");
}

// d_seq [S] = ∂loss/∂seq_logp; grad [N·V] is the logits themselves (in place) or a disjoint buffer;
// row_lse [N] from forward(), or empty to recompute it (one more read of the logits). workspace:
// at least status_bytes of device memory (workspace_size(in) is enough). Enqueued on `stream`.
template <class T>
void backward(const TokenLogits<T>& in, std::span<const float> d_seq, std::span<T> grad,
              std::span<const float> row_lse, std::span<std::byte> workspace, cudaStream_t stream) {
  detail::check_shapes(in);
  dftune::detail::check_size("d_seq", d_seq.size(), in.sequences());
  dftune::detail::check_size("grad", grad.size(), in.logits.size());
  if (!row_lse.empty()) dftune::detail::check_size("row_lse", row_lse.size(), in.rows());
  const T* z0 = in.logits.data();
  const T* z1 = z0 + in.logits.size();
  const T* g0 = grad.data();
  const T* g1 = g0 + grad.size();
  const std::less<const T*> before;
  if (g0 != z0 && before(g0, z1) && before(z0, g1))
    dftune::detail::fail("grad", "a buffer overlapping the logits without starting at logits.data()",
                         "the logits themselves (in place) or a buffer disjoint from them");
  status_area* status = detail::check_workspace(workspace, status_bytes, "status_bytes");
  const auto V = static_cast<int>(in.vocab);
  const auto N = static_cast<long long>(in.rows());
  const auto S = static_cast<long long>(in.sequences());
  using cuda::detail::check_cuda;
  check_cuda(cudaMemsetAsync(status, 0, sizeof(status_area), stream), "cudaMemsetAsync(status area)");
  check_cuda(dispatch::softmax_grad(in.logits.data(), grad.data(), V, N, in.targets.data(),
                                    in.weights.empty() ? nullptr : in.weights.data(), in.offsets.data(), S,
                                    d_seq.data(), row_lse.empty() ? nullptr : row_lse.data(), status, stream),
             "softmax_grad_kernel");
}

// What the kernels reported in the latest forward()/backward() on `workspace`: the status bits and
// the smallest row with status_bad_logits (−1 if none). Synchronises `stream` (this and the two
// below are the calls here that wait; make them when you want to know).
struct status_report {
  std::uint32_t bits = status_ok;
  long long first_bad_row = -1;
};

inline status_report read_status_report(std::span<const std::byte> workspace, cudaStream_t stream) {
  if (workspace.size() < sizeof(status_area))
    dftune::detail::fail("workspace", "size " + std::to_string(workspace.size()), "the workspace of a call");
  status_area host{};
  using cuda::detail::check_cuda;
  check_cuda(cudaMemcpyAsync(&host, workspace.data(), sizeof host, cudaMemcpyDeviceToHost, stream),
             "cudaMemcpyAsync(status area)");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return {host.bits, host.first_bad_row_not == 0 ? -1 : static_cast<long long>(~host.first_bad_row_not)};
}

// The status bits alone.
inline std::uint32_t read_status(std::span<const std::byte> workspace, cudaStream_t stream) {
  return read_status_report(workspace, stream).bits;
}

// "a weighted row's target outside [0, vocab); offsets not ..." for a status word.
inline std::string describe_status(std::uint32_t bits) {
  static constexpr struct {
    std::uint32_t bit;
    const char* what;
  } names[] = {
      {status_bad_target, "a weighted row's target outside [0, vocab)"},
      {status_bad_offsets, "offsets not 0 = o_0 <= ... <= o_S = N"},
      {status_bad_weight, "a non-finite weight"},
      {status_bad_d_seq, "a gradient scale |d_seq[s]·w| that is not finite or above half the gradient type's largest value"},
      {status_bad_row_lse, "a non-finite row_lse on a weighted row"},
      {status_bad_logits,
       "a weighted row whose log-sum-exp or log-prob is not finite (a NaN or +inf logit, only -inf logits, a -inf "
       "target logit, or a log-prob float cannot hold)"},
      {status_bad_seq_sum, "a sequence sum float cannot hold"},
  };
  std::string out;
  for (const auto& n : names)
    if (bits & n.bit) out += (out.empty() ? "" : "; ") + std::string(n.what);
  return out.empty() ? "ok" : out;
}

// Synchronises `stream` and throws dftune::error naming what the kernels found, if anything (with
// the first bad row for status_bad_logits).
inline void check_status(std::span<const std::byte> workspace, cudaStream_t stream) {
  const status_report r = read_status_report(workspace, stream);
  if (r.bits == status_ok) return;
  std::string what = describe_status(r.bits);
  if (r.first_bad_row >= 0) what += " (first at row " + std::to_string(r.first_bad_row) + ")";
  dftune::detail::fail("device data", what, "valid inputs (status 0)");
}

}  // namespace logprob::cuda

DFTUNE_NAMESPACE_END
