// The point of gradient accumulation is memory: a step over k micro-batches keeps one
// micro-batch's activations alive at a time (scoring and backward run per micro-batch), so the
// heap peak of a step falls roughly as 1/k, while the result is the big batch's
// (tests/test_accumulate.cpp). Measured here with a replaced global operator new that tracks live
// bytes (this test is its own executable), on a fresh tiny LM per measurement: the peak of live
// bytes during one step minus the live bytes before it.
#include "distributed/accumulate.hpp"

#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace {
std::atomic<long long> live{0}, peak{0};
constexpr std::size_t kHeader = 64;  // keeps every alignment up to 64 and holds the size

void* track(std::size_t n, std::size_t align) {
  const std::size_t a = align < kHeader ? kHeader : align;
  void* raw = std::aligned_alloc(a, ((n + a + a - 1) / a) * a);
  if (!raw) throw std::bad_alloc();
  std::memcpy(static_cast<char*>(raw) + a - sizeof(std::size_t) * 2, &n, sizeof n);
  std::memcpy(static_cast<char*>(raw) + a - sizeof(std::size_t), &a, sizeof a);
  const long long now = live += static_cast<long long>(n);
  long long p = peak.load();
  while (now > p && !peak.compare_exchange_weak(p, now)) {
  }
  return static_cast<char*>(raw) + a;
}
void untrack(void* q) noexcept {
  if (!q) return;
  std::size_t n = 0, a = 0;
  std::memcpy(&n, static_cast<char*>(q) - sizeof(std::size_t) * 2, sizeof n);
  std::memcpy(&a, static_cast<char*>(q) - sizeof(std::size_t), sizeof a);
  live -= static_cast<long long>(n);
  std::free(static_cast<char*>(q) - a);
}
}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return track(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return track(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return track(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return track(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { untrack(p); }
void operator delete[](void* p) noexcept { untrack(p); }
void operator delete(void* p, std::size_t) noexcept { untrack(p); }
void operator delete[](void* p, std::size_t) noexcept { untrack(p); }
void operator delete(void* p, std::align_val_t) noexcept { untrack(p); }
void operator delete[](void* p, std::align_val_t) noexcept { untrack(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { untrack(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { untrack(p); }

using namespace dftune;

TEST_CASE("heap peak of one step: k micro-batches against the big batch (tiny LM, B = 64, m = 2)") {
  const tiny_lm::Config cfg{.vocab = 64, .max_len = 8, .d_model = 64, .n_heads = 4, .n_layers = 2, .d_ff = 128};
  const TinyLm<double> init(cfg, 3);
  TinyLm<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 64, 2, 5);
  std::vector<std::int64_t> ids(64);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(i);
  auto peak_of_step = [&](std::size_t k) {
    const std::vector<scenario::Batch> parts = scenario::split(problem, ids, k);
    std::vector<DftBatch<double>> views;
    for (const auto& b : parts) views.push_back(b.view());
    TinyLm<double> model(cfg, 3);
    Estimator<double> est(problem.size(), scenario::options(Variant::dft));
    DftOptimizer opt(model, est, scenario::options(Variant::dft), Sgd<double>{}, ConstantSchedule{.base_lr = 0.01});
    const long long before = live.load();
    peak = before;
    opt.step(std::span<const DftBatch<double>>(views));
    return static_cast<double>(peak.load() - before);
  };
  const double p1 = peak_of_step(1), p2 = peak_of_step(2), p4 = peak_of_step(4), p8 = peak_of_step(8);
  MESSAGE("heap peak of a step above what it starts with: big batch ", p1 / 1024, " KiB; 2 micro-batches ", p2 / 1024, " KiB (",
          p2 / p1, "); 4: ", p4 / 1024, " KiB (", p4 / p1, "); 8: ", p8 / 1024, " KiB (", p8 / p1, ")");
  CHECK(p2 < 0.7 * p1);
  CHECK(p4 < p2);
  CHECK(p8 < p4);
}
