// TinyLm weight files: a round trip keeps every parameter and log-prob; a wrong, truncated,
// corrupted, forged or other-type file is a dftune::error that says what is wrong, never another
// exception or an allocation the file does not back; the configuration is under the checksum; the
// parameter count of a configuration is computed without overflow before the model is built;
// saves are atomic.
#include <dftune/model/weights_io.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace dftune;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& name) {
    dir = fs::temp_directory_path() / ("dftune_test_weights_" + name + "_" + std::to_string(std::random_device{}()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path operator/(const std::string& f) const { return dir / f; }
};

std::vector<std::byte> slurp(const fs::path& path) { return io::read_file(path); }

void dump(const fs::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void fix_checksum(std::vector<std::byte>& b) {
  const std::span<const std::byte> all(b);
  const std::uint64_t sum = io::fnv1a64(all.subspan(32), io::fnv1a64(all.first(24)));
  for (std::size_t k = 0; k < 8; ++k) b[24 + k] = static_cast<std::byte>((sum >> (8 * k)) & 0xFF);
}

void set_u64(std::vector<std::byte>& b, std::size_t at, std::uint64_t v) {
  for (std::size_t k = 0; k < 8; ++k) b[at + k] = static_cast<std::byte>((v >> (8 * k)) & 0xFF);
}

// Payload offsets (the file's, header included): scalar 32, init_std 36, config 44 + 8·i
// (vocab, max_len, d_model, n_heads, n_layers, d_ff), parameter count 92, parameters 100.
constexpr std::size_t kConfigAt = 44, kCountAt = 92, kParamsAt = 100;

const tiny_lm::Config kCfg{.vocab = 9, .max_len = 7, .d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 16};

// The error message of decoding `bytes`, or "no error"; any other exception fails the test.
std::string error_of(const std::vector<std::byte>& bytes) {
  try {
    (void)decode_weights<float>(bytes);
  } catch (const dftune::error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("save_weights / load_weights: round trip, then every kind of bad file") {
  TempDir tmp("roundtrip");
  TinyLm<float> m(tiny_lm::Config{.vocab = 9, .max_len = 7, .d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 16,
                                  .init_std = 0.05},
                  5);
  const fs::path path = tmp / "weights.bin";
  save_weights(path, m);
  TinyLm<float> back = load_weights<float>(path);
  CHECK(back.config() == m.config());  // init_std included
  CHECK(std::equal(m.parameters().begin(), m.parameters().end(), back.parameters().begin(), back.parameters().end()));
  Sequences s;
  s.push(std::vector<token_t>{1, 2}, std::vector<token_t>{3, 8});
  std::vector<float> a(1), b(1);
  m.sequence_logp(s.view(), a);
  back.sequence_logp(s.view(), b);
  CHECK(a[0] == b[0]);
  CHECK(slurp(path) == encode_weights(m));
  CHECK(encode_weights(decode_weights<float>(encode_weights(m))) == encode_weights(m));

  const std::vector<std::byte> good = slurp(path);
  CHECK(good.size() == kParamsAt + 4 * m.parameters().size());
  const fs::path bad = tmp / "weights_bad.bin";
  auto load_error = [&](const std::vector<std::byte>& bytes) {
    dump(bad, bytes);
    try {
      (void)load_weights<float>(bad);
    } catch (const dftune::error& e) {
      CHECK(std::string(e.what()).find("weights_bad.bin") != std::string::npos);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(load_error({}).find("truncated") != std::string::npos);
  CHECK(load_error(std::vector<std::byte>(good.begin(), good.begin() + 40)).find("truncated") != std::string::npos);
  CHECK(load_error(std::vector<std::byte>(good.begin(), good.end() - 3)).find("truncated") != std::string::npos);
  std::vector<std::byte> x = good;
  x[0] = std::byte{'X'};
  CHECK(load_error(x).find("magic") != std::string::npos);
  x = good;
  x[8] = std::byte{3};
  CHECK(load_error(x).find("version: got 3") != std::string::npos);
  x = good;
  x[12] = std::byte{2};
  CHECK(load_error(x).find("kind: got 2 (training), expected 3 (weights)") != std::string::npos);
  x = good;
  x[x.size() / 2] ^= std::byte{1};  // a flipped bit in the parameters
  CHECK(load_error(x).find("checksum") != std::string::npos);
  x = good;
  x.push_back(std::byte{0});
  CHECK(load_error(x).find("trailing bytes") != std::string::npos);
  CHECK_THROWS_WITH_AS((void)load_weights<double>(path), doctest::Contains("scalar size: got 4"), dftune::error);
  CHECK_THROWS_WITH_AS((void)load_weights<float>(tmp / "does_not_exist.bin"), doctest::Contains("readable"), dftune::error);
  CHECK_THROWS_WITH_AS((void)load_weights<float>(tmp.dir), doctest::Contains("a regular file"), dftune::error);
  {  // format 1 (before this container): a clear message, not "magic" alone
    std::vector<std::byte> old(72, std::byte{0});
    std::memcpy(old.data(), "DFTUNELM", 8);
    CHECK(load_error(old).find("format 1") != std::string::npos);
  }
}

TEST_CASE("the configuration is under the checksum: a changed n_heads is refused, not a different model") {
  TinyLm<float> m(kCfg, 3);
  auto b = encode_weights(m);
  set_u64(b, kConfigAt + 3 * 8, 4);  // n_heads 2 -> 4: still a valid configuration of the same size
  CHECK(error_of(b).find("checksum") != std::string::npos);
  fix_checksum(b);  // a forged file with a valid checksum loads as what it says
  CHECK(decode_weights<float>(b).config().n_heads == 4);
}

TEST_CASE("every single-bit flip of the header and configuration is a dftune::error; forged ones too") {
  TinyLm<float> m(kCfg, 3);
  const auto good = encode_weights(m);
  std::size_t refused = 0, forged_loaded = 0;
  for (std::size_t byte = 0; byte < kParamsAt; ++byte)
    for (int bit = 0; bit < 8; ++bit) {
      auto b = good;
      b[byte] ^= std::byte(1u << bit);
      CAPTURE(byte);
      CAPTURE(bit);
      CHECK(error_of(b) != "no error");  // only dftune::error gets through error_of
      ++refused;
      if (byte >= 24 && byte < 32) continue;  // the checksum itself
      fix_checksum(b);  // the same flip, forged: reaches the checks behind the checksum
      const std::string e = error_of(b);
      if (e == "no error") ++forged_loaded;
    }
  CHECK(refused == kParamsAt * 8);
  MESSAGE(forged_loaded << " forged flips load as the valid model they describe");
}

TEST_CASE("a forged configuration is bounded against the file before TinyLm is built") {
  TinyLm<float> m(kCfg, 3);
  const auto good = encode_weights(m);
  auto forged = [&](std::size_t field, std::uint64_t value) {
    auto b = good;
    set_u64(b, kConfigAt + 8 * field, value);
    fix_checksum(b);
    return error_of(b);
  };
  // The crafted file: a vocab whose layout size wraps size_t (it wrote past the buffer).
  // tiny_lm::validate refuses a vocab beyond int32 token ids before any product is formed...
  CHECK(forged(0, (std::uint64_t{1} << 63) / 4).find("config.vocab") != std::string::npos);
  CHECK(forged(0, std::numeric_limits<std::uint64_t>::max()).find("config.vocab") != std::string::npos);
  // ... and a layout size that wraps with a valid vocab (d_model² = 2^64) is the checked product's error.
  CHECK(forged(2, std::uint64_t{1} << 32).find("config (parameter count)") != std::string::npos);
  // Sizes that fit size_t but not the file: named, and nothing allocated for them.
  CHECK(forged(0, std::uint64_t{1} << 31).find("parameters: got") != std::string::npos);
  CHECK(forged(4, std::uint64_t{1} << 40).find("parameters: got") != std::string::npos);  // n_layers
  CHECK(forged(1, 1000000).find("parameters: got") != std::string::npos);                 // max_len
  CHECK(forged(3, 3).find("config.n_heads: got 3") != std::string::npos);
  CHECK(forged(2, 0).find("config.d_model") != std::string::npos);
  auto b = good;
  set_u64(b, kCountAt, 7);  // the stored count disagrees with the configuration
  fix_checksum(b);
  CHECK(error_of(b).find("parameter count: got 7") != std::string::npos);
  b = good;
  const float nan = std::nanf("");
  std::memcpy(b.data() + kParamsAt + 4 * 5, &nan, 4);
  fix_checksum(b);
  CHECK(error_of(b).find("parameters[5]: got nan") != std::string::npos);
}

TEST_CASE("parameter_count is make_layout's total, and throws where the total would wrap") {
  for (const tiny_lm::Config& c :
       {kCfg, tiny_lm::Config{}, tiny_lm::Config{.vocab = 1, .max_len = 2, .d_model = 1, .n_heads = 1, .n_layers = 1, .d_ff = 1},
        tiny_lm::Config{.vocab = 50, .max_len = 33, .d_model = 12, .n_heads = 3, .n_layers = 4, .d_ff = 7}}) {
    CAPTURE(c.vocab);
    CHECK(tiny_lm::parameter_count(c) == tiny_lm::make_layout(c).total);
  }
  CHECK_THROWS_WITH_AS(tiny_lm::parameter_count({.vocab = std::size_t{1} << 62, .d_model = 8}),
                       doctest::Contains("config (parameter count)"), error);
  CHECK_THROWS_WITH_AS(tiny_lm::parameter_count({.d_model = std::size_t{1} << 32}), doctest::Contains("config"), error);
}

TEST_CASE("save_weights is atomic and refuses a model it could not load back") {
  TempDir tmp("atomic");
  TinyLm<double> m(kCfg, 1);
  const fs::path p = tmp / "w.bin";
  save_weights(p, m);
  const auto old_bytes = slurp(p);
  fs::create_hard_link(p, tmp / "link.bin");
  m.parameters()[0] += 1;
  save_weights(p, m);  // replaced by rename: the old inode keeps the old bytes
  CHECK(slurp(tmp / "link.bin") == old_bytes);
  CHECK(load_weights<double>(p).parameters()[0] == m.parameters()[0]);
  const auto new_bytes = slurp(p);
  m.parameters()[3] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(save_weights(p, m), doctest::Contains("parameters[3]: got inf"), error);
  CHECK(slurp(p) == new_bytes);
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(tmp.dir)) files += e.is_regular_file();
  CHECK(files == 2);
}
