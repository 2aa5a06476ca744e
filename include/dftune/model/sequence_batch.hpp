#pragma once
// A batch of (prompt, completion) token sequences, as the Model concept consumes it. Sequence s is
// tokens[offsets[s], offsets[s+1]); its first prompt_len[s] tokens are the prompt, the rest the
// completion whose log-probability log π(y|x) = Σ_t log softmax(z_t)[y_t] is scored.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// A view of S (prompt, completion) token sequences, as the Model concept scores them; it owns
// nothing (Sequences builds one). validate() checks it.
struct SequenceBatch {
  std::span<const token_t> tokens = {};  // every sequence's tokens, one after the other
  std::span<const std::int64_t> offsets = {};     // [S + 1], offsets[0] = 0, offsets[S] = tokens.size()
  std::span<const std::int64_t> prompt_len = {};  // [S], 1 <= prompt_len[s] < length of sequence s

  // S, the number of sequences.
  std::size_t size() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  // The number of tokens of sequence s, prompt included.
  std::int64_t length(std::size_t s) const { return offsets[s + 1] - offsets[s]; }
  // |y|: the number of completion tokens of sequence s.
  std::int64_t completion_length(std::size_t s) const { return length(s) - prompt_len[s]; }
  // The tokens of sequence s, prompt then completion.
  std::span<const token_t> sequence(std::size_t s) const {
    return tokens.subspan(static_cast<std::size_t>(offsets[s]), static_cast<std::size_t>(length(s)));
  }
};

// An owning batch, for building one sequence at a time; view() gives the SequenceBatch.
struct Sequences {
  std::vector<token_t> tokens;  // every sequence's tokens, one after the other
  std::vector<std::int64_t> offsets{0};  // [S + 1]: sequence s is tokens[offsets[s], offsets[s+1])
  std::vector<std::int64_t> prompt_len;  // [S]: the first prompt_len[s] tokens of sequence s are its prompt

  // Appends one sequence: the prompt's tokens, then the completion's (your data's answer, or a
  // sampled negative). Nothing is checked here; validate(view(), vocab) checks the whole batch.
  void push(std::span<const token_t> prompt, std::span<const token_t> completion) {
    tokens.insert(tokens.end(), prompt.begin(), prompt.end());
    tokens.insert(tokens.end(), completion.begin(), completion.end());
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
    prompt_len.push_back(static_cast<std::int64_t>(prompt.size()));
  }
  // The number of sequences pushed.
  std::size_t size() const { return prompt_len.size(); }
  // The SequenceBatch over these vectors; valid until the next push.
  SequenceBatch view() const { return {.tokens = tokens, .offsets = offsets, .prompt_len = prompt_len}; }
};

// Checks the structure of a batch and that every token lies in [0, vocab); throws dftune::error.
inline void validate(const SequenceBatch& b, std::size_t vocab, std::string_view name = "batch") {
  const std::string n(name);
  if (b.offsets.empty()) detail::fail(n + ".offsets", "size 0", "size S + 1 >= 1");
  detail::check_size(n + ".prompt_len", b.prompt_len.size(), b.size());
  if (b.offsets.front() != 0) detail::fail_at(n + ".offsets", 0, b.offsets.front(), "0");
  if (b.offsets.back() != static_cast<std::int64_t>(b.tokens.size()))
    detail::fail_at(n + ".offsets", b.size(), b.offsets.back(), "tokens.size() = " + std::to_string(b.tokens.size()));
  for (std::size_t s = 0; s < b.size(); ++s) {
    if (b.offsets[s + 1] < b.offsets[s])
      detail::fail_at(n + ".offsets", s + 1, b.offsets[s + 1], "non-decreasing offsets");
    if (b.prompt_len[s] < 1 || b.prompt_len[s] >= b.length(s))
      detail::fail_at(n + ".prompt_len", s, b.prompt_len[s],
                      "in [1, " + std::to_string(b.length(s)) + ") (a prompt and at least one completion token)");
  }
  for (std::size_t t = 0; t < b.tokens.size(); ++t)
    if (b.tokens[t] < 0 || static_cast<std::size_t>(b.tokens[t]) >= vocab)
      detail::fail_at(n + ".tokens", t, b.tokens[t], "in [0, vocab = " + std::to_string(vocab) + ")");
}

DFTUNE_NAMESPACE_END
