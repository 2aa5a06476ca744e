// Every kernel dispatch.cuh launches, for tests/cuda/compile_check.sh: the dispatch functions are
// instantiated for the three storage types (and segment_sum odr-used), so exactly the launched
// kernels are compiled, with the launch configuration the library uses; and the fused linear
// head's calls (linear.cuh: its four small kernels, the float reductions it launches per chunk).
#include <dftune/logprob/cuda/dispatch.cuh>
#include <dftune/logprob/cuda/linear.cuh>

#include <tuple>

namespace ds = dftune::logprob::cuda::dispatch;
using dftune::logprob::cuda::bf16;
using dftune::logprob::cuda::fp16;
using dftune::logprob::cuda::status_area;

#define DFTUNE_COMPILE_CHECK_INSTANCES(T)                                                                       \
  template cudaError_t ds::row_logsumexp_gather<T>(const T*, int, long long, const std::int32_t*, const float*, \
                                                   float*, float*, status_area*, cudaStream_t);                 \
  template cudaError_t ds::softmax_grad<T>(const T*, T*, int, long long, const std::int32_t*, const float*,      \
                                           const std::int64_t*, long long, const float*, const float*,           \
                                           status_area*, cudaStream_t);

DFTUNE_COMPILE_CHECK_INSTANCES(float)
DFTUNE_COMPILE_CHECK_INSTANCES(bf16)
DFTUNE_COMPILE_CHECK_INSTANCES(fp16)

auto dftune_compile_check_segment_sum() { return &ds::segment_sum; }

auto dftune_compile_check_linear() {
  namespace ln = dftune::logprob::cuda::linear;
  return std::make_tuple(&ln::forward, &ln::backward, &ln::forward_backward);
}
