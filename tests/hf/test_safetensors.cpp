// dftune::hf: safetensors read/write, config.json, load_pretrained / save_pretrained, sharded
// checkpoints, and hostile files: each a dftune::error naming the file and the field, with nothing
// loaded.
#include <dftune/hf/pretrained.hpp>

#include <doctest/doctest.h>

#include "support/testing.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>


namespace fs = std::filesystem;
namespace hf = dftune::hf;
namespace decoder = dftune::decoder;

namespace {

fs::path fresh_dir(const std::string& name) { return test::fresh_dir("dftune_test_hf_", name); }

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from a header text and `data` bytes of buffer.
std::string raw_file(const std::string& header, std::size_t data, std::uint64_t declared = 0) {
  std::string out(8, '\0');
  const std::uint64_t n = declared ? declared : header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + std::string(data, '\0');
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

template <class T>
dftune::Decoder<T> random_model(const decoder::Config& c, std::uint64_t seed) {
  dftune::Decoder<T> m(c, seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, 0.2);
  for (auto& p : m.parameters()) p += static_cast<T>(n(rng));
  return m;
}

void check_load_fails(const fs::path& dir, const std::string& what) {
  CHECK_THROWS_WITH_AS(hf::load_pretrained<float>(dir), doctest::Contains(what.c_str()), dftune::error);
}

}  // namespace

TEST_CASE("16-bit conversions: bf16 and f16 widen exactly, bf16 rounds to nearest even") {
  CHECK(hf::bf16_to_float(0x3F80) == 1.0f);
  CHECK(hf::bf16_to_float(0xC000) == -2.0f);
  CHECK(hf::float_to_bf16(1.0f) == 0x3F80);
  CHECK(hf::float_to_bf16(std::bit_cast<float>(0x3F808000u)) == 0x3F80);  // tie: to even
  CHECK(hf::float_to_bf16(std::bit_cast<float>(0x3F818000u)) == 0x3F82);  // tie: to even (up)
  CHECK(hf::float_to_bf16(std::bit_cast<float>(0x3F808001u)) == 0x3F81);
  CHECK(std::isnan(hf::bf16_to_float(hf::float_to_bf16(std::nanf("")))));
  CHECK(hf::f16_to_float(0x3C00) == 1.0f);
  CHECK(hf::f16_to_float(0xC000) == -2.0f);
  CHECK(hf::f16_to_float(0x7BFF) == 65504.0f);
  CHECK(hf::f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(std::isinf(hf::f16_to_float(0x7C00)));
}

TEST_CASE("save_pretrained / load_pretrained round trip: F32 exactly, BF16 to bf16's rounding; config.json too") {
  for (const auto& cfg : {decoder::tiny_gpt2(), decoder::tiny_llama()}) {
    const auto dir = fresh_dir("roundtrip");
    const auto m = random_model<float>(cfg, 3);
    hf::save_pretrained(dir, m);
    const auto back = hf::load_pretrained<float>(dir);
    CHECK(back.config() == cfg);
    CHECK(std::equal(m.parameters().begin(), m.parameters().end(), back.parameters().begin()));
    hf::save_pretrained(dir, m, hf::Dtype::bf16);
    const hf::SafetensorsFile f(dir / "model.safetensors");
    CHECK(f.tensors().begin()->second.dtype == hf::Dtype::bf16);
    CHECK(f.metadata().at("format") == "pt");
    const auto b16 = hf::load_pretrained<double>(dir);
    for (std::size_t k = 0; k < m.parameters().size(); ++k)
      CHECK(b16.parameters()[k] == static_cast<double>(hf::bf16_to_float(hf::float_to_bf16(m.parameters()[k]))));
    fs::remove_all(dir);
  }
}

TEST_CASE("a sharded checkpoint (model.safetensors.index.json) loads the same model") {
  const auto dir = fresh_dir("sharded");
  const auto m = random_model<float>(decoder::tiny_llama(), 5);
  hf::save_pretrained(dir, m);
  fs::remove(dir / "model.safetensors");
  const auto& ts = m.layout().tensors;
  std::vector<hf::TensorOut<float>> a, b;
  std::string map;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    (i % 2 ? b : a).push_back({t.name, t.shape, m.parameters().subspan(t.offset, t.size()), t.transposed});
    map += std::string(map.empty() ? "" : ",") + "\"" + t.name + "\":\"model-0000" + (i % 2 ? "2" : "1") + "-of-00002.safetensors\"";
  }
  hf::write_safetensors<float>(dir / "model-00001-of-00002.safetensors", a, hf::Dtype::f32);
  hf::write_safetensors<float>(dir / "model-00002-of-00002.safetensors", b, hf::Dtype::f32);
  write_bytes(dir / "model.safetensors.index.json", "{\"metadata\":{},\"weight_map\":{" + map + "}}");
  const auto back = hf::load_pretrained<float>(dir);
  CHECK(std::equal(m.parameters().begin(), m.parameters().end(), back.parameters().begin()));

  SUBCASE("a shard name leaving the directory is refused") {
    write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\":{\"" + ts[0].name + "\":\"../x.safetensors\"}}");
    check_load_fails(dir, "a file name inside the checkpoint's directory");
  }
  SUBCASE("an index naming a shard that lacks the tensor is refused") {
    write_bytes(dir / "model.safetensors.index.json",
                "{\"weight_map\":{\"" + ts[0].name + "\":\"model-00002-of-00002.safetensors\"}}");
    check_load_fails(dir, "the shard that holds the tensor");
  }
  fs::remove_all(dir);
}

TEST_CASE("hostile safetensors headers are named errors, before any tensor data is read") {
  const auto dir = fresh_dir("hostile");
  const auto p = dir / "x.safetensors";
  auto fails = [&](const std::string& bytes, const std::string& what) {
    write_bytes(p, bytes);
    CHECK_THROWS_WITH_AS(hf::SafetensorsFile{p}, doctest::Contains(what.c_str()), dftune::error);
    CHECK_THROWS_WITH_AS(hf::SafetensorsFile{p}, doctest::Contains(p.c_str()), dftune::error);
  };
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  write_bytes(p, raw_file(ok, 24));
  CHECK(hf::SafetensorsFile(p).find("a")->numel == 6);
  fails("1234", "at least 8 bytes");
  fails(raw_file(ok, 24, 1ull << 40), "header length");
  fails(raw_file(ok, 24, ~0ull), "header length");
  fails(raw_file("{not json", 0), "not JSON");
  fails(raw_file(R"([1,2])", 0), "a JSON object");
  fails(raw_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2), "a safetensors dtype");
  fails(raw_file(R"({"a":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}})", 16), "a range of 16 bytes ([2] I64)");
  {  // an integer tensor (a mask, say) is a valid entry, but not a weight
    write_bytes(p, raw_file(R"({"m":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", 3));
    const hf::SafetensorsFile f(p);
    std::vector<float> out(3);
    CHECK_THROWS_WITH_AS(f.read(*f.find("m"), std::span<float>(out)), doctest::Contains("dtype: got U8, expected F32, BF16, F16 or F64"),
                         dftune::error);
  }
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]}})", 24), "shape[1]");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,24]}})", 24), "shape (element count)");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24), "a range of 24 bytes");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}})", 24), "inside the data buffer of 24 bytes");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[2,26]}})", 28), "aligned");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
        "does not overlap tensor \"a\"");
  fails(raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
  fails(raw_file(R"({"__metadata__":{"k":1}})", 0), "__metadata__.k");
  fs::remove_all(dir);
}

TEST_CASE("checkpoints that disagree with config.json are named errors") {
  const auto dir = fresh_dir("mismatch");
  const auto cfg = decoder::tiny_gpt2();
  const auto m = random_model<float>(cfg, 1);
  auto fresh = [&] { hf::save_pretrained(dir, m); };
  auto tensors_except = [&](const std::string& skip) {
    std::vector<hf::TensorOut<float>> out;
    for (const auto& t : m.layout().tensors)
      if (t.name != skip) out.push_back({t.name, t.shape, m.parameters().subspan(t.offset, t.size()), t.transposed});
    return out;
  };
  SUBCASE("missing tensor") {
    fresh();
    hf::write_safetensors<float>(dir / "model.safetensors", tensors_except("h.1.mlp.c_fc.bias"), hf::Dtype::f32);
    check_load_fails(dir, "tensor \"h.1.mlp.c_fc.bias\": got nothing (missing");
  }
  SUBCASE("a shape other than config.json implies") {
    fresh();
    auto big = decoder::tiny_gpt2();
    big.d_ff = 80;
    hf::save_pretrained(dir / "other", random_model<float>(big, 2));
    fs::copy_file(dir / "other" / "model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
    check_load_fails(dir, "model.safetensors: tensor \"h.0.mlp.c_fc.weight\".shape: got [16, 80], expected [16, 64], what config.json implies");
  }
  SUBCASE("a tensor the architecture does not have") {
    fresh();
    auto ts = tensors_except("");
    const std::vector<float> extra(4, 0.f);
    ts.push_back({"h.0.attn.c_extra.weight", {4}, extra});
    hf::write_safetensors<float>(dir / "model.safetensors", ts, hf::Dtype::f32);
    check_load_fails(dir, "tensor \"h.0.attn.c_extra.weight\": got a tensor config.json's architecture does not have");
  }
  SUBCASE("the buffers of older checkpoints and the transformer. prefix are accepted") {
    fresh();
    std::vector<hf::TensorOut<float>> ts;
    std::vector<std::string> names;
    for (const auto& t : m.layout().tensors)
      ts.push_back({"transformer." + t.name, t.shape, m.parameters().subspan(t.offset, t.size()), t.transposed});
    const std::vector<float> mask(16 * 16, 1.f);
    ts.push_back({"transformer.h.0.attn.bias", {1, 1, 16, 16}, mask});
    hf::write_safetensors<float>(dir / "model.safetensors", ts, hf::Dtype::f32);
    const auto back = hf::load_pretrained<float>(dir);
    CHECK(std::equal(m.parameters().begin(), m.parameters().end(), back.parameters().begin()));
  }
  SUBCASE("a non-finite weight") {
    fresh();
    auto bad = m;
    bad.parameters()[m.layout().tensors[3].offset + 1] = std::numeric_limits<float>::quiet_NaN();
    auto ts = tensors_except("");
    ts[3].data = bad.parameters().subspan(ts[3].data.data() - m.parameters().data(), ts[3].data.size());
    hf::write_safetensors<float>(dir / "model.safetensors", ts, hf::Dtype::f32);
    check_load_fails(dir, "a non-finite value at element 1");
  }
  SUBCASE("config.json: unknown architecture, absurd or missing sizes, bad types, not JSON") {
    fresh();
    const std::string good = read_text(dir / "config.json");
    auto with = [&](const std::string& from, const std::string& to) {
      std::string s = good;
      const auto at = s.find(from);
      REQUIRE(at != std::string::npos);
      write_bytes(dir / "config.json", s.replace(at, from.size(), to));
    };
    with("\"model_type\": \"gpt2\"", "\"model_type\": \"bert\"");
    check_load_fails(dir, "config.json: model_type: got \"bert\"");
    with("\"vocab_size\": 32", "\"vocab_size\": 1000000000000000000");
    check_load_fails(dir, "config.json: config.vocab");
    with("\"n_layer\": 2", "\"n_layer\": 1000000000000");
    check_load_fails(dir, "config.json: config.n_layers");
    with("\"n_embd\": 16", "\"n_embd\": \"16\"");
    check_load_fails(dir, "config.json: n_embd: got \"16\", expected a non-negative integer");
    with("\"n_head\": 2,", "");
    check_load_fails(dir, "config.json: n_head: got nothing");
    with("\"activation_function\": \"gelu_new\"", "\"activation_function\": \"relu\"");
    check_load_fails(dir, "activation_function");
    write_bytes(dir / "config.json", "{");
    check_load_fails(dir, "config.json: contents: got text that is not JSON");
  }
  SUBCASE("llama config: rope scaling kinds, sliding windows") {
    const auto ldir = fresh_dir("llama_cfg");
    hf::save_pretrained(ldir, random_model<float>(decoder::tiny_llama(), 1));
    std::string s = read_text(ldir / "config.json");
    s.insert(1, "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4},");
    write_bytes(ldir / "config.json", s);
    check_load_fails(ldir, "rope_scaling.rope_type: got \"yarn\"");
    fs::remove_all(ldir);
  }
  fs::remove_all(dir);
}

TEST_CASE("Llama-3 rope scaling from config.json: the frequencies of the published rule") {
  const auto c = hf::parse_config(nlohmann::json::parse(R"({"model_type":"llama","vocab_size":10,"hidden_size":8,
    "num_hidden_layers":1,"num_attention_heads":1,"intermediate_size":4,"max_position_embeddings":32,"rope_theta":500000.0,
    "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192},"tie_word_embeddings":true})"));
  CHECK(c.tied_head);
  CHECK(c.head_dim == 8);
  const auto f = decoder::rope_frequencies(c);
  const double pi = 3.14159265358979323846;
  for (std::size_t i = 0; i < 4; ++i) {
    const double base = std::pow(500000.0, -static_cast<double>(2 * i) / 8), wl = 2 * pi / base;
    const double want = wl < 8192 / 4.0 ? base : wl > 8192 ? base / 8 : [&] {
      const double s = (8192 / wl - 1) / 3;
      return (1 - s) * base / 8 + s * base;
    }();
    CHECK(f[i] == doctest::Approx(want).epsilon(1e-15));
  }
  CHECK(f[0] == 1.0);       // the shortest wavelength is kept
  CHECK(f[3] < 1e-4 / 8);   // the longest is divided by the factor
}
