#pragma once
// A Hugging Face checkpoint directory ↔ dftune::Decoder:
//   load_pretrained<T>(dir)  config.json + model.safetensors, or the shards model.safetensors.index.json
//                            lists; tensors in F32, BF16, F16 or F64, widened to T
//   load_pretrained<float, decoder::bf16>(dir)  the same into a frozen bf16-stored decoder: BF16
//                            tensors kept as they are, the others rounded to nearest even
//   save_pretrained(dir, m)  config.json + model.safetensors (F32 or BF16), each file atomically
// Loading checks everything before the model is allocated: the config (hf/config.hpp), every
// safetensors header (hf/safetensors.hpp), that each tensor the architecture needs is present with
// the shape config.json implies, that no tensor is left over (a checkpoint of another shape or
// architecture), and that shard names stay inside the directory. Tensors are then read into a model
// that is returned only once every value is read and finite: nothing is ever half-loaded.
// Names: with or without the "transformer." prefix of GPT2LMHeadModel; the buffers older
// checkpoints carry (GPT-2's attn.bias / attn.masked_bias, Llama's rotary_emb.inv_freq) and a
// tied model's stored lm_head.weight are skipped. Needs nlohmann-json: dftune::hf.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/hf/config.hpp>
#include <dftune/hf/safetensors.hpp>
#include <dftune/io/format.hpp>
#include <dftune/model/decoder/decoder.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

namespace detail {

inline bool skipped_buffer(const std::string& name) {
  return name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq");
}

// The safetensors files of a directory and, per tensor name, the file holding it.
struct Files {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const SafetensorsFile*> where;
};

inline Files open_files(const std::filesystem::path& dir) {
  Files f;
  const auto index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index)) {
    io::detail::named(index.string(), [&] {
      const nlohmann::json j = read_json(index);
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        dftune::detail::fail("weight_map", j.is_object() && j.contains("weight_map") ? j["weight_map"].dump() : "nothing",
                             "an object mapping tensor names to shard files");
      std::map<std::string, const SafetensorsFile*> shard;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) dftune::detail::fail("weight_map[\"" + name + "\"]", file.dump(), "a file name");
        const std::string fn = file.get<std::string>();
        if (fn.empty() || fn.find('/') != std::string::npos || fn.find('\\') != std::string::npos || fn == "." || fn == "..")
          dftune::detail::fail("weight_map[\"" + name + "\"]", "\"" + fn + "\"", "a file name inside the checkpoint's directory");
        if (!shard.count(fn)) {
          f.files.push_back(std::make_unique<SafetensorsFile>(dir / fn));
          shard[fn] = f.files.back().get();
        }
        if (!shard[fn]->find(name))
          dftune::detail::fail("weight_map[\"" + name + "\"]", "\"" + fn + "\"", "the shard that holds the tensor (it does not)");
        f.where[name] = shard[fn];
      }
    });
  } else {
    f.files.push_back(std::make_unique<SafetensorsFile>(dir / "model.safetensors"));
    for (const auto& [name, t] : f.files.back()->tensors()) f.where[name] = f.files.back().get();
  }
  return f;
}

}  // namespace detail

// A decoder with the configuration (config.json) and weights (model.safetensors, or the shards that
// model.safetensors.index.json lists) of a Hugging Face checkpoint directory, converted to T. Every
// tensor's name, shape and dtype is checked against the configuration before anything is allocated;
// errors name the file and the tensor. W = decoder::bf16 (with T = float) keeps the weights in
// bf16: a BF16 tensor is copied bit for bit, F32 and F16 are rounded to nearest even (F64 through
// float), and a value that rounds to infinity is the non-finite error. Example:
//
//     auto model = dftune::hf::load_pretrained<float>("SmolLM2-135M");
//     auto ref = dftune::hf::load_pretrained<float, dftune::decoder::bf16>("SmolLM2-135M");  // π_ref, half the memory
//     auto tok = dftune::hf::Tokenizer::from_file("SmolLM2-135M/tokenizer.json");
template <class T, class W = T>
Decoder<T, W> load_pretrained(const std::filesystem::path& dir) {
  return io::detail::named("checkpoint " + dir.string(), [&] {
    const decoder::Config cfg = load_config(dir / "config.json");
    const decoder::Layout lay = decoder::make_layout(cfg);
    const detail::Files files = detail::open_files(dir);
    // Which stored tensor fills each of the layout's, checked before anything is allocated.
    std::vector<std::pair<const SafetensorsFile*, const TensorInfo*>> source;
    std::set<std::string> used;
    for (const auto& t : lay.tensors) {
      const SafetensorsFile* file = nullptr;
      std::string stored;
      for (const std::string& name : {t.name, "transformer." + t.name})
        if (auto it = files.where.find(name); it != files.where.end()) {
          file = it->second;
          stored = name;
          break;
        }
      if (!file)
        dftune::detail::fail("tensor \"" + t.name + "\"", "nothing (missing from the safetensors files)",
                             "a tensor of shape " + shape_string(t.shape) + " (config.json's architecture has it)");
      const TensorInfo* info = file->find(stored);
      if (info->shape != t.shape)
        dftune::detail::fail(file->path().filename().string() + ": tensor \"" + stored + "\".shape", shape_string(info->shape),
                             shape_string(t.shape) + ", what config.json implies");
      if (info->dtype == Dtype::other)
        dftune::detail::fail(file->path().filename().string() + ": tensor \"" + stored + "\".dtype", info->dtype_text,
                             "F32, BF16, F16 or F64 (a floating-point weight)");
      source.emplace_back(file, info);
      used.insert(stored);
    }
    for (const auto& [name, file] : files.where) {
      const bool tied_copy = cfg.tied_head && (name == "lm_head.weight");
      if (!used.count(name) && !detail::skipped_buffer(name) && !tied_copy)
        dftune::detail::fail(file->path().filename().string() + ": tensor \"" + name + "\"", "a tensor config.json's architecture does not have",
                             "only the tensors of a " + std::string(cfg.family == decoder::Family::gpt2 ? "gpt2" : "llama-family") +
                                 " model of this shape");
    }
    std::optional<Decoder<T, W>> model;
    try {
      model.emplace(cfg, decoder::Uninitialized{});
    } catch (const std::bad_alloc&) {
      dftune::detail::fail("config", std::to_string(lay.total) + " parameters", "a model that fits in memory");
    } catch (const std::length_error&) {
      dftune::detail::fail("config", std::to_string(lay.total) + " parameters", "a model that fits in memory");
    }
    const std::span<W> p = model->parameters();
    for (std::size_t i = 0; i < lay.tensors.size(); ++i) {
      const auto& t = lay.tensors[i];
      const auto out = p.subspan(t.offset, t.size());
      source[i].first->read(*source[i].second, out, t.transposed);
      for (std::size_t k = 0; k < out.size(); ++k)
        if (!std::isfinite(static_cast<T>(out[k])))
          dftune::detail::fail(source[i].first->path().filename().string() + ": tensor \"" + source[i].second->name + "\"",
                               "a non-finite value at element " + std::to_string(k) +
                                   (std::is_same_v<T, W> ? std::string() : std::string(" (once rounded to bf16)")),
                               "finite weights");
    }
    return std::move(*model);
  });
}

// Writes config.json and model.safetensors into dir (created if missing), each atomically.
// dtype: Dtype::f32 or Dtype::bf16 (the storage of most published checkpoints).
template <class T>
void save_pretrained(const std::filesystem::path& dir, const Decoder<T>& model, Dtype dtype = Dtype::f32) {
  io::detail::named("checkpoint " + dir.string(), [&] {
    if (dtype != Dtype::f32 && dtype != Dtype::bf16) dftune::detail::fail("dtype", dtype_name(dtype), "F32 or BF16");
    const auto p = model.parameters();
    for (std::size_t k = 0; k < p.size(); ++k)
      if (!std::isfinite(p[k])) dftune::detail::fail_at("parameters", k, p[k], "a finite number");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) dftune::detail::fail("path", dir, "a directory that can be created (" + ec.message() + ")");
    std::vector<TensorOut<T>> out;
    for (const auto& t : model.layout().tensors)
      out.push_back({t.name, t.shape, p.subspan(t.offset, t.size()), t.transposed});
    write_safetensors<T>(dir / "model.safetensors", out, dtype, {{"format", "pt"}});
    const std::string text = config_json(model.config()).dump(2) + "\n";
    io::write_file_atomic(dir / "config.json", std::as_bytes(std::span<const char>(text.data(), text.size())));
  });
}

}  // namespace hf

DFTUNE_NAMESPACE_END
