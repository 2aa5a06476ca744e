#pragma once
// Which vector instruction set the CPU kernels run (logprob/cpu/rows.hpp). A header-only library is
// compiled with its user's flags, usually the x86-64 baseline (SSE2), so the kernels carry AVX2+FMA
// and AVX-512 versions of themselves (GCC/Clang `target` attributes) and pick one per call from
// the CPU's own answer (cpuid, read once). The baseline version runs everywhere else.
//
// Choosing by hand, for tests and comparisons:
//   - the environment variable DFTUNE_ISA=baseline|avx2|avx512, read at the first kernel call;
//   - cpu::force_isa(Isa) / cpu::reset_isa(), which win over the environment.
// Asking for an ISA this CPU lacks is a dftune::error (from force_isa at once, from the first
// kernel call for DFTUNE_ISA), never an illegal instruction later.
// cpu::last_isa() says which version the most recent kernel call ran: how a build checks that
// it really took the fast path (tests/consumers).
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

// Run-time dispatch needs GCC/Clang on x86 and a host-only compiler: nvcc's front end never sees
// the target attributes (the kernels are then the baseline version alone).
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
// 1 where the row kernels are compiled for several instruction sets and one is chosen at run time
// (x86-64 with GCC or Clang), 0 elsewhere (one portable version).
#define DFTUNE_CPU_DISPATCH 1
// What each version may use; the kernels' wrappers are compiled with these, nothing else is.
#define DFTUNE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DFTUNE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#else
// (0: no run-time dispatch on this platform.)
#define DFTUNE_CPU_DISPATCH 0
#endif
// The kernels' bodies: inlined into each wrapper, so that they take the wrapper's target.
#if defined(__GNUC__)
// `inline`, forced where the compiler allows it (a kernel body takes its caller's target).
#define DFTUNE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
// (plain `inline` where it cannot be forced.)
#define DFTUNE_ALWAYS_INLINE inline
#endif

DFTUNE_NAMESPACE_BEGIN

namespace cpu {

// Ordered: each one includes what the ones before it have.
enum class Isa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// "baseline", "avx2" or "avx512" (the spelling DFTUNE_ISA accepts).
inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "baseline";
  }
}

// The widest version this CPU runs (and this compiler can build): avx2 needs AVX2 and FMA,
// avx512 also AVX-512 F, BW, DQ and VL.
inline Isa supported_isa() {
#if DFTUNE_CPU_DISPATCH
  static const Isa widest = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return avx512 ? Isa::avx512 : avx2 ? Isa::avx2 : Isa::baseline;
  }();
  return widest;
#else
  return Isa::baseline;
#endif
}

namespace detail {

inline constexpr int isa_unset = -1;

inline std::atomic<int>& forced_isa() {
  static std::atomic<int> isa{isa_unset};
  return isa;
}

inline std::atomic<int>& ran_isa() {
  static std::atomic<int> isa{isa_unset};
  return isa;
}

inline Isa checked_isa(std::string_view argument, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(supported_isa()))
    dftune::detail::fail(argument, isa_name(isa),
                         std::string("an ISA this CPU runs (at most ") + isa_name(supported_isa()) + ")");
  return isa;
}

// DFTUNE_ISA, parsed once (unset or empty: the CPU's widest). A bad value throws at every call, so
// no kernel runs an ISA nobody chose.
inline Isa environment_isa() {
  static const int chosen = [] {
    const char* env = std::getenv("DFTUNE_ISA");
    if (env == nullptr || *env == '\0') return static_cast<int>(supported_isa());
    for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512})
      if (std::string_view(env) == isa_name(isa)) return static_cast<int>(isa);
    return isa_unset;
  }();
  if (chosen == isa_unset) {
    const char* env = std::getenv("DFTUNE_ISA");
    dftune::detail::fail("DFTUNE_ISA", std::string(env ? env : ""), "baseline, avx2 or avx512");
  }
  return checked_isa("DFTUNE_ISA", static_cast<Isa>(chosen));
}

inline void note_ran(Isa isa) {  // a read-shared cache line: written only when the answer changes
  auto& r = ran_isa();
  if (r.load(std::memory_order_relaxed) != static_cast<int>(isa)) r.store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace detail

// The version the kernels run now: force_isa's, else DFTUNE_ISA's, else the CPU's widest.
// Throws dftune::error for a DFTUNE_ISA that is not a name above or names an ISA this CPU lacks.
inline Isa active_isa() {
  const int forced = detail::forced_isa().load(std::memory_order_relaxed);
  return forced != detail::isa_unset ? static_cast<Isa>(forced) : detail::environment_isa();
}

// Every later kernel call runs `isa` (all threads); dftune::error if this CPU lacks it.
inline void force_isa(Isa isa) {
  detail::forced_isa().store(static_cast<int>(detail::checked_isa("isa", isa)), std::memory_order_relaxed);
}

// Back to DFTUNE_ISA or the CPU's widest.
inline void reset_isa() { detail::forced_isa().store(detail::isa_unset, std::memory_order_relaxed); }

// The version the most recent dispatched kernel call ran; empty before the first.
inline std::optional<Isa> last_isa() {
  const int r = detail::ran_isa().load(std::memory_order_relaxed);
  return r == detail::isa_unset ? std::nullopt : std::optional(static_cast<Isa>(r));
}

}  // namespace cpu

DFTUNE_NAMESPACE_END
