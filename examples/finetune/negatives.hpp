#pragma once
// The m negatives of every prompt, sampled from the base model (which is also π_ref) with their
// log π_ref, and cached in a file keyed by a fingerprint of everything they depend on: the
// weights, config.json, tokenizer.json, the data file, the EOS token, the sampling options, m,
// max_new and the seed (io/negatives_cache.hpp). A restart reuses the cache, and resumes the
// sampling where an interrupted run left it; a cache of anything else is refused by name.
// Prompt p draws from the stream (seed, p) whatever was sampled before, so a resumed sampling
// gives the same negatives as an uninterrupted one.
#include "options.hpp"

#include <dftune/hf/jsonl.hpp>
#include <dftune/io/negatives_cache.hpp>
#include <dftune/model/decoder/decoder.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <vector>

namespace finetune {

inline dftune::io::Fingerprint fingerprint(const Options& o, std::optional<dftune::token_t> eos) {
  namespace fs = std::filesystem;
  dftune::io::Fingerprint f;
  const fs::path dir(o.model);
  if (fs::exists(dir / "model.safetensors.index.json")) {
    f.add_file("weights index", dir / "model.safetensors.index.json");
    // The shards are named by the index; hashing the index and the shard files' sizes would miss
    // an in-place edit, so every .safetensors file of the directory is hashed, in name order.
    std::vector<fs::path> shards;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") shards.push_back(e.path());
    std::sort(shards.begin(), shards.end());
    for (const auto& s : shards) f.add_file("weights " + s.filename().string(), s);
  } else {
    f.add_file("weights", dir / "model.safetensors");
  }
  f.add_file("config", dir / "config.json");
  f.add_file("tokenizer", dir / "tokenizer.json");
  f.add_file("data", o.data);
  f.add_value("eos", eos ? static_cast<std::int64_t>(*eos) : std::int64_t{-1});
  f.add_value("temperature", o.sampling.temperature);
  f.add_value("top_k", static_cast<std::uint64_t>(o.sampling.top_k));
  f.add_value("top_p", o.sampling.top_p);
  f.add_value("m", static_cast<std::uint64_t>(o.m));
  f.add_value("max_new", static_cast<std::uint64_t>(o.max_new));
  f.add_value("seed", o.seed);
  f.add_value("max_len", static_cast<std::uint64_t>(o.max_len));
  return f;
}

// The negatives of every example (train and validation alike, in file order), from the cache
// where it has them and sampled from `base` for the rest, saved every few seconds.
inline dftune::io::Negatives negatives(dftune::Decoder<float>& base, const dftune::hf::Examples& data, const Options& o,
                                       std::optional<dftune::token_t> eos, std::size_t context) {
  const dftune::io::Fingerprint f = fingerprint(o, eos);
  const dftune::io::NegativesShape shape{.prompts = data.size(), .m = o.m, .max_new = o.max_new, .vocab = base.vocab_size()};
  dftune::io::Negatives n = dftune::io::load_negatives(o.negatives, f, shape).value_or(dftune::io::Negatives{});
  const std::size_t from = n.filled(o.m);
  if (from == data.size()) {
    std::fprintf(stderr, "negatives: %zu prompts × %zu from the cache %s\n", data.size(), o.m, o.negatives.c_str());
    return n;
  }
  if (from) std::fprintf(stderr, "negatives: %zu of %zu prompts from the cache, sampling the rest\n", from, data.size());
  const auto batch = data.sequences.view();
  auto saved = std::chrono::steady_clock::now();
  std::vector<dftune::token_t> tokens;
  std::vector<std::int64_t> offsets;
  std::vector<float> logp(o.m);
  for (std::size_t p = from; p < data.size(); ++p) {
    const auto prompt = batch.sequence(p).first(static_cast<std::size_t>(batch.prompt_len[p]));
    tokens.clear();
    offsets.assign(1, 0);
    for (std::size_t j = 0; j < o.m; ++j) {  // m copies of the prompt, each its own stream (seed, p, j)
      tokens.insert(tokens.end(), prompt.begin(), prompt.end());
      offsets.push_back(static_cast<std::int64_t>(tokens.size()));
    }
    dftune::SamplingOptions s = o.sampling;
    s.seed = dftune::SplitMix64(o.seed, p).next();
    const std::size_t max_new = std::min(o.max_new, context - prompt.size());  // >= 1: the answer fitted
    const dftune::Sequences got = base.generate(dftune::Prompts{.tokens = tokens, .offsets = offsets}, max_new, s, eos);
    base.sequence_logp(got.view(), logp);
    for (std::size_t j = 0; j < o.m; ++j) {
      const auto seq = got.view().sequence(j);
      n.push(seq.subspan(prompt.size()), logp[j]);
    }
    const auto now = std::chrono::steady_clock::now();
    if (p + 1 == data.size() || now - saved > std::chrono::seconds(10)) {
      dftune::io::save_negatives(o.negatives, f, shape, n);
      saved = now;
      std::fprintf(stderr, "negatives: %zu/%zu prompts sampled\n", p + 1, data.size());
    }
  }
  return n;
}

}  // namespace finetune
