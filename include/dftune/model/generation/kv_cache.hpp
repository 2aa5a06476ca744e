#pragma once
// The key/value cache of cached generation (docs/generation.md): for every layer, the keys and the
// values of every position generated so far, so that a new token attends to them instead of
// recomputing the whole prefix (O(T) work per token instead of O(T²)).
//
// Slot p holds prompt p: capacity_p = len_p + max_new rows per layer, placed back to back, so the
// cache holds exactly Σ_p (len_p + max_new) rows of `width` keys and as many values per layer:
//   elements = layers · 2 · Σ_p capacity_p · width
// That count is overflow-checked and compared with Limits::max_cache_bytes before anything is
// allocated (cache_bytes); a request beyond it is a dftune::error naming the bound.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/model/generation/arena.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace generation {

// What a decoder caches per layer and position: `width` keys and `width` values (heads · head
// dimension for multi-head attention; a grouped-query decoder caches its fewer key/value heads).
struct CacheShape {
  std::size_t layers = 0;  // decoder layers, each with its own keys and values
  std::size_t width = 0;   // keys (and values) per position and layer: key/value heads · head dimension
};

// Memory bounds of one generate call, checked before anything is allocated.
struct Limits {
  // The most bytes the key/value cache of one generate call may take (4 GiB by default: GPT-2's
  // shape, 12 layers · 768, holds 32 sequences of 1024 tokens in 2.4 GB of float).
  std::size_t max_cache_bytes = std::size_t{1} << 32;
  // The most bytes of weights a generate call may copy into the GEMM's packed layout (a decoder
  // with pack_for: generation/packed_weights.hpp); beyond it nothing is packed, which is slower at
  // 4 or more sequences but never an error. 2 GiB by default: GPT-2 124M needs 471 MiB; 0 never packs.
  std::size_t max_packed_bytes = std::size_t{1} << 31;
};

// Bytes of the cache for `rows` positions in all (Σ_p capacity_p), checked against the limit:
// a product that wraps or a total above limits.max_cache_bytes is a dftune::error.
template <class T>
std::size_t cache_bytes(const CacheShape& shape, std::size_t rows, const Limits& limits) {
  const std::size_t bytes = detail::checked_product("generate: key/value cache (layers·2·positions·width·sizeof)", shape.layers, 2,
                                                    rows, shape.width, sizeof(T));
  if (bytes > limits.max_cache_bytes)
    detail::fail("generate: key/value cache", std::to_string(bytes) + " bytes (" + std::to_string(shape.layers) + " layers · 2 · " +
                                                  std::to_string(rows) + " positions · width " + std::to_string(shape.width) + ")",
                 "at most Limits::max_cache_bytes = " + std::to_string(limits.max_cache_bytes));
  return bytes;
}

// The key/value cache of one generate call: for each of `slots` sequences a fixed capacity of
// positions (its prompt + max_new), per layer [keys | values][positions][width], in one allocation.
template <class T>
class KvCache {
  static_assert(std::is_trivially_default_constructible_v<T> && std::is_trivially_copyable_v<T>, "KvCache holds plain numbers");

 public:
  // capacities[p] rows per layer for slot p; the caller has checked the size with cache_bytes.
  KvCache(const CacheShape& shape, std::span<const std::size_t> capacities)
      : shape_(shape), base_(capacities.size() + 1, 0), length_(capacities.size(), 0) {
    for (std::size_t p = 0; p < capacities.size(); ++p) base_[p + 1] = base_[p] + capacities[p];
    // Not zeroed (a decoder reads only the positions it has written), in huge pages: arena.hpp.
    data_ = Arena(bytes());
  }

  // Layers and width it was made for.
  const CacheShape& shape() const { return shape_; }
  // Sequences it holds.
  std::size_t slots() const { return length_.size(); }
  // Positions `slot` has room for.
  std::size_t capacity(std::size_t slot) const { return base_[slot + 1] - base_[slot]; }
  // Positions of `slot` already cached (the prompt, then every token fed back).
  std::size_t length(std::size_t slot) const { return length_[slot]; }
  // Bytes of keys and values held (every slot at full capacity).
  std::size_t bytes() const { return shape_.layers * 2 * base_.back() * shape_.width * sizeof(T); }

  // Keys (values) of `slot` in `layer`: [capacity, width] row-major, row t = position t.
  T* keys(std::size_t layer, std::size_t slot) { return data_.template as<T>() + (2 * layer * base_.back() + base_[slot]) * shape_.width; }
  // Values of `slot` in `layer`, laid out as keys().
  T* values(std::size_t layer, std::size_t slot) { return keys(layer, slot) + base_.back() * shape_.width; }
  // Read-only keys(), for attention.
  const T* keys(std::size_t layer, std::size_t slot) const { return const_cast<KvCache*>(this)->keys(layer, slot); }
  // Read-only values(), for attention.
  const T* values(std::size_t layer, std::size_t slot) const { return const_cast<KvCache*>(this)->values(layer, slot); }

  // `rows` positions of `slot` are now cached (after a decoder has written every layer's keys and
  // values of them); the decoder checked them against the capacity before writing.
  void advance(std::size_t slot, std::size_t rows) { length_[slot] += rows; }
  // Empties every slot (lengths 0; capacities and memory kept).
  void reset() { std::fill(length_.begin(), length_.end(), std::size_t{0}); }

 private:
  CacheShape shape_;
  std::vector<std::size_t> base_;    // [slots + 1] first row of each slot
  std::vector<std::size_t> length_;  // [slots]
  Arena data_;                       // [layers][keys, values][rows][width] of T
};

}  // namespace generation

DFTUNE_NAMESPACE_END
