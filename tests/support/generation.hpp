#pragma once
// What the generation tests share (tests/test_generation.cpp for TinyLm, tests/test_decoder_generation.cpp
// for the decoders): batches of random prompts, the thread count, a prompt's completion, and the
// check that a prompt's tokens depend neither on the rest of the batch nor on the thread count.
#include <dftune/model/concept.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace test {

struct Batch {
  std::vector<dftune::token_t> tokens;
  std::vector<std::int64_t> offsets{0};
  void add(const std::vector<dftune::token_t>& p) {
    tokens.insert(tokens.end(), p.begin(), p.end());
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
  }
  dftune::Prompts view() const { return {.tokens = tokens, .offsets = offsets}; }
};

// `count` prompts of 1 to max_len random tokens each.
inline Batch random_prompts(std::size_t count, std::size_t max_len, std::size_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b;
  for (std::size_t p = 0; p < count; ++p) {
    std::vector<dftune::token_t> t(1 + rng() % max_len);
    for (auto& x : t) x = static_cast<dftune::token_t>(rng() % vocab);
    b.add(t);
  }
  return b;
}

inline void set_threads([[maybe_unused]] int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

inline std::vector<dftune::token_t> completion(const dftune::Sequences& s, std::size_t i) {
  const auto seq = s.view().sequence(i);
  return {seq.begin() + s.prompt_len[i], seq.end()};
}

// Prompt p keeps its stream (seed, p): `count` prompts of up to max_len tokens give the same 10
// new tokens on 1 and 2 threads, and so do the first k of them alone and with other prompts after.
template <class Model>
void check_prompt_independence(const Model& m, std::size_t count, std::size_t max_len, std::size_t vocab) {
  const Batch all = random_prompts(count, max_len, vocab, 6), other = random_prompts(count, max_len, vocab, 7);
  const dftune::SamplingOptions o{.temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = 8};
  set_threads(1);
  const dftune::Sequences ref = m.generate(all.view(), 10, o);
  set_threads(2);
  CHECK(m.generate(all.view(), 10, o).tokens == ref.tokens);
  for (std::size_t k : {1, 5, 17}) {
    Batch first, mixed;
    for (std::size_t p = 0; p < count; ++p) {
      const auto a = all.view().prompt(p), z = other.view().prompt(p);
      if (p < k) first.add({a.begin(), a.end()});
      mixed.add(p < k ? std::vector<dftune::token_t>(a.begin(), a.end()) : std::vector<dftune::token_t>(z.begin(), z.end()));
    }
    const dftune::Sequences alone = m.generate(first.view(), 10, o), with = m.generate(mixed.view(), 10, o);
    for (std::size_t p = 0; p < k; ++p) {
      CAPTURE(p);
      CHECK(completion(alone, p) == completion(ref, p));
      CHECK(completion(with, p) == completion(ref, p));
    }
  }
}

}  // namespace test
