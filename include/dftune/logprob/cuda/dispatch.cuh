#pragma once
// Dispatch: the launch configuration of each kernel, chosen from the shape and the pointers only
// (never from the data, so the same call launches the same kernels and gives the same bits), and
// the launches themselves on the caller's stream. No allocation, no synchronisation; each function
// returns the launch's cudaError_t.
//
// Choices (documented here so they can be tuned on a GPU in one place):
//   - rows with V <= warp_row_max_vocab go to one warp each (8 rows per 256-thread block), larger
//     ones to one block each: a warp holds 32 × 16 B per step, enough for a few thousand logits;
//   - UNROLL = 4 vectors per thread in flight (64 B/thread, 16 KiB per block, 4 blocks per SM:
//     kernels::min_blocks_per_sm);
//   - the grid covers every row group once (grid-stride loops make larger N safe);
//   - sequences: one warp each when they are short on average (N / S < 1024), one block otherwise;
//   - backward: vector accesses when grad and logits are congruent modulo 16 bytes (always in place),
//     scalar accesses otherwise.
#include <dftune/config.hpp>
#include <dftune/logprob/cuda/kernels.cuh>
#include <dftune/logprob/cuda/types.cuh>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda::dispatch {

inline constexpr long long warp_row_max_vocab = 4096;
inline constexpr int unroll = 4;
inline constexpr long long warp_segment_max_mean = 1024;

inline unsigned grid_for(long long items, int per_block) {
  const long long blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::min<long long>(std::max<long long>(blocks, 1), INT_MAX));
}

template <class T>
cudaError_t row_logsumexp_gather(const T* logits, int V, long long N, const std::int32_t* targets,
                                 const float* weights, float* token_logp, float* row_lse, status_area* status,
                                 cudaStream_t stream) {
  using namespace kernels;
  if (N == 0) return cudaSuccess;
  if (V <= warp_row_max_vocab) {
    row_logsumexp_gather_kernel<T, 32, unroll><<<grid_for(N, block_threads / 32), block_threads, 0, stream>>>(
        logits, V, N, targets, weights, token_logp, row_lse, status);
  } else {
    row_logsumexp_gather_kernel<T, block_threads, unroll><<<grid_for(N, 1), block_threads, 0, stream>>>(
        logits, V, N, targets, weights, token_logp, row_lse, status);
  }
  return cudaGetLastError();
}

inline cudaError_t segment_sum(const float* token_logp, const std::int64_t* offsets, long long S, long long N,
                               float* seq_logp, status_area* status, cudaStream_t stream) {
  using namespace kernels;
  if (S == 0) return cudaSuccess;
  if (N / S < warp_segment_max_mean) {
    segment_sum_kernel<32><<<grid_for(S, block_threads / 32), block_threads, 0, stream>>>(token_logp, offsets, S, N,
                                                                                           seq_logp, status);
  } else {
    segment_sum_kernel<block_threads><<<grid_for(S, 1), block_threads, 0, stream>>>(token_logp, offsets, S, N,
                                                                                     seq_logp, status);
  }
  return cudaGetLastError();
}

template <class T, int G>
cudaError_t softmax_grad_g(const T* logits, T* grad, int V, long long N, const std::int32_t* targets,
                           const float* weights, const std::int64_t* offsets, long long S, const float* d_seq,
                           const float* row_lse, status_area* status, cudaStream_t stream) {
  using namespace kernels;
  const unsigned grid = grid_for(N, block_threads / G);
  const auto gap = reinterpret_cast<std::uintptr_t>(grad) - reinterpret_cast<std::uintptr_t>(logits);
  if (gap % 16 == 0) {
    softmax_grad_kernel<T, G, unroll, true><<<grid, block_threads, 0, stream>>>(logits, grad, V, N, targets, weights,
                                                                              offsets, S, d_seq, row_lse, status);
  } else {
    softmax_grad_kernel<T, G, unroll, false><<<grid, block_threads, 0, stream>>>(logits, grad, V, N, targets, weights,
                                                                               offsets, S, d_seq, row_lse, status);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t softmax_grad(const T* logits, T* grad, int V, long long N, const std::int32_t* targets,
                         const float* weights, const std::int64_t* offsets, long long S, const float* d_seq,
                         const float* row_lse, status_area* status, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (V <= warp_row_max_vocab)
    return softmax_grad_g<T, 32>(logits, grad, V, N, targets, weights, offsets, S, d_seq, row_lse, status, stream);
  return softmax_grad_g<T, kernels::block_threads>(logits, grad, V, N, targets, weights, offsets, S, d_seq, row_lse,
                                                   status, stream);
}

}  // namespace logprob::cuda::dispatch

DFTUNE_NAMESPACE_END
