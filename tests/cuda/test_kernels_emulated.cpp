// The CUDA kernels of include/dftune/logprob/cuda/kernels.cuh, run on the host through a small
// emulation of the CUDA features they use (tests/cuda/emulate: each thread of a block is a fiber
// on the calling OS thread, run in a seeded random order; __syncthreads a block barrier and warp
// shuffles a slot array between warp barriers, both failing the launch on a deadlock; shared memory
// poisoned before each block; device buffers between guard pages), against the generic CPU oracle.
// It checks what a GPU run would check about the kernels' logic — head/vector/tail split at every
// alignment, predicated last steps, warp and block groups, grid-stride loops, masked rows and
// sequences, empty sequences, sequences of 500–4000 rows, the segmented sums, the backward in place
// and into a separate buffer (vector and scalar paths), with and without row_lse, status bits on
// bad data, bad logits and extreme scales, row offsets past 2^31 elements — on any machine.
// Device arithmetic (exp2f, conversions) is the host's here; the real kernels are checked on a GPU
// by test_logprob_cuda device. DFTUNE_EMU_SEED=<n> picks another schedule (default 1).
// The fused linear head's CUDA chunk loop (linear_chunks.cuh) runs here too, with its kernels on the
// emulated device and a host GEMM of cuBLAS' column-major semantics: its GEMM arguments, per-row
// scales, status folding and sums are checked against the CPU head (logprob/linear/).
#include "emulate/cuda_runtime.h"  // first: defines the CUDA keywords the kernels use
#include "emulate/device_buffer.h"

#include <dftune/logprob/cuda/kernels.cuh>
#include <dftune/logprob/cuda/linear_chunks.cuh>
#include <dftune/logprob/generic.hpp>
#include <dftune/logprob/linear/linear.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace lp = dftune::logprob;
namespace lc = dftune::logprob::cuda;
namespace kn = dftune::logprob::cuda::kernels;
using emu::device_buffer;
using emu::flush;

static int g_failures = 0;
static int g_checks = 0;
#define CHECK_MSG(cond, ...)                                          \
  do {                                                                \
    ++g_checks;                                                       \
    if (!(cond)) {                                                    \
      ++g_failures;                                                   \
      std::printf("  FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

template <class T>
T to_storage(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, lc::bf16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}
template <class T>
float to_f(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, lc::bf16>) return __bfloat162float(x);
  else return __half2float(x);
}
template <class T>
const char* tname() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, lc::bf16>) return "bf16";
  else return "fp16";
}
template <class T>
double rel() {
  if constexpr (std::is_same_v<T, float>) return 0;
  else if constexpr (std::is_same_v<T, lc::bf16>) return std::ldexp(1.0, -8);
  else return std::ldexp(1.0, -11);
}

// The gradient tolerance of docs/cuda.md: 2e-5 |c| + rel · |g_ref| + abs.
template <class T>
double grad_tol(double c, double ref) {
  return 2e-5 * std::fabs(c) + rel<T>() * std::fabs(ref) + (std::is_same_v<T, lc::fp16> ? 1e-7 : 0);
}

// Where a buffer sits: flush against its trailing guard page, or `lead` elements after its leading one.
struct Layout {
  flush where = flush::start;
  std::size_t lead = 0;
  std::string str() const { return where == flush::end ? "end" : "start+" + std::to_string(lead); }
};

template <class T>
struct Problem {
  int V = 0;
  long long N = 0;
  Layout layout;
  device_buffer<T> logits;
  std::vector<float> zf;  // the logits as floats, for the oracle
  device_buffer<std::int32_t> y;
  device_buffer<float> w;
  device_buffer<std::int64_t> off;
  long long S() const { return static_cast<long long>(off.size()) - 1; }
  lp::TokenLogits<float> oracle() const {
    return {.logits = zf, .vocab = static_cast<std::size_t>(V), .targets = y.span(), .weights = w.span(),
            .offsets = off.span()};
  }
};

// Random logits (rows around different levels; every fourth row's target 20 above the rest), a
// quarter of the rows masked, sequences of the
// given lengths (or of 0 to 3 rows), the second sequence fully masked with bad targets (never read).
template <class T>
Problem<T> make(int V, long long N, Layout layout, std::uint32_t seed, std::vector<long long> lengths = {}) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const auto total = static_cast<std::size_t>(N) * static_cast<std::size_t>(V);
  std::vector<T> z(total);
  std::vector<float> zf(total);
  std::vector<std::int32_t> y;
  std::vector<float> w;
  for (long long n = 0; n < N; ++n) {
    const float base = (unit(rng) - 0.5f) * 60.0f;
    for (int v = 0; v < V; ++v) {
      const std::size_t i = static_cast<std::size_t>(n) * static_cast<std::size_t>(V) + static_cast<std::size_t>(v);
      z[i] = to_storage<T>(base + normal(rng));
      zf[i] = to_f(z[i]);
    }
    y.push_back(static_cast<std::int32_t>(rng() % static_cast<unsigned>(V)));
    w.push_back(unit(rng) < 0.25f ? 0.0f : 0.5f + unit(rng));
    if (n % 4 == 3) {  // a confident row: p(target) near 1, so its gradient c · (1 − p) is small
      const std::size_t i =
          static_cast<std::size_t>(n) * static_cast<std::size_t>(V) + static_cast<std::size_t>(y.back());
      z[i] = to_storage<T>(zf[i] + 20.0f);
      zf[i] = to_f(z[i]);
    }
  }
  std::vector<std::int64_t> off = {0};
  if (lengths.empty()) {
    off.push_back(0);  // an empty first sequence
    while (off.back() < N) off.push_back(std::min<long long>(N, off.back() + static_cast<long long>(rng() % 4)));
  } else {
    for (long long len : lengths) off.push_back(off.back() + len);
  }
  for (auto r = off[1]; r < off[2]; ++r) {
    w[static_cast<std::size_t>(r)] = 0.0f;
    y[static_cast<std::size_t>(r)] = -7;
  }
  Problem<T> p;
  p.V = V;
  p.N = N;
  p.layout = layout;
  p.logits = device_buffer<T>("logits", std::span<const T>(z), layout.where, layout.lead);
  p.zf = std::move(zf);
  p.y = device_buffer<std::int32_t>("targets", std::span<const std::int32_t>(y));
  p.w = device_buffer<float>("weights", std::span<const float>(w));
  p.off = device_buffer<std::int64_t>("offsets", std::span<const std::int64_t>(off));
  return p;
}

inline constexpr float unwritten = 1e30f;  // what output buffers hold before a kernel runs

struct Forward {
  std::vector<float> seq, tok, lse;
  std::uint32_t status = 0;
  unsigned long long first_bad_row_not = 0;
  bool launched = true;
};

template <class T, int G, int GS>
Forward run_forward(const Problem<T>& p, unsigned grid) {
  const auto S = p.S();
  device_buffer<float> tok("token_logp", std::vector<float>(static_cast<std::size_t>(p.N), unwritten));
  device_buffer<float> lse("row_lse", std::vector<float>(static_cast<std::size_t>(p.N), unwritten));
  device_buffer<float> seq("seq_logp", std::vector<float>(static_cast<std::size_t>(S), unwritten));
  device_buffer<lc::status_area> status("status", 1);
  Forward f;
  f.launched = emu::launch(grid, kn::block_threads, [&] {
    kn::row_logsumexp_gather_kernel<T, G, 4>(p.logits.data(), p.V, p.N, p.y.data(), p.w.data(), tok.data(), lse.data(),
                                             status.data());
  });
  f.launched = f.launched && emu::launch(2, kn::block_threads, [&] {
    kn::segment_sum_kernel<GS>(tok.data(), p.off.data(), S, p.N, seq.data(), status.data());
  });
  f.seq = seq.to_vector();
  f.tok = tok.to_vector();
  f.lse = lse.to_vector();
  f.status = status[0].bits;
  f.first_bad_row_not = status[0].first_bad_row_not;
  return f;
}

// The segment sums to the bit. The kernel sums in double, in any order, and rounds once to float:
// the double sum is within n · 2^-53 · Σ|x| of the exact one, so the result is the float nearest
// the exact sum, or, when a tie between two floats lies that close to it, either of the two.
bool sums_exact(const std::vector<float>& tok, const std::vector<std::int64_t>& off, const std::vector<float>& seq,
                int* worst_ulps) {
  bool ok = true;
  for (std::size_t s = 0; s + 1 < off.size(); ++s) {
    long double acc = 0, mag = 0;
    for (auto r = off[s]; r < off[s + 1]; ++r) {
      acc += tok[static_cast<std::size_t>(r)];
      mag += std::fabs(tok[static_cast<std::size_t>(r)]);
    }
    const long double bound = static_cast<long double>(off[s + 1] - off[s] + 1) * 0x1p-52L * mag;
    const auto lo = static_cast<float>(acc - bound), hi = static_cast<float>(acc + bound);
    if (!(seq[s] == lo || seq[s] == hi)) ok = false;
    const auto want = static_cast<float>(acc);
    const float ulp = std::nextafter(std::fabs(want), INFINITY) - std::fabs(want);
    const double ulps = std::fabs(static_cast<double>(seq[s]) - want) / ulp;
    if (worst_ulps && ulps > *worst_ulps) *worst_ulps = static_cast<int>(std::min(ulps, 1e9));
  }
  return ok;
}

template <class T>
void check_forward(const Problem<T>& p, const Forward& f, const char* label) {
  std::vector<float> seq(p.off.size() - 1), tok(static_cast<std::size_t>(p.N)), lse(static_cast<std::size_t>(p.N));
  lp::generic::forward(p.oracle(), std::span(seq), std::span(tok), std::span(lse));
  int bad = 0;
  for (std::size_t n = 0; n < tok.size(); ++n) {
    const double tol = 2e-5 * (1 + std::fabs(lse[n]));
    if (p.w[n] == 0) {
      bad += !(f.tok[n] == 0.0f && std::isnan(f.lse[n]));
      continue;
    }
    bad += !(std::fabs(f.lse[n] - lse[n]) <= tol);
    bad += !(std::fabs(f.tok[n] - tok[n]) <= p.w[n] * tol + 1e-6 * std::fabs(tok[n]));
  }
  for (std::size_t s = 0; s < seq.size(); ++s) bad += !(std::fabs(f.seq[s] - seq[s]) <= 1e-4 * (1 + std::fabs(seq[s])));
  int ulps = 0;
  const bool exact = sums_exact(f.tok, p.off.to_vector(), f.seq, &ulps);
  CHECK_MSG(f.launched && bad == 0 && exact && f.status == 0,
            "%s %s V=%d N=%lld S=%lld logits at %s: %d mismatches, sums %d ulps off, status %u", label, tname<T>(), p.V,
            p.N, p.S(), p.layout.str().c_str(), bad, ulps, f.status);
}

// d_seq of the tests: zero for every third sequence, otherwise in [-0.9, 0.7].
std::vector<float> make_d_seq(long long S) {
  std::vector<float> d(static_cast<std::size_t>(S));
  for (std::size_t s = 0; s < d.size(); ++s) d[s] = s % 3 == 2 ? 0.0f : 0.7f - 0.4f * static_cast<float>(s % 5);
  return d;
}

// The backward into `grad`: the logits' own storage (in place), or a separate buffer at `gl`
// (poisoned with NaN, so that an element left unwritten shows), with the given lse (or none).
template <class T, int G, bool VECTOR>
void check_backward(const Problem<T>& p, const Forward& f, bool in_place, bool with_lse, Layout gl, const char* label) {
  const auto S = p.S();
  const auto d_host = make_d_seq(S);
  device_buffer<float> d("d_seq", std::span<const float>(d_host));
  device_buffer<float> lse("row_lse", std::span<const float>(f.lse));
  device_buffer<T> own("logits (in place)", p.logits.span(), p.layout.where, p.layout.lead);
  device_buffer<T> separate("grad", p.zf.size(), gl.where, gl.lead);
  if (!in_place) std::memset(static_cast<void*>(separate.data()), 0xff, separate.size() * sizeof(T));
  const T* z = in_place ? own.data() : p.logits.data();
  T* g = in_place ? own.data() : separate.data();
  device_buffer<lc::status_area> status("status", 1);
  const bool launched = emu::launch(3, kn::block_threads, [&] {
    kn::softmax_grad_kernel<T, G, 4, VECTOR>(z, g, p.V, p.N, p.y.data(), p.w.data(), p.off.data(), S, d.data(),
                                             with_lse ? lse.data() : nullptr, status.data());
  });
  std::vector<float> ref(p.zf.size());
  lp::generic::backward(p.oracle(), std::span<const float>(d_host), std::span(ref));
  int bad = 0;
  double worst = 0;
  for (long long s = 0; s < S; ++s)
    for (auto r = p.off[static_cast<std::size_t>(s)]; r < p.off[static_cast<std::size_t>(s) + 1]; ++r) {
      const double c = static_cast<double>(d_host[static_cast<std::size_t>(s)]) * p.w[static_cast<std::size_t>(r)];
      for (int v = 0; v < p.V; ++v) {
        const std::size_t i = static_cast<std::size_t>(r) * static_cast<std::size_t>(p.V) + static_cast<std::size_t>(v);
        const double err = std::fabs(to_f(g[i]) - ref[i]);
        bad += !(err <= grad_tol<T>(c, ref[i]));
        worst = std::max(worst, err);
      }
    }
  CHECK_MSG(launched && bad == 0 && status[0].bits == 0,
            "%s %s G=%d vector=%d V=%d N=%lld logits at %s, grad at %s: %d mismatches (worst %.3g), status %u", label,
            tname<T>(), G, VECTOR, p.V, p.N, p.layout.str().c_str(), in_place ? "logits" : gl.str().c_str(), bad, worst,
            status[0].bits);
}

template <class T, int G>
void suite_for_group(int V, long long N, Layout layout) {
  const auto p = make<T>(V, N, layout, static_cast<std::uint32_t>(V * 131 + N + static_cast<long long>(layout.lead)));
  const auto f = run_forward<T, G, G>(p, 2);  // 2 blocks: grid-stride over the rows
  check_forward(p, f, "forward");
  // A separate grad congruent with the logits modulo 16 bytes (same layout) takes the vector path;
  // one element further on, or at the other guard page, the scalar path.
  const Layout other = layout.where == flush::end ? Layout{flush::start, 1} : Layout{flush::end, 0};
  check_backward<T, G, true>(p, f, true, true, layout, "backward in place");
  check_backward<T, G, true>(p, f, true, false, layout, "backward in place, no lse");
  check_backward<T, G, true>(p, f, false, true, layout, "backward separate (congruent)");
  check_backward<T, G, false>(p, f, false, true, other, "backward separate (scalar)");
  check_backward<T, G, false>(p, f, true, false, layout, "backward in place scalar, no lse");
}

template <class T>
void suite() {
  for (int V : {1, 2, 3, 7, 8, 9, 33, 255, 1029})
    for (Layout l : {Layout{flush::start, 0}, Layout{flush::start, 1}, Layout{flush::end, 0}})
      suite_for_group<T, 32>(V, 11, l);
  for (int V : {2, 9, 700, 4097, 20011})
    for (Layout l : {Layout{flush::start, 0}, Layout{flush::start, 5}, Layout{flush::end, 0}})
      suite_for_group<T, kn::block_threads>(V, 10, l);  // several rows per block: shared memory reused
}

// Sequences of 500–4000 rows: the warp and block sums of the segment kernel over many rows each,
// and the backward's search for a row's sequence.
template <class T>
void long_sequences() {
  const std::vector<long long> lengths = {3, 517, 4000, 1499, 2981};  // the first one masked
  const auto p = make<T>(33, 9000, {flush::end, 0}, 77, lengths);
  // The sums over token log-probs of the size a model gives (a quarter of the rows masked: 0), by a
  // warp and by a block per sequence: exact up to the final rounding to float. 100 sequences of
  // 500–4000 rows, so that each block goes from one to the next many times (shared memory reuse).
  std::mt19937 rng(78);
  std::uniform_real_distribution<float> nats(-30.0f, 0.0f);
  std::vector<std::int64_t> off_host = {0};
  for (int s = 0; s < 100; ++s) off_host.push_back(off_host.back() + 500 + static_cast<long long>(rng() % 3501));
  std::vector<float> tok_host(static_cast<std::size_t>(off_host.back()));
  for (float& t : tok_host) t = rng() % 4 == 0 ? 0.0f : nats(rng);
  device_buffer<float> tok("token_logp", std::span<const float>(tok_host));
  device_buffer<std::int64_t> off("offsets", std::span<const std::int64_t>(off_host));
  const long long S = 100, N = off_host.back();
  for (int gs : {32, kn::block_threads}) {
    device_buffer<float> seq("seq_logp", std::vector<float>(static_cast<std::size_t>(S), unwritten));
    device_buffer<lc::status_area> status("status", 1);
    const bool launched = emu::launch(2, kn::block_threads, [&] {
      if (gs == 32) kn::segment_sum_kernel<32>(tok.data(), off.data(), S, N, seq.data(), status.data());
      else kn::segment_sum_kernel<kn::block_threads>(tok.data(), off.data(), S, N, seq.data(), status.data());
    });
    int ulps = 0;
    const bool exact = sums_exact(tok_host, off_host, seq.to_vector(), &ulps);
    CHECK_MSG(launched && exact && status[0].bits == 0, "%s long sequences, group %d: sums %d ulps off, status %u",
              tname<T>(), gs, ulps, status[0].bits);
  }
  // The backward, with the oracle's row_lse (a forward over 9000 rows costs the emulator seconds).
  Forward f;
  std::vector<float> seq(static_cast<std::size_t>(p.S()));
  f.tok.resize(static_cast<std::size_t>(p.N));
  f.lse.resize(static_cast<std::size_t>(p.N));
  lp::generic::forward(p.oracle(), std::span(seq), std::span(f.tok), std::span(f.lse));
  check_backward<T, 32, true>(p, f, true, true, p.layout, "long sequences, backward in place");
  check_backward<T, 32, false>(p, f, false, true, {flush::start, 1}, "long sequences, backward scalar");
}

// Bad targets and offsets: NaN outputs, status bits, nothing out of bounds (the buffers are guarded).
void bad_data() {
  auto p = make<float>(40, 9, {flush::end, 0}, 3);
  for (std::size_t n = 0; n < p.w.size(); ++n) {
    p.w[n] = 1.0f;
    p.y[n] = static_cast<std::int32_t>(n);
  }
  p.y[2] = 40;  // = V: the first target out of range on each side
  p.y[5] = -1;
  auto f = run_forward<float, 32, 32>(p, 1);
  int finite = 0;
  for (float t : f.tok) finite += std::isfinite(t);
  CHECK_MSG(f.status == lc::status_bad_target && std::isnan(f.tok[2]) && std::isnan(f.tok[5]) && finite == 7,
            "status %u, %d finite", f.status, finite);
  p.off[p.off.size() - 1] = p.N - 1;  // does not end at N
  f = run_forward<float, 32, 32>(p, 1);
  CHECK_MSG((f.status & lc::status_bad_offsets) != 0 && std::isnan(f.seq.back()), "status %u", f.status);
  const auto S = p.S();
  device_buffer<float> d("d_seq", std::vector<float>(static_cast<std::size_t>(S), 1.0f));
  device_buffer<float> g("grad", p.zf.size());
  device_buffer<lc::status_area> status("status", 1);
  emu::launch(1, kn::block_threads, [&] {
    kn::softmax_grad_kernel<float, 32, 4, true>(p.logits.data(), g.data(), p.V, p.N, p.y.data(), p.w.data(),
                                                p.off.data(), S, d.data(), nullptr, status.data());
  });
  // Rows 2 and 5 (bad targets) and 8 (outside the offsets) are NaN, the others finite.
  int wrong_rows = 0;
  for (std::size_t n = 0; n < 9; ++n) {
    int nans = 0;
    for (std::size_t v = 0; v < 40; ++v) nans += std::isnan(g[n * 40 + v]);
    wrong_rows += nans != (n == 2 || n == 5 || n == 8 ? 40 : 0);
  }
  CHECK_MSG(status[0].bits == (lc::status_bad_offsets | lc::status_bad_target) && wrong_rows == 0,
            "status %u, %d rows wrong", status[0].bits, wrong_rows);
}

// Bad logits (docs/cuda.md), judged as the CPU paths judge them: a weighted row whose log-sum-exp
// or log-prob is not finite (a NaN or +inf logit, only −inf logits, a −inf target logit) has NaN
// token log-prob, row_lse and gradient, sets status_bad_logits and the smallest such row is kept;
// its sequence sum is NaN; other rows are untouched; a masked row is never read.
template <class T, int G>
void bad_logits() {
  const int V = G == 32 ? 45 : 5000;
  auto p = make<T>(V, 9, {flush::end, 0}, 11);
  const float inf = INFINITY, nan = NAN;
  std::vector<std::int64_t> off = {0, 2, 3, 4, 5, 6, 8, 9};  // rows 0 and 1, 6 and 7: one sequence each
  p.off = device_buffer<std::int64_t>("offsets", std::span<const std::int64_t>(off));
  for (std::size_t n = 0; n < 9; ++n) {
    p.w[n] = 1.0f;
    p.y[n] = 3;
  }
  auto set = [&](long long r, int v, float x) {
    p.logits[static_cast<std::size_t>(r * V + v)] = to_storage<T>(x);
    p.zf[static_cast<std::size_t>(r * V + v)] = x;
  };
  set(1, 7, inf);  // +inf elsewhere than the target
  set(2, 3, inf);  // +inf at the target
  set(3, V - 1, nan);
  for (int v = 0; v < V; ++v) set(4, v, -inf);  // no logit above −inf
  set(5, 0, -inf);                              // one −inf: a fine row
  set(6, 1, nan);                               // masked: never read
  p.w[6] = 0.0f;
  set(7, 3, -inf);  // the target's logit −inf: log-prob −inf
  const std::vector<bool> bad = {false, true, true, true, true, false, false, true, false};
  const auto f = run_forward<T, G, 32>(p, 2);
  int wrong = 0;
  for (std::size_t n = 0; n < 9; ++n) {
    if (bad[n]) wrong += !(std::isnan(f.tok[n]) && std::isnan(f.lse[n]));
    else if (n == 6) wrong += !(f.tok[n] == 0.0f && std::isnan(f.lse[n]));
    else wrong += !(std::isfinite(f.tok[n]) && std::isfinite(f.lse[n]));
  }
  const bool nan_seq[7] = {true, true, true, true, false, true, false};
  for (std::size_t s = 0; s < 7; ++s) wrong += std::isnan(f.seq[s]) != nan_seq[s];
  CHECK_MSG(wrong == 0 && f.status == lc::status_bad_logits && f.first_bad_row_not == ~1ull,
            "%s G=%d forward: %d wrong, status %u, first bad row %lld", tname<T>(), G, wrong, f.status,
            static_cast<long long>(~f.first_bad_row_not));
  // Backward, without row_lse (recomputed and judged alike) and with the forward's (NaN: bad row_lse).
  for (bool with_lse : {false, true}) {
    device_buffer<float> d("d_seq", std::vector<float>(7, 1.0f));
    device_buffer<float> lse("row_lse", std::span<const float>(f.lse));
    device_buffer<T> g("grad", p.zf.size());
    device_buffer<lc::status_area> status("status", 1);
    emu::launch(2, kn::block_threads, [&] {
      kn::softmax_grad_kernel<T, G, 4, true>(p.logits.data(), g.data(), V, p.N, p.y.data(), p.w.data(), p.off.data(),
                                             7, d.data(), with_lse ? lse.data() : nullptr, status.data());
    });
    int wrong_rows = 0;
    for (std::size_t n = 0; n < 9; ++n) {
      int nans = 0, zeros = 0;
      for (int v = 0; v < V; ++v) {
        const float x = to_f(g[n * static_cast<std::size_t>(V) + static_cast<std::size_t>(v)]);
        nans += std::isnan(x);
        zeros += x == 0.0f;
      }
      if (bad[n]) wrong_rows += nans != V;
      else if (n == 6) wrong_rows += zeros != V;
      else wrong_rows += nans != 0;
    }
    const std::uint32_t want = with_lse ? lc::status_bad_row_lse : lc::status_bad_logits;
    const unsigned long long want_row = with_lse ? 0 : ~1ull;
    CHECK_MSG(wrong_rows == 0 && status[0].bits == want && status[0].first_bad_row_not == want_row,
              "%s G=%d backward (row_lse %d): %d wrong rows, status %u", tname<T>(), G, with_lse, wrong_rows,
              status[0].bits);
  }
}

// Values the storage and compute types cannot hold: a gradient scale |d_seq·w| above half of the
// gradient type's largest value (fp16: 32752) or not finite makes its sequence's gradient rows NaN
// and sets status_bad_d_seq; a sequence sum of finite token log-probs beyond float is NaN with
// status_bad_seq_sum (a NaN token log-prob only makes its sum NaN).
void extreme_scales() {
  auto p = make<lc::fp16>(40, 6, {flush::end, 0}, 21);
  const std::vector<std::int64_t> off = {0, 2, 4, 6};
  p.off = device_buffer<std::int64_t>("offsets", std::span<const std::int64_t>(off));
  for (std::size_t n = 0; n < 6; ++n) {
    p.w[n] = 1.0f;
    p.y[n] = static_cast<std::int32_t>(n);
  }
  device_buffer<float> d("d_seq", std::vector<float>{30000.0f, 40000.0f, NAN});
  device_buffer<lc::fp16> g("grad", p.zf.size());
  device_buffer<lc::status_area> status("status", 1);
  emu::launch(1, kn::block_threads, [&] {
    kn::softmax_grad_kernel<lc::fp16, 32, 4, true>(p.logits.data(), g.data(), p.V, p.N, p.y.data(), p.w.data(),
                                                   p.off.data(), 3, d.data(), nullptr, status.data());
  });
  int wrong_rows = 0;
  for (std::size_t n = 0; n < 6; ++n) {
    int nans = 0, finite = 0;
    for (std::size_t v = 0; v < 40; ++v) {
      nans += std::isnan(to_f(g[n * 40 + v]));
      finite += std::isfinite(to_f(g[n * 40 + v]));
    }
    wrong_rows += n < 2 ? finite != 40 : nans != 40;
  }
  CHECK_MSG(wrong_rows == 0 && status[0].bits == lc::status_bad_d_seq, "d_seq scale: %d wrong rows, status %u",
            wrong_rows, status[0].bits);

  const std::vector<float> tok_host = {-3e38f, -3e38f, 1.0f, NAN, 2.0f};
  const std::vector<std::int64_t> seq_off = {0, 2, 3, 5};
  device_buffer<float> tok("token_logp", std::span<const float>(tok_host));
  device_buffer<std::int64_t> so("offsets", std::span<const std::int64_t>(seq_off));
  device_buffer<float> seq("seq_logp", std::vector<float>(3, unwritten));
  device_buffer<lc::status_area> st("status", 1);
  emu::launch(1, kn::block_threads,
              [&] { kn::segment_sum_kernel<32>(tok.data(), so.data(), 3, 5, seq.data(), st.data()); });
  CHECK_MSG(std::isnan(seq[0]) && seq[1] == 1.0f && std::isnan(seq[2]) && st[0].bits == lc::status_bad_seq_sum,
            "sums beyond float: %g %g %g, status %u", seq[0], seq[1], seq[2], st[0].bits);
}

// Row offsets past 2^31 elements (N·V > 2^31): a 32-bit row offset would wrap. Almost every row
// is masked, so the logits are only touched where weighted (the rest of the 4 GiB mapping is never
// backed) and the gradient's masked rows alias one small chunk (emulate/device_buffer.h).
template <int G>
void offsets_64bit() {
  using T = lc::bf16;
  const int V = G == 32 ? 4093 : 65537;
  const long long N = (2147483648LL + V) / V + 4;  // a few rows past the 2^31st element
  const auto NV = static_cast<std::size_t>(N) * static_cast<std::size_t>(V);
  const std::vector<long long> weighted = {0, 1, N - 5, N - 3, N - 2, N - 1};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  device_buffer<T> logits("logits", NV);
  device_buffer<std::int32_t> y("targets", static_cast<std::size_t>(N));
  device_buffer<float> w("weights", static_cast<std::size_t>(N));  // zeros: masked
  std::vector<std::vector<float>> zf;
  for (long long r : weighted) {
    zf.emplace_back();
    for (int v = 0; v < V; ++v) {
      const T t = to_storage<T>(normal(rng) + static_cast<float>(r % 7));
      logits[static_cast<std::size_t>(r) * static_cast<std::size_t>(V) + static_cast<std::size_t>(v)] = t;
      zf.back().push_back(to_f(t));
    }
    y[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(rng() % static_cast<unsigned>(V));
    w[static_cast<std::size_t>(r)] = 0.75f;
  }
  const std::vector<std::int64_t> off_host = {0, 2, N - 5, N - 2, N};  // the middle one is all masked
  device_buffer<std::int64_t> off("offsets", std::span<const std::int64_t>(off_host));
  const long long S = 4;
  // Expected values of the weighted rows (masked ones: 0 log-prob, NaN lse, zero gradient).
  std::vector<double> lse_ref, tok_ref;
  for (std::size_t k = 0; k < weighted.size(); ++k) {
    lse_ref.push_back(lp::generic::row_logsumexp(zf[k].data(), static_cast<std::size_t>(V)));
    tok_ref.push_back(0.75 * (zf[k][static_cast<std::size_t>(y[static_cast<std::size_t>(weighted[k])])] - lse_ref[k]));
  }
  device_buffer<float> tok("token_logp", static_cast<std::size_t>(N));
  device_buffer<float> lse("row_lse", static_cast<std::size_t>(N));
  device_buffer<float> seq("seq_logp", static_cast<std::size_t>(S));
  device_buffer<lc::status_area> status("status", 1);
  bool launched = emu::launch(2, kn::block_threads, [&] {
    kn::row_logsumexp_gather_kernel<T, G, 4>(logits.data(), V, N, y.data(), w.data(), tok.data(), lse.data(),
                                             status.data());
  });
  launched = launched && emu::launch(2, kn::block_threads, [&] {
    kn::segment_sum_kernel<kn::block_threads>(tok.data(), off.data(), S, N, seq.data(), status.data());
  });
  int bad = 0;
  for (std::size_t k = 0; k < weighted.size(); ++k) {
    const auto r = static_cast<std::size_t>(weighted[k]);
    bad += !(std::fabs(lse[r] - lse_ref[k]) <= 2e-5 * (1 + std::fabs(lse_ref[k])));
    bad += !(std::fabs(tok[r] - tok_ref[k]) <= 2e-5 * (1 + std::fabs(lse_ref[k])));
  }
  for (long long r : {2LL, N / 2, N - 4})
    bad += !(tok[static_cast<std::size_t>(r)] == 0.0f && std::isnan(lse[static_cast<std::size_t>(r)]));
  const double seq_ref[4] = {tok_ref[0] + tok_ref[1], 0.0, tok_ref[2] + tok_ref[3], tok_ref[4] + tok_ref[5]};
  for (std::size_t s = 0; s < 4; ++s) bad += !(std::fabs(seq[s] - seq_ref[s]) <= 1e-4 * (1 + std::fabs(seq_ref[s])));
  CHECK_MSG(launched && bad == 0 && status[0].bits == 0, "G=%d V=%d N=%lld forward: %d mismatches, status %u", G, V,
            N, bad, status[0].bits);

  // Backward into a separate gradient: only the weighted rows are kept, every masked row is written
  // (zeros) into the aliased chunk. 2^31 elements written cost the emulator ~2 minutes of CPU (most
  // of this test's time; docs/build_cost.md): one group size (the row offsets are the same code
  // for both).
  if (G != 32) return;
  device_buffer<T> grad("grad", NV);
  std::vector<std::pair<std::size_t, std::size_t>> keep;
  for (long long r : weighted)
    keep.emplace_back(static_cast<std::size_t>(r) * static_cast<std::size_t>(V),
                      static_cast<std::size_t>(r + 1) * static_cast<std::size_t>(V));
  grad.alias_outside(keep);
  const std::size_t probe = static_cast<std::size_t>(N / 2) * static_cast<std::size_t>(V);
  for (auto [b, e] : keep) std::memset(static_cast<void*>(grad.data() + b), 0xff, (e - b) * sizeof(T));
  std::memset(static_cast<void*>(grad.data() + probe), 0xff, 4096 * sizeof(T));
  const std::vector<float> d_host = {0.5f, 1.0f, -0.25f, 2.0f};
  device_buffer<float> d("d_seq", std::span<const float>(d_host));
  status[0] = {};
  launched = emu::launch(2, kn::block_threads, [&] {
    kn::softmax_grad_kernel<T, G, 4, true>(logits.data(), grad.data(), V, N, y.data(), w.data(), off.data(), S,
                                           d.data(), lse.data(), status.data());
  });
  const int seq_of[6] = {0, 0, 2, 2, 3, 3};
  bad = 0;
  for (std::size_t k = 0; k < weighted.size(); ++k) {
    const double c = 0.75 * d_host[static_cast<std::size_t>(seq_of[k])];
    const auto r = static_cast<std::size_t>(weighted[k]);
    for (int v = 0; v < V; ++v) {
      const double ref = c * ((v == y[r] ? 1.0 : 0.0) - std::exp(zf[k][static_cast<std::size_t>(v)] - lse_ref[k]));
      const double got = to_f(grad[r * static_cast<std::size_t>(V) + static_cast<std::size_t>(v)]);
      bad += !(std::fabs(got - ref) <= grad_tol<T>(c, ref) + 2e-5 * std::fabs(c) * std::fabs(lse_ref[k]));
    }
  }
  // The masked rows wrote zeros over the aliased chunk, poisoned here (through a masked row) first.
  for (std::size_t i = 0; i < 4096; ++i) bad += to_f(grad[probe + i]) != 0.0f;
  CHECK_MSG(launched && bad == 0 && status[0].bits == 0, "G=%d V=%d N=%lld backward: %d mismatches, status %u", G, V,
            N, bad, status[0].bits);
}

// ---- the emulator itself -------------------------------------------------------------------------

// lse_merge(a, b) and lse_merge(b, a) to the bit, compiled with FMA contraction (as nvcc compiles
// it: a.s·ea + b.s·eb as one multiply and one fma). Run only where the CPU has FMA. GCC forms the
// fma at -O2 and above only, hence optimize("O2") (the mutation run builds the test at -Og).
__attribute__((target("fma"), flatten, optimize("O2"))) lc::detail::lse_state merge_fma(lc::detail::lse_state a,
                                                                                         lc::detail::lse_state b) {
  return lc::detail::lse_merge(a, b);
}

__attribute__((target("fma"), flatten, optimize("O2"))) void warp_merge_fma(lc::detail::lse_state* st) {
  st[threadIdx.x] = kn::warp_merge(st[threadIdx.x]);
}

void merge_symmetry() {
  if (!__builtin_cpu_supports("fma")) {
    std::printf("  (no FMA on this CPU: lse_merge symmetry under contraction not checked)\n");
    return;
  }
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::uniform_real_distribution<float> unit(0.5f, 30.0f);
  int asym = 0;
  for (int i = 0; i < 100000; ++i) {
    const lc::detail::lse_state a{normal(rng), unit(rng)}, b{normal(rng), unit(rng)};
    const auto ab = merge_fma(a, b), ba = merge_fma(b, a);
    asym += std::bit_cast<std::uint32_t>(ab.s) != std::bit_cast<std::uint32_t>(ba.s) || ab.m != ba.m;
  }
  // And through the butterfly: every lane of a warp ends with the same bits.
  std::vector<lc::detail::lse_state> st(32);
  int differ = 0;
  for (int trial = 0; trial < 200; ++trial) {
    for (auto& s : st) s = {normal(rng), unit(rng)};
    emu::launch(1, 32, [&] { warp_merge_fma(st.data()); });
    for (const auto& s : st) differ += std::bit_cast<std::uint64_t>(s) != std::bit_cast<std::uint64_t>(st[0]);
  }
  CHECK_MSG(asym == 0 && differ == 0, "merge(a, b) != merge(b, a) in %d of 100000 pairs; %d lanes differ", asym,
            differ);
}

// The emulator finds what it claims to find: a barrier reached by part of a block, two different
// barriers in one phase, a read of shared memory before the block wrote it, an access past a
// buffer's end; and its schedule depends on the seed.
void emulator_self_test() {
  emu::report = false;  // the failures below are expected
  CHECK_MSG(!emu::launch(1, 64, [] {
              if (threadIdx.x < 32) __syncthreads();
            }),
            "a barrier reached by half the block must fail the launch");
  const bool two_sites = emu::launch(1, 64, [] {  // (not inside CHECK_MSG: a macro gives both calls one location)
    if (threadIdx.x < 32) __syncthreads();
    else __syncthreads();
  });
  CHECK_MSG(!two_sites, "two different barriers in one phase must fail the launch");
  CHECK_MSG(!emu::launch(1, 64, [] {
              if (threadIdx.x % 32 != 5) (void)__shfl_xor_sync(0xffffffffu, 1.0f, 1);
            }),
            "a shuffle without lane 5 must fail the launch");
  emu::report = true;
  std::uint32_t seen[2] = {0, 0};
  emu::launch(2, 64, [&] {
    DFTUNE_CUDA_SHARED(std::uint32_t, word);
    if (threadIdx.x == 0) seen[blockIdx.x] = word;  // before the block wrote it: poison
    __syncthreads();
    if (threadIdx.x == 1) word = 7;
  });
  CHECK_MSG(seen[0] == 0xffffffffu && seen[1] == 0xffffffffu, "shared memory before the block writes it: %#x %#x",
            seen[0], seen[1]);
  auto order = [](std::uint64_t seed) {
    const auto saved = emu::seed;
    emu::seed = seed;
    std::vector<unsigned> out;
    emu::launch(1, 64, [&] {
      __syncthreads();
      out.push_back(threadIdx.x);
    });
    emu::seed = saved;
    return out;
  };
  const auto a = order(1), b = order(2);
  CHECK_MSG(a != b && !std::is_sorted(a.begin(), a.end()), "the schedule does not depend on the seed");
  std::fflush(stdout);
  const pid_t child = fork();
  if (child == 0) {
    const int devnull = open("/dev/null", O_WRONLY);  // the report is expected: keep it out of the log
    dup2(devnull, 1);
    device_buffer<float> buf("probe", 5);
    volatile float* p = buf.data();
    (void)p[5];  // one past the end
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 3, "a read past a device buffer must hit its guard page (status %d)", st);
}

template <class F>
void section(const char* name, F&& f) {
  const int before = g_failures;
  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  f();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  std::printf("[%s] %s (%.1f s, %.1f s CPU)\n", g_failures > before ? "FAIL" : " ok ", name, s, cpu);
  std::fflush(stdout);
  if (g_failures > before && std::getenv("DFTUNE_EMU_STOP_AT_FAILURE")) std::exit(1);  // (tests/cuda/mutate.py)
}


// ---- the fused linear head's chunk loop (linear_chunks.cuh) -----------------------------------

namespace ll = dftune::logprob::cuda::linear;
namespace cl = dftune::logprob::linear;

// linear_chunks.cuh's steps: the kernels on the emulated device (two blocks: grid-stride loops
// wrap), the GEMMs on the host with cuBLAS' meaning of every argument (column-major, op(A) m×k,
// op(B) k×n, C read only when beta ≠ 0), summed in double.
struct EmuOps {
  bool launched = true;
  void memset(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
  void gemm(bool ta, bool tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta, float* C,
            int ldc) {
    for (long long j = 0; j < n; ++j)
      for (long long i = 0; i < m; ++i) {
        double acc = 0;
        for (long long q = 0; q < k; ++q)
          acc += static_cast<double>(ta ? A[q + i * lda] : A[i + q * lda]) * (tb ? B[j + q * ldb] : B[q + j * ldb]);
        float& c = C[i + j * ldc];
        c = static_cast<float>(beta != 0.0f ? acc + static_cast<double>(beta) * c : acc);
      }
  }
  void gemv(int m, int n, const float* A, int lda, const float* x, float* y) {
    for (long long i = 0; i < m; ++i) {
      double acc = y[i];
      for (long long j = 0; j < n; ++j) acc += static_cast<double>(A[i + j * lda]) * x[j];
      y[i] = static_cast<float>(acc);
    }
  }
  template <class F>
  void run(unsigned grid, F&& f) { launched = emu::launch(grid, kn::block_threads, f) && launched; }
  void add_bias(float* z, const float* b, long long k, int V) { run(2, [&] { ll::detail::add_bias_kernel(z, b, k, V); }); }
  void row_coef(const std::int64_t* off, long long S, const float* d, const float* w, long long N, float* c) {
    run(2, [&] { ll::detail::row_coef_kernel(off, S, d, w, N, c); });
  }
  void constants(float* ones, long long R, float* unit, std::int64_t* off, long long k) {
    run(2, [&] { ll::detail::constants_kernel(ones, R, unit, off, k); });
  }
  void merge_status(lc::status_area* total, lc::status_area* chunk, long long r0) {
    launched = emu::launch(1, 1, [&] { ll::detail::merge_status_kernel(total, chunk, r0); }) && launched;
  }
  void lse_gather(const float* z, int V, long long k, const std::int32_t* y, const float* w, float* tok, float* lse,
                  lc::status_area* st) {
    if (V <= 4096)  // dispatch.cuh's choice of group
      run(2, [&] { kn::row_logsumexp_gather_kernel<float, 32, 4>(z, V, k, y, w, tok, lse, st); });
    else
      run(2, [&] { kn::row_logsumexp_gather_kernel<float, kn::block_threads, 4>(z, V, k, y, w, tok, lse, st); });
  }
  void softmax_grad(const float* z, float* g, int V, long long k, const std::int32_t* y, const float* w,
                    const std::int64_t* off, long long S, const float* d, const float* lse, lc::status_area* st) {
    if (V <= 4096)  // in place: the vector path
      run(2, [&] { kn::softmax_grad_kernel<float, 32, 4, true>(z, g, V, k, y, w, off, S, d, lse, st); });
    else
      run(2, [&] { kn::softmax_grad_kernel<float, kn::block_threads, 4, true>(z, g, V, k, y, w, off, S, d, lse, st); });
  }
  void segment_sum(const float* tok, const std::int64_t* off, long long S, long long N, float* seq, lc::status_area* st) {
    run(2, [&] { kn::segment_sum_kernel<32>(tok, off, S, N, seq, st); });
  }
};

struct LinearProblem {
  std::size_t N = 0, V = 0, d = 0;
  cl::Layout layout = cl::Layout::vocab_major;
  std::vector<float> H, W, b, w, dseq;
  std::vector<std::int32_t> y;
  std::vector<std::int64_t> off;
  cl::LinearLogits<float> view() const {
    return {.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V, .layout = layout, .targets = y, .weights = w, .offsets = off};
  }
};

LinearProblem linear_problem(std::size_t V, std::size_t d, std::size_t S, cl::Layout layout, bool bias, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  LinearProblem p;
  p.V = V;
  p.d = d;
  p.layout = layout;
  p.off = {0};
  for (std::size_t s = 0; s < S; ++s) p.off.push_back(p.off.back() + (s == 1 ? 0 : static_cast<std::int64_t>(rng() % 7)));
  p.N = static_cast<std::size_t>(p.off.back());
  p.H.resize(p.N * d);
  p.W.resize(V * d);
  for (auto& x : p.H) x = g(rng);
  for (auto& x : p.W) x = g(rng) * 2.0f / std::sqrt(static_cast<float>(d));
  if (bias) {
    p.b.resize(V);
    for (auto& x : p.b) x = g(rng);
  }
  for (std::size_t n = 0; n < p.N; ++n) {
    const bool masked = n % 4 == 1;
    p.y.push_back(masked ? -3 : static_cast<std::int32_t>(rng() % V));
    p.w.push_back(masked ? 0.0f : 0.5f + static_cast<float>(rng() % 3));
  }
  for (std::size_t s = 0; s < S; ++s) p.dseq.push_back(s % 5 == 3 ? 0.0f : g(rng));
  return p;
}

struct LinearOut {
  std::vector<float> seq, tok, dH, dW, db;
  std::uint32_t status = 0;
  long long first_bad_row = -1;
  bool launched = true;
};

// One call of the chunk loop on the emulated device; dW and db start from a pattern (they add up).
LinearOut run_linear(const LinearProblem& p, ll::detail::Mode mode, bool keep_lse, std::size_t chunk) {
  const auto S = p.off.size() - 1;
  device_buffer<float> H("H", std::span<const float>(p.H)), W("W", std::span<const float>(p.W)), b("b", std::span<const float>(p.b)),
      w("w", std::span<const float>(p.w)), dseq("d_seq", std::span<const float>(p.dseq));
  device_buffer<std::int32_t> y("targets", std::span<const std::int32_t>(p.y));
  device_buffer<std::int64_t> off("offsets", std::span<const std::int64_t>(p.off));
  std::vector<float> dW0(p.V * p.d), db0(p.b.size());
  for (std::size_t i = 0; i < dW0.size(); ++i) dW0[i] = 0.25f * std::sin(static_cast<float>(i));
  for (std::size_t i = 0; i < db0.size(); ++i) db0[i] = 0.5f * std::cos(static_cast<float>(i));
  device_buffer<float> seq("seq_logp", std::vector<float>(S, unwritten)), tok("token_logp", std::vector<float>(p.N, unwritten)),
      lse("row_lse", std::vector<float>(p.N, unwritten)), dH("dH", std::vector<float>(p.N * p.d, unwritten)),
      dW("dW", std::span<const float>(dW0)), db("db", std::span<const float>(db0));
  const cl::LinearLogits<float> in{.hidden = H.span(), .proj = W.span(), .bias = b.span(), .dim = p.d, .vocab = p.V,
                                   .layout = p.layout, .targets = y.span(), .weights = w.span(), .offsets = off.span()};
  const auto l = ll::detail::layout_of(in, {.chunk_rows = chunk});
  device_buffer<std::byte> ws("workspace", l.bytes);
  EmuOps ops;
  const cl::LinearGrads<float> g{.hidden = dH.span(), .proj = dW.span(), .bias = b.size() ? db.span() : std::span<float>()};
  using M = ll::detail::Mode;
  const std::span<float> lse_out = keep_lse ? lse.span() : std::span<float>();
  if (mode == M::backward) {  // forward first (keeping row_lse or not), as a DFT step runs them
    ll::detail::run_chunks(in, M::forward, seq.span(), tok.span(), lse_out, {}, {}, {}, ws.data(), l, ops);
    ll::detail::run_chunks(in, M::backward, {}, {}, {}, dseq.span(), std::span<const float>(lse_out), g, ws.data(), l, ops);
  } else {
    ll::detail::run_chunks(in, mode, seq.span(), tok.span(), lse_out, dseq.span(), {}, g, ws.data(), l, ops);
  }
  LinearOut o{seq.to_vector(), tok.to_vector(), dH.to_vector(), dW.to_vector(), db.to_vector()};
  const auto* st = reinterpret_cast<const lc::status_area*>(ws.data() + l.status_at);
  o.status = st->bits;
  o.first_bad_row = st->first_bad_row_not == 0 ? -1 : static_cast<long long>(~st->first_bad_row_not);
  o.launched = ops.launched;
  return o;
}

void linear_against_cpu_head() {
  std::uint32_t seed = 7;
  for (cl::Layout layout : {cl::Layout::vocab_major, cl::Layout::dim_major})
    for (bool bias : {false, true})
      for (std::size_t V : {std::size_t{67}, std::size_t{4500}}) {
        const auto p = linear_problem(V, 5, 7, layout, bias, seed++);
        // The CPU head: forward_backward, dW and db from the same pattern.
        std::vector<float> seq(p.off.size() - 1), tok(p.N), lse(p.N), dH(p.N * p.d), dW(p.V * p.d), db(p.b.size());
        for (std::size_t i = 0; i < dW.size(); ++i) dW[i] = 0.25f * std::sin(static_cast<float>(i));
        for (std::size_t i = 0; i < db.size(); ++i) db[i] = 0.5f * std::cos(static_cast<float>(i));
        std::vector<std::byte> cws(cl::workspace_size(p.view()));
        cl::forward_backward(p.view(), std::span<const float>(p.dseq), {.hidden = dH, .proj = dW, .bias = db}, std::span<float>(seq),
                             std::span<float>(tok), std::span<float>(lse), std::span<std::byte>(cws));
        using M = ll::detail::Mode;
        for (auto [mode, keep] : {std::pair{M::forward_backward, false}, std::pair{M::forward_backward, true},
                                  std::pair{M::backward, true}, std::pair{M::backward, false}}) {
          const auto o = run_linear(p, mode, keep, 3);
          auto close = [](double a, double r) { return std::fabs(a - r) <= 2e-5 * (1 + std::fabs(r)); };
          int bad = 0;
          for (std::size_t s = 0; s < seq.size(); ++s) bad += !close(o.seq[s], seq[s]);
          for (std::size_t n = 0; n < p.N; ++n) bad += !close(o.tok[n], tok[n]);
          for (std::size_t i = 0; i < dH.size(); ++i) bad += !close(o.dH[i], dH[i]);
          for (std::size_t i = 0; i < dW.size(); ++i) bad += !close(o.dW[i], dW[i]);
          for (std::size_t i = 0; i < db.size(); ++i) bad += !close(o.db[i], db[i]);
          CHECK_MSG(o.launched && bad == 0 && o.status == 0, "linear V=%zu %s bias %d mode %d row_lse %d: %d values off, status %u",
                    V, layout == cl::Layout::vocab_major ? "vocab_major" : "dim_major", bias, static_cast<int>(mode), keep, bad,
                    o.status);
        }
      }
}

// A NaN hidden state in a weighted row of a later chunk: the kernels' rule, with the global row.
void linear_bad_logits() {
  auto p = linear_problem(40, 4, 6, cl::Layout::vocab_major, false, 99);
  std::size_t row = 4;
  while (p.w[row] == 0) ++row;
  p.H[row * p.d + 1] = std::numeric_limits<float>::quiet_NaN();
  const auto o = run_linear(p, ll::detail::Mode::forward_backward, false, 3);
  CHECK_MSG((o.status & lc::status_bad_logits) && o.first_bad_row == static_cast<long long>(row),
            "linear bad logits: status %u, first bad row %lld, expected %zu", o.status, o.first_bad_row, row);
  CHECK_MSG(std::isnan(o.tok[row]), "linear bad logits: token_logp[%zu] = %g, expected NaN", row, o.tok[row]);
}

int main() {
  std::printf("test_kernels_emulated: the CUDA kernels on an emulated device, against the CPU oracle (seed %llu)\n",
              static_cast<unsigned long long>(emu::seed));
  section("the emulator: deadlocks, barrier sites, shared poison, seeded schedule, guard pages", emulator_self_test);
  section("lse_merge symmetric under FMA contraction; lanes agree", merge_symmetry);
  section("float", suite<float>);
  section("bf16", suite<lc::bf16>);
  section("fp16", suite<lc::fp16>);
  section("sequences of 500-4000 rows", [] {
    long_sequences<float>();
    long_sequences<lc::bf16>();
    long_sequences<lc::fp16>();
  });
  section("bad targets / offsets", bad_data);
  section("bad logits (non-finite lse or log-prob), extreme scales", [] {
    bad_logits<float, 32>();
    bad_logits<lc::bf16, kn::block_threads>();
    bad_logits<lc::fp16, 32>();
    extreme_scales();
  });
  section("row offsets past 2^31 elements", [] {
    offsets_64bit<32>();
    offsets_64bit<kn::block_threads>();
  });
  section("the fused linear head's chunk loop (host GEMM) = the CPU head", [] {
    linear_against_cpu_head();
    linear_bad_logits();
  });
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
