#pragma once
// Hugging Face config.json ↔ decoder::Config. Reads model_type gpt2, llama, qwen2 (and mistral-style
// llama configs without sliding windows); every field is type-checked and the result validated
// (decoder::validate: sizes that fit, heads that divide), so an unknown architecture, an absurd or
// missing size is a dftune::error naming the file and the field. Needs nlohmann-json: dftune::hf.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/format.hpp>
#include <dftune/model/decoder/config.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

namespace detail {

inline const nlohmann::json* field(const nlohmann::json& j, const char* name) {
  const auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

inline std::size_t size_field(const nlohmann::json& j, const char* name, std::optional<std::size_t> fallback = std::nullopt) {
  const auto* f = field(j, name);
  if (!f) {
    if (fallback) return *fallback;
    dftune::detail::fail(name, "nothing", "the field (a positive integer)");
  }
  if (!f->is_number_unsigned()) dftune::detail::fail(name, f->dump(), "a non-negative integer");
  const auto v = f->get<std::uint64_t>();
  if (v > decoder::kMaxElements) dftune::detail::fail(name, v, "at most " + std::to_string(decoder::kMaxElements));
  return static_cast<std::size_t>(v);
}

inline double number_field(const nlohmann::json& j, const char* name, double fallback) {
  const auto* f = field(j, name);
  if (!f) return fallback;
  if (!f->is_number()) dftune::detail::fail(name, f->dump(), "a number");
  return f->get<double>();
}

inline bool bool_field(const nlohmann::json& j, const char* name, bool fallback) {
  const auto* f = field(j, name);
  if (!f) return fallback;
  if (!f->is_boolean()) dftune::detail::fail(name, f->dump(), "true or false");
  return f->get<bool>();
}

inline std::string string_field(const nlohmann::json& j, const char* name, const std::string& fallback) {
  const auto* f = field(j, name);
  if (!f) return fallback;
  if (!f->is_string()) dftune::detail::fail(name, f->dump(), "a string");
  return f->get<std::string>();
}

}  // namespace detail

// The decoder config a parsed config.json describes (fields as transformers names them).
inline decoder::Config parse_config(const nlohmann::json& j) {
  using namespace detail;
  if (!j.is_object()) dftune::detail::fail("config", j.type_name(), "a JSON object");
  const std::string type = string_field(j, "model_type", "");
  decoder::Config c;
  if (type == "gpt2") {
    c.family = decoder::Family::gpt2;
    c.vocab = size_field(j, "vocab_size");
    c.d_model = size_field(j, "n_embd");
    c.n_layers = size_field(j, "n_layer");
    c.n_heads = c.n_kv_heads = size_field(j, "n_head");
    if (c.n_heads == 0 || c.d_model % c.n_heads != 0)
      dftune::detail::fail("n_head", c.n_heads, "a divisor of n_embd = " + std::to_string(c.d_model));
    c.head_dim = c.d_model / c.n_heads;
    c.d_ff = size_field(j, "n_inner", 4 * c.d_model);
    c.max_len = size_field(j, "n_positions", size_field(j, "n_ctx", 1024));
    c.norm_eps = number_field(j, "layer_norm_epsilon", 1e-5);
    const std::string act = string_field(j, "activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      dftune::detail::fail("activation_function", "\"" + act + "\"", "\"gelu_new\" or \"gelu_pytorch_tanh\" (GELU, tanh form)");
    c.tied_head = bool_field(j, "tie_word_embeddings", true);
    if (!c.tied_head) dftune::detail::fail("tie_word_embeddings", "false", "true (GPT-2's head is its token embedding)");
    if (bool_field(j, "scale_attn_by_inverse_layer_idx", false)) dftune::detail::fail("scale_attn_by_inverse_layer_idx", "true", "false");
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
  } else if (type == "llama" || type == "qwen2" || type == "mistral") {
    c.family = decoder::Family::llama;
    c.vocab = size_field(j, "vocab_size");
    c.d_model = size_field(j, "hidden_size");
    c.n_layers = size_field(j, "num_hidden_layers");
    c.n_heads = size_field(j, "num_attention_heads");
    c.n_kv_heads = size_field(j, "num_key_value_heads", c.n_heads);
    if (c.n_heads == 0) dftune::detail::fail("num_attention_heads", 0, "at least 1");
    c.head_dim = size_field(j, "head_dim", c.d_model / c.n_heads);
    c.d_ff = size_field(j, "intermediate_size");
    c.max_len = size_field(j, "max_position_embeddings");
    c.norm_eps = number_field(j, "rms_norm_eps", 1e-6);
    c.rope_theta = number_field(j, "rope_theta", 10000);
    const std::string act = string_field(j, "hidden_act", "silu");
    if (act != "silu") dftune::detail::fail("hidden_act", "\"" + act + "\"", "\"silu\" (SwiGLU)");
    c.tied_head = bool_field(j, "tie_word_embeddings", false);
    const bool qwen = type == "qwen2";
    const bool attention_bias = bool_field(j, "attention_bias", false);
    c.qkv_bias = qwen || attention_bias;
    c.o_bias = !qwen && attention_bias;
    c.mlp_bias = bool_field(j, "mlp_bias", false);
    if (const auto* sw = field(j, "sliding_window"); sw && bool_field(j, "use_sliding_window", type == "mistral"))
      dftune::detail::fail("sliding_window", sw->dump(), "null, or use_sliding_window false (dftune attends to the whole context)");
    if (const auto* rs = field(j, "rope_scaling")) {
      if (!rs->is_object()) dftune::detail::fail("rope_scaling", rs->dump(), "null or an object");
      const std::string kind = string_field(*rs, "rope_type", string_field(*rs, "type", ""));
      if (kind == "llama3") {
        c.rope_scaling.factor = number_field(*rs, "factor", 0);
        c.rope_scaling.low_freq_factor = number_field(*rs, "low_freq_factor", 1);
        c.rope_scaling.high_freq_factor = number_field(*rs, "high_freq_factor", 4);
        c.rope_scaling.original_max_position = size_field(*rs, "original_max_position_embeddings", 8192);
        if (c.rope_scaling.factor == 0) dftune::detail::fail("rope_scaling.factor", 0, "a number >= 1");
      } else if (kind != "default") {
        dftune::detail::fail("rope_scaling.rope_type", "\"" + kind + "\"", "\"llama3\" or \"default\" (the RoPE scalings dftune implements)");
      }
    }
  } else {
    dftune::detail::fail("model_type", "\"" + type + "\"", "\"gpt2\", \"llama\", \"qwen2\" or \"mistral\" (the decoders dftune implements)");
  }
  decoder::validate(c);
  return c;
}

// The JSON document in `path` (at most 100 MB). Errors (dftune::argument_error): not a regular
// readable file, too large, not JSON.
inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) dftune::detail::fail("path", path, "a regular, readable file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > 100'000'000) dftune::detail::fail("file size", size, "a readable JSON file of at most 100 MB");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) dftune::detail::fail("contents", "text that is not JSON", "a JSON document");
  return j;
}

// The decoder configuration of a Hugging Face config.json (parse_config), errors prefixed with the
// file's path: an unknown model_type, a missing or out-of-range field, an unsupported rope_scaling.
inline decoder::Config load_config(const std::filesystem::path& path) {
  return io::detail::named(path.string(), [&] { return parse_config(read_json(path)); });
}

// A config.json that transformers (and load_config) reads back as the same model.
inline nlohmann::ordered_json config_json(const decoder::Config& c) {
  nlohmann::ordered_json j;
  if (c.family == decoder::Family::gpt2) {
    j = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", c.vocab}, {"n_embd", c.d_model},
         {"n_layer", c.n_layers}, {"n_head", c.n_heads}, {"n_inner", c.d_ff}, {"n_positions", c.max_len}, {"n_ctx", c.max_len},
         {"layer_norm_epsilon", c.norm_eps}, {"activation_function", "gelu_new"}, {"tie_word_embeddings", true}};
  } else {
    const bool qwen = c.qkv_bias && !c.o_bias;
    j = {{"architectures", {qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}}, {"model_type", qwen ? "qwen2" : "llama"},
         {"vocab_size", c.vocab}, {"hidden_size", c.d_model}, {"num_hidden_layers", c.n_layers},
         {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads}, {"head_dim", c.head_dim},
         {"intermediate_size", c.d_ff}, {"max_position_embeddings", c.max_len}, {"rms_norm_eps", c.norm_eps},
         {"rope_theta", c.rope_theta}, {"hidden_act", "silu"}, {"tie_word_embeddings", c.tied_head},
         {"mlp_bias", c.mlp_bias}};
    if (!qwen) j["attention_bias"] = c.qkv_bias;
    if (c.rope_scaling.factor != 0)
      j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", c.rope_scaling.factor},
                           {"low_freq_factor", c.rope_scaling.low_freq_factor},
                           {"high_freq_factor", c.rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  }
  return j;
}

}  // namespace hf

DFTUNE_NAMESPACE_END
