#pragma once
// The chunk loop of the fused linear head's CUDA path (linear.cuh), written against an `Ops`
// policy that performs each step: linear.cuh's CudaOps calls cuBLAS and launches the kernels on a
// stream; tests/cuda/test_kernels_emulated.cpp runs the same loop through the CUDA emulator with a
// host GEMM of cuBLAS' column-major semantics, so the loop, its GEMM arguments and its kernels are
// checked against the CPU head without a GPU. No CUDA runtime call in this file: it compiles under
// nvcc and, against tests/cuda/emulate/, under the host compiler.
//
// Per chunk of rows [r0, r0 + k) (docs/cuda.md, "The fused linear head"):
//   Z = H_c Wᵀ (+ b)                                      gemm, then add_bias_kernel
//   forward: lse and w·(z[y] − lse) per row               row_logsumexp_gather_kernel on Z
//   backward: Z ← c_n (onehot − softmax), c_n = d_seq[s(n)]·w_n       softmax_grad_kernel in place
//   dW += Gᵀ H_c, db += Gᵀ 1, dH_c = G W                    gemm, gemv, gemm
// and after the last chunk the sequence sums (segment_sum_kernel) of the token log-probs.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/logprob/cuda/kernels.cuh>
#include <dftune/logprob/cuda/types.cuh>
#include <dftune/logprob/linear/linear_logits.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::linear {

using logprob::linear::Layout;
using logprob::linear::LinearGrads;
using logprob::linear::LinearLogits;

// chunk_rows: rows whose logits are held at once (0: the default below). The workspace is about
// chunk_rows · V floats (1024 rows at V = 128256: 525 MB); the chunk is the inner dimension of
// dW += Gᵀ H_c, and a GPU GEMM wants it near a thousand (docs/cuda.md, "The fused linear head").
struct LinearOptions {
  std::size_t chunk_rows = 0;
};
// The old name of LinearOptions, kept (deprecated) for one release.
using Options [[deprecated("use LinearOptions")]] = LinearOptions;
inline constexpr std::size_t default_chunk_rows = 1024;

namespace detail {

// The workspace: [status area][per-chunk status area][Z: R·V][coef: N][ones: R][lse: R][token: N]
// [two offsets][one float], each 256-byte aligned.
struct WorkspaceLayout {
  std::size_t chunk_rows = 0;
  std::size_t status_at = 0, chunk_status_at = 0, logits_at = 0, coef_at = 0, ones_at = 0, lse_at = 0, token_at = 0,
              offsets_at = 0, unit_at = 0, bytes = 0;
};

template <class T>
WorkspaceLayout layout_of(const LinearLogits<T>& in, const LinearOptions& opt) {
  WorkspaceLayout l;
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
// d_seq = 1 and these as weights: the products it would form itself, so its checks still apply).
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
    coef[n] = in_range ? (w == 0.0f ? 0.0f : d_seq[lo] * w) : cuda::detail::quiet_nan();
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

// The chunk's status into the call's: its bits, and its first bad row shifted by r0; then cleared.
__global__ void merge_status_kernel(status_area* total, status_area* chunk, long long r0) {
  if (chunk->bits != 0) atomicOr(&total->bits, chunk->bits);
  if (chunk->first_bad_row_not != 0) {
    const unsigned long long row = ~chunk->first_bad_row_not + static_cast<unsigned long long>(r0);
    atomicMax(&total->first_bad_row_not, ~row);
  }
  chunk->bits = 0;
  chunk->first_bad_row_not = 0;
}

enum class Mode { forward, backward, forward_backward };

// The loop, on a checked call (linear.cuh checks everything the host can). gemm(ta, tb, m, n, k, A,
// lda, B, ldb, beta, C, ldc) is cuBLAS' C = op(A) op(B) + beta·C on column-major matrices;
// gemv(m, n, A, lda, x, y) is y += A x.
template <class Ops>
void run_chunks(const LinearLogits<float>& in, Mode mode, std::span<float> seq_logp, std::span<float> token_logp,
                std::span<float> row_lse, std::span<const float> d_seq, std::span<const float> lse_in,
                const LinearGrads<float>& g, std::byte* ws, const WorkspaceLayout& l, Ops& ops) {
  const std::size_t N = in.rows(), S = in.sequences(), V = in.vocab, d = in.dim;
  const bool fwd = mode != Mode::backward, bwd = mode != Mode::forward;
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
  ops.memset(ws, l.logits_at);  // both status areas
  if (N == 0) {
    if (fwd && S != 0) ops.memset(seq_logp.data(), S * sizeof(float));
    return;
  }
  const long long R = static_cast<long long>(l.chunk_rows);
  if (bwd) ops.row_coef(in.offsets.data(), static_cast<long long>(S), d_seq.data(), weights, static_cast<long long>(N), coef);
  const int Vi = static_cast<int>(V), di = static_cast<int>(d);
  const bool vocab_major = in.layout == Layout::vocab_major;  // W row-major [V, d] is column-major [d, V]
  for (std::size_t r0 = 0; r0 < N; r0 += l.chunk_rows) {
    const long long k = static_cast<long long>(std::min(l.chunk_rows, N - r0));
    const int ki = static_cast<int>(k);
    const float* Hc = in.hidden.data() + r0 * d;  // row-major [k, d]: column-major [d, k]
    // Z row-major [k, V] is column-major [V, k]: Zᵀ = W_vd Hcᵀ.
    ops.gemm(vocab_major, false, Vi, ki, di, in.proj.data(), vocab_major ? di : Vi, Hc, di, 0.0f, Z, Vi);
    if (!in.bias.empty()) ops.add_bias(Z, in.bias.data(), k, Vi);
    const std::int32_t* targets = in.targets.data() + r0;
    if (fwd)
      ops.lse_gather(static_cast<const float*>(Z), Vi, k, targets, weights ? weights + r0 : nullptr, token + r0,
                     row_lse.empty() ? lse_chunk : row_lse.data() + r0, chunk_status);
    if (bwd) {
      ops.constants(ones, R, unit, chunk_offsets, k);
      // The forward's lse of this chunk, or the caller's from forward(), or none: recomputed.
      const float* lse = fwd ? (row_lse.empty() ? lse_chunk : row_lse.data() + r0) : (lse_in.empty() ? nullptr : lse_in.data() + r0);
      ops.softmax_grad(static_cast<const float*>(Z), Z, Vi, k, targets, coef + r0, chunk_offsets, 1, unit, lse, chunk_status);
      if (!g.proj.empty()) {  // dW += Gᵀ Hc
        if (vocab_major)      // dW column-major [d, V] += Hc (col-major [d, k]) · G (col-major [V, k])ᵀ
          ops.gemm(false, true, di, Vi, ki, Hc, di, Z, Vi, 1.0f, g.proj.data(), di);
        else  // dW column-major [V, d] += G (col-major [V, k]) · Hc (col-major [d, k])ᵀ
          ops.gemm(false, true, Vi, di, ki, Z, Vi, Hc, di, 1.0f, g.proj.data(), Vi);
      }
      if (!g.bias.empty()) ops.gemv(Vi, ki, Z, Vi, ones, g.bias.data());  // db += G 1
      if (!g.hidden.empty())  // dHc column-major [d, k] = W_vdᵀ (as [d, V]) · G (col-major [V, k])
        ops.gemm(!vocab_major, false, di, ki, Vi, in.proj.data(), vocab_major ? di : Vi, Z, Vi, 0.0f, g.hidden.data() + r0 * d, di);
    }
    ops.merge_status(status, chunk_status, static_cast<long long>(r0));
  }
  if (fwd) ops.segment_sum(token, in.offsets.data(), static_cast<long long>(S), static_cast<long long>(N), seq_logp.data(), status);
}

}  // namespace detail

}  // namespace logprob::cuda::linear

DFTUNE_NAMESPACE_END
