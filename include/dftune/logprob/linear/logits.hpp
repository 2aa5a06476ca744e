#pragma once
// The fused head's logits themselves, z_n = W h_n + b for a few rows (a sampler's last rows: one per
// sequence being generated), tiled over the vocabulary exactly as the head's forward tiles them
// (plan.hpp's vocab_tile, one single-threaded GEMM task per tile, chunked.hpp). The caller holds
// [rows, V] logits, never [N, V] for every position of a batch. Each logit is written by one task
// whose shape depends on the plan alone, so the values do not depend on the thread count.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/checks.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/linear/plan.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear::chunked {

// Rows up to which few_rows_product replaces the GEMM kernel.
inline constexpr std::size_t kFewRows = 4;

// C[m, n] = A[m, k] · B[k, n], all row-major with leading dimensions, for a few rows: B is streamed
// once, row by row, and each row of C accumulates over k in order. A GEMM kernel packs B first,
// which for one row (a generation step at batch 1) costs as much memory traffic as the product.
template <class S>
void few_rows_product(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb, S* c,
                      std::size_t ldc) {
  for (std::size_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, S(0));
  for (std::size_t p = 0; p < k; ++p) {
    const S* __restrict bp = b + p * ldb;
    for (std::size_t i = 0; i < m; ++i) {
      const S x = a[i * lda + p];
      S* __restrict ci = c + i * ldc;
      for (std::size_t j = 0; j < n; ++j) ci[j] += x * bp[j];
    }
  }
}

// z [rows, V] row-major. Targets, weights and offsets of `in` are not read. Storage types other
// than compute_t<T> (bf16) are not supported here (they would need the forward's W staging).
template <class Gemm, class T>
  requires std::is_same_v<T, compute_t<T>>
void logits(const LinearLogits<T>& in, std::span<T> z, const LinearOptions& opt) {
  validate_shapes(in);
  const std::size_t N = in.rows(), V = in.vocab, d = in.dim;
  dftune::detail::check_size_product("logits", z.size(), N, V, "logits (rows·vocab)");
  const detail::Region out[] = {detail::region("logits", z)};
  const detail::Region inputs[] = {detail::region("hidden", in.hidden), detail::region("proj", in.proj),
                                     detail::region("bias", in.bias)};
  detail::check_disjoint(out, inputs);
  if (N == 0) return;
  const Plan p = make_plan(in, opt);
  const std::size_t Vt = p.vocab_tile, tiles = (V + Vt - 1) / Vt;
  const bool vocab_major = in.layout == Layout::vocab_major;
  const T* H = in.hidden.data();
  const T* W = in.proj.data();
  T* Z = z.data();
  // The forward's rule: a product too small to pay for a parallel region runs on one thread.
  [[maybe_unused]] const std::size_t threads =
      opt.threads != 0 ? opt.threads : (static_cast<double>(N) * static_cast<double>(V) * static_cast<double>(d) < parallel_min_macs ? 1 : max_threads());
  DFTUNE_OMP(parallel num_threads(static_cast<int>(threads)))
  {
#if defined(_OPENMP)
    omp_set_num_threads(1);  // a threaded BLAS runs each task on one thread (chunked.hpp)
#endif
    DFTUNE_OMP(for schedule(dynamic, 1))
    for (std::ptrdiff_t t = 0; t < static_cast<std::ptrdiff_t>(tiles); ++t) {
      const std::size_t v0 = static_cast<std::size_t>(t) * Vt, n = std::min(Vt, V - v0);
      if (vocab_major)
        Gemm::template run<true, false>(N, n, d, H, d, W + v0 * d, d, Z + v0, V, false);
      else if (N <= kFewRows)
        few_rows_product(N, n, d, H, d, W + v0, V, Z + v0, V);
      else
        Gemm::template run<true, true>(N, n, d, H, d, W + v0, V, Z + v0, V, false);
      if (!in.bias.empty())
        for (std::size_t i = 0; i < N; ++i)
          for (std::size_t v = 0; v < n; ++v) Z[i * V + v0 + v] += in.bias[v0 + v];
    }
  }
}

}  // namespace logprob::linear::chunked

DFTUNE_NAMESPACE_END
