#pragma once
// The one dispatch point for CUDA users: include this instead of <dftune/logprob/logprob.hpp> and
// call logprob::forward / logprob::backward with a workspace and a stream. Where the logits live
// picks the implementation: device (or managed) memory → the CUDA kernels (device_logprob.cuh),
// host memory → the CPU path of logprob.hpp (which ignores the stream; host data must be ready).
// All other buffers must be accessible from the chosen side; a mix throws dftune::error naming the
// buffer. A machine without a usable CUDA device sees every pointer as host memory.
//
// One workspace of cuda::workspace_size(in) bytes, in the memory space of the logits, serves
// both sides. The CPU headers never include this file: a build without nvcc sees no CUDA code.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/cuda/device_logprob.cuh>
#include <dftune/logprob/cuda/types.cuh>
#include <dftune/logprob/logprob.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>

DFTUNE_NAMESPACE_BEGIN

namespace logprob {

enum class memory_space { host, device, managed };

namespace cuda {

// Where p points, from cudaPointerGetAttributes (no synchronisation). Host for null, for
// pageable and pinned host memory, and whenever the runtime has no device to ask.
inline memory_space locate(const void* p) {
  if (p == nullptr) return memory_space::host;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();  // no device / no driver: clear the error, the data is on the host
    return memory_space::host;
  }
  switch (attr.type) {
    case cudaMemoryTypeDevice: return memory_space::device;
    case cudaMemoryTypeManaged: return memory_space::managed;
    default: return memory_space::host;
  }
}

inline const char* name(memory_space m) {
  switch (m) {
    case memory_space::device: return "device memory";
    case memory_space::managed: return "managed memory";
    default: return "host memory";
  }
}

namespace detail {

// Device when the logits are device or managed memory (when there are no logits, the first
// non-empty buffer decides); then every other buffer must be device or managed memory too, and on
// the host side none may be device memory. Empty buffers (null here) are not looked at.
inline bool on_device(const void* logits, std::initializer_list<std::pair<const char*, const void*>> others) {
  const char* decider = "logits";
  const void* first = logits;
  for (auto it = others.begin(); first == nullptr && it != others.end(); ++it) {
    decider = it->first;
    first = it->second;
  }
  const memory_space where = locate(first);
  const bool device = where != memory_space::host;
  for (const auto& [arg, p] : others) {
    if (p == nullptr) continue;
    const memory_space m = locate(p);
    if (device ? m == memory_space::host : m == memory_space::device)
      dftune::detail::fail(arg, name(m),
                           std::string(device ? "device or managed memory" : "host or managed memory") + ", like the " +
                               decider + " (" + name(where) + ")");
  }
  return device;
}

// The address of a buffer, or null when it is empty (its pointer then says nothing).
template <class U>
const void* address(std::span<U> s) {
  return s.empty() ? nullptr : static_cast<const void*>(s.data());
}

template <class T>
[[noreturn]] void unsupported_on_device() {
  dftune::detail::fail("logits", "device memory of a storage type the CUDA path does not take",
                       "float, __half or __nv_bfloat16 on the device, or host memory");
}

}  // namespace detail

}  // namespace cuda

// forward() of logprob.hpp with a workspace and a stream; the logits' location picks the backend.
template <class T>
void forward(const TokenLogits<T>& in, std::span<compute_t<T>> seq_logp, std::span<compute_t<T>> token_logp,
             std::span<compute_t<T>> row_lse, std::span<std::byte> workspace, cudaStream_t stream) {
  using cuda::detail::address;
  const bool device = cuda::detail::on_device(address(in.logits), {{"targets", address(in.targets)},
                                                                   {"weights", address(in.weights)},
                                                                   {"offsets", address(in.offsets)},
                                                                   {"seq_logp", address(seq_logp)},
                                                                   {"token_logp", address(token_logp)},
                                                                   {"row_lse", address(row_lse)},
                                                                   {"workspace", address(workspace)}});
  if (device) {
    if constexpr (cuda::supported<T>) {
      cuda::forward(in, seq_logp, token_logp, row_lse, workspace, stream);
      return;
    } else {
      cuda::detail::unsupported_on_device<T>();
    }
  }
  (void)stream;
  forward(in, seq_logp, token_logp, row_lse, workspace);
}

// backward() of logprob.hpp with a workspace and a stream; the logits' location picks the backend.
template <class T>
void backward(const TokenLogits<T>& in, std::span<const compute_t<T>> d_seq, std::span<T> grad,
              std::span<const compute_t<T>> row_lse, std::span<std::byte> workspace, cudaStream_t stream) {
  using cuda::detail::address;
  const bool device = cuda::detail::on_device(address(in.logits), {{"targets", address(in.targets)},
                                                                   {"weights", address(in.weights)},
                                                                   {"offsets", address(in.offsets)},
                                                                   {"d_seq", address(d_seq)},
                                                                   {"grad", address(grad)},
                                                                   {"row_lse", address(row_lse)},
                                                                   {"workspace", address(workspace)}});
  if (device) {
    if constexpr (cuda::supported<T>) {
      cuda::backward(in, d_seq, grad, row_lse, workspace, stream);
      return;
    } else {
      cuda::detail::unsupported_on_device<T>();
    }
  }
  (void)stream;
  (void)workspace;
  backward(in, d_seq, grad, row_lse);
}

}  // namespace logprob

DFTUNE_NAMESPACE_END
