#pragma once
// Added tokens (special tokens such as <|endoftext|> and tokens a model's authors added by hand)
// are cut out of the text before pre-tokenization, as Hugging Face's tokenizers does: at each
// position the longest added token that matches wins, the leftmost match first. Options of a token:
//   lstrip / rstrip  the whitespace before / after a match becomes part of it (dropped from the text)
//   single_word      matches only where no word character (letter, digit, '_') touches it
// Whitespace and word characters are tested on ASCII here (Hugging Face tests Unicode classes); the
// special tokens of GPT-2, Llama-3, Qwen2 and SmolLM2 set none of these options.
#include <dftune/config.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// One entry of tokenizer.json's "added_tokens": a string matched whole in the input before the
// pre-tokenizer runs (e.g. "<|endoftext|>").
struct AddedToken {
  token_t id = 0;  // its token id
  std::string content;  // the text it matches (non-empty)
  bool special = false;  // a special token (decode may skip it)
  bool lstrip = false;  // the match swallows the whitespace on its left
  bool rstrip = false;  // the match swallows the whitespace on its right
  bool single_word = false;  // matches only where no word character touches it
};

// The added tokens of a tokenizer, indexed by first byte; the longest match wins.
class AddedTokens {
 public:
  // `content` must be non-empty (the loader checks it).
  void add(AddedToken t) {
    const auto first = static_cast<unsigned char>(t.content.front());
    tokens_.push_back(std::move(t));
    auto& list = by_first_[first];
    list.push_back(tokens_.size() - 1);
    std::stable_sort(list.begin(), list.end(),
                     [&](std::size_t a, std::size_t b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
  }
  // Every added token, in the order added.
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // Whether there is none.
  bool empty() const { return tokens_.empty(); }

  // Splits `text` into stretches of plain text and added tokens, in order: calls
  // plain(std::string_view) for every non-empty stretch of text and token(const AddedToken&) for
  // every match.
  template <class Plain, class Token>
  void split(std::string_view text, Plain&& plain, Token&& token) const {
    std::size_t from = 0, pos = 0;
    while (pos < text.size()) {
      const AddedToken* hit = match(text, pos);
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      std::size_t begin = pos, end = pos + hit->content.size();
      if (hit->lstrip)
        while (begin > from && space(text[begin - 1])) --begin;
      if (hit->rstrip)
        while (end < text.size() && space(text[end])) ++end;
      if (begin > from) plain(text.substr(from, begin - from));
      token(*hit);
      from = pos = end;
    }
    if (from < text.size()) plain(text.substr(from));
  }

 private:
  const AddedToken* match(std::string_view text, std::size_t pos) const {
    for (std::size_t k : by_first_[static_cast<unsigned char>(text[pos])]) {
      const AddedToken& t = tokens_[k];
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (t.single_word && ((pos > 0 && word(text[pos - 1])) ||
                            (pos + t.content.size() < text.size() && word(text[pos + t.content.size()]))))
        continue;
      return &t;
    }
    return nullptr;
  }
  static bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
  static bool word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  std::vector<AddedToken> tokens_;
  std::array<std::vector<std::size_t>, 256> by_first_{};
};

}  // namespace hf

DFTUNE_NAMESPACE_END
