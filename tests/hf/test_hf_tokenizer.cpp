// The byte-level BPE tokenizer (include/dftune/hf/) on small tokenizer.json files built here:
// BPE against a textbook implementation, the split regexes against hand-worked pieces, added
// tokens, decode, and every refusal of a bad file. Token-for-token parity with GPT-2's and
// cl100k's real vocabularies is in test_hf_tokenizer_parity.cpp.
#include <dftune/hf/tokenizer.hpp>

#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

using dftune::token_t;
using dftune::hf::Tokenizer;
using json = nlohmann::json;

namespace {

// A tokenizer.json whose vocabulary is the 256 bytes (ids 0..255, in byte order) plus the results
// of `merges` (in order, ids from 256), with GPT-2's ByteLevel pre-tokenizer.
json make_json(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[dftune::hf::byte_level::to_unicode(std::string(1, static_cast<char>(b)))] = b;
  json m = json::array();
  int next = 256;
  for (const auto& [l, r] : merges) {
    const std::string lu = dftune::hf::byte_level::to_unicode(l), ru = dftune::hf::byte_level::to_unicode(r);
    if (!vocab.contains(lu + ru)) vocab[lu + ru] = next++;
    m.push_back(lu + " " + ru);
  }
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}}}};
}

Tokenizer load(const json& j) { return Tokenizer::from_json(j.dump(), "t.json"); }

// Textbook BPE (openai/gpt-2 encoder.py): find the lowest-ranked adjacent pair, merge every
// occurrence of it left to right, repeat.
std::vector<std::string> textbook_bpe(const std::string& word, const std::map<std::pair<std::string, std::string>, int>& ranks) {
  std::vector<std::string> s;
  for (char c : word) s.emplace_back(1, c);
  for (;;) {
    int best = -1;
    std::pair<std::string, std::string> pick;
    for (std::size_t i = 0; i + 1 < s.size(); ++i)
      if (auto it = ranks.find({s[i], s[i + 1]}); it != ranks.end() && (best < 0 || it->second < best)) best = it->second, pick = it->first;
    if (best < 0) return s;
    std::vector<std::string> t;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (i + 1 < s.size() && s[i] == pick.first && s[i + 1] == pick.second) {
        t.push_back(s[i] + s[i + 1]);
        ++i;
      } else {
        t.push_back(s[i]);
      }
    }
    s = std::move(t);
  }
}

std::vector<std::string> pieces(std::string_view pattern, std::string_view text) {
  std::vector<std::string> out;
  dftune::hf::Regex re(pattern, "pattern");
  re.split(text, [&](std::size_t b, std::size_t e) { out.emplace_back(text.substr(b, e - b)); });
  return out;
}

std::string error_of(const json& j) {
  try {
    (void)load(j);
  } catch (const dftune::error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("byte-level alphabet: GPT-2's bytes_to_unicode, and back") {
  using namespace dftune::hf::byte_level;
  CHECK(byte_to_code_point[' '] == 0x120);  // 'Ġ'
  CHECK(byte_to_code_point['\n'] == 0x10A);  // 'Ċ'
  CHECK(byte_to_code_point[0] == 0x100);
  CHECK(byte_to_code_point['A'] == 'A');
  CHECK(byte_to_code_point[0xAD] == 0x143);  // the last of the 68 remapped bytes
  std::string all;
  for (unsigned b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  CHECK(to_bytes(to_unicode(all)) == all);
  CHECK(to_bytes("\xC5\x84") == std::nullopt);  // U+0144: outside the alphabet
}

TEST_CASE("UTF-8 check: overlong forms, surrogates, truncation, beyond U+10FFFF") {
  using dftune::hf::utf8::first_invalid;
  CHECK(first_invalid("plain ascii") == std::string_view::npos);
  CHECK(first_invalid("h\xC3\xA9llo \xF0\x9F\x8E\x89") == std::string_view::npos);
  CHECK(first_invalid("ab\xC0\x80") == 2);          // overlong NUL
  CHECK(first_invalid("a\xED\xA0\x80") == 1);       // surrogate U+D800
  CHECK(first_invalid("abc\xE2\x82") == 3);         // truncated
  CHECK(first_invalid("\xF4\x90\x80\x80") == 0);    // U+110000
  CHECK(first_invalid("x\x80") == 1);               // lone continuation byte
}

TEST_CASE("split regexes: GPT-2's and Llama-3's pieces, worked by hand") {
  using dftune::hf::gpt2_pattern;
  using dftune::hf::llama3_pattern;
  using V = std::vector<std::string>;
  CHECK(pieces(gpt2_pattern, "Hello world") == V{"Hello", " world"});
  CHECK(pieces(gpt2_pattern, "it's I'll") == V{"it", "'s", " I", "'ll"});
  CHECK(pieces(gpt2_pattern, "a  b") == V{"a", " ", " b"});
  CHECK(pieces(gpt2_pattern, "x   \n\ny") == V{"x", "   \n", "\n", "y"});
  CHECK(pieces(gpt2_pattern, "12345 h\xC3\xA9llo") == V{"12345", " h\xC3\xA9llo"});
  CHECK(pieces(gpt2_pattern, "!!? \xF0\x9F\x8E\x89\xF0\x9F\x8E\x89") == V{"!!?", " \xF0\x9F\x8E\x89\xF0\x9F\x8E\x89"});
  CHECK(pieces(gpt2_pattern, "end  ") == V{"end", "  "});
  CHECK(pieces(llama3_pattern, "12345") == V{"123", "45"});
  CHECK(pieces(llama3_pattern, "IT'S (ok)") == V{"IT", "'S", " (", "ok", ")"});
  CHECK(pieces(llama3_pattern, "a.\n\nb") == V{"a", ".\n\n", "b"});
  // Unicode White_Space, as Oniguruma has it: U+0085 (NEL) is \s under PCRE2_UCP (JavaScript's \s
  // leaves it out and would keep "\u0085\u0085" together as a symbol run).
  CHECK(pieces(gpt2_pattern, "a\xC2\x85\xC2\x85" "b") == V{"a", "\xC2\x85", "\xC2\x85", "b"});
}

TEST_CASE("BPE of a word equals the textbook algorithm on random merges and words") {
  std::mt19937 rng(7);
  const std::string alphabet = "abcd";
  std::vector<std::string> tokens;
  for (char c : alphabet) tokens.emplace_back(1, c);
  std::vector<std::pair<std::string, std::string>> merges;
  std::map<std::pair<std::string, std::string>, int> ranks;
  std::map<std::string, int> seen;
  while (merges.size() < 60) {
    const std::string& l = tokens[rng() % tokens.size()];
    const std::string& r = tokens[rng() % tokens.size()];
    if (l.size() + r.size() > 6 || ranks.count({l, r})) continue;
    ranks[{l, r}] = static_cast<int>(merges.size());
    merges.emplace_back(l, r);
    if (!seen.count(l + r)) seen[l + r] = 1, tokens.push_back(l + r);
  }
  const Tokenizer tok = load(make_json(merges));
  for (int trial = 0; trial < 400; ++trial) {
    std::string word;
    const std::size_t n = 1 + rng() % 40;
    for (std::size_t i = 0; i < n; ++i) word.push_back(alphabet[rng() % alphabet.size()]);
    std::vector<token_t> want;
    for (const std::string& t : textbook_bpe(word, ranks)) want.push_back(*tok.token_id(t));
    const std::vector<token_t> got = tok.encode(word);  // one piece: letters only
    REQUIRE_MESSAGE(got == want, word);
    CHECK(tok.decode(got) == word);
  }
  // A long run of one character: the heap keeps it O(n log n) (the textbook loop is quadratic).
  const std::string run(200000, 'a');
  CHECK(tok.decode(tok.encode(run)) == run);
}

TEST_CASE("both forms of merges, \"a b\" and [a, b], give the same tokenizer") {
  json j = make_json({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {" ", "w"}});
  const Tokenizer a = load(j);
  json arrays = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m;
    arrays.push_back(json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)}));
  }
  j["model"]["merges"] = arrays;
  const Tokenizer b = load(j);
  CHECK(a.encode("hello world") == b.encode("hello world"));
  CHECK(a.encode("hello world") == std::vector<token_t>{*a.token_id("hell"), 'o', *a.token_id("\xC4\xA0w"), 'o', 'r', 'l', 'd'});
}

TEST_CASE("added tokens are cut out before pre-tokenization; lstrip, rstrip, single_word; decode") {
  json j = make_json({{" ", "a"}});
  j["added_tokens"] = json::array({{{"id", 300}, {"content", "<|end|>"}, {"special", true}},
                                   {{"id", 301}, {"content", "<|end|>x"}, {"special", false}},
                                   {{"id", 302}, {"content", "[M]"}, {"lstrip", true}, {"rstrip", true}},
                                   {{"id", 303}, {"content", "ab"}, {"single_word", true}}});
  const Tokenizer tok = load(j);
  CHECK(tok.vocab_size() == 304);
  CHECK(tok.encode("a<|end|> a") == std::vector<token_t>{'a', 300, *tok.token_id("\xC4\xA0" "a")});
  CHECK(tok.encode("<|end|>x") == std::vector<token_t>{301});  // the longest match wins
  CHECK(tok.encode("a [M] a") == std::vector<token_t>{'a', 302, 'a'});
  CHECK(tok.encode("ab") == std::vector<token_t>{303});
  CHECK(tok.encode("cab") == std::vector<token_t>{'c', 'a', 'b'});
  const std::vector<token_t> ids{'a', 300, 301};
  CHECK(tok.decode(ids) == "a<|end|><|end|>x");
  CHECK(tok.decode(ids, /*skip_special=*/true) == "a<|end|>x");
  const std::vector<token_t> bad{'a', 304};
  CHECK_THROWS_WITH_AS(tok.decode(bad), doctest::Contains("ids[1]: got 304"), dftune::error);
  // Decoding returns bytes as they are, even half of a character.
  const std::vector<token_t> half{0xC3};
  CHECK(tok.decode(half) == "\xC3");
}

TEST_CASE("Llama-3 layout: Split pattern + ByteLevel without regex, ignore_merges, Digits") {
  json j = make_json({{"1", "2"}, {"12", "3"}, {"a", "b"}});
  j["model"]["vocab"]["abc"] = 400;  // a word in the vocabulary that no merge makes
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", dftune::hf::llama3_pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  CHECK(load(j).encode("12345") == std::vector<token_t>{*load(j).token_id("123"), '4', '5'});
  CHECK(load(j).encode("abc") == std::vector<token_t>{*load(j).token_id("ab"), 'c'});
  j["model"]["ignore_merges"] = true;
  CHECK(load(j).encode("abc") == std::vector<token_t>{400});
  j["pre_tokenizer"]["pretokenizers"].insert(j["pre_tokenizer"]["pretokenizers"].begin(), json{{"type", "Digits"}, {"individual_digits", true}});
  CHECK(load(j).encode("123") == std::vector<token_t>{'1', '2', '3'});
}

TEST_CASE("the NFC normalizer (Qwen2): decomposed and precomposed text tokenize alike; added tokens as written") {
  if (!dftune::hf::has_nfc) {
    MESSAGE("skipped: dftune::hf was built without ICU (libicu-dev), NFC is refused at load");
    return;
  }
  json j = make_json({{"\xC3", "\xA9"}});  // "é" (U+00E9) as one token
  j["normalizer"] = {{"type", "NFC"}};
  j["added_tokens"] = json::array({{{"id", 300}, {"content", "e\xCC\x81!"}, {"special", true}}});  // "é!" decomposed
  const Tokenizer tok = load(j);
  CHECK(tok.encode("caf\xC3\xA9") == tok.encode("cafe\xCC\x81"));
  CHECK(tok.encode("e\xCC\x81") == std::vector<token_t>{*tok.token_id("\xC3\x83\xC2\xA9")});
  CHECK(tok.encode("\xE2\x84\xAB") == tok.encode("\xC3\x85"));  // U+212B ANGSTROM SIGN -> U+00C5
  CHECK(tok.encode("xe\xCC\x81!") == std::vector<token_t>{'x', 300});
}

TEST_CASE("encode refuses invalid UTF-8 with its offset and leaves the output as it was") {
  const Tokenizer tok = load(make_json({}));
  std::vector<token_t> out{7};
  CHECK_THROWS_WITH_AS(tok.encode("ok\xFFno", out), doctest::Contains("offset 2"), dftune::error);
  CHECK(out == std::vector<token_t>{7});
  const std::string text = "any bytes \x01\x7F \xC3\xA9";
  CHECK(tok.decode(tok.encode(text)) == text);
}

TEST_CASE("a bad tokenizer.json is a named error: file, field, expected") {
  const json good = make_json({{"a", "b"}});
  CHECK_NOTHROW(load(good));
  auto with = [&](auto edit) {
    json j = good;
    edit(j);
    return error_of(j);
  };
  CHECK(error_of(json::array()).find("t.json: file") != std::string::npos);
  try {
    (void)Tokenizer::from_json("{\"model\": ", "t.json");
    FAIL("accepted");
  } catch (const dftune::error& e) {
    CHECK(std::string(e.what()).find("expected a JSON document") != std::string::npos);
  }
  CHECK_THROWS_AS(Tokenizer::from_file("/nonexistent/tokenizer.json"), dftune::error);
  CHECK(with([](json& j) { j["model"]["type"] = "WordPiece"; }).find("t.json: model.type: got \"WordPiece\", expected \"BPE\"") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["byte_fallback"] = true; }).find("model.byte_fallback") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }).find("model.continuing_subword_prefix") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["dropout"] = 0.1; }).find("model.dropout") != std::string::npos);
  CHECK(with([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }).find("normalizer.type: got \"Lowercase\"") != std::string::npos);
  if (!dftune::hf::has_nfc)
    CHECK(with([](json& j) { j["normalizer"] = {{"type", "NFC"}}; }).find("normalizer.type: got \"NFC\"") != std::string::npos);
  CHECK(with([](json& j) { j["decoder"] = {{"type", "Metaspace"}}; }).find("decoder.type") != std::string::npos);
  CHECK(with([](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }).find("pre_tokenizer.type: got \"Metaspace\"") != std::string::npos);
  CHECK(with([](json& j) { j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Isolated"}}; })
            .find("no ByteLevel step") != std::string::npos);
  CHECK(with([](json& j) {
          j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(a"}}}, {"behavior", "Isolated"}}, {{"type", "ByteLevel"}}}}};
        }).find("pretokenizers[0].pattern.Regex") != std::string::npos);
  CHECK(with([](json& j) {
          j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Removed"}}, {{"type", "ByteLevel"}}}}};
        }).find("behavior: got \"Removed\"") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["merges"][0] = "a zz"; }).find("model.merges[0]: got \"a zz\"") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["merges"][0] = "a"; }).find("model.merges[0]") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["merges"].push_back("b a"); }).find("result \"ba\" is in model.vocab") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["vocab"]["a"] = -1; }).find("model.vocab[\"a\"]: got -1") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["vocab"]["a"] = 1u << 30; }).find("expected an integer id in [0,") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["vocab"]["a"] = 5; }).find("an id no other token has") != std::string::npos);
  CHECK(with([](json& j) { j["model"]["vocab"]["\xC5\x84"] = 500; }).find("outside the byte-level alphabet") != std::string::npos);
  CHECK(with([](json& j) { j["added_tokens"] = {{{"id", 3}, {"content", "<s>"}}}; }).find("added_tokens[0].id: got 3") != std::string::npos);
  CHECK(with([](json& j) { j["added_tokens"] = {{{"id", 999}, {"content", ""}}}; }).find("added_tokens[0].content") != std::string::npos);
  CHECK(with([](json& j) { j["added_tokens"] = {{{"id", "x"}, {"content", "<s>"}}}; }).find("added_tokens[0].id") != std::string::npos);
  CHECK(with([](json& j) { j.erase("model"); }).find("model: got nothing") != std::string::npos);
  Tokenizer::Limits small;
  small.merges = 0;
  CHECK_THROWS_WITH_AS(Tokenizer::from_json(good.dump(), "t.json", small), doctest::Contains("at most 0"), dftune::error);
}
