// examples/finetune.cpp end to end on a tiny random GPT-2 checkpoint, a byte-level tokenizer and a
// small train.jsonl the test writes: metrics and weights written, the negatives cache reused on a
// restart and refused when the sampling changed, a resumed run equal to an uninterrupted one (also
// under mpirun, from a sharded checkpoint), every --method, chat lines equal to the prompt/answer
// lines their template writes, and bad input a named error with a non-zero exit status.
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
// tokenizer.json, and 12 prompt/answer lines; made once per process. Context 48 tokens; the chat
// test's model, 256 (the chat templates' markers are bytes to this tokenizer).
fs::path make_model(const std::string& name, std::size_t context) {
  {
    const fs::path d = root() / name;
    const dftune::Decoder<float> m(dftune::decoder::tiny_gpt2(257, 16, 2, 2, context), 7);
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
  }
}

const fs::path& model_dir() {
  static const fs::path dir = make_model("model", 48);
  return dir;
}

struct Run {
  int status = -1;
  std::string err;
};

// finetune with the common flags and `extra` (run by `launcher`, e.g. mpirun); stderr captured.
Run finetune(const std::string& out, const std::string& extra, const std::string& data = "", const std::string& launcher = "",
             const fs::path& model = model_dir()) {
  const fs::path err = root() / (out + ".err");
  const std::string cmd = launcher + " " + std::string(DFTUNE_FINETUNE_EXE) + " --model " + model.string() + " --data " +
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
  CHECK(flag.err.find("--method: got 'ppo', expected dft, dft2, sft, dpo, ipo, simpo or orpo") != std::string::npos);
}

TEST_CASE("the pairwise methods: DPO's and IPO's first loss is their closed form at π = π_ref, all four train") {
  // Before the first update π_θ = π_ref, every margin is 0: DPO's loss is −log σ(0) = log 2, IPO's
  // (0 − 1/(2β))² = 25 at β = 0.1; the validation loss before training is the same.
  for (const std::string method : {"dpo", "ipo", "simpo", "orpo"}) {
    CAPTURE(method);
    const Run r = finetune("pair_" + method, "--method " + method + " --negatives " + (root() / "pair_neg.bin").string());
    INFO(r.err);
    REQUIRE(r.status == 0);
    const auto log = lines(root() / ("pair_" + method) / "metrics.jsonl");
    std::vector<double> losses;
    for (const json& j : log) {
      if (!j.contains("loss")) continue;
      losses.push_back(j["loss"].get<double>());
      CHECK(std::isfinite(losses.back()));
      CHECK(j["logps/rejected"].get<double>() < 0);
    }
    REQUIRE(losses.size() == 3);
    REQUIRE(log.front().contains("eval/loss"));
    if (method == "dpo" || method == "ipo") {
      const double first = method == "dpo" ? std::log(2.0) : 25.0;
      CHECK(losses[0] == doctest::Approx(first).epsilon(1e-6));
      CHECK(log.front()["eval/loss"].get<double>() == doctest::Approx(first).epsilon(1e-6));
    }
    CHECK(weights(root() / ("pair_" + method)) != weights(model_dir()));
  }
  const Run rwr = finetune("refused_rwr", "--method rwr");
  CHECK(rwr.status == 2);
  CHECK(rwr.err.find("reward") != std::string::npos);
}

TEST_CASE("chat lines: the same run as the prompt/answer lines their template writes") {
  // The templates, written out here independently of finetune's table.
  struct Case {
    std::string name, system, user, assistant_prefix, assistant_suffix, user_suffix, system_suffix;
  };
  const std::vector<Case> cases = {
      {"plain", "System: ", "User: ", "Assistant: ", "\n\n", "\n\n", "\n\n"},
      {"chatml", "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"},
      {"llama3", "<|start_header_id|>system<|end_header_id|>\n\n", "<|start_header_id|>user<|end_header_id|>\n\n",
       "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|eot_id|>", "<|eot_id|>"}};
  static const fs::path model = make_model("model_256", 256);
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const fs::path chat = root() / ("chat_" + c.name + ".jsonl"), pairs = root() / ("pairs_" + c.name + ".jsonl");
    {
      std::ofstream fc(chat), fp(pairs);
      for (int i = 0; i < 6; ++i) {
        const std::string q = std::to_string(i) + "+" + std::to_string(i) + "=", a = std::to_string(2 * i);
        json msgs = json::array();
        if (i % 2) msgs.push_back({{"role", "system"}, {"content", "add"}});
        msgs.push_back({{"role", "user"}, {"content", q}});
        msgs.push_back({{"role", "assistant"}, {"content", a}});
        fc << json{{"messages", msgs}}.dump() << "\n";
        const std::string prompt = (i % 2 ? c.system + "add" + c.system_suffix : "") + c.user + q + c.user_suffix + c.assistant_prefix;
        fp << json{{"prompt", prompt}, {"answer", a + c.assistant_suffix}}.dump() << "\n";
      }
    }
    const Run a = finetune("chat_" + c.name, "--method sft --val-fraction 0 --template " + c.name, chat.string(), "", model);
    INFO(a.err);
    REQUIRE(a.status == 0);
    const Run b = finetune("pairs_" + c.name, "--method sft --val-fraction 0", pairs.string(), "", model);
    INFO(b.err);
    REQUIRE(b.status == 0);
    CHECK(weights(root() / ("chat_" + c.name)) == weights(root() / ("pairs_" + c.name)));
  }
  const fs::path bad = root() / "chat_bad.jsonl";
  std::ofstream(bad) << R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})" << "\n";
  const Run r = finetune("chat_bad", "--method sft", bad.string());
  CHECK(r.status == 1);
  CHECK(r.err.find(bad.string() + ":1: messages[1].role") != std::string::npos);
  const Run t = finetune("chat_bad_template", "--template jinja");
  CHECK(t.status == 2);
  CHECK(t.err.find("expected plain, chatml or llama3") != std::string::npos);
}

TEST_CASE("under mpirun -np 2: sharded checkpoints, and a resumed run equal to an uninterrupted one") {
#if !defined(DFTUNE_FINETUNE_MPIRUN)
  MESSAGE("skipped: finetune was built without MPI or no mpirun was found (Debian: libopenmpi-dev openmpi-bin)");
#else
  const std::string mpirun = DFTUNE_FINETUNE_MPIRUN, neg = " --negatives " + (root() / "mpi_neg.bin").string();
  const std::string flags = "--method dft --epochs 3" + neg;
  const Run whole = finetune("mpi_whole", flags, "", mpirun);
  INFO(whole.err);
  REQUIRE(whole.status == 0);
  CHECK(whole.err.find("2 ranks") != std::string::npos);
  const Run part = finetune("mpi_parts", flags + " --stop-after 4", "", mpirun);
  INFO(part.err);
  REQUIRE(part.status == 0);
  const fs::path set = root() / "mpi_parts" / "checkpoint" / "training.d";
  CHECK(fs::exists(set / "manifest.ckpt"));
  std::size_t shards = 0;
  for (const auto& e : fs::directory_iterator(set)) shards += e.path().filename().string().find("-shard-") != std::string::npos;
  CHECK(shards == 2);
  const Run rest = finetune("mpi_parts", flags + " --resume", "", mpirun);
  INFO(rest.err);
  REQUIRE(rest.status == 0);
  CHECK(rest.err.find("resumed at step 4") != std::string::npos);
  CHECK(weights(root() / "mpi_whole") == weights(root() / "mpi_parts"));
  // The ranks compute what one process computes: the first step's loss (before any update) agrees
  // with a single-process run's up to the order of the sums.
  const Run one = finetune("mpi_single", flags + " --stop-after 1");
  INFO(one.err);
  REQUIRE(one.status == 0);
  auto first_loss = [](const fs::path& m) {
    for (const json& j : lines(m))
      if (j.contains("loss")) return j["loss"].get<double>();
    return std::nan("");
  };
  CHECK(first_loss(root() / "mpi_whole" / "metrics.jsonl") == doctest::Approx(first_loss(root() / "mpi_single" / "metrics.jsonl")).epsilon(1e-5));
  // A non-DFT method is refused under mpirun, by name.
  const Run sft = finetune("mpi_sft", "--method sft", "", mpirun);
  CHECK(sft.status != 0);
  CHECK(sft.err.find("dft or dft2 under mpirun") != std::string::npos);
#endif
}
