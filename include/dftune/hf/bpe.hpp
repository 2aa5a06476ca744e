#pragma once
// Byte-pair encoding of one pre-tokenized word (Sennrich et al. 2016; GPT-2's byte-level variant):
// start from one symbol per byte, then repeatedly merge the adjacent pair whose merge rule has the
// lowest rank, the leftmost first among equal ranks, until no adjacent pair has a rule. A heap of
// candidate pairs over a linked list of symbols makes a word of n bytes O(n log n) (the textbook
// rescan is O(n²), which a long run of one character turns into minutes). Stale heap entries are
// recognised by their ids: a merge always makes a longer token, so a position never holds the same
// id twice.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// Transparent hashing, so a std::string_view finds a std::string key without a copy.
struct StringHash {
  using is_transparent = void;  // lets find() take a std::string_view
  // The hash of the bytes.
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
// Token string (raw bytes) -> id, searchable by std::string_view.
using StringMap = std::unordered_map<std::string, token_t, StringHash, std::equal_to<>>;

// Byte-pair encoding of one pre-tokenized word (Hugging Face's BPE model): start from its bytes'
// tokens and apply the lowest-ranked merge of an adjacent pair until none applies.
class Bpe {
 public:
  // What a pair of tokens merges into, and the merge's priority.
  struct Merge {
    std::uint32_t rank;  // its line in the merges list: lower merges first
    token_t merged;      // the merged token's id
  };

  // vocab: raw bytes -> id. Ids are checked by the caller (tokenizer.hpp) against the file.
  explicit Bpe(StringMap vocab, bool ignore_merges) : vocab_(std::move(vocab)), ignore_merges_(ignore_merges) {
    byte_id_.fill(-1);
    for (unsigned b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      if (auto it = vocab_.find(std::string_view(&c, 1)); it != vocab_.end()) byte_id_[b] = it->second;
    }
  }

  // A rule merging left and right into `merged`; a later rule for the same pair replaces the
  // earlier one (as Hugging Face's tokenizers builds its table).
  void add_merge(token_t left, token_t right, std::uint32_t rank, token_t merged) {
    merges_.insert_or_assign(key(left, right), Merge{rank, merged});
  }

  // Room for n merges (the loader knows the count).
  void reserve_merges(std::size_t n) { merges_.reserve(n); }
  // The vocabulary given to the constructor.
  const StringMap& vocab() const { return vocab_; }
  // The number of distinct merge rules.
  std::size_t merges() const { return merges_.size(); }
  // tokenizer.json's "ignore_merges": a word that is itself in the vocabulary is one token.
  bool ignore_merges() const { return ignore_merges_; }
  // The id of the one-byte token for b, or -1 where the vocabulary has none.
  token_t byte_id(unsigned char b) const { return byte_id_[b]; }

  // Appends the tokens of `word` (raw bytes) to `out`. A byte without a one-byte token
  // is a dftune::error: byte-level vocabularies hold all 256.
  void encode_word(std::string_view word, std::vector<token_t>& out) const {
    if (ignore_merges_)  // Llama-3: a word that is a token is that token, whatever the merges say
      if (auto it = vocab_.find(word); it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    const std::size_t n = word.size();
    if (n == 0) return;
    std::vector<Symbol>& sym = scratch().symbols;
    std::vector<Candidate>& heap = scratch().heap;
    sym.resize(n);
    heap.clear();
    for (std::size_t i = 0; i < n; ++i) {
      const auto b = static_cast<unsigned char>(word[i]);
      if (byte_id_[b] < 0)
        dftune::detail::fail("text", "byte 0x" + hex(b), "bytes that have a one-byte token in model.vocab");
      sym[i] = {byte_id_[b], static_cast<std::int64_t>(i) - 1, i + 1 < n ? static_cast<std::int64_t>(i) + 1 : -1};
    }
    const auto push = [&](std::int64_t left) {
      const std::int64_t right = sym[static_cast<std::size_t>(left)].next;
      if (right < 0) return;
      const auto it = merges_.find(key(sym[static_cast<std::size_t>(left)].id, sym[static_cast<std::size_t>(right)].id));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, left, sym[static_cast<std::size_t>(left)].id, sym[static_cast<std::size_t>(right)].id,
                      it->second.merged});
      std::push_heap(heap.begin(), heap.end(), std::greater<>{});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::int64_t>(i));
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
      const Candidate c = heap.back();
      heap.pop_back();
      Symbol& l = sym[static_cast<std::size_t>(c.left)];
      if (l.id != c.left_id || l.next < 0 || sym[static_cast<std::size_t>(l.next)].id != c.right_id) continue;  // stale
      Symbol& r = sym[static_cast<std::size_t>(l.next)];
      l.id = c.merged;
      r.id = -1;
      l.next = r.next;
      if (l.next >= 0) sym[static_cast<std::size_t>(l.next)].prev = c.left;
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    for (std::int64_t i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next) out.push_back(sym[static_cast<std::size_t>(i)].id);
  }

 private:
  struct Symbol {
    token_t id;
    std::int64_t prev, next;
  };
  struct Candidate {
    std::uint32_t rank;
    std::int64_t left;  // position of the left symbol: the tie-break, leftmost first
    token_t left_id, right_id, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  struct Scratch {
    std::vector<Symbol> symbols;
    std::vector<Candidate> heap;
  };
  static Scratch& scratch() {
    thread_local Scratch s;
    return s;
  }
  static std::uint64_t key(token_t l, token_t r) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(l)) << 32) | static_cast<std::uint32_t>(r);
  }
  static std::string hex(unsigned b) {
    const char* d = "0123456789ABCDEF";
    return {d[b >> 4], d[b & 15]};
  }

  StringMap vocab_;
  bool ignore_merges_;
  std::array<token_t, 256> byte_id_{};
  std::unordered_map<std::uint64_t, Merge> merges_;
};

}  // namespace hf

DFTUNE_NAMESPACE_END
