#pragma once
// The kernels of the CUDA log-prob reductions. Each is small and named for what it computes:
//
//   row_logsumexp_gather_kernel  one pass over each weighted row: online max/sum → row_lse[n], and
//                                token_logp[n] = w_n · (z_n[y_n] − row_lse[n]); masked rows read nothing
//   segment_sum_kernel           seq_logp[s] = Σ token_logp[offsets[s] .. offsets[s+1]) in a fixed
//                                order (double accumulation, a fixed tree): bitwise deterministic,
//                                no atomics
//   softmax_grad_kernel          grad[n, v] = c_n · (onehot(y_n)[v] − exp(z_n[v] − row_lse[n])),
//                                c_n = d_seq[s(n)] · w_n; one read and one write per logit (in place
//                                when grad is the logits); recomputes the row's lse when none is given
//
// A row is handled by a group of G threads: one warp (G = 32) for small vocabularies, the whole
// block for large ones. Loads and stores are 16-byte vectors (4 floats, 8 halves or bf16) after a
// scalar head that reaches 16-byte alignment, so any V and any row start work; UNROLL vectors are
// in flight per thread per step. Row offsets are 64-bit (N·V passes 2^32 at 16384 × 256000).
//
// Data the host cannot check without a synchronisation (targets, offsets, weights, d_seq, row_lse,
// non-finite logits) is checked here: a bad value never causes an out-of-bounds access, makes the
// affected outputs NaN and sets a bit of the status word (types.cuh).
#include <dftune/config.hpp>
#include <dftune/logprob/cuda/online_lse.cuh>
#include <dftune/logprob/cuda/types.cuh>

#include <cstdint>
#include <cstring>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::kernels {

using detail::lse_state;

inline constexpr int block_threads = 256;
// Four blocks (1024 threads) resident per SM caps the kernels at 64 registers (ptxas, sm_90: 48-63
// registers, no spills); with 64 B of loads in flight per thread that is 64 KiB per SM, about 3x
// what H100's HBM needs to stay busy (3.35 TB/s x ~0.7 us / 132 SMs).
inline constexpr int min_blocks_per_sm = 4;

// `__shared__ type name`. The emulated test (tests/cuda/emulate) defines it first, to hand out
// per-block storage it fills with garbage before every block, so a read before a write shows.
#ifndef DFTUNE_CUDA_SHARED
#define DFTUNE_CUDA_SHARED(type, name) __shared__ type name
#endif

// ---- storage conversions ---------------------------------------------------------------------

template <class T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, bf16>) return __bfloat162float(x);
  else return __half2float(x);
}

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

// Elements per 16-byte vector.
template <class T>
inline constexpr int vec_elems = 16 / static_cast<int>(sizeof(T));

// K consecutive elements moved as one access: a 16-byte vector (K = vec_elems<T>) is a uint4,
// one element is a T. Vectors are built from and split into 32-bit words explicitly and stored
// with __stwb (PTX st.global.wb.v4.u32, the default write-back policy): nvcc 13 (sm_80 and sm_90)
// splits a plain assignment of the computed vector into 4 st.global.u32 (a struct of 8 halves
// into 8 st.global.u16). tests/cuda/compile_check.sh holds the PTX to one 128-bit access each.
template <class T, int K>
using pack = std::conditional_t<K == 1, T, uint4>;

// The 32 bits of a pair of 16-bit values (element 0 in the low half, as in memory).
template <class Pair>
__device__ __forceinline__ std::uint32_t pair_bits(Pair p) {
  static_assert(sizeof(Pair) == sizeof(std::uint32_t));
  std::uint32_t w;
  memcpy(&w, &p, sizeof w);
  return w;
}

// A pack as floats (x[0..K)). bf16 widens with one shift or mask per element: it is the top half
// of a float.
template <class T, int K>
__device__ __forceinline__ void unpack(const pack<T, K>& p, float* x) {
  if constexpr (K == 1) {
    x[0] = to_float(p);
  } else {
    static_assert(K == vec_elems<T>, "a pack is one element or one 16-byte vector");
    const std::uint32_t w[4] = {p.x, p.y, p.z, p.w};
DFTUNE_CUDA_UNROLL
    for (int j = 0; j < 4; ++j) {
      if constexpr (std::is_same_v<T, float>) {
        x[j] = __uint_as_float(w[j]);
      } else if constexpr (std::is_same_v<T, bf16>) {
        x[2 * j] = __uint_as_float(w[j] << 16);
        x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
      } else {
        x[2 * j] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[j] & 0xffffu)));
        x[2 * j + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[j] >> 16)));
      }
    }
  }
}

// Floats rounded to nearest into a pack; two at a time for the 16-bit types (one cvt.rn.*x2).
template <class T, int K>
__device__ __forceinline__ pack<T, K> pack_from(const float* x) {
  if constexpr (K == 1) {
    return from_float<T>(x[0]);
  } else {
    static_assert(K == vec_elems<T>, "a pack is one element or one 16-byte vector");
    std::uint32_t w[4];
DFTUNE_CUDA_UNROLL
    for (int j = 0; j < 4; ++j) {
      if constexpr (std::is_same_v<T, float>) w[j] = __float_as_uint(x[j]);
      else if constexpr (std::is_same_v<T, bf16>) w[j] = pair_bits(__floats2bfloat162_rn(x[2 * j], x[2 * j + 1]));
      else w[j] = pair_bits(__floats2half2_rn(x[2 * j], x[2 * j + 1]));
    }
    return uint4{w[0], w[1], w[2], w[3]};
  }
}

template <class T, int K>
__device__ __forceinline__ pack<T, K> load_pack(const T* z) {
  return *reinterpret_cast<const pack<T, K>*>(z);
}

template <class T, int K>
__device__ __forceinline__ void store_pack(T* g, pack<T, K> p) {
  if constexpr (K == 1) *g = p;
  else __stwb(reinterpret_cast<uint4*>(g), p);
}

// K zeros (+0.0: all bits clear in the three types).
template <class T, int K>
__device__ __forceinline__ pack<T, K> zero_pack() {
  if constexpr (K == 1) return from_float<T>(0.0f);
  else return uint4{0u, 0u, 0u, 0u};
}

// Elements before the first 16-byte boundary at or after p (at most `limit`).
template <class T>
__device__ __forceinline__ int head_elems(const T* p, int limit) {
  const auto misalign = static_cast<int>(reinterpret_cast<std::uintptr_t>(p) & 15u);
  const int head = ((16 - misalign) & 15) / static_cast<int>(sizeof(T));
  return head < limit ? head : limit;
}

// ---- group reductions ------------------------------------------------------------------------

// Shared memory for the reduction of one group: one slot per warp (groups larger than a warp are
// the whole block, so one array serves).
template <int G>
struct group_smem {
  lse_state lse[G / 32];
  double sum[G / 32];
};

__device__ __forceinline__ lse_state warp_merge(lse_state st) {
DFTUNE_CUDA_UNROLL
  for (int off = 16; off > 0; off >>= 1) {
    const lse_state other{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off)};
    st = detail::lse_merge(st, other);
  }
  return st;
}

__device__ __forceinline__ double warp_sum(double x) {
DFTUNE_CUDA_UNROLL
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Every thread of the group gets the same merged state (same order everywhere: deterministic).
template <int G>
__device__ __forceinline__ lse_state group_merge(lse_state st, group_smem<G>& sm) {
  st = warp_merge(st);
  if constexpr (G == 32) {
    return st;
  } else {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) sm.lse[warp] = st;
    __syncthreads();
    lse_state all = sm.lse[0];
DFTUNE_CUDA_UNROLL
    for (int w = 1; w < G / 32; ++w) all = detail::lse_merge(all, sm.lse[w]);
    __syncthreads();  // sm is reused by the next row
    return all;
  }
}

template <int G>
__device__ __forceinline__ double group_sum(double x, group_smem<G>& sm) {
  x = warp_sum(x);
  if constexpr (G == 32) {
    return x;
  } else {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) sm.sum[warp] = x;
    __syncthreads();
    double all = sm.sum[0];
DFTUNE_CUDA_UNROLL
    for (int w = 1; w < G / 32; ++w) all += sm.sum[w];
    __syncthreads();
    return all;
  }
}

// ---- one row's online log-sum-exp by a group of G threads ------------------------------------

template <class T, int G, int UNROLL>
__device__ __forceinline__ lse_state row_lse_partial(const T* z, int V, int lane) {
  constexpr int K = vec_elems<T>;
  using P = pack<T, K>;
  lse_state st = detail::lse_empty();
  const int head = head_elems(z, V);
  if (lane < head) {
    const float x[1] = {to_float(z[lane])};
    detail::lse_add(st, x);
  }
  const int nvec = (V - head) / K;
  const T* body = z + head;
  // UNROLL vectors in flight per thread on every step, the last one included: lanes past the end
  // load nothing and contribute −inf (a zero term).
  for (int i = lane; i < nvec; i += UNROLL * G) {
    P raw[UNROLL];
DFTUNE_CUDA_UNROLL
    for (int u = 0; u < UNROLL; ++u) raw[u] = i + u * G < nvec ? load_pack<T, K>(body + (i + u * G) * K) : zero_pack<T, K>();
    float x[UNROLL * K];
DFTUNE_CUDA_UNROLL
    for (int u = 0; u < UNROLL; ++u) {
      unpack<T, K>(raw[u], x + u * K);
      if (i + u * G >= nvec)
DFTUNE_CUDA_UNROLL
        for (int k = 0; k < K; ++k) x[u * K + k] = -detail::pos_inf();
    }
    detail::lse_add(st, x);
  }
  const int tail = head + nvec * K;  // fewer than K < G elements remain
  if (tail + lane < V) {
    const float x[1] = {to_float(z[tail + lane])};
    detail::lse_add(st, x);
  }
  return st;
}

// ---- reports into the status area (types.cuh) --------------------------------------------------

__device__ __forceinline__ void report(status_area* status, std::uint32_t bit) { atomicOr(&status->bits, bit); }

__device__ __forceinline__ void report_bad_logits(status_area* status, long long row) {
  report(status, status_bad_logits);
  atomicMax(&status->first_bad_row_not, ~static_cast<unsigned long long>(row));
}

// A weighted row is judged as the CPU paths judge it (logprob/checks.hpp, detail::row_ok): its
// log-sum-exp and its log-prob w·(z[y] − lse) must be finite. That catches a NaN or +inf logit
// (lse NaN or +inf), a row of −inf (lse −inf), a −inf target logit and a log-prob beyond float,
// from values the pass computes anyway: no extra pass over the logits.
__device__ __forceinline__ bool row_ok(float lse, float lp) { return isfinite(lse) && isfinite(lp); }

// The largest gradient scale |c| = |d_seq·w| the backward takes: half of T's largest value, so
// that |c · (onehot − p)| <= |c| stays finite (as the CPU paths' check_backward).
template <class T>
__device__ __forceinline__ float max_grad_scale() {
  if constexpr (std::is_same_v<T, fp16>) return 0x1.ffcp+14f;      // 65504 / 2
  else if constexpr (std::is_same_v<T, bf16>) return 0x1.fep+126f;  // (2 − 2^-7) · 2^127 / 2
  else return 0x1.fffffep+126f;                                     // FLT_MAX / 2
}

// ---- forward: per-row log-sum-exp and weighted target log-prob -------------------------------

template <class T, int G, int UNROLL>
__global__ void __launch_bounds__(block_threads, min_blocks_per_sm)
    row_logsumexp_gather_kernel(const T* __restrict__ logits, int V, long long N,
                                const std::int32_t* __restrict__ targets, const float* __restrict__ weights,
                                float* __restrict__ token_logp, float* __restrict__ row_lse,
                                status_area* __restrict__ status) {
  static_assert(G == 32 || G == block_threads, "a row is one warp or one block");
  constexpr int R = block_threads / G;  // rows per block
  DFTUNE_CUDA_SHARED(group_smem<G>, sm);
  const int lane = static_cast<int>(threadIdx.x) % G;
  const long long stride = static_cast<long long>(gridDim.x) * R;
  // Uniform across the block when G is the block (R = 1), so its barriers are safe.
  for (long long row = static_cast<long long>(blockIdx.x) * R + threadIdx.x / G; row < N; row += stride) {
    const float w = weights ? weights[row] : 1.0f;
    if (w == 0.0f) {  // masked: 0 log-prob, NaN lse, nothing read
      if (lane == 0) {
        token_logp[row] = 0.0f;
        if (row_lse) row_lse[row] = detail::quiet_nan();
      }
      continue;
    }
    const T* z = logits + row * static_cast<long long>(V);
    // The target logit is loaded before the row pass, so that its latency hides behind it.
    const std::int32_t y = targets[row];
    const bool bad_target = y < 0 || y >= V;
    const float zy = (lane == 0 && !bad_target) ? to_float(z[y]) : 0.0f;
    const lse_state st = group_merge<G>(row_lse_partial<T, G, UNROLL>(z, V, lane), sm);
    if (lane == 0) {
      float lse = detail::lse_finish(st);
      float lp = w * (zy - lse);
      if (bad_target) {
        lp = detail::quiet_nan();
        report(status, status_bad_target);
      } else if (!isfinite(w)) {
        lp = detail::quiet_nan();
        report(status, status_bad_weight);
      } else if (!row_ok(lse, lp)) {
        lse = lp = detail::quiet_nan();
        report_bad_logits(status, row);
      }
      token_logp[row] = lp;
      if (row_lse) row_lse[row] = lse;
    }
  }
}

// ---- forward: per-sequence sums --------------------------------------------------------------

template <int G>
__global__ void __launch_bounds__(block_threads, min_blocks_per_sm)
    segment_sum_kernel(const float* __restrict__ token_logp, const std::int64_t* __restrict__ offsets,
                       long long S, long long N, float* __restrict__ seq_logp, status_area* __restrict__ status) {
  constexpr int R = block_threads / G;
  DFTUNE_CUDA_SHARED(group_smem<G>, sm);
  const int lane = static_cast<int>(threadIdx.x) % G;
  const long long stride = static_cast<long long>(gridDim.x) * R;
  for (long long s = static_cast<long long>(blockIdx.x) * R + threadIdx.x / G; s < S; s += stride) {
    const long long b = offsets[s];
    const long long e = offsets[s + 1];
    const bool bad = b < 0 || e < b || e > N || (s == 0 && b != 0) || (s == S - 1 && e != N);
    if (bad) {  // uniform across the group
      if (lane == 0) {
        seq_logp[s] = detail::quiet_nan();
        report(status, status_bad_offsets);
      }
      continue;
    }
    double acc = 0.0;
    for (long long r = b + lane; r < e; r += G) acc += static_cast<double>(token_logp[r]);
    acc = group_sum<G>(acc, sm);
    if (lane == 0) {
      float sum = static_cast<float>(acc);
      if (isfinite(acc) && !isfinite(sum)) {  // finite token log-probs whose sum float cannot hold
        sum = detail::quiet_nan();
        report(status, status_bad_seq_sum);
      }
      seq_logp[s] = sum;
    }
  }
}

// ---- backward --------------------------------------------------------------------------------

// The sequence of row r: the last s in [0, S) with offsets[s] <= r (so empty sequences are passed
// over); -1 when the offsets do not place r in [offsets[s], offsets[s+1]).
__device__ __forceinline__ long long sequence_of_row(const std::int64_t* offsets, long long S, long long r) {
  long long lo = 0, hi = S;  // invariant: offsets[lo] <= r < offsets[hi] if the offsets are valid
  while (hi - lo > 1) {
    const long long mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= r) lo = mid;
    else hi = mid;
  }
  return (offsets[lo] <= r && r < offsets[lo + 1]) ? lo : -1;
}

// g[v] = c · (onehot(y)[v] − exp(z[v] − lse)) for one K-element pack `in` of the row; yk is the
// target's index inside the pack (anything outside [0, K) when the target is elsewhere).
template <class T, int K>
__device__ __forceinline__ void grad_pack(const pack<T, K>& in, T* g, int yk, float c, float lse) {
  float x[K];
  unpack<T, K>(in, x);
DFTUNE_CUDA_UNROLL
  for (int k = 0; k < K; ++k) x[k] = c * ((k == yk ? 1.0f : 0.0f) - detail::exp_shifted(x[k], lse));
  store_pack<T, K>(g, pack_from<T, K>(x));
}

// VECTOR: grad and logits share their offset modulo 16 bytes, so the same head makes both aligned.
template <class T, int G, int UNROLL, bool VECTOR>
__global__ void __launch_bounds__(block_threads, min_blocks_per_sm)
    softmax_grad_kernel(const T* logits, T* grad, int V, long long N, const std::int32_t* __restrict__ targets,
                        const float* __restrict__ weights, const std::int64_t* __restrict__ offsets, long long S,
                        const float* __restrict__ d_seq, const float* __restrict__ row_lse,
                        status_area* __restrict__ status) {
  static_assert(G == 32 || G == block_threads, "a row is one warp or one block");
  constexpr int R = block_threads / G;
  constexpr int K = VECTOR ? vec_elems<T> : 1;
  constexpr int U = VECTOR ? UNROLL : 2 * UNROLL;
  DFTUNE_CUDA_SHARED(group_smem<G>, sm);
  const int lane = static_cast<int>(threadIdx.x) % G;
  const long long stride = static_cast<long long>(gridDim.x) * R;
  for (long long row = static_cast<long long>(blockIdx.x) * R + threadIdx.x / G; row < N; row += stride) {
    const T* z = logits + row * static_cast<long long>(V);  // may equal g: each element is read before it is written
    T* g = grad + row * static_cast<long long>(V);
    const float w = weights ? weights[row] : 1.0f;
    float c = 0.0f;
    if (w != 0.0f) {
      const long long s = sequence_of_row(offsets, S, row);
      if (s < 0) {
        c = detail::quiet_nan();
        if (lane == 0) report(status, status_bad_offsets);
      } else if (!isfinite(w)) {
        c = detail::quiet_nan();
        if (lane == 0) report(status, status_bad_weight);
      } else {
        c = d_seq[s] * w;
        if (!(fabsf(c) <= max_grad_scale<T>())) {  // also NaN
          c = detail::quiet_nan();
          if (lane == 0) report(status, status_bad_d_seq);
        }
      }
    }
    const int head = VECTOR ? head_elems(z, V) : 0;
    const int nvec = (V - head) / K;
    const int tail = head + nvec * K;
    if (c == 0.0f) {  // masked row or zero upstream gradient: zeros, nothing read (uniform in the group)
      if (lane < head) g[lane] = from_float<T>(0.0f);
      for (int i = lane; i < nvec; i += G) store_pack<T, K>(g + head + i * K, zero_pack<T, K>());
      if (tail + lane < V) g[tail + lane] = from_float<T>(0.0f);
      continue;
    }
    int y = targets[row];
    const bool bad_target = y < 0 || y >= V;
    float lse;
    if (row_lse) {  // forward()'s, trusted to belong to these logits (as on the CPU paths)
      lse = row_lse[row];
      if (!isfinite(lse)) {
        if (lane == 0) report(status, status_bad_row_lse);
        c = detail::quiet_nan();
      }
    } else {
      // Every lane reads the target logit (one broadcast load) and judges the row alike (the
      // merged lse has the same bits on every lane). The read comes before a barrier that every
      // lane passes before it writes (a warp's __syncwarp, a block's first __syncthreads in
      // group_merge), so that none reads it after another lane overwrote it in place.
      const float zy = bad_target ? 0.0f : to_float(z[y]);
      if constexpr (G == 32) __syncwarp();
      lse = detail::lse_finish(group_merge<G>(row_lse_partial<T, G, UNROLL>(z, V, lane), sm));
      if (!bad_target && !row_ok(lse, w * (zy - lse))) {  // the whole row NaN, as in the forward
        if (lane == 0) report_bad_logits(status, row);
        c = detail::quiet_nan();
      }
    }
    if (bad_target) {
      if (lane == 0) report(status, status_bad_target);
      c = detail::quiet_nan();
      y = -1;
    }
    if (lane < head) grad_pack<T, 1>(load_pack<T, 1>(z + lane), g + lane, y - lane, c, lse);
    // U packs in flight per thread on every step (all loads before any store: with g == z the
    // compiler could not move a load above an earlier store); lanes past the end do nothing.
    const T* zb = z + head;
    T* gb = g + head;
    const int yb = y - head;  // the target's index from the start of the vector body
    for (int i = lane; i < nvec; i += U * G) {
      pack<T, K> raw[U];
DFTUNE_CUDA_UNROLL
      for (int u = 0; u < U; ++u) raw[u] = i + u * G < nvec ? load_pack<T, K>(zb + (i + u * G) * K) : zero_pack<T, K>();
DFTUNE_CUDA_UNROLL
      for (int u = 0; u < U; ++u)
        if (i + u * G < nvec) {
          const int e = (i + u * G) * K;
          grad_pack<T, K>(raw[u], gb + e, yb - e, c, lse);
        }
    }
    if (tail + lane < V) grad_pack<T, 1>(load_pack<T, 1>(z + tail + lane), g + tail + lane, y - (tail + lane), c, lse);
  }
}

}  // namespace logprob::cuda::kernels

DFTUNE_NAMESPACE_END
