#pragma once
// A host emulation of the few CUDA features the dftune kernels use, so that their indexing,
// predication, reductions and in-place handling can be tested against the CPU oracle on a machine
// without a GPU (tests/cuda/test_kernels_emulated.cpp). Not a CUDA implementation: one block runs
// at a time, each of its threads is a fiber (ucontext) on the calling thread, __syncthreads is a
// block barrier and warp shuffles go through a per-thread slot array between two warp barriers.
// Only for tests.
#include <ucontext.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#if defined(__CUDACC__)
#error "tests/cuda/emulate is for a host compiler only"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
using cudaStream_t = struct CUstream_st*;
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorInvalidValue"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid argument"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct emu_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline emu_dim3 threadIdx, blockIdx;  // set by the scheduler before it resumes a thread
inline emu_dim3 gridDim, blockDim;

// swapcontext is returns-twice, so GCC warns that locals of its callers "might be clobbered"; here
// every context has its own stack and resumes where it left it, so nothing is.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wclobbered"

namespace emu {

// Cooperative fibers (ucontext) on the calling thread: a barrier yields until every thread of its
// scope has arrived. Cheap to switch, so thousands of barrier phases cost milliseconds.
struct Barrier {
  unsigned needed = 0, arrived = 0, generation = 0;
};

struct Fiber {
  ucontext_t ctx{};
  char* stack = nullptr;
  unsigned tid = 0;
  bool done = false;
};

inline constexpr std::size_t stack_bytes = 64 * 1024;

struct Scheduler {
  ucontext_t main{};
  std::vector<Fiber> fibers;
  std::size_t current = 0;
  std::function<void()> kernel;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<double> slots;  // one per thread, for shuffles
};
inline Scheduler* sched = nullptr;

inline void yield() { swapcontext(&sched->fibers[sched->current].ctx, &sched->main); }

inline void arrive_and_wait(Barrier& b) {
  const unsigned gen = b.generation;
  if (++b.arrived == b.needed) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield();
}

inline void fiber_main() {
  sched->kernel();
  sched->fibers[sched->current].done = true;
  yield();
}

// Runs kernel() as a grid of `grid` blocks of `threads` threads, one block at a time.
template <class F>
void launch(unsigned grid, unsigned threads, F&& kernel) {
  Scheduler s;
  sched = &s;
  s.kernel = kernel;
  s.fibers.resize(threads);
  s.slots.assign(threads, 0.0);
  gridDim = {grid, 1, 1};
  blockDim = {threads, 1, 1};
  static std::vector<std::unique_ptr<char[]>> stacks;  // reused across launches, never zero-filled
  while (stacks.size() < threads) stacks.push_back(std::make_unique_for_overwrite<char[]>(stack_bytes));
  for (unsigned b = 0; b < grid; ++b) {
    s.block = {threads, 0, 0};
    s.warps.assign(threads / 32, Barrier{32, 0, 0});
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[t];
      f.tid = t;
      f.done = false;
      getcontext(&f.ctx);
      f.stack = stacks[t].get();
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = stack_bytes;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_main, 0);
    }
    blockIdx = {b, 0, 0};
    for (bool running = true; running;) {
      running = false;
      for (std::size_t t = 0; t < threads; ++t) {
        if (s.fibers[t].done) continue;
        running = true;
        s.current = t;
        threadIdx = {static_cast<unsigned>(t), 0, 0};
        swapcontext(&s.main, &s.fibers[t].ctx);
      }
    }
  }
  sched = nullptr;
}

}  // namespace emu

#pragma GCC diagnostic pop

inline void __syncthreads() { emu::arrive_and_wait(emu::sched->block); }

template <class V>
V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  static_assert(sizeof(V) <= sizeof(double));
  const unsigned t = threadIdx.x;
  auto& warp = emu::sched->warps[t / 32];
  double slot = 0;
  std::memcpy(&slot, &v, sizeof v);
  emu::sched->slots[t] = slot;
  emu::arrive_and_wait(warp);
  const unsigned partner = (t & ~31u) | ((t & 31u) ^ static_cast<unsigned>(lane_mask));
  V out;
  std::memcpy(&out, &emu::sched->slots[partner], sizeof out);
  emu::arrive_and_wait(warp);
  return out;
}

inline unsigned atomicOr(std::uint32_t* p, std::uint32_t v) { return std::atomic_ref<std::uint32_t>(*p).fetch_or(v); }
inline float __uint_as_float(std::uint32_t u) { return std::bit_cast<float>(u); }
using std::isfinite;
