#pragma once
// What every CUDA log-prob header shares: the storage types (float, __half, __nv_bfloat16; all
// accumulate in float), the CUDA error type, and the status bits the kernels report.
// Only CUDA translation units include this (docs/cuda.md: a build without nvcc never sees it).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::cuda {

using bf16 = __nv_bfloat16;
using fp16 = __half;

// Storage types of the CUDA path; compute_t<T> is float for all three.
template <class T>
inline constexpr bool supported =
    std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>;

// A CUDA runtime error: "what: cudaErrorName (the CUDA error string)", with the code kept.
class cuda_error : public device_error {
 public:
  cuda_error(cudaError_t code, const std::string& what)
      : device_error(what + ": " + cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")"),
        code_(code) {}
  cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

namespace detail {

inline void check_cuda(cudaError_t code, const char* what) {
  if (code != cudaSuccess) throw cuda_error(code, what);
}

// A launch error is reported by the next runtime call; cudaGetLastError reads (and clears) it
// without synchronising.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

}  // namespace detail

// What the kernels found in the data, which the host could not check without reading device
// memory (a synchronisation). OR-ed into the status word of the workspace; read_status() reads it.
enum status_bits : std::uint32_t {
  status_ok = 0,
  status_bad_target = 1u << 0,   // a weighted row's target outside [0, vocab): its outputs are NaN
  status_bad_offsets = 1u << 1,  // offsets not 0 = o_0 <= o_1 <= ... <= o_S = N: those outputs are NaN
  status_bad_weight = 1u << 2,   // a non-finite weight
  // backward: a gradient scale |d_seq[s]·w_n| that is not finite or above half of the gradient
  // type's largest value (its rows' gradients are NaN)
  status_bad_d_seq = 1u << 3,
  status_bad_row_lse = 1u << 4,  // a non-finite row_lse on a weighted row (backward)
  // a weighted row whose log-sum-exp or log-prob w·(z[y] − lse) is not finite: a NaN or +inf
  // logit, only −inf logits, a −inf target logit, or a log-prob float cannot hold. Its token
  // log-prob, row_lse and gradient row are NaN; the smallest such row is kept (status_area).
  status_bad_logits = 1u << 5,
  status_bad_seq_sum = 1u << 6,  // a sequence sum float cannot hold: that seq_logp is NaN
};

// The status area at the start of the workspace, zeroed before each call: the status bits, and the
// bitwise NOT of the smallest row with status_bad_logits (0: none), so that atomicMax keeps the
// smallest row and a zeroed area says none.
struct status_area {
  std::uint32_t bits;
  std::uint32_t unused;
  unsigned long long first_bad_row_not;
};

}  // namespace logprob::cuda

DFTUNE_NAMESPACE_END
