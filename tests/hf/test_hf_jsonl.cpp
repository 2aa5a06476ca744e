// Training data from JSON Lines (include/dftune/hf/jsonl.hpp): prompt/answer pairs and chats
// tokenized with the boundary where generation starts; every bad line a FILE:LINE error.
#include <dftune/hf/jsonl.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using dftune::token_t;
using dftune::hf::Tokenizer;
using json = nlohmann::json;

namespace {

// Byte tokens 0..255, merges "t h" -> 256, "th e" -> 257, ChatML's markers 258, 259.
Tokenizer tokenizer() {
  json vocab = json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[dftune::hf::byte_level::to_unicode(std::string(1, static_cast<char>(b)))] = b;
  vocab["th"] = 256;
  vocab["the"] = 257;
  const json j = {{"added_tokens", {{{"id", 258}, {"content", "<|im_start|>"}, {"special", true}}, {{"id", 259}, {"content", "<|im_end|>"}, {"special", true}}}},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                  {"decoder", {{"type", "ByteLevel"}}},
                  {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"t h", "th e"}}}}};
  return Tokenizer::from_json(j.dump());
}

fs::path write(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("dftune_jsonl_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << text;
  return dir / name;
}

std::string error_of(const std::string& text, const dftune::hf::DataOptions& o = {}) {
  const fs::path p = write("bad.jsonl", text);
  try {
    (void)dftune::hf::read_jsonl(p, tokenizer(), o);
  } catch (const dftune::error& e) {
    return e.what();
  }
  return "no error";
}

std::vector<token_t> v(std::span<const token_t> s) { return {s.begin(), s.end()}; }

}  // namespace

TEST_CASE("prompt/answer pairs: each encoded on its own, BOS and EOS added, blank lines skipped") {
  const Tokenizer tok = tokenizer();
  const fs::path p = write("pairs.jsonl", "{\"prompt\": \"the\", \"answer\": \" the end\"}\n\n  \n{\"prompt\": \"x\", \"answer\": \"y\"}");
  dftune::hf::DataOptions o;
  o.bos = 1;
  o.eos = 2;
  const auto ex = dftune::hf::read_jsonl(p, tok, o);
  REQUIRE(ex.size() == 2);
  CHECK(ex.line == std::vector<std::size_t>{1, 4});
  const dftune::SequenceBatch b = ex.sequences.view();
  dftune::validate(b, tok.vocab_size());
  CHECK(b.prompt_len[0] == 2);
  CHECK(v(b.sequence(0)) == std::vector<token_t>{1, 257, ' ', 257, ' ', 'e', 'n', 'd', 2});
  CHECK(v(b.sequence(1)) == std::vector<token_t>{1, 'x', 'y', 2});
  const auto prompts = ex.prompts();
  dftune::validate(prompts.view(), tok.vocab_size());
  CHECK(v(prompts.view().prompt(0)) == std::vector<token_t>{1, 257});
}

TEST_CASE("chats: every message but the last, then the assistant's prefix, is the prompt") {
  const Tokenizer tok = tokenizer();
  const fs::path p = write("chat.jsonl",
                           R"({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the?"}, {"role": "assistant", "content": "the."}]})");
  dftune::hf::DataOptions o;
  o.chat = dftune::hf::ChatTemplate::chatml();
  const auto ex = dftune::hf::read_jsonl(p, tok, o);
  REQUIRE(ex.size() == 1);
  const auto b = ex.sequences.view();
  const auto prompt = b.sequence(0).first(static_cast<std::size_t>(b.prompt_len[0]));
  CHECK(v(prompt) == tok.encode("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe?<|im_end|>\n<|im_start|>assistant\n"));
  CHECK(v(b.sequence(0).subspan(prompt.size())) == tok.encode("the.<|im_end|>\n"));
  CHECK(error_of(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})").find("DataOptions::chat") != std::string::npos);
  CHECK(error_of(R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})", o).find(":1: messages[1].role: got \"user\", expected \"assistant\"") != std::string::npos);
  CHECK(error_of(R"({"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]})", o).find("messages[0].role: got \"bot\"") != std::string::npos);
}

TEST_CASE("every unusable line is a FILE:LINE error naming the field") {
  const std::string good = "{\"prompt\": \"a\", \"answer\": \"b\"}\n";
  CHECK(error_of(good + good + "not json\n").find("bad.jsonl:3: line: got text JSON refuses") != std::string::npos);
  CHECK(error_of(good + "{\"prompt\": \"a\"}\n").find("bad.jsonl:2: answer: got nothing, expected a string") != std::string::npos);
  CHECK(error_of("{\"prompt\": 3, \"answer\": \"b\"}").find(":1: prompt: got 3, expected a string") != std::string::npos);
  CHECK(error_of("[1, 2]").find(":1: line: got [1,2], expected a JSON object") != std::string::npos);
  CHECK(error_of("{\"prompt\": \"\", \"answer\": \"b\"}").find(":1: prompt: got 0 tokens") != std::string::npos);
  CHECK(error_of("{\"prompt\": \"a\", \"answer\": \"\"}").find(":1: answer: got 0 tokens") != std::string::npos);
  CHECK(error_of("{\"prompt\": \"a\xff\", \"answer\": \"b\"}").find(":1: line: got text JSON refuses") != std::string::npos);  // not UTF-8
  dftune::hf::DataOptions o;
  o.context = 6;
  CHECK(error_of(good + "{\"prompt\": \"abcd\", \"answer\": \"xyz\"}", o).find(":2: prompt + answer: got 4 + 3 tokens, expected at most context = 6") != std::string::npos);
  o = {};
  o.max_line_bytes = 40;
  CHECK(error_of(good + "{\"prompt\": \"" + std::string(100, 'a') + "\", \"answer\": \"b\"}\n" + good, o).find(":2: line: got more than 40 bytes") != std::string::npos);
  o = {};
  o.max_examples = 1;
  CHECK(error_of(good + good, o).find(":2: line: got example 2") != std::string::npos);
  o = {};
  o.prompt_key = "question";
  CHECK(error_of(good, o).find(":1: question: got nothing") != std::string::npos);
  CHECK_THROWS_AS(dftune::hf::read_jsonl("/nonexistent.jsonl", tokenizer()), dftune::error);
  fs::remove_all(fs::temp_directory_path() / ("dftune_jsonl_" + std::to_string(::getpid())));
}
