#pragma once
// Training data for fine-tuning: a JSON Lines file of prompt/answer pairs, tokenized into the
// (prompt, completion) sequences a Model consumes (model/sequence_batch.hpp). One JSON object per
// line, either
//   {"prompt": "...", "answer": "..."}                                     (keys configurable)
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
// the second rendered by a ChatTemplate: every message but the last, then the assistant's prefix,
// form the prompt; the last message, which must be the assistant's, is the answer.
// Prompt and answer are encoded separately (a BOS before the prompt and an EOS after the answer
// where the options give them), so the boundary is exactly where generation from the prompt's
// tokens would start; encoding them as one string could merge tokens across it.
// Blank lines are skipped. Anything else that is not a usable example is a dftune::error that
// says "FILE:LINE: field: got ..., expected ...": a line that is not JSON or longer than
// max_line_bytes, a missing or non-string field, an empty prompt or answer, text that is not
// UTF-8, or a prompt + answer longer than the context.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/hf/tokenizer.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// How a chat is written as text before tokenization: each message is prefix + content + suffix of
// its role, and the prompt ends with the assistant's prefix (the "generation prompt").
struct ChatTemplate {
  // What surrounds one role's messages.
  struct Role {
    std::string prefix;  // written before the message's content
    std::string suffix;  // written after it
  };
  Role system;     // the system message's
  Role user;       // the user's
  Role assistant;  // the assistant's; its prefix also ends every prompt

  // ChatML, the template of Qwen2 and SmolLM2's instruct models.
  static ChatTemplate chatml() {
    return {{"<|im_start|>system\n", "<|im_end|>\n"}, {"<|im_start|>user\n", "<|im_end|>\n"}, {"<|im_start|>assistant\n", "<|im_end|>\n"}};
  }
};

// How read_examples turns JSON lines into token sequences.
struct DataOptions {
  std::size_t context = 1024;  // the most tokens of prompt + answer (the model's positions)
  std::optional<token_t> bos;  // put before every prompt
  std::optional<token_t> eos;  // put after every answer
  std::string prompt_key = "prompt";  // the prompt's field in a {"prompt": …, "answer": …} line
  std::string answer_key = "answer";  // the answer's field
  std::optional<ChatTemplate> chat;  // required for lines with "messages"
  std::size_t max_line_bytes = std::size_t{1} << 24;  // a longer line is an error (bounds memory)
  std::size_t max_examples = std::size_t{1} << 26;    // more lines is an error
};

// Examples in file order: sequences.view() is a SequenceBatch (prompt_len marks the boundary);
// line[s] is the line of the file sequence s came from.
struct Examples {
  Sequences sequences;          // prompt + answer tokens of every example
  std::vector<std::size_t> line;  // line[s]: the line of the file example s came from

  std::size_t size() const { return sequences.size(); }  // the number of examples
  // The prompts alone, for sampling completions (tokens and offsets owned here).
  struct PromptSet {
    std::vector<token_t> tokens;           // every prompt's tokens, one after the other
    std::vector<std::int64_t> offsets{0};  // prompt p is tokens[offsets[p], offsets[p+1])
    Prompts view() const { return {.tokens = tokens, .offsets = offsets}; }  // as sampling's Prompts
  };
  // A copy of every example's prompt.
  PromptSet prompts() const {
    PromptSet p;
    const SequenceBatch b = sequences.view();
    for (std::size_t s = 0; s < b.size(); ++s) {
      const auto seq = b.sequence(s).first(static_cast<std::size_t>(b.prompt_len[s]));
      p.tokens.insert(p.tokens.end(), seq.begin(), seq.end());
      p.offsets.push_back(static_cast<std::int64_t>(p.tokens.size()));
    }
    return p;
  }
};

namespace detail {

using json = nlohmann::json;

[[noreturn]] inline void fail(const std::string& where, const std::string& field, const std::string& got, const std::string& expected) {
  dftune::detail::fail(where + ": " + field, got, expected);
}

inline const std::string& text_field(const json& obj, const std::string& key, const std::string& where, const std::string& field) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail(where, field, "nothing", "a string");
  if (!it->is_string()) fail(where, field, it->dump().substr(0, 60), "a string");
  return it->get_ref<const std::string&>();
}

// The prompt and answer text of one parsed line.
inline std::pair<std::string, std::string> texts(const json& obj, const DataOptions& o, const std::string& where) {
  if (!obj.is_object()) fail(where, "line", obj.dump().substr(0, 60), "a JSON object");
  const auto messages = obj.find("messages");
  if (messages == obj.end())
    return {text_field(obj, o.prompt_key, where, o.prompt_key), text_field(obj, o.answer_key, where, o.answer_key)};
  if (!o.chat) fail(where, "messages", "a chat", "prompt/answer pairs (set DataOptions::chat to read chats)");
  if (!messages->is_array() || messages->size() < 2)
    fail(where, "messages", messages->dump().substr(0, 60), "an array of at least two messages, the last the assistant's");
  std::string prompt, answer;
  for (std::size_t k = 0; k < messages->size(); ++k) {
    const std::string f = "messages[" + std::to_string(k) + "]";
    const json& m = (*messages)[k];
    if (!m.is_object()) fail(where, f, m.dump().substr(0, 60), "an object with role and content");
    const std::string& role = text_field(m, "role", where, f + ".role");
    const std::string& content = text_field(m, "content", where, f + ".content");
    const bool last = k + 1 == messages->size();
    if (last && role != "assistant") fail(where, f + ".role", "\"" + role + "\"", "\"assistant\" (the last message is the answer)");
    const ChatTemplate::Role* r = role == "system" ? &o.chat->system : role == "user" ? &o.chat->user : role == "assistant" ? &o.chat->assistant : nullptr;
    if (r == nullptr) fail(where, f + ".role", "\"" + role + "\"", "system, user or assistant");
    if (last) {
      prompt += r->prefix;
      answer = content + r->suffix;
    } else {
      prompt += r->prefix + content + r->suffix;
    }
  }
  return {prompt, answer};
}

// One example from one line: appends it to `out` or throws (out unchanged).
inline void add_line(std::string_view text, const std::string& where, std::size_t line, const Tokenizer& tok, const DataOptions& o,
                     Examples& out) {
  json obj;
  try {
    obj = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail(where, "line", std::string("text JSON refuses (") + e.what() + ")", "one JSON object per line");
  }
  const auto [prompt_text, answer_text] = texts(obj, o, where);
  std::vector<token_t> prompt, answer;
  try {
    if (o.bos) prompt.push_back(*o.bos);
    tok.encode(prompt_text, prompt);
    tok.encode(answer_text, answer);
  } catch (const dftune::error& e) {
    throw dftune::argument_error(where + ": " + e.what());
  }
  if (o.eos) answer.push_back(*o.eos);
  if (prompt.empty()) fail(where, "prompt", "0 tokens", "at least one token (an empty prompt without a BOS)");
  if (answer.empty()) fail(where, "answer", "0 tokens", "at least one token");
  if (prompt.size() + answer.size() > o.context)
    fail(where, "prompt + answer", std::to_string(prompt.size()) + " + " + std::to_string(answer.size()) + " tokens",
         "at most context = " + std::to_string(o.context) + " tokens");
  out.sequences.push(prompt, answer);
  out.line.push_back(line);
}

}  // namespace detail

// Reads and tokenizes every example of a JSON Lines file; nothing is returned unless every line is
// usable (the first bad one is the error).
inline Examples read_jsonl(const std::filesystem::path& path, const Tokenizer& tok, const DataOptions& o = {}) {
  if (o.context < 2) dftune::detail::fail("context", o.context, "at least 2 (a prompt token and an answer token)");
  for (const auto& [name, id] : {std::pair{"bos", o.bos}, std::pair{"eos", o.eos}})
    if (id && (*id < 0 || static_cast<std::size_t>(*id) >= tok.vocab_size()))
      dftune::detail::fail(name, *id, "an id in [0, vocab = " + std::to_string(tok.vocab_size()) + ")");
  std::ifstream in(path, std::ios::binary);
  if (!in) dftune::detail::fail(path.string(), "a file that cannot be opened", "a readable JSON Lines file");
  Examples out;
  std::string line;
  std::vector<char> block(std::size_t{1} << 16);
  std::size_t number = 1;
  bool too_long = false;
  const auto finish = [&] {
    const std::string where = path.string() + ":" + std::to_string(number);
    if (too_long)
      detail::fail(where, "line", "more than " + std::to_string(o.max_line_bytes) + " bytes",
                         "at most max_line_bytes = " + std::to_string(o.max_line_bytes));
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      if (out.size() >= o.max_examples)
        detail::fail(where, "line", "example " + std::to_string(out.size() + 1), "at most max_examples = " + std::to_string(o.max_examples));
      detail::add_line(line, where, number, tok, o, out);
    }
    line.clear();
    too_long = false;
    ++number;
  };
  // Read in blocks, so that a line without an end is refused after max_line_bytes, not read whole.
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const std::string_view got(block.data(), static_cast<std::size_t>(in.gcount()));
    std::size_t from = 0;
    while (from < got.size()) {
      const std::size_t nl = got.find('\n', from);
      const std::string_view part = got.substr(from, nl == std::string_view::npos ? std::string_view::npos : nl - from);
      if (!too_long && line.size() + part.size() > o.max_line_bytes) too_long = true;
      if (!too_long) line.append(part);
      if (nl == std::string_view::npos) break;
      finish();
      from = nl + 1;
    }
  }
  if (in.bad()) dftune::detail::fail(path.string(), "a read error", "a readable JSON Lines file");
  if (!line.empty() || too_long) finish();
  return out;
}

}  // namespace hf

DFTUNE_NAMESPACE_END
