#pragma once
// The OpenMP team the library's parallel loops run on, in one place: every parallel path asks
// max_threads() how many threads it may use (omp_get_max_threads(), so OMP_NUM_THREADS and
// omp_set_num_threads() apply), and a header compiled without -fopenmp sees one thread and still
// compiles warning-free.
#include <dftune/config.hpp>

#include <algorithm>
#include <cstddef>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

// Threads a parallel region started here would get: omp_get_max_threads() (at least 1), or 1
// in a build without OpenMP.
inline std::size_t max_threads() {
#if defined(_OPENMP)
  return static_cast<std::size_t>(std::max(1, omp_get_max_threads()));
#else
  return 1;
#endif
}

// (thread id, team size) of the enclosing OpenMP parallel region; (0, 1) outside one or in a
// build without OpenMP.
inline std::pair<std::size_t, std::size_t> thread_id_and_count() {
#if defined(_OPENMP)
  return {static_cast<std::size_t>(omp_get_thread_num()), static_cast<std::size_t>(omp_get_num_threads())};
#else
  return {0, 1};
#endif
}

DFTUNE_NAMESPACE_END
