#pragma once
// A byte-level BPE tokenizer read from a Hugging Face tokenizer.json: the tokenizer of GPT-2,
// Llama-3, Qwen2 and SmolLM2. Encoding is, in order:
//   1. the text must be valid UTF-8 (an error names the offset of the first bad byte: a corpus in
//      another encoding is a mistake to report, not to tokenise byte by byte);
//   2. added tokens are cut out (added_tokens.hpp);
//   3. each stretch in between is normalized (NFC, where the file asks: normalizer.hpp) and split
//      by the pre-tokenizer's regexes (pre_tokenizer.hpp);
//   4. each piece, as raw bytes, is encoded by BPE (bpe.hpp); a piece seen before comes from a cache.
// Decoding concatenates the tokens' bytes; the result is returned as it is, even where the ids cut
// a multi-byte character (Hugging Face would put U+FFFD there).
//
// What a file may hold (anything else is a dftune::error naming the file, the field and what was
// expected, thrown before a Tokenizer exists): model.type "BPE" without byte fallback, dropout,
// subword prefix or suffix; normalizer null or NFC; a pre-tokenizer that is ByteLevel, or a Sequence of
// Split (Isolated, not inverted), Digits and one ByteLevel; decoder null or ByteLevel. The
// post-processor is not applied: encode() adds no BOS/EOS, which a caller adds by id (token_id).
// Every size read from the file is bounded before it is used (Limits), every id checked.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/hf/added_tokens.hpp>
#include <dftune/hf/bpe.hpp>
#include <dftune/hf/byte_level.hpp>
#include <dftune/hf/normalizer.hpp>
#include <dftune/hf/pre_tokenizer.hpp>
#include <dftune/hf/regex.hpp>
#include <dftune/hf/utf8.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// Bounds on what a tokenizer.json may hold, checked before anything sized by it is allocated.
struct TokenizerLimits {
  std::uintmax_t file_bytes = std::uintmax_t{1} << 30;  // the file's size
  std::size_t entries = std::size_t{1} << 22;  // vocabulary and added tokens (the largest in use: 256k)
  std::size_t merges = std::size_t{1} << 24;       // merge rules
  std::size_t token_bytes = std::size_t{1} << 16;  // bytes of one token's string
  // Ids may leave gaps, but only this many past the number of entries: the id table is sized
  // by the largest id.
  std::size_t id_slack = std::size_t{1} << 16;
};

// A Hugging Face tokenizer (tokenizer.json) of the byte-level BPE family (GPT-2, Llama 3, Qwen2,
// SmolLM2): added tokens, NFC normalizer, regex pre-tokenizer, BPE, byte-level decoder. What it
// cannot reproduce exactly (another model type, an unknown pre-tokenizer) is refused when loaded,
// never approximated. Example:
//
//     const auto tok = dftune::hf::Tokenizer::from_file("tokenizer.json");
//     std::vector<dftune::token_t> ids = tok.encode("Hello world");
//     std::string text = tok.decode(ids);   // "Hello world"
class Tokenizer {
 public:
  using Limits = TokenizerLimits;  // the bounds from_file and from_json check

  // Loads `path` (at most limits.file_bytes). Every error names the file and the field:
  // dftune::argument_error for contents it refuses, a read failure included.
  static Tokenizer from_file(const std::filesystem::path& path, const Limits& limits = {}) {
    const std::string name = path.string();
    std::error_code ec;
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec) dftune::detail::fail(name, ec.message(), "a readable tokenizer.json");
    if (size > limits.file_bytes)
      dftune::detail::fail(name, std::to_string(size) + " bytes", "a tokenizer.json of at most " + std::to_string(limits.file_bytes) + " bytes");
    std::ifstream in(path, std::ios::binary);
    std::string text(static_cast<std::size_t>(size), '\0');
    if (!in.read(text.data(), static_cast<std::streamsize>(size))) dftune::detail::fail(name, "a read error", "a readable tokenizer.json");
    return from_json(text, name, limits);
  }

  // `source` names the text in errors ("FILE: FIELD: got ..., expected ...").
  static Tokenizer from_json(std::string_view json_text, std::string source = "tokenizer.json", const Limits& limits = {}) {
    Loader l{std::move(source), limits};
    return l.load(json_text);
  }

  Tokenizer(Tokenizer&&) noexcept = default;             // movable, not copyable
  Tokenizer& operator=(Tokenizer&&) noexcept = default;  // movable, not copyable

  // The number of ids: one past the largest.
  std::size_t vocab_size() const { return bytes_.size(); }
  // tokenizer.json's added tokens (special ones included).
  const std::vector<AddedToken>& added_tokens() const { return added_.tokens(); }
  // The id of an added token's content, or of a vocabulary entry written as in tokenizer.json
  // (byte-level text, "Ġthe"); nothing if there is none.
  std::optional<token_t> token_id(std::string_view token) const {
    for (const AddedToken& t : added_.tokens())
      if (t.content == token) return t.id;
    if (auto raw = byte_level::to_bytes(token))
      if (auto it = bpe_.vocab().find(*raw); it != bpe_.vocab().end()) return it->second;
    return std::nullopt;
  }

  // Appends the tokens of `text` to `out` (left as it was if `text` is refused).
  void encode(std::string_view text, std::vector<token_t>& out) const {
    if (const std::size_t bad = utf8::first_invalid(text); bad != std::string_view::npos)
      dftune::detail::fail("text", "a byte that starts no valid UTF-8 sequence at offset " + std::to_string(bad), "valid UTF-8");
    const std::size_t start = out.size();
    try {
      added_.split(
          text, [&](std::string_view plain) { encode_plain(plain, out); },
          [&](const AddedToken& t) { out.push_back(t.id); });
    } catch (...) {
      out.resize(start);
      throw;
    }
  }
  // The tokens of `text` (valid UTF-8, else dftune::argument_error naming the offset).
  std::vector<token_t> encode(std::string_view text) const {
    std::vector<token_t> out;
    encode(text, out);
    return out;
  }

  // The bytes of `ids` (special added tokens left out if skip_special). An id outside the
  // vocabulary is a dftune::error naming its index.
  std::string decode(std::span<const token_t> ids, bool skip_special = false) const {
    std::string out;
    for (std::size_t k = 0; k < ids.size(); ++k) {
      const token_t id = ids[k];
      if (id < 0 || static_cast<std::size_t>(id) >= bytes_.size() || !defined_[static_cast<std::size_t>(id)])
        dftune::detail::fail_at("ids", k, id, "the id of a token in [0, " + std::to_string(bytes_.size()) + ")");
      if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
      out += bytes_[static_cast<std::size_t>(id)];
    }
    return out;
  }

 private:
  // Pieces up to this long are cached; the cache is emptied when it holds this many ids.
  static constexpr std::size_t cache_word_bytes = 64;
  static constexpr std::size_t cache_ids = std::size_t{1} << 22;
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::pair<std::uint32_t, std::uint32_t>, StringHash, std::equal_to<>> words;
    std::vector<token_t> ids;
  };

  Tokenizer(Bpe bpe, PreTokenizer pre, bool nfc, AddedTokens added, std::vector<std::string> bytes, std::vector<bool> defined,
            std::vector<bool> special)
      : bpe_(std::move(bpe)),
        pre_(std::move(pre)),
        nfc_(nfc),
        added_(std::move(added)),
        bytes_(std::move(bytes)),
        defined_(std::move(defined)),
        special_(std::move(special)),
        cache_(std::make_unique<Cache>()) {}

  void encode_plain(std::string_view text, std::vector<token_t>& out) const {
    if (nfc_)  // between added tokens, as Hugging Face normalizes (their own content is matched as written)
      if (const std::optional<std::string> normal = nfc(text)) return encode_normalized(*normal, out);
    encode_normalized(text, out);
  }

  void encode_normalized(std::string_view text, std::vector<token_t>& out) const {
    const auto word = [&](std::string_view w) { encode_word(w, out); };
    if (pre_.add_prefix_space() && text.front() != ' ') {
      std::string spaced(1, ' ');  // not " " + std::string(text): GCC 12's -Wrestrict misfires on it under -O3
      spaced.append(text);
      pre_.split(spaced, word);
    } else {
      pre_.split(text, word);
    }
  }

  void encode_word(std::string_view w, std::vector<token_t>& out) const {
    if (w.size() > cache_word_bytes) {
      bpe_.encode_word(w, out);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      if (auto it = cache_->words.find(w); it != cache_->words.end()) {
        const auto [at, n] = it->second;
        out.insert(out.end(), cache_->ids.begin() + at, cache_->ids.begin() + at + n);
        return;
      }
    }
    const std::size_t start = out.size();
    bpe_.encode_word(w, out);
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->ids.size() + (out.size() - start) > cache_ids) {
      cache_->words.clear();
      cache_->ids.clear();
    }
    cache_->words.emplace(std::string(w), std::pair{static_cast<std::uint32_t>(cache_->ids.size()),
                                                    static_cast<std::uint32_t>(out.size() - start)});
    cache_->ids.insert(cache_->ids.end(), out.begin() + static_cast<std::ptrdiff_t>(start), out.end());
  }

  // Reads tokenizer.json; every error names source and the field.
  struct Loader {
    std::string source;
    Limits limits;
    using json = nlohmann::json;

    [[noreturn]] void fail(const std::string& field, const std::string& got, const std::string& expected) const {
      dftune::detail::fail(source + ": " + field, got, expected);
    }
    static std::string show(const json& v) {
      std::string s = v.dump();
      if (s.size() > 80) s = s.substr(0, 77) + "...";
      return s;
    }
    const json& member(const json& obj, const std::string& key, const std::string& field) const {
      if (!obj.is_object()) fail(field, show(obj), "an object");
      const auto it = obj.find(key);
      if (it == obj.end()) fail(field + "." + key, "nothing", "the field");
      return *it;
    }
    const json* optional_member(const json& obj, const std::string& key) const {
      const auto it = obj.find(key);
      return it == obj.end() || it->is_null() ? nullptr : &*it;
    }
    bool flag(const json& obj, const std::string& key, const std::string& field, bool fallback) const {
      const json* v = optional_member(obj, key);
      if (v == nullptr) return fallback;
      if (!v->is_boolean()) fail(field + "." + key, show(*v), "true or false");
      return v->get<bool>();
    }
    std::string string_of(const json& v, const std::string& field) const {
      if (!v.is_string()) fail(field, show(v), "a string");
      const auto& s = v.get_ref<const std::string&>();
      if (s.size() > limits.token_bytes)
        fail(field, "a string of " + std::to_string(s.size()) + " bytes", "at most " + std::to_string(limits.token_bytes));
      return s;
    }
    token_t id_of(const json& v, const std::string& field, std::size_t max_id) const {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || static_cast<std::uint64_t>(v.get<std::int64_t>()) > max_id)
        fail(field, show(v), "an integer id in [0, " + std::to_string(max_id) + "]");
      return static_cast<token_t>(v.get<std::int64_t>());
    }
    std::string type_of(const json& v, const std::string& field) const { return string_of(member(v, "type", field), field + ".type"); }

    Tokenizer load(std::string_view text) {
      json root;
      try {
        root = json::parse(text.begin(), text.end());
      } catch (const json::exception& e) {
        fail("file", std::string("text JSON refuses (") + e.what() + ")", "a JSON document");
      }
      if (!root.is_object()) fail("file", show(root), "a JSON object (tokenizer.json)");

      // ---- the parts that are refused rather than half-applied ----
      bool nfc = false;
      if (const json* n = optional_member(root, "normalizer")) {
        const std::string t = type_of(*n, "normalizer");
        if (t != "NFC") fail("normalizer.type", "\"" + t + "\"", "null or \"NFC\" (the normalizers of byte-level BPE tokenizers)");
        if (!has_nfc) fail("normalizer.type", "\"NFC\"", "null in a build without ICU (dftune::hf links it where libicu-dev is found)");
        nfc = true;
      }
      if (const json* d = optional_member(root, "decoder")) {
        const std::string t = type_of(*d, "decoder");
        if (t != "ByteLevel") fail("decoder.type", "\"" + t + "\"", "\"ByteLevel\" or null (a byte-level BPE tokenizer)");
      }
      const json& model = member(root, "model", "root");
      if (model.contains("type") && type_of(model, "model") != "BPE")
        fail("model.type", show(model["type"]), "\"BPE\" (dftune reads byte-level BPE tokenizers)");
      if (flag(model, "byte_fallback", "model", false))
        fail("model.byte_fallback", "true", "false (byte fallback belongs to SentencePiece-style BPE, not byte-level BPE)");
      if (const json* d = optional_member(model, "dropout"); d != nullptr && !(d->is_number() && d->get<double>() == 0))
        fail("model.dropout", show(*d), "null or 0 (BPE dropout is for training tokenizers)");
      for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (const json* s = optional_member(model, key); s != nullptr && !(s->is_string() && s->get_ref<const std::string&>().empty()))
          fail(std::string("model.") + key, show(*s), "null or \"\" (byte-level BPE marks words with the space byte)");

      // ---- added tokens ----
      AddedTokens added;
      std::vector<AddedToken> added_list;
      if (const json* a = optional_member(root, "added_tokens")) {
        if (!a->is_array()) fail("added_tokens", show(*a), "an array");
        if (a->size() > limits.entries)
          fail("added_tokens", std::to_string(a->size()) + " entries", "at most " + std::to_string(limits.entries));
        for (std::size_t k = 0; k < a->size(); ++k) {
          const std::string f = "added_tokens[" + std::to_string(k) + "]";
          const json& e = (*a)[k];
          AddedToken t;
          t.id = id_of(member(e, "id", f), f + ".id", max_id_for(0));
          t.content = string_of(member(e, "content", f), f + ".content");
          if (t.content.empty()) fail(f + ".content", "\"\"", "a non-empty string");
          if (utf8::first_invalid(t.content) != std::string_view::npos) fail(f + ".content", show(e["content"]), "valid UTF-8");
          t.special = flag(e, "special", f, false);
          t.lstrip = flag(e, "lstrip", f, false);
          t.rstrip = flag(e, "rstrip", f, false);
          t.single_word = flag(e, "single_word", f, false);
          added_list.push_back(t);
        }
      }

      // ---- vocabulary ----
      const json& vocab = member(model, "vocab", "model");
      if (!vocab.is_object()) fail("model.vocab", show(vocab), "an object of token: id");
      if (vocab.size() > limits.entries)
        fail("model.vocab", std::to_string(vocab.size()) + " entries", "at most " + std::to_string(limits.entries));
      const std::size_t entries = vocab.size() + added_list.size();
      const std::size_t max_id = max_id_for(entries);
      std::vector<std::string> bytes;
      std::vector<bool> defined, special;
      const auto define = [&](token_t id, std::string b, const std::string& field) {
        const auto i = static_cast<std::size_t>(id);
        if (i >= bytes.size()) bytes.resize(i + 1), defined.resize(i + 1), special.resize(i + 1);
        if (defined[i]) fail(field, std::to_string(id), "an id no other token has");
        bytes[i] = std::move(b);
        defined[i] = true;
      };
      StringMap raw_vocab, by_text;  // keyed by the raw bytes, and by the byte-level text of tokenizer.json
      raw_vocab.reserve(vocab.size());
      by_text.reserve(vocab.size());
      for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        // Built for every entry only when the entry is refused: 100k dumps would double the load time.
        const auto field = [&] { return "model.vocab[" + show(json(it.key())) + "]"; };
        if (it.key().size() > limits.token_bytes) fail(field(), std::to_string(it.key().size()) + " bytes", "at most " + std::to_string(limits.token_bytes));
        if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 0 ||
            static_cast<std::uint64_t>(it.value().get<std::int64_t>()) > max_id)
          (void)id_of(it.value(), field(), max_id);
        const auto id = static_cast<token_t>(it.value().get<std::int64_t>());
        auto raw = byte_level::to_bytes(it.key());
        if (!raw) {
          // Only an added token may be written outside the byte-level alphabet (it is never merged).
          bool is_added = false;
          for (const AddedToken& t : added_list) is_added = is_added || (t.content == it.key() && t.id == id);
          if (!is_added) fail(field(), "a token with characters outside the byte-level alphabet", "GPT-2's byte-to-unicode characters");
          continue;
        }
        if (static_cast<std::size_t>(id) < defined.size() && defined[static_cast<std::size_t>(id)]) define(id, *raw, field());
        define(id, *raw, {});
        raw_vocab.emplace(std::move(*raw), id);
        by_text.emplace(it.key(), id);
      }
      for (std::size_t k = 0; k < added_list.size(); ++k) {
        const AddedToken& t = added_list[k];
        const std::string f = "added_tokens[" + std::to_string(k) + "].id";
        if (static_cast<std::size_t>(t.id) > max_id) fail(f, std::to_string(t.id), "at most " + std::to_string(max_id));
        const auto i = static_cast<std::size_t>(t.id);
        // An added token that is also a vocabulary entry keeps its id (GPT-2's <|endoftext|>).
        const auto in_vocab = raw_vocab.find(t.content);
        if (in_vocab != raw_vocab.end() && in_vocab->second != t.id)
          fail(f, std::to_string(t.id), std::to_string(in_vocab->second) + ", the id of \"" + t.content + "\" in model.vocab");
        if (i < defined.size() && defined[i] && (in_vocab == raw_vocab.end() || bytes[i] != t.content))
          fail(f, std::to_string(t.id), "an id no other token has");
        if (i >= bytes.size() || !defined[i]) define(t.id, t.content, f);
        special[i] = t.special;
        added.add(t);
      }

      // ---- merges ----
      Bpe bpe(std::move(raw_vocab), flag(model, "ignore_merges", "model", false));
      const json& merges = member(model, "merges", "model");
      if (!merges.is_array()) fail("model.merges", show(merges), "an array");
      if (merges.size() > limits.merges)
        fail("model.merges", std::to_string(merges.size()) + " entries", "at most " + std::to_string(limits.merges));
      bpe.reserve_merges(merges.size());
      // Merges name tokens in the byte-level alphabet, which maps byte by byte: the text of a
      // concatenation is the concatenation of the texts, so they are looked up as written.
      for (std::size_t k = 0; k < merges.size(); ++k) {
        const auto f = [&] { return "model.merges[" + std::to_string(k) + "]"; };
        const json& m = merges[k];
        std::string_view left, right;
        if (m.is_string()) {  // "a b"
          const std::string& s = m.get_ref<const std::string&>();
          const std::size_t sp = s.find(' ');
          if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
            fail(f(), show(m), "\"LEFT RIGHT\": two tokens separated by one space");
          left = std::string_view(s).substr(0, sp), right = std::string_view(s).substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
          left = m[0].get_ref<const std::string&>(), right = m[1].get_ref<const std::string&>();
        } else {
          fail(f(), show(m), "\"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"]");
        }
        const auto id = [&](std::string_view text, const char* what) {
          const auto it = by_text.find(text);
          if (it == by_text.end())
            fail(f(), show(m), std::string("a merge of two tokens of model.vocab (its ") + what + " \"" + std::string(text) + "\" is not one)");
          return it->second;
        };
        const token_t l = id(left, "left part"), r = id(right, "right part");
        std::string joined;
        joined.reserve(left.size() + right.size());
        joined.append(left).append(right);
        const auto merged = by_text.find(joined);
        if (merged == by_text.end()) fail(f(), show(m), "a merge whose result \"" + joined + "\" is in model.vocab");
        bpe.add_merge(l, r, static_cast<std::uint32_t>(k), merged->second);
      }

      PreTokenizer pre = pre_tokenizer(member(root, "pre_tokenizer", "root"));
      return Tokenizer(std::move(bpe), std::move(pre), nfc, std::move(added), std::move(bytes), std::move(defined), std::move(special));
    }

    std::size_t max_id_for(std::size_t entries) const {
      const std::size_t bound = (entries == 0 ? limits.entries : entries) + limits.id_slack;
      return std::min<std::size_t>(bound, static_cast<std::size_t>(std::numeric_limits<token_t>::max()));
    }

    PreTokenizer pre_tokenizer(const json& p) const {
      if (p.is_null()) fail("pre_tokenizer", "null", "a ByteLevel pre-tokenizer, alone or in a Sequence");
      PreTokenizer pre;
      bool byte_level = false;
      const auto step = [&](const json& s, const std::string& f, bool first) {
        const std::string t = type_of(s, f);
        if (t == "ByteLevel") {
          if (byte_level) fail(f + ".type", "a second \"ByteLevel\"", "one ByteLevel step");
          byte_level = true;
          if (flag(s, "add_prefix_space", f, false)) {
            if (!first) fail(f + ".add_prefix_space", "true", "false where ByteLevel is not the first step");
            pre.set_add_prefix_space(true);
          }
          if (flag(s, "use_regex", f, true)) pre.add_split(Regex(gpt2_pattern, source + ": " + f));
        } else if (t == "Split") {
          if (flag(s, "invert", f, false)) fail(f + ".invert", "true", "false");
          const json& b = member(s, "behavior", f);
          if (b != "Isolated") fail(f + ".behavior", show(b), "\"Isolated\" (the one behaviour byte-level tokenizers use)");
          const json& pat = member(s, "pattern", f);
          if (pat.is_object() && pat.contains("Regex")) {
            pre.add_split(Regex(string_of(pat["Regex"], f + ".pattern.Regex"), source + ": " + f + ".pattern.Regex"));
          } else if (pat.is_object() && pat.contains("String")) {
            const std::string lit = string_of(pat["String"], f + ".pattern.String");
            if (lit.find("\\E") != std::string::npos) fail(f + ".pattern.String", show(pat["String"]), "a string without \\E");
            pre.add_split(Regex("\\Q" + lit + "\\E", source + ": " + f + ".pattern.String"));
          } else {
            fail(f + ".pattern", show(pat), "{\"Regex\": ...} or {\"String\": ...}");
          }
        } else if (t == "Digits") {
          pre.add_split(Regex(flag(s, "individual_digits", f, false) ? R"(\p{N})" : R"(\p{N}+)", source + ": " + f));
        } else {
          fail(f + ".type", "\"" + t + "\"", "ByteLevel, Split, Digits or a Sequence of them (a byte-level BPE tokenizer)");
        }
      };
      if (type_of(p, "pre_tokenizer") == "Sequence") {
        const json& list = member(p, "pretokenizers", "pre_tokenizer");
        if (!list.is_array() || list.size() > PreTokenizer::max_steps)
          fail("pre_tokenizer.pretokenizers", show(list), "an array of at most " + std::to_string(PreTokenizer::max_steps) + " steps");
        for (std::size_t k = 0; k < list.size(); ++k) step(list[k], "pre_tokenizer.pretokenizers[" + std::to_string(k) + "]", k == 0);
      } else {
        step(p, "pre_tokenizer", true);
      }
      if (!byte_level) fail("pre_tokenizer", "no ByteLevel step", "a ByteLevel pre-tokenizer, alone or in a Sequence");
      return pre;
    }
  };

  Bpe bpe_;
  PreTokenizer pre_;
  bool nfc_ = false;
  AddedTokens added_;
  std::vector<std::string> bytes_;
  std::vector<bool> defined_, special_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace hf

DFTUNE_NAMESPACE_END
