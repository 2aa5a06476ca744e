#pragma once
// The GEMMs of the fused linear head, one policy per library, all with one signature:
//   C[m, n] (row-major, leading dimension ldc) = (accumulate ? C : 0) + A[m, k] · B[k, n]
// where A and B are row-major (ARow / BRow) or column-major, with leading dimensions lda, ldb.
// Every call is single-threaded by contract: the head splits the work into tasks of a fixed shape
// itself (chunked.hpp), which is what makes its results independent of the thread count.
//
// - EigenGemm (the default when Eigen is on the include path): Eigen's GEMM kernel called directly
//   with single-thread blocking. Through a Map product, Eigen picks its blocking from the team size
//   of the enclosing OpenMP region and switches to a coefficient loop below 20 rows + cols + depth;
//   both would tie the rounding to where and how the head is called.
// - CblasGemm (DFTUNE_LINEAR_GEMM_CBLAS: the CMake option DFTUNE_GEMM=openblas links Debian's
//   OpenMP build of OpenBLAS, which runs single-threaded inside a parallel region, or else its
//   default pthread build, which it sets to one thread).
// - BlisGemm (DFTUNE_LINEAR_GEMM_BLIS: DFTUNE_GEMM=blis), BLIS's typed API with a one-thread runtime.
// - DnnlGemm (DFTUNE_LINEAR_GEMM_DNNL: DFTUNE_GEMM=onednn), oneDNN's dnnl_sgemm (row-major, picks
//   its kernel for the CPU at run time). It uses OpenMP's threads outside a parallel region and one
//   thread inside one; a call at the top level lowers this thread's OpenMP thread count to one for
//   its duration. oneDNN has no double GEMM: doubles go to Eigen's kernel (or the loops).
// - LoopGemm: plain loops, for builds without Eigen or a BLAS (correct, slow).
#include <dftune/config.hpp>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <type_traits>

#if __has_include(<Eigen/Core>)
#include <Eigen/Core>
// 1: EigenGemm exists (Eigen on the include path).
#define DFTUNE_LINEAR_HAS_EIGEN_GEMM 1
#else
// 0: no EigenGemm (Eigen not on the include path).
#define DFTUNE_LINEAR_HAS_EIGEN_GEMM 0
#endif
#if defined(DFTUNE_LINEAR_GEMM_CBLAS)
#include <cblas.h>
#endif
#if defined(DFTUNE_LINEAR_GEMM_BLIS)
#include <blis.h>
#endif
#if defined(DFTUNE_LINEAR_GEMM_DNNL)
#include <dftune/error.hpp>
#include <oneapi/dnnl/dnnl.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <string>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear::gemm {

// C[m, n] = 0 (row-major, leading dimension ldc): where a product that does not accumulate starts.
template <class S>
void zero(std::size_t m, std::size_t n, S* c, std::size_t ldc) {
  for (std::size_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, S(0));
}

// Plain loops, for builds without Eigen or a BLAS (correct, slow).
struct LoopGemm {
  static constexpr const char* name = "loops";  // the library, as benchmarks and errors name it
  // C = (accumulate ? C : 0) + A·B, A [m, k] row-major when ARow (else column-major), B [k, n] when
  // BRow; on the calling thread.
  template <bool ARow, bool BRow, class S>
  static void run(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb,
                  S* c, std::size_t ldc, bool accumulate) {
    if (!accumulate) zero(m, n, c, ldc);
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t p = 0; p < k; ++p) {
        const S x = ARow ? a[i * lda + p] : a[p * lda + i];
        S* ci = c + i * ldc;
        for (std::size_t j = 0; j < n; ++j) ci[j] += x * (BRow ? b[p * ldb + j] : b[j * ldb + p]);
      }
  }
};

#if DFTUNE_LINEAR_HAS_EIGEN_GEMM || defined(DFTUNE_DOXYGEN)
// Eigen's GEMM kernel with single-thread blocking (the default when Eigen is on the include path).
struct EigenGemm {
  static constexpr const char* name = "Eigen";  // the library, as benchmarks and errors name it
  // C = (accumulate ? C : 0) + A·B, A [m, k] row-major when ARow (else column-major), B [k, n] when
  // BRow; on the calling thread.
  template <bool ARow, bool BRow, class S>
  static void run(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb,
                  S* c, std::size_t ldc, bool accumulate) {
    if (!accumulate) zero(m, n, c, ldc);
    if (m == 0 || n == 0 || k == 0) return;
    namespace ei = ::Eigen::internal;
    using Index = ::Eigen::Index;
    constexpr int A = ARow ? ::Eigen::RowMajor : ::Eigen::ColMajor;
    constexpr int B = BRow ? ::Eigen::RowMajor : ::Eigen::ColMajor;
    const auto M = static_cast<Index>(m), Nn = static_cast<Index>(n), K = static_cast<Index>(k);
    ei::gemm_blocking_space<::Eigen::RowMajor, S, S, ::Eigen::Dynamic, ::Eigen::Dynamic, ::Eigen::Dynamic, 1, false>
        blocking(M, Nn, K, 1, true);
    ei::general_matrix_matrix_product<Index, S, A, false, S, B, false, ::Eigen::RowMajor, 1>::run(
        M, Nn, K, a, static_cast<Index>(lda), b, static_cast<Index>(ldb), c, 1, static_cast<Index>(ldc), S(1), blocking,
        nullptr);
  }
};
#endif

#if defined(DFTUNE_LINEAR_GEMM_CBLAS) || defined(DFTUNE_DOXYGEN)
// A CBLAS (OpenBLAS: CMake DFTUNE_GEMM=openblas), on one thread.
struct CblasGemm {
  static constexpr const char* name = "OpenBLAS";  // the library, as benchmarks and errors name it
  static constexpr std::size_t max_dim = INT_MAX;  // the largest m, n, k, lda, ldb, ldc: CBLAS sizes are int
  // C = (accumulate ? C : 0) + A·B, A [m, k] row-major when ARow (else column-major), B [k, n] when
  // BRow; on the calling thread.
  template <bool ARow, bool BRow, class S>
  static void run(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb,
                  S* c, std::size_t ldc, bool accumulate) {
    if (m == 0 || n == 0) return;
    // Debian's default OpenBLAS is the pthread build, whose pool would run beside the caller's
    // threads (oversubscribing the cores; concurrent callers queue for it): it is set to one
    // thread, process-wide, at the first call. The OpenMP build is single-threaded inside a
    // parallel region by itself.
    [[maybe_unused]] static const bool one_thread = [] {
      if (openblas_get_parallel() == 1) openblas_set_num_threads(1);
      return true;
    }();
    const auto ta = ARow ? CblasNoTrans : CblasTrans, tb = BRow ? CblasNoTrans : CblasTrans;
    const S beta = accumulate ? S(1) : S(0);  // beta 0: C is not read
    if constexpr (std::is_same_v<S, float>)
      cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, a,
                  static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0, a,
                  static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  }
};
#endif

#if defined(DFTUNE_LINEAR_GEMM_BLIS) || defined(DFTUNE_DOXYGEN)
// BLIS's typed API with a one-thread runtime (CMake DFTUNE_GEMM=blis).
struct BlisGemm {
  static constexpr const char* name = "BLIS";  // the library, as benchmarks and errors name it
  // C = (accumulate ? C : 0) + A·B, A [m, k] row-major when ARow (else column-major), B [k, n] when
  // BRow; on the calling thread.
  template <bool ARow, bool BRow, class S>
  static void run(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb,
                  S* c, std::size_t ldc, bool accumulate) {
    if (m == 0 || n == 0) return;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(1, &rntm);
    const auto rsa = static_cast<inc_t>(ARow ? lda : 1), csa = static_cast<inc_t>(ARow ? 1 : lda);
    const auto rsb = static_cast<inc_t>(BRow ? ldb : 1), csb = static_cast<inc_t>(BRow ? 1 : ldb);
    S one = 1, beta = accumulate ? S(1) : S(0);
    // BLIS takes non-const operands but does not write them.
    if constexpr (std::is_same_v<S, float>)
      bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, static_cast<dim_t>(m), static_cast<dim_t>(n), static_cast<dim_t>(k),
                   &one, const_cast<S*>(a), rsa, csa, const_cast<S*>(b), rsb, csb, &beta, c, static_cast<inc_t>(ldc), 1,
                   nullptr, &rntm);
    else
      bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, static_cast<dim_t>(m), static_cast<dim_t>(n), static_cast<dim_t>(k),
                   &one, const_cast<S*>(a), rsa, csa, const_cast<S*>(b), rsb, csb, &beta, c, static_cast<inc_t>(ldc), 1,
                   nullptr, &rntm);
  }
};
#endif

#if defined(DFTUNE_LINEAR_GEMM_DNNL) || defined(DFTUNE_DOXYGEN)
// oneDNN's dnnl_sgemm (CMake DFTUNE_GEMM=onednn), on one thread; doubles go to EigenGemm or LoopGemm.
struct DnnlGemm {
  static constexpr const char* name = "oneDNN";  // the library, as benchmarks and errors name it
  // C = (accumulate ? C : 0) + A·B, A [m, k] row-major when ARow (else column-major), B [k, n] when
  // BRow; on the calling thread.
  template <bool ARow, bool BRow, class S>
  static void run(std::size_t m, std::size_t n, std::size_t k, const S* a, std::size_t lda, const S* b, std::size_t ldb,
                  S* c, std::size_t ldc, bool accumulate) {
    if constexpr (!std::is_same_v<S, float>) {
#if DFTUNE_LINEAR_HAS_EIGEN_GEMM
      EigenGemm::run<ARow, BRow>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
#else
      LoopGemm::run<ARow, BRow>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
#endif
    } else {
      if (m == 0 || n == 0) return;
      if (k == 0) {  // beta 0 with K = 0: C = 0 without asking oneDNN about an empty product
        if (!accumulate) zero(m, n, c, ldc);
        return;
      }
#if defined(_OPENMP)
      // One thread per call (the header's contract): oneDNN sizes its team from this thread's
      // OpenMP thread count, which a top-level caller may have at several.
      struct OneThread {
        int saved = omp_get_max_threads();
        OneThread() { omp_set_num_threads(1); }
        ~OneThread() { omp_set_num_threads(saved); }
      } one_thread;
#endif
      using D = dnnl_dim_t;
      const dnnl_status_t st =
          dnnl_sgemm(ARow ? 'N' : 'T', BRow ? 'N' : 'T', static_cast<D>(m), static_cast<D>(n), static_cast<D>(k), 1.0f, a,
                     static_cast<D>(lda), b, static_cast<D>(ldb), accumulate ? 1.0f : 0.0f, c, static_cast<D>(ldc));
      if (st != dnnl_success)
        dftune::detail::fail("gemm", "dnnl_sgemm status " + std::to_string(static_cast<int>(st)),
                     "dnnl_success (m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " + std::to_string(k) + ")");
    }
  }
};
#endif

}  // namespace logprob::linear::gemm

DFTUNE_NAMESPACE_END
