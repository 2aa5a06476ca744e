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
// Per chunk of rows [r0, r0 + k), in this order on `stream` (the handle is bound to it):
//   Z = H_c Wᵀ (+ b)               cublasSgemm into the workspace, then a bias kernel
//   forward: lse and w·(z[y] − lse) per row            row_logsumexp_gather_kernel on Z
//   backward: Z ← c_n (onehot − softmax), c_n = d_seq[s(n)]·w_n        softmax_grad_kernel, in place
//   dW += Gᵀ H_c, db += Gᵀ 1, dH_c = G W                 cublasSgemm / cublasSgemv
// and after the last chunk the sequence sums (segment_sum_kernel) from the token log-probs.
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
#include <dftune/logprob/cuda/types.cuh>
#include <dftune/logprob/linear/linear_logits.hpp>

#include <cublas_v2.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::linear {

using logprob::linear::Layout;
using logprob::linear::LinearGrads;
using logprob::linear::LinearLogits;

// chunk_rows: rows whose logits are held at once (0: the default below). The workspace is about
// chunk_rows · V floats (1024 rows at V = 128256: 525 MB); the chunk is the inner dimension of
// dW += Gᵀ H_c, and a GPU GEMM wants it near a thousand (docs/cuda.md, "The fused linear head").
struct Options {
  std::size_t chunk_rows = 0;
};
inline constexpr std::size_t default_chunk_rows = 1024;

class cublas_error : public std::runtime_error {
 public:
  cublas_error(cublasStatus_t code, const std::string& what)
      : std::runtime_error(what + ": cuBLAS status " + std::to_string(static_cast<int>(code))), code_(code) {}
  cublasStatus_t code() const noexcept { return code_; }

 private:
  cublasStatus_t code_;
};

namespace detail {

inline void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw cublas_error(s, what);
}

// The workspace: [status area][per-chunk status area][Z: R·V][coef: N][ones: R][lse: R][token: N]
// [two offsets][one float], each 256-byte aligned.
struct Layout_ {
  std::size_t chunk_rows = 0;
  std::size_t status_at = 0, chunk_status_at = 0, logits_at = 0, coef_at = 0, ones_at = 0, lse_at = 0, token_at = 0,
              offsets_at = 0, unit_at = 0, bytes = 0;
};

template <class T>
Layout_ layout_of(const LinearLogits<T>& in, const Options& opt) {
  Layout_ l;
  const std::size_t N = in.rows();
  l.chunk_rows = std::max<std::size_t>(1, std::min(opt.chunk_rows != 0 ? opt.chunk_rows : default_chunk_rows, N));
  auto place = [&](std::size_t& at, std::size_t bytes) {
    at = l.bytes;
    l.bytes = dftune::detail::checked_add("workspace", l.bytes, (bytes + 255) / 256 * 256);
  };
  place(l.status_at, sizeof(status_area));
  place(l.chunk_status_at, sizeof(status_area));
  place(l.logits_at, dftune::detail::checked_product("workspace (chunk_rows·vocab)", l.chunk_rows, in.vocab, sizeof(float)));
  place(l.coef_at, dftune::detail::checked_product("workspace", N, sizeof(float)));
  place(l.ones_at, dftune::detail::checked_product("workspace", l.chunk_rows, sizeof(float)));
  place(l.lse_at, dftune::detail::checked_product("workspace", l.chunk_rows, sizeof(float)));
  place(l.token_at, dftune::detail::checked_product("workspace", N, sizeof(float)));
  place(l.offsets_at, 2 * sizeof(std::int64_t));
  place(l.unit_at, sizeof(float));
  return l;
}

// z[i, v] += b[v] for the k rows of a chunk.
__global__ void add_bias_kernel(float* z, const float* b, long long k, int V) {
  const long long total = k * V;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<long long>(gridDim.x) * blockDim.x)
    z[e] += b[e % V];
}

// coef[n] = d_seq[s(n)] · w_n (the softmax_grad kernel then runs on one "sequence" per chunk with
// d_seq = 1 and these as weights: the same products it forms itself, so its checks still apply).
// Rows of no sequence (bad offsets) get NaN, which the kernel reports as status_bad_weight.
__global__ void row_coef_kernel(const std::int64_t* offsets, long long S, const float* d_seq, const float* weights,
                                long long N, float* coef) {
  for (long long n = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<long long>(gridDim.x) * blockDim.x) {
    long long lo = 0, hi = S;  // the last s with offsets[s] <= n
    while (hi - lo > 1) {
      const long long mid = lo + (hi - lo) / 2;
      (offsets[mid] <= n ? lo : hi) = mid;
    }
    const bool in_range = S > 0 && offsets[lo] <= n && n < offsets[lo + 1];
    const float w = weights ? weights[n] : 1.0f;
    coef[n] = in_range ? (w == 0.0f ? 0.0f : d_seq[lo] * w) : __int_as_float(0x7fc00000);
  }
}

// ones[0..R) = 1, unit = 1, offsets = {0, k}.
__global__ void constants_kernel(float* ones, long long R, float* unit, std::int64_t* offsets, long long k) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < R;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    ones[i] = 1.0f;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *unit = 1.0f;
    offsets[0] = 0;
    offsets[1] = k;
  }
}

// The chunk's status into the call's: its bits, and its first bad row shifted by r0.
__global__ void merge_status_kernel(status_area* total, status_area* chunk, long long r0) {
  if (chunk->bits != 0) atomicOr(&total->bits, chunk->bits);
  if (chunk->first_bad_row_not != 0) {
    const unsigned long long row = ~chunk->first_bad_row_not + static_cast<unsigned long long>(r0);
    atomicMax(&total->first_bad_row_not, ~row);
  }
  chunk->bits = 0;
  chunk->first_bad_row_not = 0;
}

inline unsigned blocks_for(long long items) { return dispatch::grid_for(items, 256); }

enum class Mode { forward, backward, forward_backward };

inline void check_disjoint_device(std::initializer_list<std::pair<const char*, std::span<const std::byte>>> outputs,
                                  std::initializer_list<std::pair<const char*, std::span<const std::byte>>> inputs) {
  const std::less<const std::byte*> lt;
  auto overlap = [&](std::span<const std::byte> a, std::span<const std::byte> b) {
    return !a.empty() && !b.empty() && lt(a.data(), b.data() + b.size()) && lt(b.data(), a.data() + a.size());
  };
  std::size_t i = 0;
  for (const auto& [name, out] : outputs) {
    for (const auto& [in_name, in] : inputs)
      if (overlap(out, in))
        dftune::detail::fail(name, "a buffer overlapping " + std::string(in_name), "a buffer disjoint from every input and every other output");
    std::size_t j = 0;
    for (const auto& [other, o] : outputs) {
      if (j++ >= i) break;
      if (overlap(out, o))
        dftune::detail::fail(name, "a buffer overlapping " + std::string(other), "a buffer disjoint from every input and every other output");
    }
    ++i;
  }
}

template <class X>
std::span<const std::byte> bytes_of(std::span<X> s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size_bytes()};
}

// Host-side checks (everything that needs no device read), then the chunks.
inline void run(const LinearLogits<float>& in, Mode mode, std::span<float> seq_logp, std::span<float> token_logp,
                std::span<float> row_lse, std::span<const float> d_seq, std::span<const float> lse_in,
                const LinearGrads<float>& g, std::span<std::byte> workspace, const Options& opt, cublasHandle_t handle,
                cudaStream_t stream) {
  using dftune::detail::check_size;
  using dftune::detail::fail;
  // Shapes only: targets, weights and offsets are device memory, their values the kernels' to judge.
  if (in.dim == 0) fail("dim", in.dim, "at least 1");
  if (in.vocab == 0) fail("vocab", in.vocab, "at least 1");
  if (in.hidden.size() % in.dim != 0)
    fail("hidden", "size " + std::to_string(in.hidden.size()), "a multiple of dim = " + std::to_string(in.dim));
  dftune::detail::check_size_product("proj", in.proj.size(), in.vocab, in.dim, "proj (vocab·dim)");
  if (!in.bias.empty()) check_size("bias", in.bias.size(), in.vocab);
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
    if (!g.hidden.empty()) dftune::detail::check_size_product("grads.hidden", g.hidden.size(), N, d, "grads.hidden (N·dim)");
    if (!g.proj.empty()) dftune::detail::check_size_product("grads.proj", g.proj.size(), V, d, "grads.proj (vocab·dim)");
    if (!g.bias.empty()) check_size("grads.bias", g.bias.size(), V);
  }
  if (!lse_in.empty()) check_size("row_lse", lse_in.size(), N);
  const Layout_ l = layout_of(in, opt);
  if (workspace.size() < l.bytes)
    fail("workspace", "size " + std::to_string(workspace.size()),
         "at least workspace_size(in, options) = " + std::to_string(l.bytes) + " bytes");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % 256 != 0)
    fail("workspace", "a misaligned buffer", "alignment 256 (what cudaMalloc returns)");
  check_disjoint_device({{"seq_logp", bytes_of(seq_logp)}, {"token_logp", bytes_of(token_logp)}, {"row_lse", bytes_of(row_lse)},
                         {"grads.hidden", bytes_of(g.hidden)}, {"grads.proj", bytes_of(g.proj)}, {"grads.bias", bytes_of(g.bias)},
                         {"workspace", std::span<const std::byte>(workspace.first(l.bytes))}},
                        {{"hidden", bytes_of(in.hidden)}, {"proj", bytes_of(in.proj)}, {"bias", bytes_of(in.bias)},
                         {"targets", bytes_of(in.targets)}, {"weights", bytes_of(in.weights)}, {"offsets", bytes_of(in.offsets)},
                         {"d_seq", bytes_of(d_seq)}, {"row_lse", bytes_of(lse_in)}});
  if (handle == nullptr) fail("handle", "null", "a cuBLAS handle (cublasCreate)");

  std::byte* ws = workspace.data();
  auto* status = reinterpret_cast<status_area*>(ws + l.status_at);
  auto* chunk_status = reinterpret_cast<status_area*>(ws + l.chunk_status_at);
  float* Z = reinterpret_cast<float*>(ws + l.logits_at);
  float* coef = reinterpret_cast<float*>(ws + l.coef_at);
  float* ones = reinterpret_cast<float*>(ws + l.ones_at);
  float* lse_chunk = reinterpret_cast<float*>(ws + l.lse_at);  // forward_backward without row_lse
  float* token = token_logp.empty() ? reinterpret_cast<float*>(ws + l.token_at) : token_logp.data();
  auto* chunk_offsets = reinterpret_cast<std::int64_t*>(ws + l.offsets_at);
  float* unit = reinterpret_cast<float*>(ws + l.unit_at);
  const float* weights = in.weights.empty() ? nullptr : in.weights.data();
  using cuda::detail::check_cuda;
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  check_cuda(cudaMemsetAsync(ws, 0, l.logits_at, stream), "cudaMemsetAsync(status areas)");
  if (N == 0) {
    if (fwd && S != 0) check_cuda(cudaMemsetAsync(seq_logp.data(), 0, S * sizeof(float), stream), "cudaMemsetAsync(seq_logp)");
    return;
  }
  const long long R = static_cast<long long>(l.chunk_rows);
  if (bwd) {
    row_coef_kernel<<<blocks_for(static_cast<long long>(N)), 256, 0, stream>>>(
        in.offsets.data(), static_cast<long long>(S), d_seq.data(), weights, static_cast<long long>(N), coef);
    check_cuda(cudaGetLastError(), "row_coef_kernel");
  }
  const int Vi = static_cast<int>(V), di = static_cast<int>(d);
  const bool vocab_major = in.layout == Layout::vocab_major;
  const float one = 1.0f, zero = 0.0f;
  for (std::size_t r0 = 0; r0 < N; r0 += l.chunk_rows) {
    const long long k = static_cast<long long>(std::min(l.chunk_rows, N - r0));
    const int ki = static_cast<int>(k);
    const float* Hc = in.hidden.data() + r0 * d;
    // Z (row-major [k, V]) is column-major [V, k]: Zᵀ = W Hcᵀ (vocab_major W is column-major [d, V]).
    check_cublas(cublasSgemm(handle, vocab_major ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, Vi, ki, di, &one, in.proj.data(),
                             vocab_major ? di : Vi, Hc, di, &zero, Z, Vi),
                 "cublasSgemm (logits)");
    if (!in.bias.empty()) {
      add_bias_kernel<<<blocks_for(k * Vi), 256, 0, stream>>>(Z, in.bias.data(), k, Vi);
      check_cuda(cudaGetLastError(), "add_bias_kernel");
    }
    const std::int32_t* targets = in.targets.data() + r0;
    if (fwd) {
      check_cuda(dispatch::row_logsumexp_gather(static_cast<const float*>(Z), Vi, k, targets, weights ? weights + r0 : nullptr,
                                                token + r0, row_lse.empty() ? lse_chunk : row_lse.data() + r0, chunk_status,
                                                stream),
                 "row_logsumexp_gather_kernel");
    }
    if (bwd) {
      constants_kernel<<<blocks_for(k), 256, 0, stream>>>(ones, R, unit, chunk_offsets, k);
      check_cuda(cudaGetLastError(), "constants_kernel");
      // The forward's lse of this chunk, or the caller's from forward(), or none: recomputed.
      const float* lse = fwd ? (row_lse.empty() ? lse_chunk : row_lse.data() + r0) : (lse_in.empty() ? nullptr : lse_in.data() + r0);
      check_cuda(dispatch::softmax_grad(static_cast<const float*>(Z), Z, Vi, k, targets, coef + r0, chunk_offsets, 1, unit, lse,
                                        chunk_status, stream),
                 "softmax_grad_kernel");
      if (!g.proj.empty()) {  // dW += Gᵀ Hc
        if (vocab_major)      // dW column-major [d, V] += Hcᵀ (col-major [d, k]) · G (col-major [V, k])ᵀ
          check_cublas(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, di, Vi, ki, &one, Hc, di, Z, Vi, &one, g.proj.data(), di),
                       "cublasSgemm (dW)");
        else  // dW column-major [V, d] += G (col-major [V, k]) · Hc (col-major [d, k])ᵀ
          check_cublas(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, Vi, di, ki, &one, Z, Vi, Hc, di, &one, g.proj.data(), Vi),
                       "cublasSgemm (dW)");
      }
      if (!g.bias.empty())  // db += G (col-major [V, k]) · 1
        check_cublas(cublasSgemv(handle, CUBLAS_OP_N, Vi, ki, &one, Z, Vi, ones, 1, &one, g.bias.data(), 1), "cublasSgemv (db)");
      if (!g.hidden.empty())  // dHc column-major [d, k] = Wᵀ-as-[d, V] · G (col-major [V, k])
        check_cublas(cublasSgemm(handle, vocab_major ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, di, ki, Vi, &one, in.proj.data(),
                                 vocab_major ? di : Vi, Z, Vi, &zero, g.hidden.data() + r0 * d, di),
                     "cublasSgemm (dH)");
    }
    merge_status_kernel<<<1, 1, 0, stream>>>(status, chunk_status, static_cast<long long>(r0));
    check_cuda(cudaGetLastError(), "merge_status_kernel");
  }
  if (fwd)
    check_cuda(dispatch::segment_sum(token, in.offsets.data(), static_cast<long long>(S), static_cast<long long>(N), seq_logp.data(),
                                     status, stream),
               "segment_sum_kernel");
}

}  // namespace detail

// Bytes of device workspace every call on `in` with `options` needs; host only, no CUDA call.
inline std::size_t workspace_size(const LinearLogits<float>& in, const Options& options = {}) {
  return detail::layout_of(in, options).bytes;
}

// Asynchronous on `stream`; check_status(workspace, stream) reports what the kernels found.
inline void forward(const LinearLogits<float>& in, std::span<float> seq_logp, std::span<float> token_logp, std::span<float> row_lse,
                    std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream, const Options& options = {}) {
  detail::run(in, detail::Mode::forward, seq_logp, token_logp, row_lse, {}, {}, {}, workspace, options, handle, stream);
}

// Recomputes each chunk's logits; dH written, dW and db accumulated (+=).
inline void backward(const LinearLogits<float>& in, std::span<const float> d_seq, const LinearGrads<float>& grads,
                     std::span<const float> row_lse, std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream,
                     const Options& options = {}) {
  detail::run(in, detail::Mode::backward, {}, {}, {}, d_seq, row_lse, grads, workspace, options, handle, stream);
}

// When d_seq is known before the scores (SFT, accumulate_gradients): one pass, three GEMMs a chunk.
inline void forward_backward(const LinearLogits<float>& in, std::span<const float> d_seq, const LinearGrads<float>& grads,
                             std::span<float> seq_logp, std::span<float> token_logp, std::span<float> row_lse,
                             std::span<std::byte> workspace, cublasHandle_t handle, cudaStream_t stream,
                             const Options& options = {}) {
  detail::run(in, detail::Mode::forward_backward, seq_logp, token_logp, row_lse, d_seq, {}, grads, workspace, options, handle,
              stream);
}

}  // namespace logprob::cuda::linear

DFTUNE_NAMESPACE_END
