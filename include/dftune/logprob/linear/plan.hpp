#pragma once
// The tiling of the fused linear head and the layout of its workspace, derived from the shapes, the
// machine's caches and its core count (docs/fused_linear.md, "Chunk size"):
//   chunk_rows = LLC / (V · sizeof(compute)), rounded down to 16, within [256, 4096] and at most N:
//                the chunk's logits stay in the last-level cache between the GEMM that writes them,
//                the log-sum-exp, the in-place gradient and the two GEMMs that read them back; the
//                floor is measured: dW += Gᵀ Hc is a GEMM whose inner dimension is the chunk, and
//                below 256 rows its read and write of dW per chunk costs more than logits that
//                spill the cache (V = 128256: 64 rows 3.73 s, 256 rows 2.86 s, docs/fused_linear.md);
//   vocab_tile = V / (4 · cores) (at least 4 GEMM tasks per core), at most what keeps a tile of W in
//                L2, rounded up to 64, within [256, 2048];
//   dim_tile   = d / (2 · cores) rounded up to 16, within [64, d].
// The core count is the machine's (std::thread::hardware_concurrency), not the thread count, so the
// plan, and with it every sum's order, is the same whatever the number of threads. LinearOptions pin any
// of them (e.g. to reproduce results bit for bit on another machine).
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/threads.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear {

// The caches the plan is derived from.
struct Machine {
  std::size_t l2_bytes = std::size_t{1} << 20;    // per core
  std::size_t llc_bytes = std::size_t{32} << 20;  // the last level, shared
  std::size_t cores = 1;                          // std::thread::hardware_concurrency()
};

namespace detail {

// "32768K" / "1M" / "512" (sysfs cache size) in bytes; 0 when unreadable.
inline std::size_t parse_size(const std::string& s) {
  std::size_t v = 0, i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) v = v * 10 + static_cast<std::size_t>(s[i] - '0');
  if (i < s.size() && (s[i] == 'K' || s[i] == 'k')) v <<= 10;
  if (i < s.size() && (s[i] == 'M' || s[i] == 'm')) v <<= 20;
  return v;
}

inline std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

inline Machine query_machine() {
  Machine m;
  m.cores = std::max(1u, std::thread::hardware_concurrency());
  // Linux: the data/unified caches of cpu0 (sysfs reports what the VM exposes; glibc's sysconf may
  // report a whole host's L3 instead).
  std::size_t l2 = 0, llc = 0;
  int llc_level = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string type = read_line(dir + "type");
    if (type.empty()) break;
    if (type == "Instruction") continue;
    const int level = std::atoi(read_line(dir + "level").c_str());
    const std::size_t size = parse_size(read_line(dir + "size"));
    if (level == 2) l2 = size;
    if (level >= 2 && level >= llc_level && size > 0) {
      llc_level = level;
      llc = size;
    }
  }
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  if (l2 == 0) l2 = static_cast<std::size_t>(std::max(0L, sysconf(_SC_LEVEL2_CACHE_SIZE)));
  // sysconf's L3 is the host's total where sysfs is hidden (508 MiB on the 2-core EPYC VM of
  // bench/RESULTS_fused_linear.md, 32 MiB per CCX): trusted only up to the default, or the chunks
  // grow to hold every row's logits, which the fused head exists to avoid.
  if (llc == 0) llc = std::min(Machine{}.llc_bytes, static_cast<std::size_t>(std::max(0L, sysconf(_SC_LEVEL3_CACHE_SIZE))));
#endif
  if (l2 > 0) m.l2_bytes = l2;
  if (llc > 0) m.llc_bytes = std::max(llc, m.l2_bytes);
  return m;
}

inline std::size_t round_up(std::size_t x, std::size_t to) { return (x + to - 1) / to * to; }

}  // namespace detail

// Read once per process.
inline const Machine& machine() {
  static const Machine m = detail::query_machine();
  return m;
}

// The tiling and the workspace layout of one call: byte offsets from a 64-byte aligned base.
struct Plan {
  std::size_t chunk_rows = 0;  // rows per chunk (LinearOptions::chunk_rows, or derived as above)
  std::size_t vocab_tile = 0;  // columns of W per GEMM task
  std::size_t dim_tile = 0;    // columns of dH per GEMM task
  std::size_t threads = 1;     // OpenMP threads of the call (no result depends on it)
  std::size_t logits_at = 0;   // [chunk_rows, V] compute_t: the chunk's logits, then their gradient
  std::size_t hidden_at = 0;   // [chunk_rows, d] compute_t: the chunk's rows of H
  std::size_t dhidden_at = 0;  // [chunk_rows, d] compute_t: their gradient
  std::size_t rows_at = 0;     // [chunk_rows] std::size_t: which rows of H the chunk holds
  std::size_t coef_at = 0;     // [chunk_rows] double: d_seq · weight of each
  std::size_t token_at = 0;    // [chunk_rows] compute_t: their weighted log-probs
  std::size_t stats_at = 0;    // [3, chunk_rows] double: each row's log-sum-exp, target logit, entropy
  std::size_t seq_at = 0;      // [S] double: the sequence sums, stored once every row is known valid
  std::size_t stage_at = 0;    // [threads, vocab_tile · d] compute_t: W widened (storage ≠ compute only)
  std::size_t stage_elems = 0; // per thread
  std::size_t bytes = 0;       // what workspace_size() asks for (64 bytes of slack for the alignment)
};

// The alignment, in bytes, of every buffer the plan places in the workspace.
inline constexpr std::size_t workspace_alignment = 64;
// Multiply-adds per chunk below which the default plan runs on one thread (about 20 µs of GEMM).
inline constexpr std::size_t parallel_min_macs = std::size_t{1} << 20;

// The plan of a call on `in` with `opt` (its zeros derived as above). Sizes only (no validation:
// call validate(in) first); a product that does not fit in size_t is a dftune::argument_error.
template <class T>
Plan make_plan(const LinearLogits<T>& in, const LinearOptions& opt = {}) {
  using C = compute_t<T>;
  using detail::round_up;
  Plan p;
  const std::size_t N = in.rows(), V = in.vocab, d = in.dim;
  if (N == 0 || V == 0 || d == 0) return p;
  const Machine& m = machine();
  if (opt.chunk_rows != 0) {
    p.chunk_rows = opt.chunk_rows;
  } else {
    const std::size_t fit = m.llc_bytes / dftune::detail::checked_mul("vocab (V·sizeof)", V, sizeof(C)) / 16 * 16;
    p.chunk_rows = std::clamp<std::size_t>(fit, 256, 4096);
  }
  p.chunk_rows = std::min(p.chunk_rows, N);
  if (opt.vocab_tile != 0) {
    p.vocab_tile = opt.vocab_tile;
  } else {
    const std::size_t per_core = (V + 4 * m.cores - 1) / (4 * m.cores);
    const std::size_t in_l2 = m.l2_bytes / (d * sizeof(C));
    p.vocab_tile = std::clamp<std::size_t>(round_up(std::min(per_core, in_l2), 64), 256, 2048);
  }
  p.vocab_tile = std::min(p.vocab_tile, V);
  if (opt.dim_tile != 0) {
    p.dim_tile = opt.dim_tile;
  } else {
    p.dim_tile = std::max<std::size_t>(64, round_up((d + 2 * m.cores - 1) / (2 * m.cores), 16));
  }
  p.dim_tile = std::min(p.dim_tile, d);
  // Threads change no result, so a chunk too small to pay for a parallel region's barriers runs on one.
  if (opt.threads != 0)
    p.threads = opt.threads;
  else
    p.threads = static_cast<double>(p.chunk_rows) * static_cast<double>(V) * static_cast<double>(d) < parallel_min_macs ? 1 : max_threads();
  if constexpr (!std::is_same_v<T, C>) p.stage_elems = dftune::detail::checked_mul("workspace (vocab_tile·dim)", p.vocab_tile, d);

  auto place = [&](std::size_t& at, std::size_t bytes) {
    at = p.bytes;
    p.bytes = dftune::detail::checked_add("workspace", p.bytes, round_up(bytes, workspace_alignment));
  };
  const std::size_t R = p.chunk_rows;
  place(p.logits_at, dftune::detail::checked_product("workspace (chunk_rows·vocab)", R, V, sizeof(C)));
  place(p.hidden_at, dftune::detail::checked_product("workspace (chunk_rows·dim)", R, d, sizeof(C)));
  place(p.dhidden_at, dftune::detail::checked_product("workspace (chunk_rows·dim)", R, d, sizeof(C)));
  place(p.rows_at, dftune::detail::checked_product("workspace", R, sizeof(std::size_t)));
  place(p.coef_at, dftune::detail::checked_product("workspace", R, sizeof(double)));
  place(p.token_at, dftune::detail::checked_product("workspace", R, sizeof(C)));
  place(p.stats_at, dftune::detail::checked_product("workspace", R, 3 * sizeof(double)));
  place(p.seq_at, dftune::detail::checked_product("workspace (sequences)", in.sequences(), sizeof(double)));
  place(p.stage_at, dftune::detail::checked_product("workspace (threads·vocab_tile·dim)", p.threads, p.stage_elems, sizeof(C)));
  p.bytes = dftune::detail::checked_add("workspace", p.bytes, workspace_alignment);
  return p;
}

}  // namespace logprob::linear

DFTUNE_NAMESPACE_END
