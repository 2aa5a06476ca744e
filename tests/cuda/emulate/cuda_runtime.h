#pragma once
// A host emulation of the few CUDA features the dftune kernels use, so that their indexing,
// predication, reductions and in-place handling can be tested against the CPU oracle on a machine
// without a GPU (tests/cuda/test_kernels_emulated.cpp). Not a CUDA implementation: one block runs
// at a time, each of its threads is a fiber (ucontext) on the calling thread, __syncthreads is a
// block barrier, __syncwarp a warp barrier and warp shuffles go through a per-thread slot array
// between two warp barriers. Only for tests. What it does to find the bugs a fixed, friendly
// schedule hides:
//   - the schedule is random and seeded (emu::seed): blocks run in a random order, and whenever a
//     thread reaches a barrier the next thread to run is either drawn uniformly among the runnable
//     ones or the runnable one of highest priority (warps in a random order, lanes in a random
//     order within each), the policy and the priorities drawn afresh at the start of the block and
//     at every block-wide barrier. Priorities starve the low warps, so that a warp can still be
//     reading shared memory when the others have gone on to the next row and written it again;
//   - a barrier that cannot complete (reached by part of a block or warp, the rest exited or
//     waiting elsewhere) fails the launch instead of hanging, and so do two different barriers
//     met in the same phase and a shuffle with a partial mask;
//   - shared memory (DFTUNE_CUDA_SHARED) is handed out per block and filled with 0xff bytes (NaN
//     in float and double) before each block, so a read before the block's own write shows;
//   - device buffers (emulate/device_buffer.h) and fiber stacks sit between guard pages.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <source_location>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
#error "tests/cuda/emulate is for a host compiler only"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory of a block, declared by the kernels through DFTUNE_CUDA_SHARED (kernels.cuh):
// one object per declaration and block, poisoned before the block starts.
#define DFTUNE_CUDA_SHARED(type, name)      \
  static const char name##_emu_site = 0;   \
  type& name = emu::shared_object<type>(&name##_emu_site)

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

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// swapcontext is returns-twice, so GCC warns that locals of its callers "might be clobbered"; here
// every context has its own stack and resumes where it left it, so nothing is.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wclobbered"

namespace emu {

// The seed of the schedule: DFTUNE_EMU_SEED from the environment, else 1. Set it before launching.
inline std::uint64_t seed = [] {
  const char* s = std::getenv("DFTUNE_EMU_SEED");
  return s ? std::strtoull(s, nullptr, 10) : 1;
}();

// Whether launch() prints why a launch failed (the emulator's own tests turn it off).
inline bool report = true;

struct Site {
  const char* file = "";
  unsigned line = 0, column = 0;
  bool operator==(const Site& o) const {
    return line == o.line && column == o.column && std::strcmp(file, o.file) == 0;
  }
};
inline Site site_of(const std::source_location& l) {
  return {l.file_name(), static_cast<unsigned>(l.line()), static_cast<unsigned>(l.column())};
}

struct Barrier {
  const char* scope = "";
  unsigned needed = 0;
  std::vector<unsigned> waiting;  // threads that arrived in this phase
  Site site;                      // where the first of them arrived
};

enum class State { ready, running, waiting, done };

struct Fiber {
  ucontext_t ctx{};
  State state = State::done;
  const Barrier* at = nullptr;  // the barrier it waits on
};

inline constexpr std::size_t stack_bytes = 64 * 1024;
inline constexpr std::size_t shared_bytes = 48 * 1024;  // static shared memory of a block on sm_80/sm_90

struct Scheduler {
  ucontext_t main{};
  std::vector<Fiber> fibers;
  std::vector<unsigned> ready;
  unsigned current = 0;
  bool in_main = true;  // whether the scheduler (not a fiber) is running
  std::function<void()> kernel;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<double> slots;  // one per thread, for shuffles
  std::mt19937_64 rng;
  std::vector<unsigned> priority;  // per thread; empty: uniform draws
  std::string failure;  // why the launch stopped, empty while it runs
  // Shared memory of the running block: an offset per declaration, in a poisoned arena.
  alignas(64) unsigned char arena[shared_bytes];
  std::map<const void*, std::size_t> shared_offsets;
  std::size_t shared_used = 0;
};
inline Scheduler* sched = nullptr;

inline std::size_t page_bytes() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

// Fiber stacks, each above a guard page (stacks grow down); reused across launches.
inline char* fiber_stack(unsigned t) {
  static std::vector<char*> stacks;
  while (stacks.size() <= t) {
    const std::size_t page = page_bytes();
    void* p = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
      std::perror("emulator: fiber stack");
      std::abort();
    }
    stacks.push_back(static_cast<char*>(p) + page);
  }
  return stacks[t];
}

// How the next thread is drawn until the next block-wide barrier: uniformly (priority empty) or,
// with probability 1/2, by priority (warps in a random order, the lanes of each in a random order).
inline void draw_policy(Scheduler& s, unsigned threads) {
  s.priority.clear();
  if (s.rng() & 1) return;
  std::vector<unsigned> warp_rank((threads + 31) / 32), lane_rank(32);
  for (unsigned w = 0; w < warp_rank.size(); ++w) warp_rank[w] = w;
  std::shuffle(warp_rank.begin(), warp_rank.end(), s.rng);
  s.priority.resize(threads);
  for (unsigned t = 0; t < threads; ++t) {
    if (t % 32 == 0) {
      for (unsigned l = 0; l < 32; ++l) lane_rank[l] = l;
      std::shuffle(lane_rank.begin(), lane_rank.end(), s.rng);
    }
    s.priority[t] = warp_rank[t / 32] * 32 + lane_rank[t % 32];
  }
}

inline void switch_to_main() {
  sched->in_main = true;
  swapcontext(&sched->fibers[sched->current].ctx, &sched->main);
}

// Hands the OS thread to a ready thread drawn at random (possibly the caller itself, which then
// just goes on), or back to the scheduler when none is ready. Returns when the caller runs again.
inline void run_next() {
  Scheduler& s = *sched;
  ucontext_t* from = s.in_main ? &s.main : &s.fibers[s.current].ctx;
  if (s.ready.empty() || !s.failure.empty()) {
    if (!s.in_main) switch_to_main();
    return;
  }
  std::size_t pick = 0;
  if (s.priority.empty()) {
    pick = std::uniform_int_distribution<std::size_t>(0, s.ready.size() - 1)(s.rng);
  } else {
    for (std::size_t i = 1; i < s.ready.size(); ++i)
      if (s.priority[s.ready[i]] > s.priority[s.ready[pick]]) pick = i;
  }
  const unsigned t = s.ready[pick];
  s.ready[pick] = s.ready.back();
  s.ready.pop_back();
  s.fibers[t].state = State::running;
  threadIdx = {t, 0, 0};
  if (!s.in_main && t == s.current) return;
  s.current = t;
  s.in_main = false;
  swapcontext(from, &s.fibers[t].ctx);
}

// Stops the launch from inside a fiber: the scheduler reports `why` and runs nothing more.
[[noreturn]] inline void fail(std::string why) {
  sched->failure = std::move(why);
  sched->fibers[sched->current].state = State::done;
  switch_to_main();
  std::abort();  // never resumed
}

inline std::string where(const Site& s) {
  return std::string(s.file) + ":" + std::to_string(s.line) + ":" + std::to_string(s.column);
}

inline void arrive_and_wait(Barrier& b, Site site) {
  const unsigned t = sched->current;
  if (b.waiting.empty()) b.site = site;
  else if (!(b.site == site))
    fail(std::string("thread ") + std::to_string(t) + " reached the " + b.scope + " barrier at " + where(site) +
         " while others wait at " + where(b.site));
  Fiber& f = sched->fibers[t];
  if (b.waiting.size() + 1 == b.needed) {  // the last one: release everybody, then draw who runs next
    for (unsigned w : b.waiting) {
      sched->fibers[w].state = State::ready;
      sched->fibers[w].at = nullptr;
      sched->ready.push_back(w);
    }
    b.waiting.clear();
    f.state = State::ready;
    sched->ready.push_back(t);
    if (&b == &sched->block) draw_policy(*sched, b.needed);
  } else {
    b.waiting.push_back(t);
    f.state = State::waiting;
    f.at = &b;
  }
  run_next();
}

inline void fiber_main() {
  sched->kernel();
  sched->fibers[sched->current].state = State::done;
  run_next();
}

// What the threads of a block that cannot go on are waiting for.
inline std::string describe_deadlock(const Scheduler& s) {
  unsigned exited = 0;
  for (const Fiber& f : s.fibers) exited += f.state == State::done;
  auto describe = [&](const Barrier& b) {
    return std::string("the ") + b.scope + " barrier at " + where(b.site) + " reached by " +
           std::to_string(b.waiting.size()) + " of " + std::to_string(b.needed) + " threads";
  };
  std::string out = "deadlock: ";
  if (!s.block.waiting.empty()) out += describe(s.block) + "; ";
  for (const Barrier& w : s.warps)
    if (!w.waiting.empty()) out += describe(w) + "; ";
  return out + std::to_string(exited) + " threads exited";
}

// Runs kernel() as a grid of `grid` blocks of `threads` threads, one block at a time, in a random
// order drawn from `seed`. Returns false (after printing why) if the launch failed.
template <class F>
bool launch(unsigned grid, unsigned threads, F&& kernel) {
  auto s = std::make_unique<Scheduler>();
  sched = s.get();
  s->kernel = kernel;
  s->fibers.resize(threads);
  s->slots.assign(threads, 0.0);
  static std::uint64_t launches = 0;
  s->rng.seed(seed * 0x9e3779b97f4a7c15ull + launches++);
  gridDim = {grid, 1, 1};
  blockDim = {threads, 1, 1};
  std::vector<unsigned> order(grid);
  for (unsigned b = 0; b < grid; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), s->rng);
  for (unsigned b : order) {
    s->block = {"block", threads, {}, {}};
    s->warps.assign(threads / 32, Barrier{"warp", 32, {}, {}});
    std::memset(s->arena, 0xff, sizeof s->arena);
    s->shared_offsets.clear();
    s->shared_used = 0;
    s->ready.clear();
    draw_policy(*s, threads);
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = s->fibers[t];
      f.state = State::ready;
      f.at = nullptr;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = fiber_stack(t);
      f.ctx.uc_stack.ss_size = stack_bytes;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_main, 0);
      s->ready.push_back(t);
    }
    blockIdx = {b, 0, 0};
    s->in_main = true;
    run_next();  // back here when no thread is ready: all exited, a deadlock or a failure
    if (s->failure.empty())
      for (const Fiber& f : s->fibers)
        if (f.state != State::done) {
          s->failure = describe_deadlock(*s);
          break;
        }
    if (!s->failure.empty()) {
      if (report)
        std::printf("  emulator: block %u of %u (seed %llu): %s\n", b, grid, static_cast<unsigned long long>(seed),
                  s->failure.c_str());
      sched = nullptr;
      return false;
    }
  }
  sched = nullptr;
  return true;
}

// The block's object for one DFTUNE_CUDA_SHARED declaration (the same for all its threads).
template <class T>
T& shared_object(const void* site) {
  static_assert(std::is_trivially_default_constructible_v<T> && std::is_trivially_destructible_v<T>);
  auto [it, fresh] = sched->shared_offsets.try_emplace(site, 0);
  if (fresh) {
    const std::size_t at = (sched->shared_used + alignof(T) - 1) / alignof(T) * alignof(T);
    if (at + sizeof(T) > shared_bytes) fail("more than 48 KiB of shared memory");
    it->second = at;
    sched->shared_used = at + sizeof(T);
  }
  return *std::launder(reinterpret_cast<T*>(sched->arena + it->second));
}

}  // namespace emu

#pragma GCC diagnostic pop

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  emu::arrive_and_wait(emu::sched->block, emu::site_of(loc));
}

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
  if (mask != 0xffffffffu) emu::fail("a __syncwarp without the full warp");
  emu::arrive_and_wait(emu::sched->warps[threadIdx.x / 32], emu::site_of(loc));
}

template <class V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32,
                  std::source_location loc = std::source_location::current()) {
  static_assert(sizeof(V) <= sizeof(double));
  if (mask != 0xffffffffu || width != 32) emu::fail("a shuffle without the full warp (mask or width)");
  const unsigned t = threadIdx.x;
  auto& warp = emu::sched->warps[t / 32];
  double slot = 0;
  std::memcpy(&slot, &v, sizeof v);
  emu::sched->slots[t] = slot;
  emu::arrive_and_wait(warp, emu::site_of(loc));
  const unsigned partner = (t & ~31u) | ((t & 31u) ^ static_cast<unsigned>(lane_mask));
  V out;
  std::memcpy(&out, &emu::sched->slots[partner], sizeof out);
  emu::arrive_and_wait(warp, emu::site_of(loc));
  return out;
}

inline unsigned atomicOr(std::uint32_t* p, std::uint32_t v) { return std::atomic_ref<std::uint32_t>(*p).fetch_or(v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;  // one OS thread: no other thread can run in between
  if (v > old) *p = v;
  return old;
}
inline float __uint_as_float(std::uint32_t u) { return std::bit_cast<float>(u); }
inline std::uint32_t __float_as_uint(float f) { return std::bit_cast<std::uint32_t>(f); }
inline void __stwb(uint4* p, uint4 v) { *p = v; }
using std::isfinite;
