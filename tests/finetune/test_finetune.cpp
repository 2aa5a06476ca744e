// examples/finetune.cpp end to end on a tiny random GPT-2 checkpoint, a byte-level tokenizer and a
// small train.jsonl the test writes: metrics and weights written, the negatives cache reused on a
// restart and refused when the sampling changed, a resumed run equal to an uninterrupted one, and
// bad input a named error with a non-zero exit status.
#include <dftune/hf/byte_level.hpp>
#include <dftune/hf/pretrained.hpp>
#include <dftune/model/decoder/decoder.hpp>

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path& root() {
  static const fs::path r = [] {
    const fs::path p = fs::temp_directory_path() / ("dftune_finetune_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    std::atexit([] { std::error_code ec; fs::remove_all(fs::temp_directory_path() / ("dftune_finetune_" + std::to_string(::getpid())), ec); });
    return p;
  }();
  return r;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A GPT-2-shaped model (vocabulary: 256 byte tokens + <|endoftext|>) with random weights, its
// tokenizer.json, and 12 prompt/answer lines; made once per process.
const fs::path& model_dir() {
  static const fs::path dir = [] {
    const fs::path d = root() / "model";
    const dftune::Decoder<float> m(dftune::decoder::tiny_gpt2(257, 16, 2, 2, 48), 7);
    dftune::hf::save_pretrained(d, m);
    json vocab = json::object();
    for (unsigned b = 0; b < 256; ++b) vocab[dftune::hf::byte_level::to_unicode(std::string(1, static_cast<char>(b)))] = b;
    const json tok = {{"added_tokens", {{{"id", 256}, {"content", "<|endoftext|>"}, {"special", true}}}},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
    std::ofstream(d / "tokenizer.json") << tok.dump();
    std::ofstream data(root() / "train.jsonl");
    for (int i = 0; i < 12; ++i)
      data << json{{"prompt", std::to_string(i) + "+" + std::to_string(2 * i) + "="}, {"answer", std::to_string(3 * i)}}.dump() << "\n";
    return d;
  }();
  return dir;
}

struct Run {
  int status = -1;
  std::string err;
};

// finetune with the common flags and `extra`; stderr captured.
Run finetune(const std::string& out, const std::string& extra, const std::string& data = "") {
  const fs::path err = root() / (out + ".err");
  const std::string cmd = std::string(DFTUNE_FINETUNE_EXE) + " --model " + model_dir().string() + " --data " +
                          (data.empty() ? (root() / "train.jsonl").string() : data) + " --out " + (root() / out).string() +
                          " --batch 4 --m 2 --max-new 6 --lr 1e-2 --threads 1 --val-fraction 0.2 " + extra + " 2> " + err.string();
  const int raw = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.err = read(err);
  return r;
}

std::vector<float> weights(const fs::path& dir) {
  const auto m = dftune::hf::load_pretrained<float>(dir);
  return {m.parameters().begin(), m.parameters().end()};
}

std::vector<json> lines(const fs::path& p) {
  std::vector<json> out;
  std::ifstream f(p);
  for (std::string l; std::getline(f, l);) out.push_back(json::parse(l));
  return out;
}

}  // namespace

TEST_CASE("dft and sft: metrics.jsonl written, the output loads and differs from the input") {
  for (const std::string method : {"dft", "sft", "dft2"}) {
    CAPTURE(method);
    const Run r = finetune("run_" + method, "--method " + method + " --epochs 2");
    INFO(r.err);
    REQUIRE(r.status == 0);
    const auto log = lines(root() / ("run_" + method) / "metrics.jsonl");
    std::size_t steps = 0, evals = 0;
    for (const json& j : log) {
      if (j.contains("loss")) {
        ++steps;
        CHECK(std::isfinite(j["loss"].get<double>()));
        CHECK(j["tokens_per_second"].get<double>() > 0);
        CHECK(j.contains("logps/chosen"));
        CHECK(j.contains("dft/ess") == (method != "sft"));
      }
      evals += j.contains("eval/loss");
    }
    CHECK(steps == 6);  // 10 training examples, batch 4: 3 steps per epoch, 2 epochs
    CHECK(evals == 2);  // before and after training
    const auto before = weights(model_dir()), after = weights(root() / ("run_" + method));
    REQUIRE(before.size() == after.size());
    CHECK(before != after);
    CHECK(fs::exists(root() / ("run_" + method) / "tokenizer.json"));
  }
  // SFT without a validation split samples no negatives.
  const Run plain = finetune("sft_no_validation", "--method sft --val-fraction 0");
  INFO(plain.err);
  CHECK(plain.status == 0);
  CHECK_FALSE(fs::exists(root() / "sft_no_validation" / "negatives.bin"));
  CHECK(weights(root() / "sft_no_validation") != weights(model_dir()));
}

TEST_CASE("a restart reuses the negatives cache, and a changed sampling option is refused by name") {
  const std::string cache = (root() / "shared_negatives.bin").string();
  const Run first = finetune("cache_a", "--negatives " + cache);
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(first.err.find("from the cache") == std::string::npos);
  const auto bytes = read(cache);
  const Run again = finetune("cache_b", "--negatives " + cache);
  INFO(again.err);
  REQUIRE(again.status == 0);
  CHECK(again.err.find("12 prompts × 2 from the cache") != std::string::npos);
  CHECK(weights(root() / "cache_a") == weights(root() / "cache_b"));  // the same negatives, the same run
  const Run hotter = finetune("cache_c", "--negatives " + cache + " --temperature 0.9");
  INFO(hotter.err);
  CHECK(hotter.status == 1);
  CHECK(hotter.err.find("temperature") != std::string::npos);
  CHECK(hotter.err.find(cache) != std::string::npos);
  CHECK(read(cache) == bytes);  // refused, not overwritten
}

TEST_CASE("resume from a checkpoint gives the same final weights as an uninterrupted run") {
  for (const std::string method : {"dft", "sft"}) {
    CAPTURE(method);
    const std::string flags = "--method " + method + " --epochs 3 --negatives " + (root() / "resume_neg.bin").string();
    const Run whole = finetune("whole_" + method, flags);
    INFO(whole.err);
    REQUIRE(whole.status == 0);
    const Run part = finetune("parts_" + method, flags + " --stop-after 4");
    INFO(part.err);
    REQUIRE(part.status == 0);
    CHECK(part.err.find("stopped after step 4 of 9") != std::string::npos);
    CHECK_FALSE(fs::exists(root() / ("parts_" + method) / "model.safetensors"));
    const Run rest = finetune("parts_" + method, flags + " --resume");
    INFO(rest.err);
    REQUIRE(rest.status == 0);
    CHECK(rest.err.find("resumed at step 4") != std::string::npos);
    CHECK(weights(root() / ("whole_" + method)) == weights(root() / ("parts_" + method)));
    std::size_t steps = 0;
    for (const json& j : lines(root() / ("parts_" + method) / "metrics.jsonl")) steps += j.contains("loss");
    CHECK(steps == 9);
    // A checkpoint of other options is refused by name.
    const Run other = finetune("parts_" + method, flags + " --resume --gamma 0.5");
    if (method != "sft") {
      CHECK(other.status == 1);
      CHECK(other.err.find("gamma") != std::string::npos);
    }
  }
}

TEST_CASE("bad input: a named error and a non-zero exit status") {
  const fs::path bad = root() / "bad.jsonl";
  std::ofstream(bad) << "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n{\"prompt\": \"2+2=\", \"answer\": \"4\"}\nnot json\n";
  const Run r = finetune("bad_line", "", bad.string());
  CHECK(r.status == 1);
  CHECK(r.err.find(bad.string() + ":3: line") != std::string::npos);
  CHECK(r.err.find("one JSON object per line") != std::string::npos);

  const fs::path longer = root() / "long.jsonl";
  std::ofstream(longer) << json{{"prompt", std::string(60, 'x')}, {"answer", "y"}}.dump() << "\n";
  const Run l = finetune("long_prompt", "", longer.string());
  CHECK(l.status == 1);
  CHECK(l.err.find(longer.string() + ":1: prompt + answer") != std::string::npos);
  CHECK(l.err.find("context = 48") != std::string::npos);

  const fs::path missing = root() / "missing";
  fs::create_directories(missing);
  fs::copy_file(model_dir() / "config.json", missing / "config.json");
  fs::copy_file(model_dir() / "tokenizer.json", missing / "tokenizer.json");
  const std::string cmd = std::string(DFTUNE_FINETUNE_EXE) + " --model " + missing.string() + " --data " + (root() / "train.jsonl").string() +
                          " --out " + (root() / "missing_out").string() + " 2> " + (root() / "missing.err").string();
  const int raw = std::system(cmd.c_str());
  CHECK(WEXITSTATUS(raw) == 1);
  const std::string err = read(root() / "missing.err");
  INFO(err);
  CHECK(err.find("model.safetensors") != std::string::npos);

  const Run flag = finetune("bad_flag", "--method ppo");
  CHECK(flag.status == 2);
  CHECK(flag.err.find("--method: got 'ppo', expected dft, dft2 or sft") != std::string::npos);
}
