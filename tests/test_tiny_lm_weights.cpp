// TinyLm weight files: a round trip keeps every parameter and log-prob; a wrong, truncated,
// corrupted or other-type file is a dftune::error that says what is wrong.
#include <dftune/model/weights_io.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace dftune;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("dftune_test_" + name)).string();
}

std::vector<char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void dump(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("save_weights / load_weights: round trip, then every kind of bad file") {
  const tiny_lm::Config cfg{.vocab = 9, .max_len = 7, .d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 16};
  TinyLm<float> m(cfg, 5);
  const std::string path = temp_path("weights.bin");
  save_weights(path, m);
  TinyLm<float> back = load_weights<float>(path);
  CHECK(back.config() == cfg);
  CHECK(std::equal(m.parameters().begin(), m.parameters().end(), back.parameters().begin(), back.parameters().end()));
  Sequences s;
  s.push(std::vector<token_t>{1, 2}, std::vector<token_t>{3, 8});
  std::vector<float> a(1), b(1);
  m.sequence_logp(s.view(), a);
  back.sequence_logp(s.view(), b);
  CHECK(a[0] == b[0]);

  const std::vector<char> good = slurp(path);
  const std::string bad = temp_path("weights_bad.bin");
  auto error_of = [&](const std::vector<char>& bytes) {
    dump(bad, bytes);
    try {
      (void)load_weights<float>(bad);
    } catch (const dftune::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of({}).find("truncated") != std::string::npos);
  CHECK(error_of(std::vector<char>(good.begin(), good.begin() + 40)).find("truncated") != std::string::npos);
  CHECK(error_of(std::vector<char>(good.begin(), good.end() - 3)).find("checksum") != std::string::npos);
  std::vector<char> x = good;
  x[0] = 'X';
  CHECK(error_of(x).find("magic") != std::string::npos);
  x = good;
  x[8] = 2;  // version 2
  CHECK(error_of(x).find("version") != std::string::npos);
  x = good;
  x[x.size() / 2] ^= 1;  // a flipped bit in the parameters
  CHECK(error_of(x).find("corrupted") != std::string::npos);
  x = good;
  x.push_back(0);
  CHECK(error_of(x).find("after the checksum") != std::string::npos);
  CHECK_THROWS_WITH_AS((void)load_weights<double>(path), doctest::Contains("scalar size"), dftune::error);
  CHECK_THROWS_WITH_AS((void)load_weights<float>(temp_path("does_not_exist.bin")), doctest::Contains("readable"), dftune::error);
  std::remove(path.c_str());
  std::remove(bad.c_str());
}
