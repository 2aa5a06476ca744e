// The CUDA kernels of include/dftune/logprob/cuda/kernels.cuh, run on the host through a small
// emulation of the CUDA features they use (tests/cuda/emulate: a block's threads are std::threads,
// __syncthreads a barrier, warp shuffles a slot array between warp barriers), against the generic
// CPU oracle. It checks what a GPU run would check about the kernels' logic — head/vector/tail
// split at every alignment, predicated last steps, warp and block groups, grid-stride loops,
// masked rows and sequences, empty sequences, the segmented sums, the backward in place and into
// a separate buffer (vector and scalar paths), with and without row_lse, status bits on bad data —
// on any machine, GPU or not. Device arithmetic (exp2f, conversions) is the host's here; the real
// kernels are checked on a GPU by test_logprob_cuda device.
#include "emulate/cuda_runtime.h"  // first: defines the CUDA keywords the kernels use

#include <dftune/logprob/cuda/kernels.cuh>
#include <dftune/logprob/generic.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

namespace lp = dftune::logprob;
namespace lc = dftune::logprob::cuda;
namespace kn = dftune::logprob::cuda::kernels;

static int g_failures = 0;
static int g_checks = 0;
#define CHECK_MSG(cond, ...)                                       \
  do {                                                             \
    ++g_checks;                                                    \
    if (!(cond)) {                                                 \
      ++g_failures;                                                \
      std::printf("  FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                    \
      std::printf("\n");                                           \
    }                                                              \
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

// Logits live in `storage` at element offset `shift` (so row starts take every alignment).
template <class T>
struct Problem {
  int V = 0;
  long long N = 0;
  std::vector<T> storage;
  std::size_t shift = 0;
  std::vector<float> zf;
  std::vector<std::int32_t> y;
  std::vector<float> w;
  std::vector<std::int64_t> off;
  const T* z() const { return storage.data() + shift; }
  lp::TokenLogits<float> oracle() const {
    return {.logits = zf, .vocab = static_cast<std::size_t>(V), .targets = y, .weights = w, .offsets = off};
  }
};

template <class T>
Problem<T> make(int V, long long N, std::size_t shift, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Problem<T> p;
  p.V = V;
  p.N = N;
  p.shift = shift;
  const auto total = static_cast<std::size_t>(N) * static_cast<std::size_t>(V);
  p.storage.resize(total + 16);
  p.zf.resize(total);
  for (long long n = 0; n < N; ++n) {
    const float base = (unit(rng) - 0.5f) * 60.0f;
    for (int v = 0; v < V; ++v) {
      const std::size_t i = static_cast<std::size_t>(n) * static_cast<std::size_t>(V) + static_cast<std::size_t>(v);
      const T t = to_storage<T>(base + normal(rng));
      p.storage[shift + i] = t;
      p.zf[i] = to_f(t);
    }
    p.y.push_back(static_cast<std::int32_t>(rng() % static_cast<unsigned>(V)));
    p.w.push_back(unit(rng) < 0.25f ? 0.0f : 0.5f + unit(rng));
  }
  p.off = {0, 0};  // an empty first sequence
  while (p.off.back() < N) p.off.push_back(std::min<long long>(N, p.off.back() + static_cast<long long>(rng() % 4)));
  // The second sequence fully masked.
  for (auto r = p.off[1]; r < p.off[2]; ++r) {
    p.w[static_cast<std::size_t>(r)] = 0.0f;
    p.y[static_cast<std::size_t>(r)] = -7;
  }
  return p;
}

struct Forward {
  std::vector<float> seq, tok, lse;
  std::uint32_t status = 0;
};

template <class T, int G, int GS>
Forward run_forward(const Problem<T>& p, unsigned grid) {
  Forward f;
  const auto S = static_cast<long long>(p.off.size()) - 1;
  f.seq.assign(static_cast<std::size_t>(S), -1.0f);
  f.tok.assign(static_cast<std::size_t>(p.N), -1.0f);
  f.lse.assign(static_cast<std::size_t>(p.N), -1.0f);
  emu::launch(grid, kn::block_threads, [&] {
    kn::row_logsumexp_gather_kernel<T, G, 4>(p.z(), p.V, p.N, p.y.data(), p.w.data(), f.tok.data(), f.lse.data(),
                                             &f.status);
  });
  emu::launch(2, kn::block_threads,
              [&] { kn::segment_sum_kernel<GS>(f.tok.data(), p.off.data(), S, p.N, f.seq.data(), &f.status); });
  return f;
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
  CHECK_MSG(bad == 0 && f.status == 0, "%s %s V=%d N=%lld shift=%zu: %d mismatches, status %u", label, tname<T>(), p.V,
            p.N, p.shift, bad, f.status);
}

// The backward into `grad` (the logits' own storage when in_place) with the given lse (or none).
template <class T, int G, bool VECTOR>
void check_backward(const Problem<T>& p, const Forward& f, bool in_place, bool with_lse, std::size_t gshift,
                    const char* label) {
  const auto S = static_cast<long long>(p.off.size()) - 1;
  std::vector<float> d(static_cast<std::size_t>(S));
  for (std::size_t s = 0; s < d.size(); ++s) d[s] = s % 3 == 2 ? 0.0f : 0.7f - 0.4f * static_cast<float>(s % 5);
  std::vector<T> storage = p.storage;  // in place: the logits themselves
  std::vector<T> separate(p.zf.size() + 16);
  const T* z = in_place ? storage.data() + p.shift : p.z();
  T* g = in_place ? storage.data() + p.shift : separate.data() + gshift;
  std::uint32_t status = 0;
  emu::launch(3, kn::block_threads, [&] {
    kn::softmax_grad_kernel<T, G, 4, VECTOR>(z, g, p.V, p.N, p.y.data(), p.w.data(), p.off.data(), S, d.data(),
                                             with_lse ? f.lse.data() : nullptr, &status);
  });
  std::vector<float> ref(p.zf.size());
  lp::generic::backward(p.oracle(), std::span<const float>(d), std::span(ref));
  int bad = 0;
  double worst = 0;
  for (long long s = 0; s < S; ++s)
    for (auto r = p.off[static_cast<std::size_t>(s)]; r < p.off[static_cast<std::size_t>(s) + 1]; ++r) {
      const double c = static_cast<double>(d[static_cast<std::size_t>(s)]) * p.w[static_cast<std::size_t>(r)];
      for (int v = 0; v < p.V; ++v) {
        const std::size_t i = static_cast<std::size_t>(r) * static_cast<std::size_t>(p.V) + static_cast<std::size_t>(v);
        const double got = to_f(g[i]);
        const double err = std::fabs(got - ref[i]);
        const double tol = 2e-5 * std::fabs(c) + rel<T>() * std::fabs(ref[i]) + (std::is_same_v<T, lc::fp16> ? 1e-7 : 0);
        bad += !(err <= tol);
        worst = std::max(worst, err);
      }
    }
  CHECK_MSG(bad == 0 && status == 0, "%s %s G=%d vector=%d V=%d N=%lld shift=%zu: %d mismatches (worst %.3g), status %u",
            label, tname<T>(), G, VECTOR, p.V, p.N, p.shift, bad, worst, status);
}

template <class T, int G>
void suite_for_group(int V, long long N, std::size_t shift) {
  const auto p = make<T>(V, N, shift, static_cast<std::uint32_t>(V * 131 + N + static_cast<long long>(shift)));
  const auto f = run_forward<T, G, G>(p, 2);  // 2 blocks: grid-stride over the rows
  check_forward(p, f, "forward");
  constexpr std::size_t vec_shift = 0;
  check_backward<T, G, true>(p, f, true, true, vec_shift, "backward in place");
  check_backward<T, G, true>(p, f, true, false, vec_shift, "backward in place, no lse");
  check_backward<T, G, true>(p, f, false, true, shift, "backward separate (congruent)");
  check_backward<T, G, false>(p, f, false, true, shift + 1, "backward separate (scalar)");
  check_backward<T, G, false>(p, f, true, false, 0, "backward in place scalar, no lse");
}

template <class T>
void suite() {
  for (int V : {1, 2, 3, 7, 8, 9, 33, 255, 1029})
    for (std::size_t shift : {0u, 1u, 3u}) suite_for_group<T, 32>(V, 11, shift);
  for (int V : {2, 9, 700, 4097, 20011})
    for (std::size_t shift : {0u, 5u}) suite_for_group<T, kn::block_threads>(V, 4, shift);
}

// Bad targets and offsets: NaN outputs, status bits, nothing out of bounds (the vectors are exact).
void bad_data() {
  auto p = make<float>(40, 9, 0, 3);
  for (auto& w : p.w) w = 1.0f;
  for (std::size_t n = 0; n < p.y.size(); ++n) p.y[n] = static_cast<std::int32_t>(n);
  p.y[2] = 40;
  p.y[5] = -3;
  auto f = run_forward<float, 32, 32>(p, 1);
  CHECK_MSG(f.status == lc::status_bad_target && std::isnan(f.tok[2]) && std::isnan(f.tok[5]) && std::isfinite(f.tok[3]),
            "status %u", f.status);
  p.off.back() = p.N - 1;  // does not end at N
  f = run_forward<float, 32, 32>(p, 1);
  CHECK_MSG((f.status & lc::status_bad_offsets) != 0 && std::isnan(f.seq.back()), "status %u", f.status);
  const auto S = static_cast<long long>(p.off.size()) - 1;
  std::vector<float> d(static_cast<std::size_t>(S), 1.0f), g(p.zf.size());
  std::uint32_t status = 0;
  emu::launch(1, kn::block_threads, [&] {
    kn::softmax_grad_kernel<float, 32, 4, true>(p.z(), g.data(), p.V, p.N, p.y.data(), p.w.data(), p.off.data(), S,
                                                d.data(), nullptr, &status);
  });
  CHECK_MSG((status & lc::status_bad_offsets) && (status & lc::status_bad_target) && std::isnan(g[static_cast<std::size_t>(p.N - 1) * 40]),
            "status %u", status);
}

int main() {
  std::printf("test_kernels_emulated: the CUDA kernels on an emulated device, against the CPU oracle\n");
  suite<float>();
  std::printf("[%s] float\n", g_failures ? "FAIL" : " ok ");
  const int f0 = g_failures;
  suite<lc::bf16>();
  std::printf("[%s] bf16\n", g_failures > f0 ? "FAIL" : " ok ");
  const int f1 = g_failures;
  suite<lc::fp16>();
  std::printf("[%s] fp16\n", g_failures > f1 ? "FAIL" : " ok ");
  const int f2 = g_failures;
  bad_data();
  std::printf("[%s] bad targets / offsets\n", g_failures > f2 ? "FAIL" : " ok ");
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
