#pragma once
/// @file
/// Weights packed once per generate call for the decode steps' GEMMs (docs/generation.md, "Speed").
///
/// During one generate call the weights are frozen and every step multiplies a few rows (the batch)
/// by the same [N, K] matrices. A GEMM call (dnnl_sgemm, Eigen) packs its B operand into the kernel's
/// blocked layout every time, which at 8–32 rows costs as much as the product. Here each column tile
/// of tiled_linear (the same tiles, so the same per-tile work split) is reordered once into the
/// blocked layout oneDNN's matmul primitive chooses (weights' format "any"); a step then runs
/// one single-threaded primitive per tile on the packed tile. Measured on GPT-2 124M's step GEMMs,
/// one thread: 2.1× (8 rows) and 2.2× (32 rows) fewer CPU-seconds than per-call dnnl_sgemm, no gain at
/// 1–2 rows (memory-bound either way); packing costs 1.2–1.7 CPU-s, so a call packs only from
/// kMinRows sequences and kMinTokens tokens on (decoder/kv_decoder.hpp's pack_for).
///
/// Memory: the packed copy is the size of the weights it holds (oneDNN pads a tile to its block,
/// < 1 %): 471 MiB for GPT-2 124M's layers and tied head; bounded by Limits::max_packed_bytes, beyond
/// which (or without oneDNN, or for double) nothing is packed and every GEMM takes tiled_linear.
/// The values differ from tiled_linear's by the GEMM's rounding only (another blocking of the same
/// sums); they are the same for any thread count (one single-threaded primitive per fixed tile).
#include <dftune/config.hpp>
#include <dftune/model/generation/arena.hpp>
#include <dftune/model/generation/tiled_linear.hpp>

#include <cstddef>
#include <map>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(DFTUNE_LINEAR_GEMM_DNNL)
#include <oneapi/dnnl/dnnl.hpp>

#endif

DFTUNE_NAMESPACE_BEGIN

namespace generation {

/// A set of out-major [N, K] weight blocks packed for the matmul primitive, tile by tile; empty
/// (packing refused) without oneDNN or for T other than float.
template <class T>
class PackedWeights {
 public:
  /// Sequences from which packing pays (measured: none at 1–2 rows, 2× at 8).
  static constexpr std::size_t kMinRows = 4;
  /// Tokens of a call (sequences · max_new) from which packing pays: packing GPT-2 124M took
  /// ~1.2–1.7 CPU-s, a step saved ~33 ms at 8 rows and ~76 ms at 32 (measured, docs/generation.md).
  static constexpr std::size_t kMinTokens = 1024;
  /// Whether this build can pack T at all (oneDNN's matmul, float).
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
  static constexpr bool available = std::is_same_v<T, float>;
#else
  static constexpr bool available = false;
#endif

  /// Packs W [N, K] (row-major, torch.nn.Linear's [out, in]) under `key`, for products of `rows`
  /// rows; false (nothing kept) if this build cannot or the format depends on the row count.
  bool pack([[maybe_unused]] std::size_t key, [[maybe_unused]] const T* W, [[maybe_unused]] std::size_t N,
            [[maybe_unused]] std::size_t K, [[maybe_unused]] std::size_t rows) {
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
    if constexpr (available) {
      try {
        Weight w{.N = N, .K = K, .tiles = {}, .arena = {}};
        const std::size_t tile = column_tile(N);
        std::vector<dnnl::memory::desc> descs;
        std::size_t bytes = 0;
        for (std::size_t j0 = 0; j0 < N; j0 += tile) {
          descs.push_back(primitive(rows, K, std::min(tile, N - j0), N).weights_desc());
          bytes += (descs.back().get_size() + kAlign - 1) / kAlign * kAlign;
        }
        w.arena = Arena(bytes);
        dnnl::stream s(engine());
        std::size_t at = 0;
        for (std::size_t t = 0, j0 = 0; j0 < N; ++t, j0 += tile) {
          const std::size_t width = std::min(tile, N - j0);
          dnnl::memory user({{dim(K), dim(width)}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ba}, engine(),
                            const_cast<T*>(W + j0 * K));
          dnnl::memory packed(descs[t], engine(), w.arena.data() + at);
          dnnl::reorder(user, packed).execute(s, user, packed);
          at += (descs[t].get_size() + kAlign - 1) / kAlign * kAlign;
          w.tiles.push_back({.j0 = j0, .width = width, .mem = std::move(packed)});
        }
        s.wait();
        bytes_ += bytes;
        weights_.insert_or_assign(key, std::move(w));
        return true;
      } catch (const dnnl::error&) {
        return false;
      }
    }
#endif
    return false;
  }

  /// Whether `key` was packed.
  bool has(std::size_t key) const { return weights_.count(key) != 0; }
  /// Bytes held by the packed tiles.
  std::size_t bytes() const { return bytes_; }
  /// Drops every packed weight.
  void clear() {
    weights_.clear();
    bytes_ = 0;
  }

  /// Y[rows, N] = A[rows, K] · Wᵀ with W the block packed under `key` (which must exist), then
  /// epilogue(Y, j0, width) per column tile, as tiled_linear<out_major>; W is the plain block, taken
  /// by a tile whose primitive cannot be made for this row count (it then runs tiled_linear's GEMM).
  template <class Epilogue>
  void run(std::size_t key, const T* A, std::size_t rows, const T* W, T* Y, Epilogue&& epilogue) {
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
    if constexpr (available) {
      const Weight& w = weights_.at(key);
      // The primitives of this row count, made before the parallel loop (at most two tile widths).
      std::vector<const dnnl::matmul*> prim(w.tiles.size(), nullptr);
      for (std::size_t t = 0; t < w.tiles.size(); ++t) prim[t] = matmul(rows, w, w.tiles[t]);
      const dnnl::memory::desc src({dim(rows), dim(w.K)}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
      for_each_tile(rows, w.K, w.N, [&](std::size_t j0, std::size_t width) {
        const std::size_t t = j0 / w.tiles.front().width;
        if (prim[t]) {
          const dnnl::memory::desc dst({dim(rows), dim(width)}, dnnl::memory::data_type::f32, {dim(w.N), 1});
          dnnl::memory a(src, engine(), const_cast<T*>(A)), y(dst, engine(), Y + j0);
          dnnl::stream s(engine());
          prim[t]->execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, w.tiles[t].mem}, {DNNL_ARG_DST, y}});
          s.wait();
        } else {
          logprob::linear::DefaultGemm::template run<true, false>(rows, width, w.K, A, w.K, W + j0 * w.K, w.K, Y + j0, w.N, false);
        }
        epilogue(Y, j0, width);
      });
      return;
    }
#endif
    (void)key, (void)A, (void)rows, (void)W, (void)Y, (void)epilogue;  // never packed: has() is false
  }

 private:
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
  struct Tile {
    std::size_t j0, width;
    dnnl::memory mem;
  };
  static constexpr std::size_t kAlign = 64;
  struct Weight {
    std::size_t N, K;
    std::vector<Tile> tiles;
    Arena arena;  // the packed tiles of the weight, in one allocation (arena.hpp: huge pages)
  };

  static dnnl::memory::dim dim(std::size_t v) { return static_cast<dnnl::memory::dim>(v); }
  static const dnnl::engine& engine() {
    static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
    return e;
  }
  static dnnl::matmul::primitive_desc primitive(std::size_t rows, std::size_t K, std::size_t width, std::size_t ldy) {
    using md = dnnl::memory::desc;
    const md src({dim(rows), dim(K)}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
    const md wts({dim(K), dim(width)}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
    const md dst({dim(rows), dim(width)}, dnnl::memory::data_type::f32, {dim(ldy), 1});
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, wts, dst), engine());
  }
  // The primitive for `rows` rows on this tile, null if none can be made or its weight format is
  // not the packed one (then the tile runs the plain GEMM).
  const dnnl::matmul* matmul(std::size_t rows, const Weight& w, const Tile& t) {
    const auto k = std::make_tuple(rows, w.K, t.width, w.N);
    if (auto it = prims_.find(k); it != prims_.end()) return it->second ? &*it->second : nullptr;
    std::optional<dnnl::matmul> p;
    try {
      const auto pd = primitive(rows, w.K, t.width, w.N);
      if (pd.weights_desc() == t.mem.get_desc()) p.emplace(pd);
    } catch (const dnnl::error&) {
    }
    auto& slot = prims_[k] = std::move(p);
    return slot ? &*slot : nullptr;
  }

  std::map<std::size_t, Weight> weights_;
  std::map<std::tuple<std::size_t, std::size_t, std::size_t, std::size_t>, std::optional<dnnl::matmul>> prims_;
#else
  std::map<std::size_t, int> weights_;
#endif
  std::size_t bytes_ = 0;
};

}  // namespace generation

DFTUNE_NAMESPACE_END
