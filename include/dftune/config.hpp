#pragma once
#include <dftune/version.hpp>

// Every public name lives in dftune::DFTUNE_ABI, so two incompatible versions of the headers
// linked into one program give a link error instead of silent ODR violations.
#define DFTUNE_ABI v0

#if defined(__CUDACC__)
#define DFTUNE_HOST_DEVICE __host__ __device__
#else
#define DFTUNE_HOST_DEVICE
#endif

#define DFTUNE_NAMESPACE_BEGIN \
  namespace dftune {           \
  inline namespace DFTUNE_ABI {
#define DFTUNE_NAMESPACE_END \
  }                          \
  }

// OpenMP pragmas that vanish without -fopenmp (a bare `#pragma omp` would trip -Wunknown-pragmas
// under -Wall -Werror in a user's build without OpenMP). Usage: DFTUNE_OMP(parallel for)
#define DFTUNE_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP)
#define DFTUNE_OMP(x) DFTUNE_PRAGMA(omp x)
#else
#define DFTUNE_OMP(x)
#endif
