#pragma once
// The pre-tokenizer of a byte-level BPE tokenizer: a chain of regex splits, each cutting every
// piece of the one before into smaller pieces (Hugging Face's "Sequence" of "Split", "Digits" and
// "ByteLevel" pre-tokenizers, all with the "Isolated" behaviour: matches and the text between them
// are both kept). BPE then runs on each final piece on its own, so no token crosses a cut.
#include <dftune/config.hpp>
#include <dftune/hf/regex.hpp>

#include <cstddef>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// GPT-2's split (openai/gpt-2 encoder.py; the ByteLevel pre-tokenizer with use_regex): English
// contractions, letters, numbers and other symbols each with at most one leading space, and runs
// of whitespace that leave the last space to the word after them.
inline constexpr std::string_view gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Llama-3's split (tiktoken's cl100k_base), written as a Split pre-tokenizer in its tokenizer.json:
// case-insensitive contractions, a letter run with one leading non-letter, numbers in groups of at
// most three digits, symbols with trailing newlines, newline runs.
inline constexpr std::string_view llama3_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.json's pre_tokenizer: a sequence of regex splits (each applied to the pieces of the
// previous one), then optionally a space before each text segment (ByteLevel's add_prefix_space).
class PreTokenizer {
 public:
  static constexpr std::size_t max_steps = 16;  // a longer sequence is refused when loaded

  // Appends a split by `regex`.
  void add_split(Regex regex) { steps_.push_back(std::move(regex)); }
  // Prepend a space to every text segment that does not start with one (ByteLevel's
  // add_prefix_space, supported where ByteLevel is the first step).
  void set_add_prefix_space(bool on) { add_prefix_space_ = on; }
  // Whether a space is prepended (set_add_prefix_space).
  bool add_prefix_space() const { return add_prefix_space_; }
  // The number of split steps.
  std::size_t size() const { return steps_.size(); }

  // Calls word(std::string_view) for every final piece of valid UTF-8 `text`, in order.
  template <class Word>
  void split(std::string_view text, Word&& word) const {
    run(0, text, word);
  }

 private:
  template <class Word>
  void run(std::size_t step, std::string_view piece, Word& word) const {
    if (step == steps_.size()) {
      word(piece);
      return;
    }
    steps_[step].split(piece, [&](std::size_t b, std::size_t e) { run(step + 1, piece.substr(b, e - b), word); });
  }

  std::vector<Regex> steps_;
  bool add_prefix_space_ = false;
};

}  // namespace hf

DFTUNE_NAMESPACE_END
