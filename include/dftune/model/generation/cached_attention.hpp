#pragma once
// The attention step of a cached decoder (the tiny LM's and the decoder family's kv_decoder.hpp):
// n new rows, row i at position t_i of the sequence in cache slot s_i, each query head h attending
// to key/value head h / (heads / kv_heads) of that slot's positions 0..t_i in one layer:
//   out_i,h = softmax_j(q_i,h · k_j,g / sqrt(dh)) v_j,g   (model/attention.hpp's heads_forward,
// whose values are the uncached forward's row_forward bit for bit).
// A task is a row and a block of its heads: the whole row when there are at least as many rows as
// threads (a cache row, every head's key of a position, is read once and in order), else each row
// split into up to `threads` blocks of heads so that one sequence still uses every thread.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/attention.hpp>
#include <dftune/model/generation/kv_cache.hpp>
#include <dftune/threads.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>

DFTUNE_NAMESPACE_BEGIN

namespace generation {

// The heads of one attention layer.
struct AttentionHeads {
  std::size_t heads = 0;     // query heads
  std::size_t kv_heads = 0;  // key/value heads (heads for multi-head attention); divides heads
  std::size_t dim = 0;       // per head
};

// Weights scratch for cached_attention at contexts up to `context` positions: threads · heads ·
// context, overflow-checked.
inline std::size_t attention_scratch(const AttentionHeads& a, std::size_t context) {
  return detail::checked_product("generate: attention scratch threads·heads·max_len", max_threads(), a.heads, context);
}

// out[i·ld_out + h·dim ...] for the n rows: q rows of stride ld_q (query head h at h·dim), the keys
// and values of `layer` in `cache` (key/value head g at g·dim of a cache row), row i at position
// row_pos[i] of slot row_slot[i]. `scratch` holds attention_scratch(a, context) values, context >
// every row_pos. Arguments are the caller's, already checked.
template <class T>
void cached_attention(const KvCache<T>& cache, std::size_t layer, const std::size_t* row_slot, const std::size_t* row_pos, std::size_t n,
                      const T* q, std::size_t ld_q, const AttentionHeads& a, std::size_t context, T* scratch, T* out, std::size_t ld_out) {
  const std::size_t H = a.heads, dh = a.dim, group = a.heads / a.kv_heads, ld_kv = cache.shape().width;
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  const std::size_t threads = max_threads();
  const std::size_t blocks = n >= threads ? 1 : std::min(H, threads);  // head blocks per row
  [[maybe_unused]] std::size_t macs = 0;
  for (std::size_t i = 0; i < n; ++i) macs += 2 * (row_pos[i] + 1) * H * dh;
  [[maybe_unused]] const bool parallel = macs >= logprob::linear::parallel_min_macs / 4;
  DFTUNE_OMP(parallel for schedule(dynamic, 1) num_threads(static_cast<int>(parallel ? threads : 1)))
  for (std::ptrdiff_t task = 0; task < static_cast<std::ptrdiff_t>(n * blocks); ++task) {
    const std::size_t i = static_cast<std::size_t>(task) / blocks, b = static_cast<std::size_t>(task) % blocks;
    const std::size_t h0 = b * H / blocks, h1 = (b + 1) * H / blocks, s = row_slot[i];
    T* weights = scratch + thread_id_and_count().first * H * context;
    attention::heads_forward(q + i * ld_q, cache.keys(layer, s), cache.values(layer, s), ld_kv, row_pos[i], dh, h0, h1, group, scale, weights,
                             out + i * ld_out);
  }
}

}  // namespace generation

DFTUNE_NAMESPACE_END
