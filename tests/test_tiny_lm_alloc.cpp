// "No allocation inside the per-token loop": TinyLm::generate sizes every buffer before its token
// loop, so the number of heap allocations of a call does not grow with the number of new tokens.
// Counted with a replaced global operator new (this test is its own executable).
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

namespace {
std::atomic<long> allocations{0};
}

// GCC pairs the malloc below with the free in operator delete and warns, though the pair is the
// whole point of the replacement.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t n) {
  ++allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace dftune;

TEST_CASE("TinyLm::generate: allocations do not depend on the number of generated tokens") {
  TinyLm<float> m({.vocab = 12, .max_len = 16, .d_model = 16, .n_heads = 2, .n_layers = 2, .d_ff = 32}, 1);
  std::vector<token_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (int p = 0; p < 40; ++p) {
    for (int t = 0; t < 3 + p % 4; ++t) tokens.push_back(static_cast<token_t>((p + t) % 12));
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
  }
  const Prompts prompts{.tokens = tokens, .offsets = offsets};
  auto count = [&](std::size_t max_new) {
    TinyLm<float> fresh = m;  // same starting buffers for every count
    const long before = allocations.load();
    const Sequences out = fresh.generate(prompts, max_new, {.temperature = 0.8, .top_k = 5, .seed = 2});
    return allocations.load() - before;
  };
  count(1);  // first use: the process-wide statics (the fused head's machine query) allocate once
  const long one = count(1), several = count(6), more = count(9);
  INFO("allocations: 1 token ", one, ", 6 tokens ", several, ", 9 tokens ", more);
  CHECK(several == one);
  CHECK(more == one);
}
