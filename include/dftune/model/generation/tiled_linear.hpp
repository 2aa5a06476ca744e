#pragma once
// The dense products of the cached decoders (tiny_lm/kv_decoder.hpp, decoder/kv_decoder.hpp):
//   Y[rows, N] = A[rows, K] · W
// over column tiles of Y, one single-threaded GEMM of the fused head's kernel (logprob/linear/
// gemm.hpp: oneDNN, OpenBLAS, BLIS or Eigen) per tile. The tiles depend on N and the machine's
// core count, never on the thread count, so every rounding, and with it every sampled token, is
// the same on any number of threads. W is a parameter block, row-major [K, N] (the tiny LM's
// dim-major weights) or [N, K] (torch.nn.Linear's [out, in], the decoder family's).
#include <dftune/config.hpp>
#include <dftune/logprob/linear/linear.hpp>

#include <algorithm>
#include <cstddef>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace generation {

// How a weight block is laid out for tiled_linear: [K, N] (in_major) or [N, K] (out_major).
enum class WeightLayout {
  in_major,   // [K, N] row-major: the tiny LM's weights
  out_major,  // [N, K] row-major: torch.nn.Linear's [out, in], the decoder family's
};

// Columns per GEMM task for an output of width N: about 4 tasks per core (the machine's core
// count, not the thread count, so the tiles are the same for any number of threads), a multiple
// of 16, within [64, 512].
inline std::size_t column_tile(std::size_t N) {
  const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t t = (N + 4 * cores - 1) / (4 * cores);
  return std::min(N, std::clamp<std::size_t>((t + 15) / 16 * 16, 64, 512));
}

/// Runs task(j0, width) for the column tiles [j0, j0 + width) of an output of width N
/// (column_tile(N) wide), in parallel when the product rows·K·N is large enough to pay for a
/// parallel region; each task runs on one thread (a threaded GEMM inside it runs single-threaded).
template <class Task>
void for_each_tile(std::size_t rows, std::size_t K, std::size_t N, Task&& task) {
  const std::size_t tile = column_tile(N), tiles = (N + tile - 1) / tile;
  [[maybe_unused]] const bool parallel =
      static_cast<double>(rows) * static_cast<double>(K) * static_cast<double>(N) >= logprob::linear::parallel_min_macs;
  DFTUNE_OMP(parallel num_threads(static_cast<int>(parallel ? dftune::max_threads() : 1)))
  {
#if defined(_OPENMP)
    omp_set_num_threads(1);  // a threaded BLAS runs each task on one thread
#endif
    DFTUNE_OMP(for schedule(dynamic, 1))
    for (std::ptrdiff_t t = 0; t < static_cast<std::ptrdiff_t>(tiles); ++t) {
      const std::size_t j0 = static_cast<std::size_t>(t) * tile;
      task(j0, std::min(tile, N - j0));
    }
  }
}

/// Y[rows, N] = A[rows, K] · W (W of the given layout), then epilogue(Y, j0, width) on each column
/// tile [j0, j0 + width) by the task that computed it (biases, residuals, activations). An
/// in-major W with a few rows (a step at a small batch) is streamed once without the GEMM
/// kernel's packing (logits.hpp's few_rows_product).
template <WeightLayout L, class T, class Epilogue>
void tiled_linear(const T* A, std::size_t rows, std::size_t K, const T* W, std::size_t N, T* Y, Epilogue&& epilogue) {
  using Gemm = logprob::linear::DefaultGemm;
  for_each_tile(rows, K, N, [&](std::size_t j0, std::size_t width) {
    if constexpr (L == WeightLayout::in_major) {
      if (rows <= logprob::linear::chunked::kFewRows)
        logprob::linear::chunked::few_rows_product(rows, width, K, A, K, W + j0, N, Y + j0, N);
      else
        Gemm::template run<true, true>(rows, width, K, A, K, W + j0, N, Y + j0, N, false);
    } else {
      Gemm::template run<true, false>(rows, width, K, A, K, W + j0 * K, K, Y + j0, N, false);
    }
    epilogue(Y, j0, width);
  });
}

}  // namespace generation

DFTUNE_NAMESPACE_END
