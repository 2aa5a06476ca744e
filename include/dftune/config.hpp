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
