#pragma once
// The demo's task: three-digit addition with a verifiable answer and a planted error mode.
// Numbers are written least-significant digit first (so each answer digit depends on the digits
// already seen, which a tiny causal transformer can learn):
//   prompt      a0 a1 a2 + b0 b1 b2 =        (8 tokens)
//   completion  s0 s1 s2 s3                  (4 tokens, s = a + b, reversed, zero-padded)
// Part of the pre-training corpus "drops the carry": s_k = (a_k + b_k) mod 10 and s3 = 0. The base
// model learns that mode beside the right one, which gives its own samples something for DFT's
// negatives to push down. Problems are assigned to pre-train / fine-tune / validation / test
// splits by a hash of (a, b), so no held-out problem is ever trained on.
#include <dftune/model/sequence_batch.hpp>
#include <dftune/model/sampling.hpp>

#include <array>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace demo {

using dftune::token_t;

inline constexpr token_t kPlus = 10, kEquals = 11;
inline constexpr std::size_t kVocab = 12, kPromptLen = 8, kAnswerLen = 4;

enum class Split { pretrain, finetune, validation, test };

struct Problem {
  int a = 0, b = 0;
};

inline Split split_of(Problem p) {
  std::uint64_t z = static_cast<std::uint64_t>(p.a) * 1000u + static_cast<std::uint64_t>(p.b) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  const auto bucket = (z ^ (z >> 31)) % 100;
  return bucket < 60 ? Split::pretrain : bucket < 80 ? Split::finetune : bucket < 90 ? Split::validation : Split::test;
}

// n distinct problems of one split, in a seeded random order.
inline std::vector<Problem> draw(Split split, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> digit3(0, 999);
  std::vector<Problem> out;
  std::vector<char> used(1000 * 1000, 0);
  while (out.size() < n) {
    const Problem p{digit3(rng), digit3(rng)};
    const std::size_t key = static_cast<std::size_t>(p.a) * 1000 + static_cast<std::size_t>(p.b);
    if (split_of(p) != split || used[key]) continue;
    used[key] = 1;
    out.push_back(p);
  }
  return out;
}

inline std::array<token_t, kPromptLen> prompt(Problem p) {
  return {static_cast<token_t>(p.a % 10), static_cast<token_t>(p.a / 10 % 10), static_cast<token_t>(p.a / 100), kPlus,
          static_cast<token_t>(p.b % 10), static_cast<token_t>(p.b / 10 % 10), static_cast<token_t>(p.b / 100), kEquals};
}

// The right answer, or (drop_carry) the planted error: every carry ignored.
inline std::array<token_t, kAnswerLen> answer(Problem p, bool drop_carry = false) {
  std::array<token_t, kAnswerLen> s{};
  int carry = 0, a = p.a, b = p.b;
  for (std::size_t k = 0; k < 3; ++k, a /= 10, b /= 10) {
    const int t = a % 10 + b % 10 + carry;
    s[k] = static_cast<token_t>(t % 10);
    carry = drop_carry ? 0 : t / 10;
  }
  s[3] = static_cast<token_t>(carry);
  return s;
}

inline bool is_correct(Problem p, std::span<const token_t> completion) {
  const auto s = answer(p);
  return completion.size() == kAnswerLen && std::equal(s.begin(), s.end(), completion.begin());
}

// Prompts of a list of problems, as the model's generate() takes them.
struct PromptSet {
  std::vector<token_t> tokens;
  std::vector<std::int64_t> offsets{0};
  explicit PromptSet(std::span<const Problem> problems) {
    for (const Problem& p : problems) {
      const auto x = prompt(p);
      tokens.insert(tokens.end(), x.begin(), x.end());
      offsets.push_back(static_cast<std::int64_t>(tokens.size()));
    }
  }
  dftune::Prompts view() const { return {.tokens = tokens, .offsets = offsets}; }
};

}  // namespace demo
